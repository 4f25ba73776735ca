"""One error hierarchy; each error knows its HTTP status and a stable machine-readable code.

Nothing here imports the web framework: the service layer raises these and the
single handler in server/app.py turns them into `{"error": {...}}` bodies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


class ServingError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}

    def to_body(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class InvalidJSON(ServingError):
    status_code = 400
    code = "invalid_json"


class BadRequest(ServingError):
    status_code = 400
    code = "bad_request"


class MissingApiKey(ServingError):
    status_code = 401
    code = "missing_api_key"

    def __init__(self, message: str = "send an API key in the X-API-Key header") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "ApiKey"})


class InvalidApiKey(ServingError):
    status_code = 403
    code = "invalid_api_key"

    def __init__(self, message: str = "the API key is not valid") -> None:
        super().__init__(message)


class ClientNotAllowed(ServingError):
    """The client's address is outside FRAUD_ALLOWED_CLIENTS (server/allowlist.py)."""

    status_code = 403
    code = "client_not_allowed"

    def __init__(self, message: str = "this client address is not allowed") -> None:
        super().__init__(message)


class NotFound(ServingError):
    status_code = 404
    code = "not_found"


class Conflict(ServingError):
    """Well formed, but not possible in the server's state now (a policy naming a version
    that is not served, a promotion with nothing to promote)."""

    status_code = 409
    code = "conflict"


class MethodNotAllowed(ServingError):
    status_code = 405
    code = "method_not_allowed"


class PayloadTooLarge(ServingError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServingError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidRequest(ServingError):
    """Well-formed JSON that is not a valid scoring request."""

    status_code = 422
    code = "invalid_request"


class RateLimited(ServingError):
    """Over the API key's request rate (FRAUD_RATE_LIMIT_RPS)."""

    status_code = 429
    code = "rate_limited"


class RequestTimeout(ServingError):
    """The connection did not deliver a whole request in time (server/protocol.py)."""

    status_code = 408
    code = "request_timeout"


class NotReady(ServingError):
    status_code = 503
    code = "not_ready"


class Overloaded(ServingError):
    """The inference queue is full: shed the request at once."""

    status_code = 503
    code = "overloaded"


class DeadlineExceeded(ServingError):
    """The request waited past its deadline (FRAUD_REQUEST_DEADLINE_MS or the caller's
    X-Request-Deadline-Ms) before reaching the model: not scored (server/deadlines.py)."""

    status_code = 503
    code = "deadline_exceeded"


class StateUnavailable(ServingError):
    """The account state store (Redis) cannot be reached or keeps conflicting: no event is
    scored without its account's state, and nothing was applied."""

    status_code = 503
    code = "state_unavailable"


class ModelFailure(ServingError):
    status_code = 500
    code = "model_error"
    # What answers the same request on another version without doing its side effects
    # again (a raw event already applied to its account's state), where a request has
    # them: a canary's failure is answered by the champion this way (server/traffic.py).
    redo: Callable[[Any], Awaitable[Any]] | None = None


class ArtifactError(Exception):
    """A model folder that cannot be served: missing, tampered with, or inconsistent."""


class SettingsError(ValueError):
    """Configuration the server refuses to start with."""
