"""What the served state looks like at scrape time: the gauges and counters /metrics reads
from the models, the repository and the alert sender, and the drift windows."""

from __future__ import annotations

from collections.abc import Callable

from server.alerts import AlertSender
from server.drift import ScoreDrift
from server.endpoints import ServerState
from server.events import EventScoring
from server.metrics import DriftSource, DriftWindow, GaugeSource, Labels


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
