"""KServe's Python model server (the `kserve` package) serving the model on its v1 protocol.

    python -m benchmarks.peers.kserve_app --port 8080 --model models/creditcard/2/model.onnx

A `kserve.Model` whose predict runs onnxruntime on the request's instances, started by
`kserve.ModelServer` with one uvicorn worker, gRPC off and no log line per request. The Python
server has no adaptive batching of its own: KServe batches in a separate agent (a sidecar in
front of the model server), which is not part of this package.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from kserve import Model, ModelServer

from benchmarks.peers.runtime import load_session, parse_args, predict


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self._path = path

    def load(self) -> bool:
        self._session = load_session(self._path)
        self.ready = True
        return self.ready

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
        rows = np.asarray(payload["instances"], dtype=np.float32)
        return {"predictions": predict(self._session, rows).tolist()}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    model = OnnxModel(args.name, args.model)
    model.load()
    server = ModelServer(
        http_port=args.port, workers=1, enable_grpc=False, enable_latency_logging=False
    )
    # The server under comparison writes no line per request. KServe logs two per request on
    # kserve.trace (its timing middleware) and uvicorn's access line; both loggers are set up by
    # ModelServer() above, at INFO, and are raised past those lines here.
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
