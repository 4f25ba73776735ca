"""What the HTTP protocol class refuses before the app sees a request: the per-worker caps.

Under a connection storm the event loop is the bottleneck, and a request costs it most of
its price (a task, routing, auth, the body, validation) before the queue can shed it. A
refusal written straight to the socket by the protocol class (server/protocol.py) costs a
fraction of that, and closing the connection makes the client come back through connect,
which throttles it, instead of at once on the same connection.

Two caps, each off at 0:
- requests in hand (FRAUD_MAX_REQUESTS_IN_HAND): a request whose head arrives while this
  many of the worker's requests are being answered is refused;
- connections (FRAUD_MAX_CONNECTIONS): a connection opened while the worker already holds
  this many gets 503 to its first request and is closed; the connections already held are
  served as before, so the excess never takes turns from them.

The app publishes its `Admission` in the lifespan state, the one channel from the app to
uvicorn's protocol objects; the protocol class reads it per connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from server.accepting import Acceptor
from server.errors import Overloaded

# The lifespan-state key under which the app publishes its Admission.
KEY = "fraud.admission"


def refusal_answer() -> bytes:
    """The whole 503 answer, written straight to the socket, closing the connection."""
    error = Overloaded("the server is at capacity; retry shortly")
    body = orjson.dumps(error.to_body())
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"retry-after: 1\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


REFUSAL = refusal_answer()


@dataclass
class Admission:
    max_requests_in_hand: int = 0
    max_connections: int = 0
    # Connections the protocol class accepts itself per new connection (server/accepting.py).
    accept_batch: int = 0
    # Refusals so far, by cap: read by /metrics.
    refused_in_hand: int = 0
    refused_connections: int = 0
    acceptor: Acceptor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.accept_batch > 0:
            self.acceptor = Acceptor(self.accept_batch)

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()

    def over_connections(self, held: int) -> bool:
        """A connection that makes `held` open connections is beyond the cap."""
        return 0 < self.max_connections < held

    def over_in_hand(self, in_hand: int) -> bool:
        """A request arriving while `in_hand` requests are being answered is beyond the cap."""
        return 0 < self.max_requests_in_hand <= in_hand

    def counters(self) -> dict[str, tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]]:
        return {
            "fraud_refused_at_admission": (
                "Requests answered 503 by the protocol class, before the app: over a cap.",
                ("cap",),
                {
                    ("requests_in_hand",): self.refused_in_hand,
                    ("connections",): self.refused_connections,
                },
            )
        }
