"""Per-key token buckets: the limiter on a fake clock, then the app's 429s on v1 and v2."""

from __future__ import annotations

import math
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.errors import RateLimited
from server.ratelimit import RateLimiter
from server.settings import Settings
from tests.server.fakes import FakeScorer

A, B = "rate-key-aaaaaaaa", "rate-key-bbbbbbbb"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: RateLimiter, key: str) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        limiter.take(key)
    return caught.value


def test_a_burst_passes_at_once_then_429_with_retry_after() -> None:
    limiter = RateLimiter(rate=2.0, burst=3, clock=FakeClock())
    for _ in range(3):
        limiter.take("k")
    error = refused(limiter, "k")
    assert error.status_code == 429 and error.code == "rate_limited"
    assert int(error.headers["Retry-After"]) >= 1
    assert error.to_body()["error"]["code"] == "rate_limited"  # type: ignore[index]


def test_tokens_refill_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=0.25, burst=1, clock=clock)
    limiter.take("k")
    assert refused(limiter, "k").headers == {"Retry-After": "4"}  # a token takes 4 s
    clock.now += 3.0
    assert refused(limiter, "k").headers == {"Retry-After": "1"}  # 0.75 of a token so far
    clock.now += 1.0
    limiter.take("k")
    assert refused(limiter, "k").headers == {"Retry-After": "4"}


def test_two_tokens_a_second_admit_two_requests_a_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=1, clock=clock)
    admitted = 0
    for _ in range(40):  # ten seconds in quarter-second steps, two tries each
        for _ in range(2):
            try:
                limiter.take("k")
                admitted += 1
            except RateLimited:
                pass
        clock.now += 0.25
    assert admitted == 20  # one at once, then one each half second: at 0, 0.5, ... 9.5 s


def test_a_long_pause_refills_no_more_than_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    limiter.take("k")
    clock.now += 3600.0
    limiter.take("k")
    limiter.take("k")
    refused(limiter, "k")


def test_a_refused_request_does_not_spend_a_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=0.5, burst=1, clock=clock)
    limiter.take("k")
    for _ in range(5):
        clock.now += 0.25
        refused(limiter, "k")
    clock.now += 0.75  # 2 s since the token was spent: one whole token again
    limiter.take("k")


def test_buckets_are_per_key() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, clock=FakeClock())
    limiter.take("a")
    limiter.take("a")
    refused(limiter, "a")
    limiter.take("b")
    limiter.take("b")
    refused(limiter, "b")
    refused(limiter, "a")


def test_a_slow_rate_asks_for_a_long_wait() -> None:
    limiter = RateLimiter(rate=0.001, burst=1, clock=FakeClock())
    limiter.take("k")
    assert refused(limiter, "k").headers == {"Retry-After": "1000"}


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1.0, 5), (1.0, 0), (1.0, -1)])
def test_invalid_construction_is_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)


def test_a_nan_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(math.nan, 1)


# The app: auth first, then the key's bucket, on v1 and v2 alike.


def make_client(**settings: Any) -> TestClient:
    config = Settings(api_keys=(A, B), rate_limit_rps=0.001, rate_limit_burst=2, **settings)
    return TestClient(create_app(config, scorer=FakeScorer()), raise_server_exceptions=False)


def score(client: TestClient, key: str | None, path: str = "/v1/score") -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    body = (
        {"transactions": [{"features": [0.1, 0, 0]}]}
        if path.endswith("/batch")
        else {"features": [0.1, 0, 0]}
    )
    return client.post(path, json=body, headers=headers)


def infer(client: TestClient, key: str) -> httpx.Response:
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [[0.1, 0, 0]]}
    return client.post(
        "/v2/models/fake/infer", json={"inputs": [tensor]}, headers={"X-API-Key": key}
    )


def test_the_third_request_of_a_key_is_429_and_other_keys_go_on() -> None:
    with make_client() as client:
        first, second, third = (score(client, A) for _ in range(3))
        other = score(client, B)
    assert (first.status_code, second.status_code, other.status_code) == (200, 200, 200)
    assert third.status_code == 429
    assert third.headers["content-type"] == "application/json"
    assert third.json() == {
        "error": {"code": "rate_limited", "message": third.json()["error"]["message"]}
    }
    assert "rate limit" in third.json()["error"]["message"]
    assert 1 <= int(third.headers["retry-after"]) <= 1000


def test_v1_routes_and_v2_share_a_key_bucket() -> None:
    with make_client() as client:
        assert score(client, A, "/v1/score/batch").status_code == 200
        assert infer(client, A).status_code == 200
        limited_v2 = infer(client, A)
        limited_batch = score(client, A, "/v1/score/batch")
        assert infer(client, B).status_code == 200
    assert limited_v2.status_code == 429
    assert (
        isinstance(limited_v2.json()["error"], str) and "rate limit" in limited_v2.json()["error"]
    )
    assert int(limited_v2.headers["retry-after"]) >= 1
    assert limited_batch.status_code == 429
    assert limited_batch.json()["error"]["code"] == "rate_limited"


def test_auth_comes_before_the_rate_limit() -> None:
    with make_client() as client:
        for _ in range(3):
            score(client, A)
        missing = score(client, None)
        wrong = score(client, "not-a-key-at-all")
        v2_missing = client.post("/v2/models/fake/infer", json={})
        # Refused strangers spend no one's tokens: B still has its whole burst.
        b_statuses = [score(client, B).status_code for _ in range(3)]
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert wrong.status_code == 403
    assert v2_missing.status_code == 401
    assert b_statuses == [200, 200, 429]


def test_without_a_rate_every_request_passes() -> None:
    config = Settings(api_keys=(A,))
    with TestClient(create_app(config, scorer=FakeScorer())) as client:
        assert all(score(client, A).status_code == 200 for _ in range(20))


def test_burst_zero_means_one_seconds_worth_and_at_least_one() -> None:
    config = Settings(api_keys=(A,), rate_limit_rps=0.001)  # burst 0: max(1, ceil(0.001))
    with TestClient(create_app(config, scorer=FakeScorer())) as client:
        statuses = [score(client, A).status_code for _ in range(2)]
    assert statuses == [200, 429]


def test_without_auth_every_client_shares_one_bucket() -> None:
    config = Settings(insecure_disable_auth=True, rate_limit_rps=0.001, rate_limit_burst=2)
    with TestClient(create_app(config, scorer=FakeScorer())) as client:
        # Invented keys are not identities when auth is off: they must not buy new buckets.
        statuses = [score(client, f"made-up-{i}").status_code for i in range(4)]
    assert statuses == [200, 200, 429, 429]
