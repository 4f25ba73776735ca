"""BASELINE for benchmarks/bench.py, not part of the product: the HTTP floor.

A bare Starlette app on the same uvicorn stack as the server: POST /v1/score reads the body and
returns a constant, pre-encoded JSON. No parsing, no auth, no model, so its throughput and latency
are what uvicorn, httptools, uvloop and Starlette routing cost on this machine.

    uvicorn --factory benchmarks.baselines.floor:create_app --loop uvloop --http httptools
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = b'{"fraud_probability":0.5,"decision":"APPROVE","model_version":"floor"}'


async def score(request: Request) -> Response:
    await request.body()
    return Response(BODY, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b'{"status":"ready"}', media_type="application/json")


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/v1/score", score, methods=["POST"]),
            Route("/v1/health/ready", ready, methods=["GET"]),
        ]
    )
