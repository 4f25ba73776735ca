"""Where per-account event state lives: a small interface, and the in-process store.

A store holds, per key (model name and account id), the account's state and a version that
goes up by one at every write. The event pipeline reads a micro-batch's accounts with one
`get_many`, folds the events, and writes with one `apply_many`, which writes a key only if
its version is still the one read (compare-and-set). A key someone else wrote meanwhile comes
back as a conflict, and the pipeline folds its events again from the fresh state, so no
update is ever lost, whatever the number of workers sharing the store.

MemoryStore serves one worker. Its snapshot (a JSON file written beside, then renamed into
place) is written at an interval and at shutdown and read at start: a crash loses the events
applied since the last snapshot, a clean stop loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import orjson

from features.events import AccountState
from server.errors import SettingsError

logger = logging.getLogger("uvicorn.error").getChild("fraud")

SNAPSHOT_FORMAT = 1


class Versioned(NamedTuple):
    state: AccountState | None  # None: the account has no events yet
    version: int  # 0 for a key never written


class Update(NamedTuple):
    key: str
    version: int  # the version read; the write happens only if it is still current
    state: AccountState


class AccountStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get_many(self, keys: Sequence[str]) -> list[Versioned]:
        """The state and version of each key, in order, in one round trip."""
        ...

    async def apply_many(self, updates: Sequence[Update]) -> list[int]:
        """Write every update whose key is still at its version (as version + 1), in one
        round trip; return the indices of the others, which are not written."""
        ...


def account_key(model: str, account_id: str) -> str:
    # Model names are folder names and cannot hold a NUL: the two parts never run together.
    return f"{model}\x00{account_id}"


class MemoryStore:
    """A dict in the worker's memory, snapshotted to `snapshot_path` (None: never)."""

    # get_many and apply_many never await: the event pipeline may run them to completion
    # inside a request instead of batching (server/events.py).
    never_waits = True

    def __init__(self, snapshot_path: Path | None = None, snapshot_interval_s: float = 60.0):
        self._items: dict[str, tuple[int, AccountState]] = {}
        self.snapshot_path = snapshot_path
        self.snapshot_interval_s = snapshot_interval_s
        self._task: asyncio.Task[None] | None = None
        self._written_version = 0  # writes counted, to skip a snapshot when nothing changed
        self._writes = 0
        # One snapshot at a time, and the last one is the last written: a write still in its
        # thread when the interval task is cancelled is waited for before the final one.
        self._lock = asyncio.Lock()
        self._writing: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def start(self) -> None:
        if self.snapshot_path is None:
            return
        self.load_snapshot()
        if self.snapshot_interval_s > 0:
            self._task = asyncio.create_task(self._snapshot_every_interval())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        if self.snapshot_path is not None:
            await self.write_snapshot()

    async def get_many(self, keys: Sequence[str]) -> list[Versioned]:
        items = self._items
        found = [items.get(key) for key in keys]
        return [Versioned(None, 0) if f is None else Versioned(f[1], f[0]) for f in found]

    async def apply_many(self, updates: Sequence[Update]) -> list[int]:
        # No await in here: on one event loop the check and the write cannot interleave.
        items = self._items
        conflicts = []
        for i, (key, version, state) in enumerate(updates):
            current = items.get(key)
            if (0 if current is None else current[0]) != version:
                conflicts.append(i)
                continue
            items[key] = (version + 1, state)
        self._writes += len(updates) - len(conflicts)
        return conflicts

    def load_snapshot(self) -> None:
        if self.snapshot_path is None:
            return
        try:
            raw = self.snapshot_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SettingsError(f"cannot read the account state snapshot: {exc}") from exc
        try:
            document = orjson.loads(raw)
            if document.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"format {document.get('format')!r} is not {SNAPSHOT_FORMAT}")
            self._items = {
                key: (int(version), AccountState.from_json(state))
                for key, version, state in document["accounts"]
            }
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SettingsError(
                f"the account state snapshot {self.snapshot_path} is unreadable ({exc}); "
                "move it aside to start with empty state"
            ) from exc
        logger.info("account state: %d accounts from %s", len(self._items), self.snapshot_path)

    async def write_snapshot(self) -> None:
        """Every account as it stands now. States are never changed in place, so a shallow
        copy taken on the loop is consistent; the encoding and the write run in a thread."""
        async with self._lock:
            if self.snapshot_path is None or self._writes == self._written_version:
                return
            writes = self._writes
            items = list(self._items.items())
            self._writing = asyncio.ensure_future(
                asyncio.to_thread(write_snapshot_file, self.snapshot_path, items)
            )
            # Shielded: cancelling the waiter must not leave a thread writing unseen.
            await asyncio.shield(self._writing)
            self._written_version = writes

    async def _snapshot_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_interval_s)
            try:
                await self.write_snapshot()
            except Exception:  # a full disk must not end the snapshots for good
                logger.exception("could not write the account state snapshot")


def write_snapshot_file(path: Path, items: list[tuple[str, tuple[int, AccountState]]]) -> None:
    document = {
        "format": SNAPSHOT_FORMAT,
        "accounts": [[key, version, state.to_json()] for key, (version, state) in items],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(path.name + ".partial")
    with staged.open("wb") as out:
        out.write(orjson.dumps(document))
        out.flush()
        os.fsync(out.fileno())
    os.replace(staged, path)  # a reader (or a crash) sees the old file or the new, never half
