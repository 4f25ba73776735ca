"""One suite for both account stores, the in-process dict and a real redis-server, then what
only the memory store has (its snapshot). What only Redis has (TTL, round trips, failures) is
in test_redisstore.py."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from features.events import AccountState, Event, advance
from server.accounts import AccountStore, MemoryStore, Update, Versioned, account_key
from server.errors import SettingsError
from server.redisstore import RedisStore
from tests.conftest import flush_redis

Scenario = Callable[[AccountStore], Awaitable[None]]


def run(store: AccountStore, scenario: Scenario) -> None:
    async def body() -> None:
        await store.start()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(body())


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Callable[[], AccountStore]:
    if request.param == "memory":
        return MemoryStore
    url: str = request.getfixturevalue("redis_url")
    flush_redis(url)
    return lambda: RedisStore(url)


def states(count: int, seed: int, events: int = 12) -> list[AccountState]:
    """Real states: `events` random events folded with the shared feature definitions, so the
    floats have all their digits (sums of amounts, unit vectors) and every field is filled."""
    rng = random.Random(seed)
    result = []
    for n in range(count):
        state = None
        t = 1_770_000_000 + rng.uniform(0, 86_400)
        for i in range(events):
            t += rng.expovariate(1 / 900)
            event = Event(
                event_id=f"e{seed}-{n}-{i}",
                account_id=f"a{n}",
                timestamp=t,
                type=rng.choice(("transfer", "cash_out")),
                amount=rng.uniform(0.01, 5000),
                balance_before=rng.uniform(0, 10_000),
                payee_id=f"p{rng.randrange(8)}",
                device_id=f"d{rng.randrange(3)}",
                lat=rng.uniform(-90, 90),
                lon=rng.uniform(-180, 180),
                account_opened_at=t - 86_400 * 400 if i == 0 else None,
            )
            _, state, _ = advance(state, event)
        assert state is not None
        result.append(state)
    return result


def keys(count: int) -> list[str]:
    return [account_key("mobile-money", f"acct-{n}") for n in range(count)]


def test_keys_never_written_read_as_no_state_at_version_0(
    make_store: Callable[[], AccountStore],
) -> None:
    async def scenario(store: AccountStore) -> None:
        assert await store.get_many(keys(3)) == [Versioned(None, 0)] * 3
        assert await store.get_many([]) == []
        assert await store.apply_many([]) == []

    run(make_store(), scenario)


def test_each_write_reads_back_one_version_up(make_store: Callable[[], AccountStore]) -> None:
    first, second, third = states(3, seed=1)

    async def scenario(store: AccountStore) -> None:
        [key] = keys(1)
        for version, state in enumerate((first, second, third)):
            assert await store.apply_many([Update(key, version, state)]) == []
            assert await store.get_many([key]) == [Versioned(state, version + 1)]

    run(make_store(), scenario)


def test_the_second_of_two_writers_that_read_the_same_version_conflicts(
    make_store: Callable[[], AccountStore],
) -> None:
    start, mine, theirs = states(3, seed=2)

    async def scenario(store: AccountStore) -> None:
        [key] = keys(1)
        await store.apply_many([Update(key, 0, start)])
        [read_by_us] = await store.get_many([key])
        [read_by_them] = await store.get_many([key])
        assert await store.apply_many([Update(key, read_by_them.version, theirs)]) == []
        assert await store.apply_many([Update(key, read_by_us.version, mine)]) == [0]
        assert await store.get_many([key]) == [Versioned(theirs, 2)]

    run(make_store(), scenario)


def test_only_the_stale_updates_of_a_batch_conflict(make_store: Callable[[], AccountStore]) -> None:
    old = states(6, seed=3)
    new = states(6, seed=4)

    async def scenario(store: AccountStore) -> None:
        batch = keys(6)
        await store.apply_many([Update(k, 0, s) for k, s in zip(batch[:4], old, strict=False)])
        # Keys 0-3 are at version 1, 4-5 absent. Stale: 1 (read 0), 3 (read 2), 5 (read 1).
        read = [1, 0, 1, 2, 0, 1]
        updates = [Update(k, v, s) for k, v, s in zip(batch, read, new, strict=True)]
        assert await store.apply_many(updates) == [1, 3, 5]
        assert await store.get_many(batch) == [
            Versioned(new[0], 2),
            Versioned(old[1], 1),
            Versioned(new[2], 2),
            Versioned(old[3], 1),
            Versioned(new[4], 1),
            Versioned(None, 0),
        ]

    run(make_store(), scenario)


def test_a_key_twice_in_one_batch_is_written_once(make_store: Callable[[], AccountStore]) -> None:
    first, second = states(2, seed=5)

    async def scenario(store: AccountStore) -> None:
        [key] = keys(1)
        assert await store.apply_many([Update(key, 0, first), Update(key, 0, second)]) == [1]
        assert await store.get_many([key, key]) == [Versioned(first, 1)] * 2

    run(make_store(), scenario)


def test_states_round_trip_exactly(make_store: Callable[[], AccountStore]) -> None:
    written = states(8, seed=6, events=80)  # past every cap: 64 event ids, 64 payees...
    assert any(len(s.event_ids) == 64 for s in written)

    async def scenario(store: AccountStore) -> None:
        batch = keys(8)
        await store.apply_many([Update(k, 0, s) for k, s in zip(batch, written, strict=True)])
        read = [v.state for v in await store.get_many(batch)]
        assert read == written
        # Equal floats, and the same float objects' bits: repr is the shortest round trip.
        assert [repr(s) for s in read] == [repr(s) for s in written]

    run(make_store(), scenario)


def test_many_keys_in_one_call(make_store: Callable[[], AccountStore]) -> None:
    written = states(40, seed=7, events=3)
    batch = keys(2000)
    chosen = [written[n % len(written)] for n in range(len(batch))]

    async def scenario(store: AccountStore) -> None:
        assert (
            await store.apply_many([Update(k, 0, s) for k, s in zip(batch, chosen, strict=True)])
            == []
        )
        assert await store.get_many(batch) == [Versioned(s, 1) for s in chosen]

    run(make_store(), scenario)


def test_keys_with_odd_characters_are_kept_apart(make_store: Callable[[], AccountStore]) -> None:
    odd = [
        account_key("m", "a:b:c"),
        account_key("m", "a"),
        account_key("m:a", ""),  # not the same key as the one above
        account_key("m", "\x00"),
        account_key("m", "ünïcödé ✓ 账户 🙂"),
        account_key("m", "\ud800"),  # a lone surrogate is still a str
        "",
        "\r\n*1\r\n$4\r\nPING\r\n",
    ]
    assert len(set(odd)) == len(odd)
    written = states(len(odd), seed=8, events=2)

    async def scenario(store: AccountStore) -> None:
        assert (
            await store.apply_many([Update(k, 0, s) for k, s in zip(odd, written, strict=True)])
            == []
        )
        assert await store.get_many(odd) == [Versioned(s, 1) for s in written]
        assert (
            await store.get_many([account_key("m", "a:b"), account_key("m", "")])
            == [Versioned(None, 0)] * 2
        )

    run(make_store(), scenario)


def increment(store: AccountStore, key: str, times: int) -> Awaitable[int]:
    """Count `times` on the key's first_seen by read, change, compare-and-set, again on a
    conflict, as the event pipeline does; returns the conflicts met."""

    async def body() -> int:
        conflicts = 0
        done = 0
        while done < times:
            [read] = await store.get_many([key])
            assert read.state is not None
            await asyncio.sleep(0)  # let the other writer in between the read and the write
            counted = read.state._replace(first_seen=read.state.first_seen + 1)
            if await store.apply_many([Update(key, read.version, counted)]):
                conflicts += 1
            else:
                done += 1
        return conflicts

    return body()


def test_concurrent_writers_lose_no_update(make_store: Callable[[], AccountStore]) -> None:
    [start] = states(1, seed=15)
    start = start._replace(first_seen=0.0)

    async def scenario(store: AccountStore) -> None:
        [key] = keys(1)
        await store.apply_many([Update(key, 0, start)])
        conflicts = await asyncio.gather(*(increment(store, key, 40) for _ in range(2)))
        assert sum(conflicts) > 0  # they did collide
        [final] = await store.get_many([key])
        assert final.state is not None
        assert (final.state.first_seen, final.version) == (80.0, 81)

    run(make_store(), scenario)


# --- memory only ------------------------------------------------------------------------------


def test_the_memory_snapshot_is_replaced_whole_and_read_back(tmp_path: Path) -> None:
    snapshot = tmp_path / "state" / "accounts.json"
    written = states(5, seed=14)
    batch = keys(5)

    async def write(store: AccountStore) -> None:
        await store.apply_many([Update(k, 0, s) for k, s in zip(batch, written, strict=True)])

    run(MemoryStore(snapshot, snapshot_interval_s=0), write)
    first_inode = snapshot.stat().st_ino

    async def read_and_write(store: AccountStore) -> None:
        assert await store.get_many(batch) == [Versioned(s, 1) for s in written]
        await store.apply_many([Update(batch[0], 1, written[1])])

    run(MemoryStore(snapshot, snapshot_interval_s=0), read_and_write)
    # A new file renamed over the old, so a crash mid-write leaves the old one whole.
    assert snapshot.stat().st_ino != first_inode
    assert not snapshot.with_name(snapshot.name + ".partial").exists()

    async def read(store: AccountStore) -> None:
        assert await store.get_many(batch[:2]) == [
            Versioned(written[1], 2),
            Versioned(written[1], 1),
        ]

    run(MemoryStore(snapshot, snapshot_interval_s=0), read)


def test_a_corrupt_memory_snapshot_is_a_settings_error_naming_it(tmp_path: Path) -> None:
    snapshot = tmp_path / "accounts.json"
    for content in (b'{"format": 1, "accounts": [["k", 1]]', b'{"format": 99, "accounts": []}'):
        snapshot.write_bytes(content)
        with pytest.raises(SettingsError, match=re.escape(str(snapshot))):
            asyncio.run(MemoryStore(snapshot).start())


def test_a_clean_stop_during_an_interval_snapshot_keeps_the_last_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interval write is still in its thread when the server stops: the final snapshot
    must come after it, not be overwritten by its older copy."""
    import time

    import server.accounts as accounts

    path = tmp_path / "state.json"
    _, state, _ = advance(None, Event("e", "a", 1e9, "transfer", 1.0, 1.0, "p", "d", 0.0, 0.0))
    real = accounts.write_snapshot_file
    calls: list[int] = []

    def slow_first(target: Path, items: list[tuple[str, tuple[int, AccountState]]]) -> None:
        calls.append(len(items))
        if len(calls) == 1:
            time.sleep(0.5)
        real(target, items)

    monkeypatch.setattr(accounts, "write_snapshot_file", slow_first)

    async def run() -> None:
        store = MemoryStore(path, snapshot_interval_s=0.2)
        await store.start()
        await store.apply_many([Update(f"k{i}", 0, state) for i in range(100)])
        await asyncio.sleep(0.3)  # the interval write is now in its thread
        await store.apply_many([Update("late", 0, state)])
        await store.close()

    asyncio.run(run())
    assert calls == [100, 101]
    reloaded = MemoryStore(path)
    reloaded.load_snapshot()
    assert len(reloaded) == 101
