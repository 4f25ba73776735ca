"""A closed-loop gRPC load of ModelInfer, one row per call, for `make bench`'s server_grpc.

The gRPC counterpart of wrk's run: `concurrency` calls in flight on one channel (HTTP/2
streams on one connection, as a Java or Go client's stub uses it), each sending the next
request as soon as its answer is in, for `duration` seconds. The requests are serialized
once beforehand and the answers are not parsed, so that the client spends its time on
gRPC itself; an answer that is not OK is counted as an error, with its code. Runs in a
process of its own, on uvloop, and prints one JSON object in the shape of
benchmarks.wrk.parse_wrk's result.

    .venv/bin/python -m benchmarks.grpcload --port 8001 --model creditcard \
        --bodies rows.npy --key KEY --concurrency 32 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvloop

from server.grpcapi.messages import (
    SERVICE,
    ModelInferRequest,
    ModelMetadataResponse,
    message,
)

ModelMetadataRequest = message("ModelMetadataRequest")

METHOD = f"/{SERVICE}/ModelInfer"
# A call with no answer after this long is counted as a timeout, as wrk's --timeout.
TIMEOUT_S = 5.0


def requests_of(rows: np.ndarray, model: str, input_name: str) -> list[bytes]:
    """One serialized ModelInferRequest per row, its values as raw little-endian bytes (the
    encoding Triton's client sends)."""
    out = []
    for i, row in enumerate(rows.astype("<f4")):
        request = ModelInferRequest(model_name=model, id=f"bench-{i}")
        request.inputs.add(name=input_name, datatype="FP32", shape=[1, len(row)])
        request.raw_input_contents.append(row.tobytes())
        out.append(request.SerializeToString())
    return out


async def run(
    port: int, rows: np.ndarray, model: str, key: str, concurrency: int, duration: float
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        # The input's name from the model's metadata, as a client of the protocol finds it.
        ask = channel.unary_unary(
            f"/{SERVICE}/ModelMetadata",
            request_serializer=ModelMetadataRequest.SerializeToString,
            response_deserializer=ModelMetadataResponse.FromString,
        )
        found = await ask(ModelMetadataRequest(name=model), timeout=TIMEOUT_S)
        bodies = requests_of(rows, model, found.inputs[0].name)
        call = channel.unary_unary(METHOD)  # bytes in, bytes out: no (de)serializing
        metadata = (("x-api-key", key),)
        await call(bodies[0], metadata=metadata, timeout=TIMEOUT_S)  # connected and warm
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        end = time.perf_counter() + duration

        async def worker(offset: int) -> None:
            i = offset
            while (sent := time.perf_counter()) < end:
                try:
                    await call(bodies[i % len(bodies)], metadata=metadata, timeout=TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1
                else:
                    latencies.append(time.perf_counter() - sent)
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    answered = np.array(latencies) * 1000
    result: dict[str, Any] = {"requests": len(latencies), "rps": len(latencies) / elapsed}
    if len(answered):
        for q in (50, 75, 90, 99):
            result[f"p{q}_ms"] = round(float(np.percentile(answered, q)), 4)
    timeouts = codes.pop("DEADLINE_EXCEEDED", 0)
    result["socket_errors"] = {"connect": 0, "read": 0, "write": 0, "timeout": timeouts}
    result["non_ok"] = dict(codes)
    result["non_2xx"] = sum(codes.values())
    result["errors"] = result["non_2xx"] + timeouts
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="rows, as a .npy file")
    parser.add_argument("--key", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    rows = np.load(args.bodies)
    result = uvloop.run(run(args.port, rows, args.model, args.key, args.concurrency, args.duration))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
