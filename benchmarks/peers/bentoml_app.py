"""BentoML serving the model on its /predict route, with its adaptive batching.

    python -m benchmarks.peers.bentoml_app --port 8080 --model models/creditcard/2/model.onnx

runs `bentoml serve` on the FraudOnnx service below: one worker, the access log off, and the
API declared batchable (`@bentoml.api(batchable=True)`), so that BentoML's dispatcher groups
concurrent rows up to max_batch_size; it sizes its batch window itself from the latencies it
sees, within max_latency_ms, left at its default of 60 s (past it, BentoML answers 503).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import DType, Shape

from benchmarks.peers.runtime import MAX_BATCH_SIZE, batching, load_session, parse_args, predict

# `bentoml serve` imports this module in its worker process: the model path comes by environment.
MODEL_ENV = "PEER_MODEL"
FEATURES = 29
Rows = Annotated[np.ndarray, DType("float32"), Shape((-1, FEATURES))]


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class FraudOnnx:
    def __init__(self) -> None:
        self._session = load_session(os.environ[MODEL_ENV])

    @bentoml.api(batchable=batching(), max_batch_size=MAX_BATCH_SIZE)
    def predict(self, features: Rows) -> np.ndarray:
        return predict(self._session, features)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    os.environ[MODEL_ENV] = str(Path(args.model).resolve())
    # BentoML keeps its store under BENTOML_HOME (by default in the home directory).
    os.environ.setdefault("BENTOML_HOME", str(Path.cwd() / "bentoml-home"))
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    bentoml_cli = shutil.which("bentoml", path=os.path.dirname(sys.executable))
    if bentoml_cli is None:
        sys.exit(f"no bentoml beside {sys.executable}")
    command = [bentoml_cli, "serve", "benchmarks.peers.bentoml_app:FraudOnnx"]
    command += ["--host", "127.0.0.1", "--port", str(args.port)]
    # exec: the process the benchmark started is the server it stops.
    os.execv(bentoml_cli, command)


if __name__ == "__main__":
    main()
