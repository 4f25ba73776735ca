"""API keys in the X-API-Key header, checked against SHA-256 digests in constant time, and
the key files re-read while the server runs (rotation without a restart)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from server import logs
from server.errors import InvalidApiKey, MissingApiKey, SettingsError
from server.keys import KeyTable, digest_of

if TYPE_CHECKING:
    from server.settings import Settings

HEADER = "x-api-key"
# The name requests go by when auth is disabled: they share one rate-limit bucket.
ANONYMOUS = "anonymous"

logger = logging.getLogger("uvicorn.error").getChild("fraud.keys")


class ApiKeyGuard:
    def __init__(self, table: KeyTable, enabled: bool = True) -> None:
        # Read once per check and replaced whole by `replace`: a request never sees half
        # of an old table and half of a new one.
        self.table = table
        self.enabled = enabled

    def replace(self, table: KeyTable) -> None:
        self.table = table

    def check(self, presented: str | None) -> str:
        """The name of the presented key, also put in the request's log context; or
        MissingApiKey / InvalidApiKey."""
        if not self.enabled:
            logs.key_name.set(ANONYMOUS)
            return ANONYMOUS
        if not presented:
            raise MissingApiKey()
        candidate = digest_of(presented)
        table = self.table
        # Compare with every digest, without stopping early, so timing reveals neither
        # which key matched nor how much of one did.
        matched = False
        for digest in table.digests:
            matched |= hmac.compare_digest(candidate, digest)
        if not matched:
            raise InvalidApiKey()
        name = table.names[candidate]
        logs.key_name.set(name)
        return name


class KeyReloader:
    """Re-reads the key files every poll and swaps a guard's table when its keys changed.

    A file that cannot be read, or holds a bad line, or would leave no scoring key at all,
    changes nothing: the keys in use stay, and the error is logged once (until it changes or
    the files are good again), so that a botched edit of a Secret never locks every client
    out. The files are read whole each time (through symlinks, as Kubernetes swaps a mounted
    Secret's `..data` link), which notices any change, whatever its mtime."""

    def __init__(
        self,
        resolve: Callable[[], tuple[KeyTable, KeyTable | None]],
        guard: ApiKeyGuard,
        admin_guard: ApiKeyGuard | None,
    ) -> None:
        self.resolve = resolve
        self.guard = guard
        self.admin_guard = admin_guard
        self.error: str | None = None  # the last look's error, None while the files are good
        self.reloads = 0  # looks that changed a table
        self.failures = 0  # looks that kept the old keys because of an error

    async def watch(self, interval_s: float) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except Exception:  # a bad pass must not end the polling
                logger.exception("looking at the API key files failed")

    async def reload(self) -> None:
        try:
            # Off the event loop: a read from a stalled mount must not stop scoring.
            scoring, admin = await asyncio.to_thread(self.resolve)
        except SettingsError as exc:
            self.failures += 1
            if str(exc) != self.error:
                self.error = str(exc)
                logger.error("API keys not reloaded, the keys in use stay: %s", exc)
            return
        if self.error is not None:
            logger.info("the API key files are readable and valid again")
            self.error = None
        changed = swap(self.guard, scoring, "scoring")
        if self.admin_guard is not None and admin is not None:
            changed |= swap(self.admin_guard, admin, "admin")
        self.reloads += changed

    def counters(self) -> dict[str, tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]]:
        return {
            "fraud_key_reloads": (
                "Looks at the API key files that changed the keys (ok) or kept the keys in use"
                " because of an error (failed).",
                ("outcome",),
                {("ok",): self.reloads, ("failed",): self.failures},
            )
        }

    def gauges(self) -> dict[str, tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]]:
        return {
            "fraud_key_files_failing": (
                "1 while the last look at the API key files failed and older keys serve.",
                (),
                {(): 1.0 if self.error is not None else 0.0},
            )
        }


def swap(guard: ApiKeyGuard, table: KeyTable, kind: str) -> bool:
    old = guard.table
    if table.names == old.names:
        return False
    guard.replace(table)
    added = sorted(table.name_set() - old.name_set())
    removed = sorted(old.name_set() - table.name_set())
    logger.info(
        "%s keys reloaded: %d keys; names added %s, removed %s",
        kind,
        len(table),
        ", ".join(added) or "none",
        ", ".join(removed) or "none",
        extra={"keys": len(table), "names_added": added, "names_removed": removed},
    )
    return True


def key_guards(settings: Settings) -> tuple[ApiKeyGuard, ApiKeyGuard | None, KeyReloader | None]:
    """The scoring guard, the admin guard (None: the repository routes are off) and, when
    there are key files to watch, their reloader; SettingsError on bad keys."""
    scoring = settings.resolved_api_keys()
    admin = settings.resolved_admin_keys(scoring) if settings.admin_routes_on else None
    guard = ApiKeyGuard(scoring, enabled=not settings.insecure_disable_auth)
    admin_guard = ApiKeyGuard(admin) if admin is not None else None
    watched = settings.api_key_file is not None or settings.admin_key_file is not None
    if not watched or settings.key_poll_s == 0:
        return guard, admin_guard, None

    def resolve() -> tuple[KeyTable, KeyTable | None]:
        scoring = settings.resolved_api_keys()
        admin = settings.resolved_admin_keys(scoring) if admin_guard is not None else None
        return scoring, admin

    return guard, admin_guard, KeyReloader(resolve, guard, admin_guard)
