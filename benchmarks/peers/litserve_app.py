"""LitServe (Lightning) serving the model on its /predict route, with its dynamic batching.

    python -m benchmarks.peers.litserve_app --port 8080 --model models/creditcard/2/model.onnx

A `litserve.LitAPI` with max_batch_size and batch_timeout (batch() stacks the rows, unbatch()
splits the probabilities), on the CPU with one inference worker and one API server process,
requests handed between them over ZeroMQ (fast_queue, which LitServe's docs advise above 100
requests/s), at log level warning (no access log) and without the generated client file.
"""

from __future__ import annotations

from typing import Any

import litserve as ls
import numpy as np

from benchmarks.peers.runtime import (
    BATCH_WINDOW_S,
    MAX_BATCH_SIZE,
    batching,
    load_session,
    parse_args,
    predict,
)


class OnnxAPI(ls.LitAPI):
    def __init__(self, path: str) -> None:
        if batching():
            super().__init__(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_WINDOW_S)
        else:
            super().__init__()
        self._path = path

    def setup(self, device: str) -> None:
        self._session = load_session(self._path)

    # LitServe reads the annotations of decode_request's `request` and encode_response's result
    # as the endpoint's FastAPI types; with none it parses the body as JSON and sends the dict.
    def decode_request(self, request, **kwargs: Any) -> np.ndarray:
        return np.asarray(request["features"], dtype=np.float32)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        return predict(self._session, x.reshape(-1, x.shape[-1]))[:, 0]

    def unbatch(self, output: np.ndarray) -> list[float]:
        return output.tolist()

    def encode_response(self, output: Any, **kwargs: Any):
        # Without batching (a batch of one), predict's answer is still an array of one.
        value = output[0] if isinstance(output, np.ndarray) else output
        return {"fraud_probability": float(value)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    server = ls.LitServer(
        OnnxAPI(args.model), accelerator="cpu", devices=1, workers_per_device=1, fast_queue=True
    )
    server.run(
        host="127.0.0.1",
        port=args.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
