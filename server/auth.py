"""API keys in the X-API-Key header, compared in constant time."""

from __future__ import annotations

import hmac

from server.errors import InvalidApiKey, MissingApiKey

HEADER = "x-api-key"


class ApiKeyGuard:
    def __init__(self, keys: tuple[str, ...], enabled: bool = True) -> None:
        self._keys = tuple(k.encode("ascii") for k in keys)  # Settings admits ASCII keys only
        self.enabled = enabled

    def check(self, presented: str | None) -> None:
        if not self.enabled:
            return
        if not presented:
            raise MissingApiKey()
        # Starlette decodes header bytes as latin-1; this gives the client's bytes back.
        candidate = presented.encode("latin-1")
        # Compare with every key, without stopping early, so timing reveals
        # neither which key matched nor how much of one did.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise InvalidApiKey()
