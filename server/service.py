"""The data plane: validate, score, decide. Knows the model, not HTTP."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from server.batching import Runner
from server.errors import ModelFailure, SettingsError
from server.payloads import ScoreRequest, parse_batch_request, parse_score_request
from server.scorer import Scorer

logger = logging.getLogger("uvicorn.error").getChild("fraud")

APPROVE, REVIEW, DECLINE = "APPROVE", "REVIEW", "DECLINE"


class ScoringService:
    def __init__(
        self,
        scorer: Scorer,
        runner: Runner,
        review_threshold: float | None = None,
        decline_threshold: float | None = None,
        max_batch_items: int = 1000,
    ) -> None:
        self.scorer = scorer
        self.runner = runner
        self.info = scorer.info
        self.max_batch_items = max_batch_items
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

    async def score(self, payload: Any) -> dict[str, Any]:
        request = parse_score_request(payload, self.info.feature_names)
        probabilities = await self._predict([request])
        return self._result(request, float(probabilities[0]))

    async def score_batch(self, payload: Any) -> dict[str, Any]:
        requests = parse_batch_request(payload, self.info.feature_names, self.max_batch_items)
        probabilities = await self._predict(requests)
        return {
            "results": [
                self._result(r, float(p))
                for r, p in zip(requests, probabilities.tolist(), strict=True)
            ]
        }

    async def _predict(self, requests: list[ScoreRequest]) -> np.ndarray:
        return await self.predict_rows(np.asarray([r.features for r in requests], np.float32))

    async def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """Validated (rows, F) float32 features -> probabilities, through the shared batcher."""
        probabilities = await self.runner.predict(rows)
        # Also false for NaN: a broken model must not pass as a decision.
        if not (probabilities.min() >= 0.0 and probabilities.max() <= 1.0):
            logger.error("model %s returned values outside [0, 1]", self.info.version)
            raise ModelFailure("the model returned a value that is not a probability")
        return probabilities

    def _result(self, request: ScoreRequest, probability: float) -> dict[str, Any]:
        return {
            "transaction_id": request.transaction_id,
            "fraud_probability": probability,
            "decision": self.decide(probability),
            "model_version": self.info.version,
        }

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
