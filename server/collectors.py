"""What the served state looks like at scrape time: the gauges and counters /metrics reads
from the models, the repository and the alert sender, and the drift windows."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from server.alerts import AlertSender
from server.drift import ScoreDrift
from server.endpoints import ServerState
from server.events import EventScoring
from server.metrics import DriftSource, DriftWindow, GaugeSource, Labels
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


def comparison_gauges(managers: Mapping[str, TrafficManager]) -> GaugeSource:
    """Champion against challengers, per model and challenger version (server/traffic.py),
    and each answering version's latency."""

    def collect() -> dict[str, tuple[str, Labels, dict[Labels, float]]]:
        if not managers:
            return {}
        figures = {name: manager.figures() for name, manager in managers.items()}
        series: dict[str, tuple[str, Labels, dict[Labels, float]]] = {}

        def put(name: str, help_text: str, labels: Labels, values: dict[Labels, float]) -> None:
            series[name] = (help_text, labels, values)

        who = ("model", "version", "role")
        compared: dict[Labels, float] = {}
        agreement: dict[Labels, float] = {}
        correlation: dict[Labels, float] = {}
        psi: dict[Labels, float] = {}
        dropped: dict[Labels, float] = {}
        errors: dict[Labels, float] = {}
        window_agreement: dict[Labels, float] = {}
        window_psi: dict[Labels, float] = {}
        confusion: dict[Labels, float] = {}
        for model, found in figures.items():
            for c in found["challengers"]:
                key = (model, c["version"], c["role"])
                compared[key] = float(c["compared"])
                dropped[key] = float(c["dropped"])
                errors[key] = float(c["errors"])
                for target, value in (
                    (agreement, c["agreement"]),
                    (correlation, c["score_correlation"]),
                    (psi, c["psi"]),
                    (window_agreement, c["window"]["agreement"]),
                    (window_psi, c["window"]["psi"]),
                ):
                    if value is not None:
                        target[key] = float(value)
                for mine, row in c["decisions"].items():
                    for theirs, count in row.items():
                        confusion[(*key, mine.removeprefix("champion "), theirs)] = float(count)
        put(
            "fraud_comparison_compared",
            "Requests scored by both champion and challenger.",
            who,
            compared,
        )
        put(
            "fraud_comparison_agreement",
            "Share of compared requests with the same decision.",
            who,
            agreement,
        )
        put(
            "fraud_comparison_decisions",
            "Compared requests by the champion's decision and the challenger's.",
            (*who, "champion_decision", "challenger_decision"),
            confusion,
        )
        put(
            "fraud_comparison_score_correlation",
            "Pearson correlation of the two scores.",
            who,
            correlation,
        )
        put("fraud_comparison_psi", "Population stability index between the two scores.", who, psi)
        put(
            "fraud_comparison_window_agreement",
            "Decision agreement over the guard's window.",
            who,
            window_agreement,
        )
        put("fraud_comparison_window_psi", "PSI over the guard's window.", who, window_psi)
        put(
            "fraud_comparison_dropped",
            "Requests left uncompared: the comparison fell behind.",
            who,
            dropped,
        )
        put("fraud_comparison_errors", "Model errors of the challenger.", who, errors)
        latency: dict[Labels, float] = {}
        for model, found in figures.items():
            for version, q in found["latency"].items():
                if q is not None:
                    latency[(model, version, "0.5")] = q["p50_ms"] / 1e3
                    latency[(model, version, "0.99")] = q["p99_ms"] / 1e3
        put(
            "fraud_version_latency_seconds",
            "Request time of each version that answers under "
            "a policy, over its last 4,096 requests.",
            ("model", "version", "quantile"),
            latency,
        )
        put(
            "fraud_canary_rollbacks",
            "Canaries the guard rolled back.",
            ("model",),
            {(model,): float(found["rollbacks"]) for model, found in figures.items()},
        )
        return series

    return collect
