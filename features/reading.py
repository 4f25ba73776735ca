"""Reading raw events: one event from a JSON object or a table row, checked field by field.

The server answers a bad event with a 422 naming the field; training names the column and the
row. Both read events here, so both accept and refuse the same ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import numpy as np

from features.events import EVENT_FIELDS, EVENT_TYPES, ID_FIELDS, Event

MAX_ID_CHARS = 128
# The ISO-8601 forms taken: a calendar date, optionally a time (T or a space between, seconds
# and their fraction optional) and a zone (Z or ±hh:mm). ASCII digits only.
ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?"
)
# Amounts and balances must fit the model's float32 input.
FLOAT_MAX = float(np.finfo(np.float32).max)
# Timestamps from 1970 to 2200: anything else is a unit mistake (milliseconds) or garbage.
MAX_TIMESTAMP = 7_258_118_400.0


class EventError(ValueError):
    """An event that cannot be scored: `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_timestamp(value: object, field: str = "timestamp") -> float:
    """Epoch seconds (a number) or an ISO-8601 string (UTC when it names no zone)."""
    if type(value) is float or type(value) is int:
        seconds = float(value)
    elif isinstance(value, str):
        try:
            if not ISO_TIME.fullmatch(value):  # fromisoformat alone takes week dates, NULs…
                raise ValueError(value)
            stamp = datetime.fromisoformat(value)  # takes a trailing Z since Python 3.11
        except ValueError:
            raise EventError(
                field, f"{field} must be epoch seconds or an ISO-8601 date and time"
            ) from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        seconds = stamp.timestamp()
    else:
        raise EventError(field, f"{field} must be epoch seconds or an ISO-8601 string")
    if not 0.0 <= seconds <= MAX_TIMESTAMP:
        raise EventError(field, f"{field} must fall between 1970 and 2200 (epoch seconds)")
    return seconds


def _good_id(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_ID_CHARS


def _good_number(value: object, low: float, high: float) -> bool:
    # Chained comparisons are false for NaN; the bounds are finite, so infinities fail too.
    return (type(value) is float or type(value) is int) and low <= value <= high


def event_from_mapping(item: Mapping[str, Any]) -> Event:
    """One event from its JSON object (or table row), checked field by field. Unknown keys
    are the caller's business.

    The common case, a valid event, takes one pass of cheap type and range tests; anything
    else goes through _explain, which finds the first bad field and says what is wrong.
    """
    get: Callable[[str], Any] = item.get
    event_id, account_id = get("event_id"), get("account_id")
    payee_id, device_id = get("payee_id"), get("device_id")
    amount, balance, lat, lon = get("amount"), get("balance_before"), get("lat"), get("lon")
    kind, opened = get("type"), get("account_opened_at")
    if not (
        _good_id(event_id)
        and _good_id(account_id)
        and _good_id(payee_id)
        and _good_id(device_id)
        and (kind == "transfer" or kind == "cash_out")
        and _good_number(amount, 0.0, FLOAT_MAX)
        and amount != 0
        and _good_number(balance, 0.0, FLOAT_MAX)
        and _good_number(lat, -90.0, 90.0)
        and _good_number(lon, -180.0, 180.0)
    ):
        _explain(item)
    return Event(
        event_id,
        account_id,
        parse_timestamp(get("timestamp")) if "timestamp" in item else _explain(item),
        kind,
        float(amount),
        float(balance),
        payee_id,
        device_id,
        float(lat),
        float(lon),
        None if opened is None else parse_timestamp(opened, "account_opened_at"),
    )


def _explain(item: Mapping[str, Any]) -> NoReturn:
    """Raise EventError for the first field, in EVENT_FIELDS order, that is not valid."""
    for field in ID_FIELDS[:2]:
        _check_id(item, field)
    if "timestamp" not in item:
        raise EventError("timestamp", "timestamp is missing")
    parse_timestamp(item["timestamp"])
    if item.get("type") not in EVENT_TYPES:
        raise EventError("type", f"type must be one of {', '.join(EVENT_TYPES)}")
    values = {}
    for field in ("amount", "balance_before"):
        values[field] = _check_number(item, field)
    if not values["amount"] > 0:
        raise EventError("amount", "amount must be greater than 0")
    if not values["balance_before"] >= 0:
        raise EventError("balance_before", "balance_before must be 0 or more")
    for field in ID_FIELDS[2:]:
        _check_id(item, field)
    if not -90.0 <= _check_number(item, "lat") <= 90.0:
        raise EventError("lat", "lat must be between -90 and 90")
    if not -180.0 <= _check_number(item, "lon") <= 180.0:
        raise EventError("lon", "lon must be between -180 and 180")
    raise EventError("event", "the event is not valid")  # not reached: some check failed


def _check_id(item: Mapping[str, Any], field: str) -> None:
    if field not in item:
        raise EventError(field, f"{field} is missing")
    value = item[field]
    if not isinstance(value, str) or not value:
        raise EventError(field, f"{field} must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise EventError(field, f"{field} is longer than {MAX_ID_CHARS} characters")


def _check_number(item: Mapping[str, Any], field: str) -> float:
    if field not in item:
        raise EventError(field, f"{field} is missing")
    value = item[field]
    if type(value) is not float and type(value) is not int:
        raise EventError(field, f"{field} must be a number")
    if not math.isfinite(value) or abs(value) > FLOAT_MAX:
        raise EventError(field, f"{field} must be finite and within float32 range")
    return float(value)


def events_from_columns(columns: Mapping[str, Sequence[Any]]) -> Iterator[Event]:
    """Events from a table held as columns (EVENT_FIELDS; account_opened_at optional, None or
    NaN where unknown), in row order, checked like the server checks them. EventError carries
    the field; the caller adds the row."""
    names = [field for field in EVENT_FIELDS if field in columns]
    # tolist() turns numpy scalars into the Python numbers a JSON body would hold.
    lists = [list(getattr(columns[name], "tolist", lambda n=name: columns[n])()) for name in names]
    for values in zip(*lists, strict=True):
        row = dict(zip(names, values, strict=True))
        opened = row.get("account_opened_at")
        if isinstance(opened, float) and math.isnan(opened):
            row["account_opened_at"] = None
        yield event_from_mapping(row)
