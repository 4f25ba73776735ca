"""One row of 29 floats as each target's own request, and its probability read back from the answer.

Every target is asked in its native protocol: this server on POST /v1/score, MLServer on the Open
Inference Protocol v2, KServe on its v1 protocol, LitServe and BentoML on their /predict routes
with the JSON their APIs declare (benchmarks/peers/*_app.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INPUT = "features"
OUTPUT = "fraud_probability"


@dataclass(frozen=True)
class Protocol:
    route: str  # with {model} for the model's name
    ready: str  # a GET that answers 200 once the model is loaded
    encode: Callable[[int, Sequence[float]], dict[str, Any]]  # (row number, row) -> body
    probability: Callable[[Any], float]  # the decoded answer -> the row's probability


def server_body(i: int, row: Sequence[float]) -> dict[str, Any]:
    return {"transaction_id": f"peers-{i}", "features": list(row)}


def v2_body(i: int, row: Sequence[float]) -> dict[str, Any]:
    tensor = {"name": INPUT, "shape": [1, len(row)], "datatype": "FP32", "data": list(row)}
    return {"id": f"peers-{i}", "inputs": [tensor]}


def kserve_v1_body(i: int, row: Sequence[float]) -> dict[str, Any]:
    return {"instances": [list(row)]}


def litserve_body(i: int, row: Sequence[float]) -> dict[str, Any]:
    return {"features": list(row)}


def bentoml_body(i: int, row: Sequence[float]) -> dict[str, Any]:
    # The API takes an array of rows (batchable, batch dimension 0): this is a batch of one.
    return {"features": [list(row)]}


def v2_probability(answer: Any) -> float:
    (output,) = [o for o in answer["outputs"] if o["name"] == OUTPUT]
    if output["shape"] != [1, 1]:
        raise ValueError(f"{OUTPUT} has shape {output['shape']}, not [1, 1]")
    return float(output["data"][0])


def first_of_first(answer: Any) -> float:
    (row,) = answer
    (value,) = row
    return float(value)


PROTOCOLS: dict[str, Protocol] = {
    # The floor answers a constant: it is asked as the server is, and its answer is not read.
    "floor": Protocol("/v1/score", "/v1/health/ready", server_body, lambda a: a[OUTPUT]),
    "server": Protocol("/v1/score", "/v1/health/ready", server_body, lambda a: a[OUTPUT]),
    "mlserver": Protocol(
        "/v2/models/{model}/infer", "/v2/models/{model}/ready", v2_body, v2_probability
    ),
    "kserve": Protocol(
        "/v1/models/{model}:predict",
        "/v1/models/{model}",
        kserve_v1_body,
        lambda a: first_of_first(a["predictions"]),
    ),
    "litserve": Protocol("/predict", "/health", litserve_body, lambda a: a[OUTPUT]),
    "bentoml": Protocol("/predict", "/readyz", bentoml_body, first_of_first),
}


def write_bodies(protocol: Protocol, rows: Sequence[Sequence[float]], path: Path) -> Path:
    """One JSON body a line, as benchmarks/wrk_post.lua reads them."""
    lines = [
        json.dumps(protocol.encode(i, row), separators=(",", ":")) for i, row in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
