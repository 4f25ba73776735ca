"""The model repository: `<root>/<name>/<version>/`, the newest version served by default.

A pass (at start-up, every poll interval, or on an admin request) compares the
version folders on disk with what is served. New or changed versions are loaded
and verified off the event loop; then one new immutable `Snapshot` is published
by a single assignment on the loop. A request looks its version up in the
snapshot and reaches that version's batcher without awaiting anything in
between, so it runs on the session it found, whatever is swapped in after.

A version that fails to load is refused, logged and counted, and whatever was
serving keeps serving, from memory: a file corrupted or deleted under a served
version does not stop it. A refused folder is tried again when its files change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread

from server.errors import ArtifactError, NotFound, SettingsError
from server.scorer import Scorer
from server.service import ScoringService

logger = logging.getLogger("uvicorn.error").getChild("fraud")

# What a folder's files looked like when last read: (name, size, mtime, ctime, inode) of each.
Signature = tuple[tuple[str, int, int, int, int], ...]
LoadScorer = Callable[[Path], Scorer]
MakeService = Callable[[Scorer], ScoringService]


class Snapshot:
    """The versions served at one moment, newest first, and which one answers by default
    (`latest`: the newest, or the policy's champion) and which one answers a share as the
    canary (server/traffic.py). Never changed once published."""

    __slots__ = ("canary", "latest", "name", "services", "share", "traffic")

    def __init__(
        self,
        name: str,
        services: Mapping[str, ScoringService],
        champion: str | None = None,
        canary: str | None = None,
        share: float = 0.0,
        traffic: Any = None,
    ) -> None:
        self.name = name
        self.services = dict(services)
        self.latest = (
            self.services[champion] if champion is not None else next(iter(self.services.values()))
        )
        self.canary = self.services[canary] if canary is not None else None
        self.share = share
        # The model's traffic manager while a policy applies, else None: the plain path.
        self.traffic = traffic

    def get(self, version: str | None) -> ScoringService:
        if version is None:
            return self.latest
        service = self.services.get(version)
        if service is None:
            served = ", ".join(self.services)
            raise NotFound(f"model {self.name!r} has no version {version!r} (serving {served})")
        return service


@dataclass
class VersionState:
    """One version folder as the last pass saw it: served, refused, or both (a served
    version whose files changed into something that cannot be served)."""

    signature: Signature
    service: ScoringService | None = None
    error: str | None = None


@dataclass
class PassResult:
    loaded: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # version -> reason
    retired: list[str] = field(default_factory=list)


def version_key(version: str) -> int:
    return int(version)


def is_version(name: str) -> bool:
    # Canonical whole numbers only ("01" would collide with "1"): staging folders,
    # dot-files and notes beside the versions are not versions.
    return name.isascii() and name.isdigit() and name == str(int(name))


def signature(folder: Path) -> Signature | None:
    """A cheap fingerprint of a version folder: every file's size, times and inode.

    ctime and inode catch what mtime misses: a chmod, a copy that keeps times
    (cp -p, rsync -a, tar), a file replaced by a rename. None when the folder is
    gone or is no folder; an unreadable one gives a signature, so loading it is
    tried once and refused rather than skipped.
    """
    try:
        with os.scandir(folder) as entries:
            files = []
            for entry in entries:
                stat = entry.stat()
                files.append(
                    (entry.name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
                )
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return (("unreadable", exc.errno or 0, 0, 0, 0),)
    return tuple(sorted(files))


def scan(model_root: Path) -> dict[str, Signature]:
    """Version -> signature for every version folder, newest first."""
    try:
        names = [p.name for p in model_root.iterdir() if is_version(p.name)]
    except OSError:
        return {}
    found = {}
    for name in sorted(names, key=version_key, reverse=True):
        sig = signature(model_root / name)
        if sig is not None:
            found[name] = sig
    return found


def model_names(root: Path) -> list[str]:
    """The folders under the repository root that hold at least one version folder;
    unreadable ones (a volume's lost+found) are not models."""
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise SettingsError(f"cannot read the model repository {root}: {exc}") from exc
    return [folder.name for folder in folders if scan(folder)]


def resolve_models(root: Path, listed: Sequence[str], default: str | None) -> tuple[list[str], str]:
    """The models to serve (the listed ones, else every model folder) and the default one,
    which answers the routes that name no model: the only model, else it must be named."""
    names = list(dict.fromkeys(listed)) or model_names(root)
    if not names:
        raise SettingsError(f"the model repository {root} holds no model folder with a version")
    if default is None:
        if len(names) != 1:
            raise SettingsError(
                f"FRAUD_DEFAULT_MODEL must name the model that answers /v1/score when several"
                f" are served (serving: {', '.join(names)})"
            )
        default = names[0]
    if default not in names:
        raise SettingsError(
            f"FRAUD_DEFAULT_MODEL {default!r} is not among the served models ({', '.join(names)})"
        )
    return names, default


class ModelRepository:
    def __init__(
        self,
        root: Path,
        name: str,
        load_scorer: LoadScorer,
        make_service: MakeService,
        publish: Callable[[Snapshot], None],
        max_versions: int = 0,
        keep: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.root = root
        self.name = name
        self.model_root = root / name
        self._load_scorer = load_scorer
        self._make_service = make_service
        self._publish_snapshot = publish
        self.max_versions = max_versions
        # Versions served whatever max_versions says: those the model's policy names, so
        # that a newer version arriving never drops the champion a team chose.
        self._keep = keep
        self.versions: dict[str, VersionState] = {}
        self.snapshot: Snapshot | None = None
        self.loads_ok = 0
        self.loads_refused = 0
        self._lock = asyncio.Lock()
        self._closed = False

    async def refresh(self, force: bool = False) -> PassResult:
        """One pass over the folder; `force` retries refused versions whose files did not change."""
        async with self._lock:
            if self._closed:
                return PassResult()
            return await self._refresh(force)

    async def close(self) -> None:
        """Wait for a pass under way, then take no more: shutdown closes what is served."""
        async with self._lock:
            self._closed = True

    async def _refresh(self, force: bool) -> PassResult:
        result = PassResult()
        on_disk = scan(self.model_root)
        wanted: dict[str, ScoringService] = {}
        named = self._keep()
        for version, sig in on_disk.items():
            if self.max_versions and len(wanted) >= self.max_versions and version not in named:
                continue
            state = self.versions.get(version)
            unchanged = state is not None and state.signature == sig
            if unchanged and state is not None and (state.error is None or not force):
                if state.service is not None:
                    wanted[version] = state.service
                continue
            try:
                service = await self._load(version)
            except Exception as exc:  # whatever a broken folder raises, it must not end the pass
                if not isinstance(exc, ArtifactError | SettingsError):
                    logger.exception("loading model %s version %s failed", self.name, version)
                reason = str(exc) or type(exc).__name__
                self.loads_refused += 1
                result.refused[version] = reason
                kept = state.service if state is not None else None
                self.versions[version] = VersionState(sig, kept, reason)
                logger.error(
                    "refused model %s version %s: %s%s",
                    self.name,
                    version,
                    reason,
                    "; the loaded copy keeps serving" if kept is not None else "",
                )
                if kept is not None:
                    wanted[version] = kept
                continue
            self.loads_ok += 1
            result.loaded.append(version)
            self.versions[version] = VersionState(sig, service)
            wanted[version] = service
        self._forget(on_disk, wanted)
        if not wanted:
            if self.snapshot is not None:
                logger.error(
                    "no servable version of model %s in %s; the loaded versions keep serving",
                    self.name,
                    self.model_root,
                )
            return result
        self._publish(wanted, result)
        return result

    async def _load(self, version: str) -> ScoringService:
        folder = self.model_root / version
        scorer = await anyio.to_thread.run_sync(self._load_scorer, folder)
        info = scorer.info
        if (info.name, info.version) != (self.name, version):
            raise ArtifactError(
                f"{folder} holds model {info.name!r} version {info.version!r},"
                f" not {self.name!r} version {version!r}"
            )
        return self._make_service(scorer)

    def _forget(
        self, on_disk: Mapping[str, Signature], wanted: Mapping[str, ScoringService]
    ) -> None:
        """Drop what the next pass should see afresh: folders gone from disk, and versions
        left out (beyond max_versions), which are loaded again if they come back in."""
        for version, state in list(self.versions.items()):
            if version not in on_disk:
                del self.versions[version]
            elif state.service is not None and wanted.get(version) is not state.service:
                if state.error is None:
                    del self.versions[version]
                else:
                    state.service = None

    def _publish(self, wanted: dict[str, ScoringService], result: PassResult) -> None:
        old = self.snapshot.services if self.snapshot is not None else {}
        if dict(old) == wanted and list(old) == list(wanted):
            return
        for version, service in wanted.items():
            if old.get(version) is not service:
                service.runner.start()
        self.snapshot = Snapshot(self.name, wanted)
        self._publish_snapshot(self.snapshot)
        for version, service in old.items():
            if wanted.get(version) is not service:
                # Requests already queued on it finish there; none can join after the swap.
                service.runner.retire()
                result.retired.append(version)
        logger.info(
            "serving model %s versions %s (default %s)",
            self.name,
            ", ".join(wanted),
            next(iter(wanted)),
        )

    def index(self) -> list[dict[str, str]]:
        """Every version known, in the v2 repository index shape, newest first."""
        served = self.snapshot.services if self.snapshot is not None else {}
        entries = []
        for version in sorted(set(self.versions) | set(served), key=version_key, reverse=True):
            state = self.versions.get(version)
            entry = {
                "name": self.name,
                "version": version,
                "state": "READY" if version in served else "UNAVAILABLE",
                "reason": state.error if state is not None and state.error else "",
            }
            entries.append(entry)
        return entries

    async def watch(self, interval_s: float) -> None:
        """Poll for new, changed and removed versions until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:  # a bad pass must not end the polling
                logger.exception("model repository pass failed")
