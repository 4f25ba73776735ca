"""What the served state looks like at scrape time: the gauges and counters /metrics reads
from the models, the repository and the alert sender, and the drift windows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from server.alerts import AlertSender
from server.drift import ScoreDrift
from server.endpoints import ServerState
from server.events import EventScoring
from server.metrics import ComparisonSource, DriftSource, DriftWindow, GaugeSource, Labels
from server.traffic import TrafficManager


def serving_gauges(state: ServerState) -> GaugeSource:
    """What the served versions look like now, read at scrape time."""

    def collect() -> dict[str, tuple[str, Labels, dict[Labels, float]]]:
        snapshots = state.snapshots.values()
        return {
            "fraud_queue_depth": (
                "Requests waiting for the model.",
                ("model",),
                {
                    (snap.name,): float(sum(s.runner.queue_depth() for s in snap.services.values()))
                    for snap in snapshots
                },
            ),
            "fraud_model_info": (
                "Served model versions (value 1); default marks the one used when unpinned.",
                ("name", "version", "sha256", "default"),
                {
                    (s.info.name, v, s.info.sha256, str(s is snap.latest).lower()): 1.0
                    for snap in snapshots
                    for v, s in snap.services.items()
                },
            ),
            "fraud_draining": (
                "1 once SIGTERM was received and the server is draining.",
                (),
                {(): float(state.draining)},
            ),
        }

    return collect


def drift_of(state: ServerState) -> Callable[[str, str], ScoreDrift | None]:
    """A served version's drift window, by model and version."""

    def find(model: str, version: str) -> ScoreDrift | None:
        snapshot = state.snapshots.get(model)
        service = snapshot.services.get(version) if snapshot is not None else None
        return service.drift if service is not None else None

    return find


def drift_windows(state: ServerState) -> DriftSource:
    """Each served version's window of scores, per bin, beside its reference."""

    def collect() -> dict[tuple[str, str], DriftWindow]:
        return {
            (name, version): DriftWindow(s.drift.counts(), s.drift.proportions, s.drift.min_count)
            for name, snapshot in state.snapshots.items()
            for version, s in snapshot.services.items()
            if s.drift is not None
        }

    return collect


def alert_counters(alerts: AlertSender) -> GaugeSource:
    def collect() -> dict[str, tuple[str, Labels, dict[Labels, float]]]:
        return {
            "fraud_alerts": (
                "Alert deliveries, one per URL: sent, retried, failed (after retries),"
                " dropped (queue full).",
                ("result",),
                {
                    ("sent",): alerts.sent,
                    ("retried",): alerts.retried,
                    ("failed",): alerts.failed,
                    ("dropped",): alerts.dropped,
                },
            )
        }

    return collect


def repository_counters(state: ServerState) -> GaugeSource:
    def collect() -> dict[str, tuple[str, Labels, dict[Labels, float]]]:
        if not state.repositories:
            return {}
        counts: dict[Labels, float] = {}
        for name, repository in state.repositories.items():
            counts[(name, "ok")] = repository.loads_ok
            counts[(name, "refused")] = repository.loads_refused
        return {
            "fraud_model_loads": (
                "Model version loads: ok, or refused by verification.",
                ("model", "result"),
                counts,
            )
        }

    return collect


def event_counters(events: EventScoring) -> GaugeSource:
    def collect() -> dict[str, tuple[str, Labels, dict[Labels, float]]]:
        pipelines = events.pipelines.items()
        if not events.pipelines:
            return {}
        return {
            "fraud_events": (
                "Raw events folded into account state: applied, or replayed (an event id"
                " already applied, answered and not counted again).",
                ("model", "result"),
                {
                    **{(name, "applied"): float(p.applied) for name, p in pipelines},
                    **{(name, "replayed"): float(p.replays) for name, p in pipelines},
                },
            ),
            "fraud_state_conflicts": (
                "Accounts folded again because another worker wrote them between the read"
                " and the compare-and-set write.",
                ("model",),
                {(name,): float(p.conflicts) for name, p in pipelines},
            ),
        }

    return collect


def comparison_tallies(managers: Mapping[str, TrafficManager]) -> ComparisonSource:
    """Champion against challengers, per model and challenger version (server/traffic.py), as
    tallies that add up across workers: /metrics derives the figures from their sum."""

    def collect() -> list[dict[str, Any]]:
        return [
            {"model": name, "version": c.challenger, "role": c.role, **c.tallies()}
            for name, manager in managers.items()
            for c in manager.comparisons.values()
        ]

    return collect


def policy_gauges(managers: Mapping[str, TrafficManager]) -> GaugeSource:
    """Each answering version's latency under a policy, and the canaries rolled back."""

    def collect() -> dict[str, tuple[str, Labels, dict[Labels, float]]]:
        if not managers:
            return {}
        latency: dict[Labels, float] = {}
        for name, manager in managers.items():
            for version, q in manager.figures()["latency"].items():
                if q is not None:
                    latency[(name, version, "0.5")] = q["p50_ms"] / 1e3
                    latency[(name, version, "0.99")] = q["p99_ms"] / 1e3
        return {
            "fraud_version_latency_seconds": (
                "Request time of each version that answers under a policy, over its last 4,096"
                " requests (with several workers, the slowest worker's).",
                ("model", "version", "quantile"),
                latency,
            ),
            "fraud_canary_rollbacks": (
                "Canaries the guard rolled back.",
                ("model",),
                {(name,): float(m.rollbacks) for name, m in managers.items()},
            ),
        }

    return collect
