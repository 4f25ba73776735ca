"""Deadlines and the per-worker caps on a real uvicorn: what the protocol class does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from benchmarks.serving import shipped_model_dir
from tests.conftest import ROOT, TEST_API_KEY, LiveServer, start_server, stop_server
from tests.test_faults import post, read_answer

BODY = orjson.dumps(orjson.loads((ROOT / "examples" / "transaction.json").read_bytes()))


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(shipped_model_dir(), tmp_path / "uvicorn.log", request.param)
    yield live
    stop_server(live)


def port_of(server: LiveServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def with_header(request: bytes, name: str, value: str) -> bytes:
    head, body = request.split(b"\r\n\r\n", 1)
    return head + f"\r\n{name}: {value}\r\n\r\n".encode() + body


async def late_body(port: int, request: bytes, delay_s: float) -> bytes:
    """The request with the last bytes of its body sent `delay_s` after the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request[:-5])
    await asyncio.sleep(delay_s)
    writer.write(request[-5:])
    answer = await read_answer(reader)
    await close(writer)
    return answer


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("server", [{"FRAUD_REQUEST_DEADLINE_MS": "1000"}], indirect=True)
def test_the_deadline_runs_from_when_the_head_arrived(server: LiveServer) -> None:
    port = port_of(server)
    request = post(port, BODY)

    async def scenario() -> list[bytes]:
        return [
            await late_body(port, request, 0.3),  # within the server's 1,000 ms
            await late_body(port, with_header(request, "X-Request-Deadline-Ms", "200"), 0.3),
            await late_body(port, with_header(request, "X-Request-Deadline-Ms", "2000"), 1.2),
        ]

    answers = asyncio.run(scenario())
    assert [status(a) for a in answers] == [200, 503, 503]
    for late in answers[1:]:
        assert b'"deadline_exceeded"' in late
    with server.client() as client:
        metrics = client.get("/metrics").text
    assert "fraud_deadline_exceeded_total 2.0" in metrics


async def open_and_score(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post(port, BODY))
    return reader, writer, await read_answer(reader)


@pytest.mark.parametrize("server", [{"FRAUD_MAX_CONNECTIONS": "2"}], indirect=True)
def test_a_connection_beyond_the_cap_gets_503_and_is_closed_the_others_are_served(
    server: LiveServer,
) -> None:
    port = port_of(server)

    async def scenario() -> None:
        first = await open_and_score(port)
        second = await open_and_score(port)
        assert status(first[2]) == status(second[2]) == 200
        reader, writer, answer = await open_and_score(port)
        assert status(answer) == 503 and b"connection: close" in answer.lower()
        assert b'"overloaded"' in answer and b"retry-after: 1" in answer.lower()
        assert await reader.read() == b""  # closed by the server
        await close(writer)
        # The two held connections are served as before.
        for reader, writer, _ in (first, second):
            writer.write(post(port, BODY))
            assert status(await read_answer(reader)) == 200
        await close(first[1])
        await asyncio.sleep(0.1)
        # A place is free again: a new connection is served.
        again = await open_and_score(port)
        assert status(again[2]) == 200
        for _, writer, _ in (second, again):
            await close(writer)

    asyncio.run(scenario())
    with server.client() as client:
        metrics = client.get("/metrics").text
    assert 'fraud_refused_at_admission_total{cap="connections"} 1.0' in metrics


# A long deadline: the request held in hand waits for its body on purpose.
IN_HAND = {"FRAUD_MAX_REQUESTS_IN_HAND": "1", "FRAUD_REQUEST_DEADLINE_MS": "5000"}


@pytest.mark.parametrize("server", [IN_HAND], indirect=True)
def test_a_request_beyond_the_requests_in_hand_is_refused_before_the_app(
    server: LiveServer,
) -> None:
    port = port_of(server)
    request = post(port, BODY)

    async def scenario() -> None:
        # One request in hand: its head is in, its body is not all there yet.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request[:-5])
        await asyncio.sleep(0.1)
        # A key the server does not know: refused before the app, so it is no 403.
        refused = await exchange(port, post(port, BODY, key="not-" + TEST_API_KEY))
        assert status(refused) == 503 and b'"overloaded"' in refused
        writer.write(request[-5:])
        assert status(await read_answer(reader)) == 200
        await close(writer)
        # Nothing in hand now: served.
        assert status(await exchange(port, request)) == 200

    asyncio.run(scenario())
    with server.client() as client:
        metrics = client.get("/metrics").text
    assert 'fraud_refused_at_admission_total{cap="requests_in_hand"} 1.0' in metrics


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await read_answer(reader)
    await close(writer)
    return answer
