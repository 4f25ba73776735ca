"""One JSON object per log line, on uvicorn's own handlers.

Log calls pass what they want recorded as `extra` fields; a request's id comes
from a context variable the request middleware sets, and its API key's name from one the
key check sets (the name, never the key). Nothing here sees request
bodies or headers, so feature values and API keys cannot reach the log unless a
message puts them there, and none does (tests check).
"""

from __future__ import annotations

import contextvars
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# The name of the request's API key (server/keys.py), once the key is checked; never reset,
# as the server runs each request in a task of its own, with its own copy of the context.
key_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("key_name", default=None)

# Attributes every LogRecord has; anything else on a record came in through `extra`.
STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}
HANDLED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            line["request_id"] = current
        if (name := key_name.get()) is not None:
            line["key_name"] = name
        for key, value in record.__dict__.items():
            if key not in STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def use_json_logs() -> None:
    """Give uvicorn's handlers the JSON format. Called while the app is built, which
    uvicorn does before it logs that the server started."""
    formatter = JsonFormatter()
    for name in HANDLED_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
