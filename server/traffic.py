"""Champion and challenger: a model's policy (server/policy.py) applied to its served versions.

The repository hands every snapshot it makes to the model's TrafficManager, which publishes
it with the policy's champion as the default and its canary and share, so that a policy
change, like a reload, is one assignment: a request runs on the version it found. While a
policy applies, the version that answered a request hands its rows and probabilities to the
comparison (ScoringService.observer, a list append) and the other version scores them later,
in bulk, on a thread of its own: the shadow after the champion's answers, the champion after
the canary's. Nothing of that runs before an answer is sent, and a shadow's failure fails no
request. The same task judges the canary by its guard and rolls it back: the policy file
rewritten, a log line, an alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from server import policy as policies
from server.alerts import AlertSender
from server.comparison import Comparison, Latencies, guard_finding
from server.endpoints import Score
from server.errors import ModelFailure
from server.policy import Policy, PolicyConflict, PolicyError
from server.repository import Snapshot
from server.service import ScoringService

logger = logging.getLogger("uvicorn.error").getChild("fraud")

# Rows waiting to be compared, beyond which more are dropped (and counted) rather than held.
MAX_PENDING_ROWS = 16_384
# Scored every tenth of a second: a few large runs cost far less per row than many small
# ones, and overlap fewer answers.
DRAIN_INTERVAL_S = 0.1
GUARD_INTERVAL_S = 0.25
FILE_INTERVAL_S = 1.0
MAX_EVENTS = 20


class TrafficManager:
    def __init__(
        self,
        folder: Path,
        name: str,
        publish: Callable[[Snapshot], None],
        alerts: AlertSender | None = None,
    ) -> None:
        self.folder = folder
        self.name = name
        self._publish = publish
        self.alerts = alerts
        self.raw: Snapshot | None = None  # the repository's, newest first, no policy
        self.policy: Policy | None = None  # what the file (or an admin) asked for
        self.applied = False  # whether it applies now (its versions are all served)
        self.error: str | None = None
        self.signature: tuple[int, int, int] | None = None
        self.comparisons: dict[tuple[str, str], Comparison] = {}
        self.latencies = Latencies()
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.rollbacks = 0
        self._pending: list[tuple[Comparison, ScoringService, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._executor: ThreadPoolExecutor | None = None
        self._observed: list[ScoringService] = []
        # The versions of a policy being set through the routes, loaded before it applies.
        self.loading: frozenset[str] = frozenset()
        self.load_file()

    # The policy

    def load_file(self) -> None:
        """Read policy.json (if it changed); a bad file is logged and the policy before it
        stays."""
        signature = policies.signature_of(self.folder)
        if signature == self.signature and signature is not None:
            return
        try:
            policy, signature = policies.read(self.folder)
        except PolicyError as error:
            if self.error != error.message:
                logger.error("model %s: %s is refused: %s", self.name, policies.FILE_NAME, error)
            self.error = error.message
            return
        self.signature = signature
        if policy != self.policy:
            self.policy = policy
            logger.info("model %s: policy %s", self.name, describe(policy))
            self._apply()

    def set_policy(self, policy: Policy | None, why: str) -> None:
        """An admin's policy (or the guard's): checked against what is served, written to
        the file, then applied; a PolicyError if its versions are not all served."""
        if policy is not None:
            self.check_served(policy)
        self.signature = policies.write(self.folder, policy)
        self.policy = policy
        logger.warning("model %s: policy %s (%s)", self.name, describe(policy), why)
        self._apply()

    def check_served(self, policy: Policy) -> None:
        served = set(self.raw.services) if self.raw is not None else set()
        missing = sorted(policy.versions() - served, key=int)
        if missing:
            raise PolicyConflict(
                f"model {self.name!r} does not serve version {missing[0]} "
                f"(serving {', '.join(self.raw.services) if self.raw else 'nothing yet'})"
            )

    def named_versions(self) -> frozenset[str]:
        """The versions the policy names, the one a rollback returns to too, and those of a
        policy an admin is setting: the repository keeps them loaded beyond
        FRAUD_MAX_VERSIONS."""
        policy = self.policy
        if policy is None:
            return self.loading
        named = policy.versions() | ({policy.previous} if policy.previous else set())
        return frozenset(named) | self.loading

    def on_snapshot(self, snapshot: Snapshot) -> None:
        """The repository's publish: a new set of versions."""
        self.raw = snapshot
        self._apply()

    def _apply(self) -> None:
        raw = self.raw
        if raw is None:
            return
        policy = self.policy
        for service in self._observed:
            service.observer = None
        self._observed = []
        if policy is None:
            self.applied, self.error = False, None
            self._publish(raw)
            return
        try:
            self.check_served(policy)
        except PolicyConflict as error:
            # The newest version answers until the policy's versions are all loaded.
            if self.error != error.message:
                logger.error("model %s: the policy waits: %s", self.name, error.message)
            self.applied, self.error = False, error.message
            self._publish(raw)
            return
        self.applied, self.error = True, None
        window = policy.guard.window
        wanted = {}
        champion = raw.services[policy.champion]
        if policy.shadow is not None:
            wanted[("shadow", policy.shadow)] = (champion, raw.services[policy.shadow])
        if policy.canary is not None:
            wanted[("canary", policy.canary)] = (raw.services[policy.canary], champion)
        kept = {}
        for key, (answering, other) in wanted.items():
            comparison = self.comparisons.get(key)
            if comparison is None or comparison.champion != policy.champion:
                comparison = Comparison(key[0], policy.champion, key[1], window)
            kept[key] = comparison
            answering.observer = self._observer(comparison, other)
            self._observed.append(answering)
        self.comparisons = kept
        logger.info("model %s answers by its policy: %s", self.name, describe(policy))
        self._publish(
            Snapshot(
                raw.name,
                raw.services,
                champion=policy.champion,
                canary=policy.canary,
                share=policy.share,
                traffic=self,
            )
        )

    # The requests

    def _observer(
        self, comparison: Comparison, other: ScoringService
    ) -> Callable[[np.ndarray, np.ndarray], None]:
        def observe(rows: np.ndarray, probabilities: np.ndarray) -> None:
            if self._pending_rows + len(rows) > MAX_PENDING_ROWS:
                comparison.dropped += len(rows)
                return
            self._pending.append((comparison, other, rows, probabilities))
            self._pending_rows += len(rows)

        return observe

    async def answer(
        self,
        snapshot: Snapshot,
        score: Score,
        payload: Any,
        stamps: list[float] | None,
        key_field: str | None,
    ) -> Any:
        """A single-transaction route's answer under the policy: the canary for its share
        (sticky by `key_field`'s value, random without one), else the champion; a canary's
        model error is answered by the champion instead, and rolls the canary back."""
        service = snapshot.latest
        if key_field is None:  # a batch: the champion's whole, and no single request's time
            return await score(service, payload, stamps)
        canary = snapshot.canary
        if canary is not None:
            key = payload.get(key_field) if type(payload) is dict else None
            place = policies.bucket(key) if type(key) is str else random.random()  # noqa: S311 - a share, not a secret
            if place < snapshot.share:
                service = canary
        started = perf_counter()
        try:
            result = await score(service, payload, stamps)
        except ModelFailure as error:
            if service is not canary:
                raise
            comparison = self.comparisons.get(("canary", service.info.version))
            if comparison is not None:
                comparison.errors += 1
            self.trip(service.info.version, f"model error: {error.message}")
            service = snapshot.latest
            started = perf_counter()
            if error.redo is not None:
                result = await error.redo(service)
            else:
                result = await score(service, payload, stamps)
        self.latencies.ring(service.info.version).append(perf_counter() - started)
        return result

    # The background task: compare, judge, watch the file

    async def run(self) -> None:
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"compare-{self.name}", initializer=lowest_priority
        )
        loop = asyncio.get_running_loop()
        judged = read = time.monotonic()
        try:
            while True:
                await asyncio.sleep(DRAIN_INTERVAL_S)
                if self._pending:
                    await self._compare(loop)
                now = time.monotonic()
                if now - judged >= GUARD_INTERVAL_S:
                    judged = now
                    self.judge()
                if now - read >= FILE_INTERVAL_S:
                    read = now
                    self.load_file()
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _compare(self, loop: asyncio.AbstractEventLoop) -> None:
        pending, self._pending, self._pending_rows = self._pending, [], 0
        groups: dict[int, list[tuple[Comparison, ScoringService, np.ndarray, np.ndarray]]] = {}
        for item in pending:
            groups.setdefault(id(item[0]), []).append(item)
        for items in groups.values():
            comparison, other = items[0][0], items[0][1]
            rows = np.concatenate([item[2] for item in items])
            answered = np.concatenate([item[3] for item in items])
            try:
                scored, seconds = await loop.run_in_executor(
                    self._executor, timed, other.scorer.predict, rows
                )
            except Exception:  # a challenger's failure is counted, never a request's
                logger.exception(
                    "model %s: scoring version %s after the answers failed",
                    self.name,
                    other.info.version,
                )
                comparison.errors += len(rows)
                continue
            comparison.run_seconds += seconds
            comparison.run_rows += len(rows)
            scored = np.asarray(scored, np.float64).reshape(-1)
            answering = answered.reshape(-1)
            champion_p, challenger_p = (
                (answering, scored) if comparison.role == "shadow" else (scored, answering)
            )
            champion = self.raw.services.get(comparison.champion) if self.raw else None
            challenger = self.raw.services.get(comparison.challenger) if self.raw else None
            if champion is None or challenger is None:
                continue  # a version went away meanwhile
            comparison.add(
                champion_p,
                challenger_p,
                (champion.review_threshold, champion.decline_threshold),
                (challenger.review_threshold, challenger.decline_threshold),
            )

    def judge(self) -> None:
        """Roll the canary back if the guard says so."""
        policy = self.policy
        if not self.applied or policy is None or policy.canary is None:
            return
        comparison = self.comparisons.get(("canary", policy.canary))
        if comparison is None:
            return
        finding = guard_finding(policy, comparison, self.latencies)
        if finding is not None:
            self.trip(policy.canary, finding)

    def trip(self, version: str, finding: str) -> None:
        policy = self.policy
        if policy is None or policy.canary != version:
            return  # already rolled back
        self.rollbacks += 1
        comparison = self.comparisons.get(("canary", version))
        self.events.append(
            {
                "event": "canary_rolled_back",
                "version": version,
                "detail": finding,
                "time": time.time(),
                "comparison": comparison.figures() if comparison is not None else None,
            }
        )
        try:
            self.set_policy(policy.without_canary(), f"guard: {finding}")
        except (OSError, PolicyConflict) as error:
            # The file could not be written: the rollback holds in memory all the same.
            logger.error("model %s: could not write the rolled-back policy: %s", self.name, error)
            self.policy = policy.without_canary()
            self._apply()
        logger.error("model %s: canary version %s rolled back: %s", self.name, version, finding)
        if self.alerts is not None:
            self.alerts.notify("canary_rolled_back", self.name, version, finding)

    # What the routes and /metrics show

    def figures(self) -> dict[str, Any]:
        policy = self.policy
        champion = self.raw.latest.info.version if self.raw is not None else ""
        if self.applied and policy is not None:
            champion = policy.champion
        versions = {champion} | {c.challenger for c in self.comparisons.values()}
        versions.discard("")
        return {
            "model": self.name,
            "policy": policy.to_dict() if policy is not None else None,
            "applied": self.applied,
            "error": self.error,
            "champion": champion,
            "challengers": [c.figures() for c in self.comparisons.values()],
            "latency": {v: self.latencies.quantiles(v) for v in sorted(versions - {None}, key=int)},
            "rollbacks": self.rollbacks,
            "events": list(self.events),
        }


def timed(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> tuple[Any, float]:
    """The model's answer and how long it took, measured on the thread that ran it (the
    loop may come back to it later)."""
    started = perf_counter()
    return predict(rows), perf_counter() - started


def lowest_priority() -> None:
    """The comparison's thread yields the CPU to the loop that answers: on Linux a thread
    has a nice value of its own. Elsewhere it keeps the process's."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def describe(policy: Policy | None) -> str:
    if policy is None:
        return "none (the newest version answers)"
    parts = [f"champion {policy.champion}"]
    if policy.shadow is not None:
        parts.append(f"shadow {policy.shadow}")
    if policy.canary is not None:
        parts.append(f"canary {policy.canary} at {policy.share:.0%}")
    return ", ".join(parts)
