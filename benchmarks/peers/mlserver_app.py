"""MLServer (Seldon) serving the model through a custom runtime, on Open Inference Protocol v2.

    python -m benchmarks.peers.mlserver_app --port 8080 --model models/creditcard/2/model.onnx

writes settings.json and <name>/model-settings.json into the working directory, then runs
`mlserver start` on it. Settings, as MLServer's docs give them for one process on CPU:
parallel_workers 0 (inference in the server process, no pool of inference processes), adaptive
batching with max_batch_size and max_batch_time, and debug off (which turns the access log off).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from benchmarks.peers.runtime import (
    BATCH_WINDOW_S,
    MAX_BATCH_SIZE,
    OUTPUT,
    batching,
    load_session,
    parse_args,
    predict,
)


class OnnxModel(MLModel):
    async def load(self) -> bool:
        self._session = load_session(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0])
        probabilities = predict(self._session, rows)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name=OUTPUT, payload=probabilities)],
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_settings(folder: Path, port: int, model: str, name: str) -> None:
    # MLServer always starts its gRPC and metrics servers too: they get free ports of their own.
    server = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "debug": False,
    }
    model_settings: dict[str, object] = {
        "name": name,
        "implementation": "benchmarks.peers.mlserver_app.OnnxModel",
        "parameters": {"uri": str(Path(model).resolve())},
    }
    if batching():
        model_settings |= {"max_batch_size": MAX_BATCH_SIZE, "max_batch_time": BATCH_WINDOW_S}
    (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(server, indent=2))
    (folder / name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    folder = Path.cwd() / "mlserver"
    write_settings(folder, args.port, args.model, args.name)
    mlserver = shutil.which("mlserver", path=os.path.dirname(sys.executable))
    if mlserver is None:
        sys.exit(f"no mlserver beside {sys.executable}")
    # exec: the process the benchmark started is the server it stops.
    os.execv(mlserver, [mlserver, "start", str(folder)])


if __name__ == "__main__":
    main()
