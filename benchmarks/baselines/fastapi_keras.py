"""BASELINE for benchmarks/bench.py, not part of the product: the original design.

FastAPI with a pydantic request model and one Keras `model.predict` per request, on the Keras
model and preprocessing that `make train` writes (runs/creditcard/model.keras and
preprocessing.json; BENCH_KERAS_RUN overrides the folder). The endpoint is a plain (sync) `def`,
as in fastapi_ort.py. Needs TensorFlow.

Without a trained run it builds the same architecture with random weights (latency depends on
the architecture, not the weights) from the shipped model's training config, and takes the
preprocessing statistics from the ONNX metadata; it logs which one it serves.

    uvicorn --factory benchmarks.baselines.fastapi_keras:create_app --loop uvloop --http httptools
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import keras
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel, Field

from training.config import TrainConfig
from training.model import average_members, build_model
from training.preprocessing import Preprocessing

logger = logging.getLogger("uvicorn.error")


class Transaction(BaseModel):
    transaction_id: str | None = None
    features: Annotated[list[float], Field(min_length=29, max_length=29)]


def random_model(model_dir: Path, meta: dict[str, str]) -> tuple[keras.Model, Preprocessing]:
    config = TrainConfig(**json.loads((model_dir / "config.json").read_text()))
    names = tuple(json.loads(meta["feature_names"]))
    mean = tuple(json.loads(meta["feature_mean"]))
    std = tuple(json.loads(meta["feature_std"]))
    preprocessing = Preprocessing(names, (False,) * len(names), mean, std, mean, std)
    members = [
        build_model(len(names), config, name=f"lstm_cnn_{index}") for index in range(config.members)
    ]
    return average_members(members, len(names)), preprocessing


def create_app() -> FastAPI:
    run_dir = Path(os.environ.get("BENCH_KERAS_RUN", "runs/creditcard"))
    model_dir = Path(os.environ.get("BENCH_MODEL_DIR", "models/creditcard/4"))
    meta = ort.InferenceSession(str(model_dir / "model.onnx")).get_modelmeta().custom_metadata_map
    thresholds = json.loads(meta["thresholds"])
    if (run_dir / "model.keras").is_file():
        model = keras.models.load_model(run_dir / "model.keras")
        preprocessing = Preprocessing.load(run_dir / "preprocessing.json")
        logger.info("serving the trained model %s", run_dir / "model.keras")
    else:
        model, preprocessing = random_model(model_dir, meta)
        logger.info("no %s: serving a same-architecture model, random weights", run_dir)
    app = FastAPI()

    @app.post("/v1/score")
    def score(transaction: Transaction) -> dict[str, object]:
        x = preprocessing.transform(np.array([transaction.features]))
        probability = float(model.predict(x, verbose=0)[0][0])
        if probability >= thresholds["decline"]:
            decision = "DECLINE"
        elif probability >= thresholds["review"]:
            decision = "REVIEW"
        else:
            decision = "APPROVE"
        return {
            "transaction_id": transaction.transaction_id,
            "fraud_probability": probability,
            "decision": decision,
            "model_version": meta["model_version"],
        }

    @app.get("/v1/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app
