"""What only the Redis account store has: the TTL, one round trip per batch, the script
re-registered when Redis lost it, and failures that give StateUnavailable (or SettingsError
at start) within the timeout. The behaviour both stores share is in test_account_stores.py."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from server.accounts import AccountStore, Update, Versioned
from server.errors import SettingsError, StateUnavailable
from server.redisstore import DEFAULT_PREFIX, RedisStore
from tests.conftest import flush_redis, free_port, start_redis, stop_redis
from tests.server.test_account_stores import increment, keys, run, states


class RoundTrips:
    """A loopback TCP proxy in front of Redis that counts round trips: a round trip starts each
    time a client connection speaks after the server answered it (or for the first time), so a
    pipeline counts once and each command sent after a reply counts again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.count = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        answered = [True]

        async def pump(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_client: bool
        ) -> None:
            while data := await reader.read(1 << 16):
                if from_client and answered[0]:
                    self.count += 1
                answered[0] = not from_client
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(
            pump(client_reader, server_writer, True),
            pump(server_reader, client_writer, False),
            return_exceptions=True,
        )


def redis_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_redis_reads_and_writes_a_batch_in_one_round_trip(redis_url: str) -> None:
    flush_redis(redis_url)
    written = states(64, seed=9, events=4)
    batch = keys(64)

    async def scenario() -> None:
        proxy = RoundTrips(redis_port(redis_url))
        store = RedisStore(await proxy.start())
        await store.start()
        try:
            written_before = 0
            for size in (1, 16, 64):
                before = proxy.count
                await store.get_many(batch[:size])
                assert proxy.count - before == 1
                before = proxy.count
                updates = [Update(k, 0, s) for k, s in zip(batch[:size], written, strict=False)]
                conflicts = await store.apply_many(updates)
                assert proxy.count - before == 1
                assert conflicts == list(range(written_before))  # those are at version 1
                written_before = size
        finally:
            await store.close()
            await proxy.close()

    asyncio.run(scenario())


def test_two_workers_sharing_redis_lose_no_update(redis_url: str) -> None:
    """Two stores, each with its own connections, as two worker processes would have."""
    flush_redis(redis_url)
    [start] = states(1, seed=16)
    start = start._replace(first_seen=0.0)
    [key] = keys(1)

    async def scenario() -> None:
        workers = [RedisStore(redis_url), RedisStore(redis_url)]
        for store in workers:
            await store.start()
        try:
            await workers[0].apply_many([Update(key, 0, start)])
            conflicts = await asyncio.gather(*(increment(store, key, 40) for store in workers))
            assert sum(conflicts) > 0
            [final] = await workers[1].get_many([key])
            assert final.state is not None
            assert (final.state.first_seen, final.version) == (80.0, 81)
        finally:
            for store in workers:
                await store.close()

    asyncio.run(scenario())


def test_redis_runs_the_script_again_after_losing_it(redis_url: str) -> None:
    flush_redis(redis_url)
    first, second = states(2, seed=10)

    async def scenario(store: AccountStore) -> None:
        [key] = keys(1)
        assert await store.apply_many([Update(key, 0, first)]) == []
        with redis.Redis.from_url(redis_url) as client:
            client.script_flush()  # as a restart or a failover would
        assert await store.apply_many([Update(key, 1, second), Update(key, 0, first)]) == [1]
        assert await store.get_many([key]) == [Versioned(second, 2)]

    run(RedisStore(redis_url), scenario)


