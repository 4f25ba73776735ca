"""The data plane: validate, score, decide. Knows the model, not HTTP."""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

import numpy as np

from server.alerts import AlertSender
from server.batching import Runner, check_deadline
from server.drift import ScoreDrift
from server.errors import InvalidRequest, ModelFailure, SettingsError
from server.metrics import VALIDATED, Metrics
from server.payloads import batch_items, parse_batch_items, parse_score_request
from server.reasons import Explainer
from server.scorer import Scorer

logger = logging.getLogger("uvicorn.error").getChild("fraud")

APPROVE, REVIEW, DECLINE = "APPROVE", "REVIEW", "DECLINE"
# The Open Inference Protocol's second output, when a request names it: each row's
# per-feature contributions, in the input's feature order (server/reasons.py).
CONTRIBUTIONS = "contributions"


class ScoringService:
    def __init__(
        self,
        scorer: Scorer,
        runner: Runner,
        review_threshold: float | None = None,
        decline_threshold: float | None = None,
        max_batch_items: int = 1000,
        metrics: Metrics | None = None,
        ood_z: float = 6.0,
        alerts: AlertSender | None = None,
        drift_window: int = 10_000,
        chunk_rows: int = 64,
        reasons: int = 3,
    ) -> None:
        self.scorer = scorer
        # A large batch is validated this many items per turn of the event loop (the runner
        # scores it in chunks of its own): 1,000 items in one go hold the loop for
        # milliseconds, and every request behind them waits.
        self.chunk_rows = max(1, chunk_rows)
        self.runner = runner
        self.info = scorer.info
        self.max_batch_items = max_batch_items
        self.metrics = metrics
        self._score_log = (
            metrics.score_log(self.info.name, self.info.version) if metrics is not None else None
        )
        if metrics is not None:
            # The model's series exist from the start, at 0, not from its first flagged row.
            metrics.out_of_distribution.setdefault(self.info.name, 0)
        self.alerts = alerts
        # Set by server/traffic.py while a policy compares this version with another: handed
        # every scored batch of rows and their probabilities, after the model run.
        self.observer: Callable[[np.ndarray, np.ndarray], None] | None = None
        # Drift is measured against this version's own reference, when its artifact has one.
        self.drift = (
            ScoreDrift(
                *self.info.score_reference, window=drift_window, min_count=min(500, drift_window)
            )
            if metrics is not None and self.info.score_reference is not None
            else None
        )
        # A feature more than ood_z training standard deviations from its training mean
        # marks the row out of distribution. Bounds computed once: two comparisons a row.
        mean = np.asarray(self.info.feature_mean, dtype=np.float64)
        spread = ood_z * np.asarray(self.info.feature_std, dtype=np.float64)
        self._low, self._high = mean - spread, mean + spread
        self._low_list, self._high_list = self._low.tolist(), self._high.tolist()
        # Reason codes for every decision but APPROVE (and for APPROVE when asked).
        self.explainer = (
            Explainer(self.info.feature_names, self.info.feature_mean, reasons)
            if reasons > 0
            else None
        )
        # Settings override the thresholds chosen on validation at training time.
        self.review_threshold = (
            self.info.review_threshold if review_threshold is None else review_threshold
        )
        self.decline_threshold = (
            self.info.decline_threshold if decline_threshold is None else decline_threshold
        )
        if not 0.0 <= self.review_threshold <= self.decline_threshold <= 1.0:
            raise SettingsError(
                f"thresholds must satisfy 0 <= review ({self.review_threshold})"
                f" <= decline ({self.decline_threshold}) <= 1"
            )

    def decide(self, probability: float) -> str:
        if probability >= self.decline_threshold:
            return DECLINE
        if probability >= self.review_threshold:
            return REVIEW
        return APPROVE

    async def score(self, payload: Any, stamps: list[float] | None = None) -> dict[str, Any]:
        """One transaction. `stamps`, for metrics, gets the time it is validated."""
        request = parse_score_request(
            payload, self.info.feature_names, missing_allowed=self.info.fills_missing
        )
        rows = np.asarray([request.features], np.float32)
        if stamps is not None:
            stamps[VALIDATED] = perf_counter()
        probabilities = await self.predict_rows(rows)
        unusual = self.unusual_row(request.features)
        probability = float(probabilities[0])
        reasons = None
        if self.explainer is not None and (request.explain or self.decide(probability) != APPROVE):
            (reasons,) = await self.explain(rows)
        return self.result(request.transaction_id, probability, unusual, reasons=reasons)

    async def score_batch(self, payload: Any, stamps: list[float] | None = None) -> dict[str, Any]:
        items = batch_items(payload, self.max_batch_items)
        names, step = self.info.feature_names, self.chunk_rows
        requests = []
        for start in range(0, len(items), step):
            if start:
                await asyncio.sleep(0)  # nothing is counted or scored until all are valid
            requests += parse_batch_items(
                items, start, start + step, names, self.info.fills_missing
            )
        rows = np.asarray([r.features for r in requests], np.float32)
        if stamps is not None:
            stamps[VALIDATED] = perf_counter()
        # Accepted: a reload during the awaits above must not refuse what this version took.
        probabilities = await self.predict_rows(rows, accepted=True)
        scores = probabilities.tolist()
        reasons = await self.reasons_where(rows, [r.explain for r in requests], scores)
        return {
            "results": [
                self.result(r.transaction_id, p, unusual, reasons=why)
                for r, p, unusual, why in zip(
                    requests, scores, self.unusual(rows), reasons, strict=True
                )
            ]
        }

    async def reasons_where(
        self, rows: np.ndarray, asked: Sequence[bool], scores: Sequence[float]
    ) -> list[list[dict[str, Any]] | None]:
        """Per row, its reasons if it gets any (not APPROVE, or asked for), else None: the
        rows that do are explained in one model run."""
        out: list[list[dict[str, Any]] | None] = [None] * len(scores)
        if self.explainer is None:
            return out
        chosen = [i for i, p in enumerate(scores) if asked[i] or self.decide(p) != APPROVE]
        if chosen:
            found = await self.explain(rows[chosen])
            for i, why in zip(chosen, found, strict=True):
                out[i] = why
        return out

    async def explain(self, rows: np.ndarray) -> list[list[dict[str, Any]]]:
        """The reasons of scored rows: one more model run, of each row and of it with each
        feature in turn at its training mean (server/reasons.py). Accepted, like the later
        chunks of a batch: the request was scored, and is answered whatever the queue holds."""
        explainer = self.explainer
        if explainer is None:
            return [[] for _ in range(len(rows))]
        return explainer.reasons(rows, await self.occlusion(explainer, rows, True))

    async def occlusion(self, explainer: Explainer, rows: np.ndarray, accepted: bool) -> np.ndarray:
        occluded = await self.runner.predict(explainer.occluded(rows), accepted)
        if not (occluded.min() >= 0.0 and occluded.max() <= 1.0):
            logger.error("model %s returned values outside [0, 1]", self.info.version)
            raise ModelFailure("the model returned a value that is not a probability")
        return occluded

    @property
    def output_names(self) -> tuple[str, ...]:
        """The v2 outputs, the default first: the others only when a request names them."""
        return (self.info.output_name, CONTRIBUTIONS)

    async def infer(self, rows: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """v2 inference (both transports): the probability as (n, 1) and, when asked for, the
        contributions as (n, F), both from one occlusion run (the probability is the run's
        unoccluded row, so that each contribution is a difference within one run)."""
        if CONTRIBUTIONS not in outputs:
            return {self.info.output_name: (await self.predict_rows(rows)).reshape(-1, 1)}
        if self.explainer is None:
            raise InvalidRequest(
                f"the {CONTRIBUTIONS!r} output is off on this server (FRAUD_REASONS=0)"
            )
        occluded = await self.occlusion(self.explainer, rows, False)
        probabilities, contributions = self.explainer.split(len(rows), occluded)
        probabilities = probabilities.astype(np.float32)
        if self._score_log is not None:
            self._score_log.append(probabilities)
        if self.observer is not None:
            self.observer(rows, probabilities)
        return {
            self.info.output_name: probabilities.reshape(-1, 1),
            CONTRIBUTIONS: contributions.astype(np.float32),
        }

    def refuse_early(self) -> None:
        """503 now, before the request's body is read, if the queue is full or the request's
        deadline has passed: a refusal then costs a fraction of a served request."""
        self.runner.check_capacity()
        check_deadline(self.metrics)

    async def predict_rows(self, rows: np.ndarray, accepted: bool = False) -> np.ndarray:
        """Validated (rows, F) float32 features -> probabilities, through the shared batcher;
        `accepted` as for Runner.predict."""
        probabilities = await self.runner.predict(rows, accepted)
        # Also false for NaN: a broken model must not pass as a decision. One row, the usual
        # case, is checked as a float: numpy's min and max cost microseconds each.
        if not (
            0.0 <= float(probabilities[0]) <= 1.0
            if len(probabilities) == 1
            else probabilities.min() >= 0.0 and probabilities.max() <= 1.0
        ):
            logger.error("model %s returned values outside [0, 1]", self.info.version)
            raise ModelFailure("the model returned a value that is not a probability")
        if self._score_log is not None:
            self._score_log.append(probabilities)  # binned in bulk, once a second
        observer = self.observer
        if observer is not None:
            observer(rows, probabilities)
        return probabilities

    def unusual_row(self, values: Sequence[float]) -> list[str]:
        """The features of one row outside the training distribution. In plain Python: for
        one row, two C-level passes cost a third of numpy's four array operations."""
        low, high = self._low_list, self._high_list
        if all(map(operator.le, low, values)) and all(map(operator.le, values, high)):
            return []
        names = self.info.feature_names
        # v == v is false for NaN: a missing value (filled by the model) is not unusual.
        return [names[i] for i, v in enumerate(values) if not low[i] <= v <= high[i] and v == v]

    def unusual(self, rows: np.ndarray) -> list[list[str]]:
        """Per row, the names of the features outside the training distribution."""
        outside = (rows < self._low) | (rows > self._high)
        if not outside.any():
            return [[] for _ in range(len(rows))]
        names = self.info.feature_names
        return [[names[i] for i in np.flatnonzero(row)] for row in outside]

    def result(
        self,
        transaction_id: str | None,
        probability: float,
        unusual: list[str],
        id_field: str = "transaction_id",
        reasons: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The answer for one scored row, counted and alerted on; `id_field` names the id
        ("event_id" for raw events)."""
        decision = self.decide(probability)
        if self.metrics is not None:
            self.metrics.count_decision(self.info.name, decision, bool(unusual))
        if self.alerts is not None and decision != APPROVE:
            self.alerts.offer(
                transaction_id, probability, decision, self.info.version, self.info.name, reasons
            )
        answer: dict[str, Any] = {
            id_field: transaction_id,
            "fraud_probability": probability,
            "decision": decision,
            "model_version": self.info.version,
            "out_of_distribution": bool(unusual),
            "unusual_features": unusual,
        }
        if reasons is not None:
            answer["reasons"] = reasons
        return answer

    def describe(self) -> dict[str, Any]:
        info = self.info
        return {
            "name": info.name,
            "version": info.version,
            "features": list(info.feature_names),
            "thresholds": {"review": self.review_threshold, "decline": self.decline_threshold},
            "metrics": info.metrics,
            "created_at": info.created_at,
            "sha256": info.sha256,
            "opset": info.opset,
            "runtime": info.runtime,
        }
