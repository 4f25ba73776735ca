"""The account store in Redis, shared by every worker and replica that points at it.

Each account is one Redis string, `<prefix><key>` -> b"<version>:<orjson of the state>", so
`get_many` is one MGET. `apply_many` is one EVALSHA of a Lua script: Redis runs a script
alone, so the compare-and-set of every key in the batch cannot interleave with another
worker's. Versions travel as decimal strings and are compared as strings in the script
(Lua numbers are doubles, and would print a large version in exponent form).

Every write sets the key's time to live: the state of an account that sends nothing for
`ttl_s` seconds is dropped, so memory stays bounded by the accounts active in that time
rather than growing with every account ever seen. An expired account scores as a new one:
its 30-day windows were empty anyway after 30 idle days, but its known devices and payees
and (without account_opened_at in the event) its age are forgotten, so the TTL should be
well beyond the 30-day window.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from features.events import AccountState
from server.accounts import Update, Versioned
from server.errors import SettingsError, StateUnavailable

logger = logging.getLogger("uvicorn.error").getChild("fraud")

DEFAULT_PREFIX = "fraud:account:"
DEFAULT_TTL_S = 90 * 86_400
DEFAULT_TIMEOUT_S = 1.0

# KEYS[i]: an account key. ARGV[1]: the TTL in seconds; ARGV[2i]: the version read ("0": the
# key was absent); ARGV[2i+1]: the value to write, its version (read + 1) already in front.
# Returns the 0-based indices whose stored version differs: nothing is written for those.
APPLY_SCRIPT = b"""
local ttl = ARGV[1]
local conflicts = {}
for i, key in ipairs(KEYS) do
  local stored = redis.call('GET', key)
  local version = '0'
  if stored then
    version = string.sub(stored, 1, string.find(stored, ':', 1, true) - 1)
  end
  if version == ARGV[2 * i] then
    redis.call('SET', key, ARGV[2 * i + 1], 'EX', ttl)
  else
    conflicts[#conflicts + 1] = i - 1
  end
end
return conflicts
"""
APPLY_SHA = hashlib.sha1(APPLY_SCRIPT, usedforsecurity=False).hexdigest()


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisStore:
    """Account state in the Redis at `url` (redis://host:port/db, rediss:// for TLS)."""

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        ttl_s: int = DEFAULT_TTL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if ttl_s < 1:
            raise SettingsError(f"the account state TTL must be at least 1 s, not {ttl_s}")
        if not timeout_s > 0:
            raise SettingsError(f"the account state timeout must be above 0 s, not {timeout_s}")
        self.url = redacted(url)
        self.prefix = prefix
        self.ttl_s = int(ttl_s)
        self.timeout_s = timeout_s
        try:
            # One retry, at once, and on a dropped connection only (a pooled connection that
            # Redis closed, say after a restart): a timeout is not retried, so a call takes
            # at most about twice timeout_s. Retrying the script after a reply was lost is
            # safe: its own write then shows as a conflict, and the pipeline's second fold
            # finds the event's id in the fresh state and does not count it again.
            self._client = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
        except ValueError as exc:
            raise SettingsError(f"the account state URL {self.url} is not valid: {exc}") from exc
        self._failing = False  # an outage is logged once, and its end once

    async def start(self) -> None:
        try:
            await self._client.ping()
            sha = await self._client.script_load(APPLY_SCRIPT)
        except RedisError as exc:
            await self._client.aclose()
            raise SettingsError(
                f"cannot reach the account state store at {self.url} "
                f"(within {self.timeout_s:g} s): {exc}"
            ) from exc
        if sha != APPLY_SHA:
            raise SettingsError(f"Redis at {self.url} gave the script SHA {sha}, not {APPLY_SHA}")
        logger.info("account state in Redis at %s (TTL %d s)", self.url, self.ttl_s)

    async def close(self) -> None:
        await self._client.aclose()

    def _key(self, key: str) -> bytes:
        # surrogatepass: any str is a key, and two different strs are two different keys.
        return (self.prefix + key).encode("utf-8", "surrogatepass")

    async def get_many(self, keys: Sequence[str]) -> list[Versioned]:
        if not keys:
            return []
        try:
            values = await self._client.mget([self._key(k) for k in keys])
        except RedisError as exc:
            raise self._unavailable("read", exc) from exc
        self._succeeded()
        return [self._decode(key, value) for key, value in zip(keys, values, strict=True)]

    async def apply_many(self, updates: Sequence[Update]) -> list[int]:
        if not updates:
            return []
        keys = [self._key(key) for key, _, _ in updates]
        args: list[Any] = [self.ttl_s]
        for _, version, state in updates:
            args.append(b"%d" % version)
            args.append(b"%d:" % (version + 1) + orjson.dumps(state.to_json()))
        try:
            try:
                conflicts = await self._client.evalsha(APPLY_SHA, len(keys), *keys, *args)
            except NoScriptError:
                # Redis lost its script cache (a restart, SCRIPT FLUSH, a failover).
                await self._client.script_load(APPLY_SCRIPT)
                conflicts = await self._client.evalsha(APPLY_SHA, len(keys), *keys, *args)
        except RedisError as exc:
            raise self._unavailable("write", exc) from exc
        self._succeeded()
        return [int(i) for i in conflicts]

    def _decode(self, key: str, value: bytes | str | None) -> Versioned:
        if value is None:
            return Versioned(None, 0)
        raw = value.encode() if isinstance(value, str) else value  # str only if decoding is on
        try:
            version, _, body = raw.partition(b":")
            return Versioned(AccountState.from_json(orjson.loads(body)), int(version))
        except (ValueError, TypeError) as exc:
            logger.error("account state of %r in Redis is unreadable: %s", key, exc)
            raise StateUnavailable("the stored account state is unreadable") from exc

    def _unavailable(self, action: str, exc: RedisError) -> StateUnavailable:
        if not self._failing:
            self._failing = True
            logger.error(
                "account state store at %s: could not %s (%s: %s)",
                self.url,
                action,
                type(exc).__name__,
                exc,
            )
        return StateUnavailable(
            f"the account state store cannot be reached ({type(exc).__name__}); try again"
        )

    def _succeeded(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("account state store at %s answers again", self.url)
