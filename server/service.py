"""The data plane: validate, score, decide. Knows the model, not HTTP."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from server.errors import ModelFailure, SettingsError
from server.payloads import parse_score_request
from server.scorer import Scorer

logger = logging.getLogger("uvicorn.error").getChild("fraud")

APPROVE, REVIEW, DECLINE = "APPROVE", "REVIEW", "DECLINE"


class ScoringService:
    def __init__(
        self,
        scorer: Scorer,
        review_threshold: float | None = None,
        decline_threshold: float | None = None,
    ) -> None:
        self.scorer = scorer
        self.info = scorer.info
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

    def score(self, payload: Any) -> dict[str, Any]:
        request = parse_score_request(payload, self.info.feature_names)
        row = np.asarray([request.features], dtype=np.float32)
        try:
            probability = float(self.scorer.predict(row)[0])
        except Exception as exc:
            # Details are for operators: clients learn only that the model, not their input, failed.
            logger.exception("model %s failed to score a row", self.info.version)
            raise ModelFailure("the model failed to score this request") from exc
        if not 0.0 <= probability <= 1.0:  # also false for NaN
            raise ModelFailure("the model returned a value that is not a probability")
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
        }
