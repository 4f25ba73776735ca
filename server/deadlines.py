"""Request deadlines: an answer that comes too late is worth less than a quick 503.

A payment caller gives up after 100-200 ms. A request that has waited longer than its
deadline would only waste the model's time and make every request behind it later, so it
is answered 503 `deadline_exceeded` at the points where waiting ends: before its body is
read, when it reaches the model queue, and when its batch is about to run. A request that
made its batch is answered, however long the batch takes: a 200 comes at most one batch
past the deadline.

The clock starts when the request's head arrived: the HTTP protocol class
(server/protocol.py) stamps it into the ASGI scope; under another protocol class it starts
when the app first sees the request. The deadline travels with the request's task in a
context variable, so the queue reads it without every scoring signature carrying it.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from time import perf_counter

from server.errors import BadRequest, DeadlineExceeded

HEADER = b"x-request-deadline-ms"
# The scope key the protocol class sets: perf_counter() when the request's head arrived.
ARRIVED = "fraud.arrived"

# perf_counter() by which the current request must have reached the model: infinite
# outside a request (a test calling the service directly) or with deadlines off.
due: ContextVar[float] = ContextVar("deadline", default=math.inf)


def requested_ms(value: bytes | None) -> float | None:
    """The caller's X-Request-Deadline-Ms, or 400 for one that is not a positive number."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not (math.isfinite(ms) and ms > 0):
        raise BadRequest(
            "X-Request-Deadline-Ms must be a positive number of milliseconds",
            field="X-Request-Deadline-Ms",
        )
    return ms


def deadline_of(arrived: float, default_ms: float, header: bytes | None) -> float:
    """When a request that arrived at `arrived` must have reached the model: after the
    server's deadline, or the caller's if it is sooner (a longer one is not granted).
    default_ms 0 turns the server's off; the caller's still applies."""
    asked = requested_ms(header)
    limit = default_ms if default_ms > 0 else math.inf
    if asked is not None:
        limit = min(limit, asked)
    return arrived + limit / 1000.0


def expired() -> DeadlineExceeded:
    return DeadlineExceeded("the request waited past its deadline; it was not scored")


def check(deadline: float) -> None:
    """DeadlineExceeded if `deadline` has passed."""
    if perf_counter() > deadline:
        raise expired()