def test_redis_keys_are_prefixed_and_expire_after_the_ttl(redis_url: str) -> None:
    flush_redis(redis_url)
    [state] = states(1, seed=11)
    [key] = keys(1)
    stored = (DEFAULT_PREFIX + key).encode()

    async def scenario(store: AccountStore) -> None:
        await store.apply_many([Update(key, 0, state)])
        with redis.Redis.from_url(redis_url) as client:
            assert 3590 <= client.ttl(stored) <= 3600
            assert client.ttl(b"other:" + key.encode()) == -2  # no such key
        await store.apply_many([Update(key, 1, state)])  # a write sets it again

    run(RedisStore(redis_url, ttl_s=3600), scenario)

    async def expiring(store: AccountStore) -> None:
        await store.apply_many([Update(key, 0, state)])
        assert await store.get_many([key]) == [Versioned(state, 1)]
        deadline = time.monotonic() + 5.0
        while await store.get_many([key]) != [Versioned(None, 0)]:
            assert time.monotonic() < deadline, "the key outlived its 1 s TTL by 4 s"
            await asyncio.sleep(0.1)

    run(RedisStore(redis_url, prefix="short:", ttl_s=1), expiring)


def test_an_unreadable_stored_value_is_state_unavailable(redis_url: str) -> None:
    flush_redis(redis_url)
    [state] = states(1, seed=12)
    [key] = keys(1)
    with redis.Redis.from_url(redis_url) as client:
        client.set((DEFAULT_PREFIX + key).encode(), b"not a state")

    async def scenario(store: AccountStore) -> None:
        with pytest.raises(StateUnavailable):
            await store.get_many([key])
        with pytest.raises(StateUnavailable):  # the script fails on it: nothing written
            await store.apply_many([Update(key, 0, state)])

    run(RedisStore(redis_url), scenario)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """A redis-server for this test alone, to stop and kill."""
    process, url = start_redis(tmp_path)
    yield process, url
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)
        stop_redis(process)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_stopped_redis_is_state_unavailable_within_the_timeout(
    own_redis: tuple[Any, str],
) -> None:
    process, url = own_redis
    [state] = states(1, seed=13)
    [key] = keys(1)
    timeout_s = 0.3

    async def fails_soon(call: Awaitable[object]) -> None:
        began = time.monotonic()
        with pytest.raises(StateUnavailable) as caught:
            await asyncio.wait_for(call, 5.0)  # a hang fails the test rather than stalling it
        assert time.monotonic() - began < 2 * timeout_s + 0.5
        assert "cannot be reached" in caught.value.message

    async def scenario(store: AccountStore) -> None:
        await store.apply_many([Update(key, 0, state)])
        os.kill(process.pid, signal.SIGSTOP)  # hangs: connections open, nothing answers
        try:
            await fails_soon(store.get_many([key]))
            await fails_soon(store.apply_many([Update(key, 1, state)]))
        finally:
            os.kill(process.pid, signal.SIGCONT)
        assert await store.get_many([key]) == [Versioned(state, 1)]  # and it recovers
        stop_redis(process)  # gone: connections refused
        await fails_soon(store.get_many([key]))
        await fails_soon(store.apply_many([Update(key, 1, state)]))

    # Its own handler: uvicorn's logging config, if a test applied it, stops propagation.
    logger, records = logging.getLogger("uvicorn.error.fraud"), Records()
    logger.addHandler(records)
    try:
        run(RedisStore(url, timeout_s=timeout_s), scenario)
    finally:
        logger.removeHandler(records)
    errors = [r for r in records.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2  # once per outage, not once per call
    assert all(r.exc_info is None for r in errors)


def test_start_against_a_closed_port_is_a_settings_error() -> None:
    port = free_port()  # nothing listens there
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0", timeout_s=0.5)
    began = time.monotonic()
    with pytest.raises(SettingsError, match=f"cannot reach .*127.0.0.1:{port}") as caught:
        asyncio.run(store.start())
    assert time.monotonic() - began < 2.0
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://127.0.0.1:6379"}, "not valid"),
        ({"ttl_s": 0}, "TTL"),
        ({"timeout_s": 0}, "timeout"),
    ],
)
def test_bad_redis_settings_are_settings_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        RedisStore(**({"url": "redis://127.0.0.1:1/0"} | kwargs))
