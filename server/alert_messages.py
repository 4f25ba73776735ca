"""What an alert says: a decision's record and its two encodings (plain JSON, Slack text),
and a policy event (a canary rolled back) in the same two shapes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson


@dataclass(frozen=True, slots=True)
class _Alert:
    transaction_id: str | None
    probability: float
    decision: str
    model_version: str
    offered_at: float  # seconds since the epoch
    model: str = ""
    reasons: tuple[tuple[str, float], ...] = ()  # (feature, contribution), largest first
    # A policy event instead of a decision (then transaction_id is None): what happened and
    # why, e.g. "canary_rolled_back" and the guard's finding.
    event: str = ""
    detail: str = ""


def encode_alert(alert: _Alert, slack: bool) -> bytes:
    when = datetime.fromtimestamp(alert.offered_at, UTC).isoformat(timespec="milliseconds")
    when = when.replace("+00:00", "Z")
    if alert.event:
        return encode_event(alert, when, slack)
    if not slack:
        return orjson.dumps(
            {
                "transaction_id": alert.transaction_id,
                "fraud_probability": alert.probability,
                "decision": alert.decision,
                "model": alert.model,
                "model_version": alert.model_version,
                "time": when,
            }
            # With reason codes on (FRAUD_REASONS), the features that raised the score.
            | (
                {"reasons": [{"feature": f, "contribution": c} for f, c in alert.reasons]}
                if alert.reasons
                else {}
            )
        )
    transaction = "(no id)" if alert.transaction_id is None else _slack_escape(alert.transaction_id)
    text = (
        f"{alert.decision}: transaction {transaction} scored {alert.probability:.4f}"
        f" (model {_slack_escape(alert.model)} version {_slack_escape(alert.model_version)})"
        f" at {when}"
    )
    if alert.reasons:
        text += "; reasons: " + ", ".join(
            f"{_slack_escape(f)} (+{c:.3f})" for f, c in alert.reasons
        )
    return orjson.dumps({"text": text})


def _slack_escape(text: str) -> str:
    # Client-chosen ids must not become Slack mentions or links such as <!channel>.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def encode_event(alert: _Alert, when: str, slack: bool) -> bytes:
    if not slack:
        return orjson.dumps(
            {
                "event": alert.event,
                "model": alert.model,
                "model_version": alert.model_version,
                "detail": alert.detail,
                "time": when,
            }
        )
    text = (
        f"{alert.event.replace('_', ' ')}: model {_slack_escape(alert.model)} version "
        f"{_slack_escape(alert.model_version)} at {when}: {_slack_escape(alert.detail)}"
    )
    return orjson.dumps({"text": text})
