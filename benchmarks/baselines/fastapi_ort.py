"""BASELINE for benchmarks/bench.py, not part of the product: a seed-style FastAPI server.

What a typical first version looks like: a pydantic request model, one onnxruntime `session.run`
per request, a dict returned for FastAPI to serialise. It loads the same ONNX model as the server
(BENCH_MODEL_DIR, default models/creditcard/4) with the same session options.

`create_app` declares the endpoint with a plain (sync) `def`, as FastAPI's documentation advises
for blocking calls, so each request runs in FastAPI's thread pool: that is the baseline.
`create_async_app` declares it `async def` instead (the model then runs on the event loop), for
comparison only: bench.py's target fastapi_ort_async, not run by default.

    uvicorn --factory benchmarks.baselines.fastapi_ort:create_app --loop uvloop --http httptools
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel, Field


class Transaction(BaseModel):
    transaction_id: str | None = None
    features: Annotated[list[float], Field(min_length=29, max_length=29)]


def load_session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def create_app(run_in_threadpool: bool = True) -> FastAPI:
    model_dir = os.environ.get("BENCH_MODEL_DIR", "models/creditcard/4")
    session = load_session(os.path.join(model_dir, "model.onnx"))
    meta = session.get_modelmeta().custom_metadata_map
    thresholds = json.loads(meta["thresholds"])
    app = FastAPI()

    def score(transaction: Transaction) -> dict[str, object]:
        x = np.array([transaction.features], dtype=np.float32)
        probability = float(session.run(None, {meta["input_name"]: x})[0][0][0])
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

    async def score_async(transaction: Transaction) -> dict[str, object]:
        return score(transaction)

    app.post("/v1/score")(score if run_in_threadpool else score_async)

    @app.get("/v1/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


def create_async_app() -> FastAPI:
    return create_app(run_in_threadpool=False)
