"""What every peer app shares: its command line, and one onnxruntime session set up alike.

Imported inside the peers' own venvs, so it needs nothing but numpy and onnxruntime.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnxruntime as ort

# Adaptive batching, for the peers that offer it: a batch is as large as the largest concurrency
# measured, and waits at most this long for its rows, far less than any peer's own per-request cost.
MAX_BATCH_SIZE = 32
BATCH_WINDOW_S = 0.001
# PEER_BATCHING=off runs a batching peer without its batching (the `<peer>_unbatched` targets).
BATCHING_ENV = "PEER_BATCHING"
INPUT = "features"
OUTPUT = "fraud_probability"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    parser.add_argument("--model", required=True, help="path of the model.onnx to serve")
    parser.add_argument("--name", default="creditcard", help="model name in the routes")
    return parser.parse_args()


def batching() -> bool:
    return os.environ.get(BATCHING_ENV, "on") != "off"


def load_session(path: str) -> ort.InferenceSession:
    """One thread for the graph and one between its nodes, run in order: as the server runs it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def predict(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    """fraud_probability, shape (N, 1), for float32 rows of shape (N, 29)."""
    (probabilities,) = session.run([OUTPUT], {INPUT: rows.astype(np.float32, copy=False)})
    return probabilities
