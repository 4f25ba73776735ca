"""The client allowlist: which address a request is from, and the 403 ahead of everything."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from server.allowlist import ClientAllowlist, allowlist_of, parse_address
from server.app import create_app
from server.settings import Settings
from tests.server.fakes import FakeScorer

KEY = "allowlist-key-0123456"
PROXY = "10.9.0.1"


def allowlist(allowed: str, trusted: str = "") -> ClientAllowlist:
    result = allowlist_of(allowed.split(","), [t for t in trusted.split(",") if t])
    assert result is not None
    return result


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {
        "type": "http",
        "client": (peer, 50000) if peer is not None else None,
        "headers": [(b"host", b"x"), *headers],
    }


def test_unset_means_no_allowlist() -> None:
    assert allowlist_of((), ()) is None


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("10.1.2.3", True),
        ("10.1.255.255", True),
        ("10.2.0.1", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::ffff:10.1.0.7", True),  # an IPv4 client on a dual-stack socket
        ("192.168.0.1", True),  # a single address
        ("192.168.0.2", False),
        ("testclient", False),  # no address at all
        (None, False),  # a Unix socket
    ],
)
def test_the_peer_is_the_client_without_trusted_proxies(peer: str | None, allowed: bool) -> None:
    rules = allowlist("10.1.0.0/16,2001:db8::/32,192.168.0.1")
    assert rules.allows(scope(peer)) is allowed
    assert rules.allows(scope(peer)) is allowed  # and again, from the cache


def test_x_forwarded_for_is_ignored_from_a_peer_that_is_no_trusted_proxy() -> None:
    rules = allowlist("10.1.0.0/16", trusted=PROXY)
    assert not rules.allows(scope("192.0.2.1", "10.1.2.3"))
    assert not allowlist("10.1.0.0/16").allows(scope(PROXY, "10.1.2.3"))


@pytest.mark.parametrize(
    ("forwarded", "allowed"),
    [
        (["10.1.2.3"], True),
        (["192.0.2.7"], False),
        # Whatever the client wrote on the left is ignored: the proxy appended the last one.
        (["10.1.2.3, 192.0.2.7"], False),
        (["192.0.2.7, 10.1.2.3"], True),
        # Trusted proxies on the right are skipped; several headers read as one list.
        (["10.1.2.3, 10.9.0.2"], True),
        (["192.0.2.7", "10.1.2.3, 10.9.0.2"], True),
        (["10.1.2.3", "192.0.2.7, 10.9.0.2"], False),
        (["10.1.2.3:4711"], True),
        (["[2001:db8::5]:443"], True),
        (["unknown"], False),
        (["not an address, 10.9.0.2"], False),
        ([], False),  # the proxy's own request: the proxy is the client, and not allowed
        ([" , "], False),
    ],
)
def test_behind_a_trusted_proxy_the_right_most_untrusted_address_is_the_client(
    forwarded: list[str], allowed: bool
) -> None:
    rules = allowlist("10.1.0.0/16,2001:db8::/32", trusted="10.9.0.0/24")
    assert rules.allows(scope(PROXY, *forwarded)) is allowed


def test_when_every_forwarded_address_is_a_proxy_the_left_most_is_the_client() -> None:
    rules = allowlist("10.9.0.3/32", trusted="10.9.0.0/24")
    assert rules.allows(scope(PROXY, "10.9.0.3, 10.9.0.2"))
    assert not rules.allows(scope(PROXY, "10.9.0.2, 10.9.0.3"))


def test_addresses_parse_as_peers_and_headers_give_them() -> None:
    assert str(parse_address(" 10.0.0.1:80 ")) == "10.0.0.1"
    assert str(parse_address("[::1]:8080")) == "::1"
    assert str(parse_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert parse_address("[::1") is None and parse_address("") is None


# In the app


def make_client(peer: str, **settings: Any) -> TestClient:
    config = Settings(api_keys=(KEY,), **settings)
    app = create_app(config, scorer=FakeScorer())
    return TestClient(app, raise_server_exceptions=False, client=(peer, 40000))


@pytest.mark.parametrize(
    ("method", "path", "v2"),
    [
        ("POST", "/v1/score", False),
        ("POST", "/v1/score/batch", False),
        ("POST", "/v2/models/fake/infer", True),
        ("GET", "/v1/health/ready", False),
        ("GET", "/v2/health/ready", True),
        ("GET", "/metrics", False),
        ("GET", "/no/such/route", False),
    ],
)
def test_a_refused_client_gets_403_on_every_route_before_auth(
    method: str, path: str, v2: bool
) -> None:
    scorer = FakeScorer()
    config = Settings(api_keys=(KEY,), allowed_clients=("10.0.0.0/8",))
    app = create_app(config, scorer=scorer)
    with TestClient(app, raise_server_exceptions=False, client=("192.0.2.1", 1)) as client:
        response = client.request(
            method, path, content=b"{not read", headers={"X-Request-ID": "r-1"}
        )
    assert response.status_code == 403
    error = response.json()["error"]
    assert isinstance(error, str) if v2 else error["code"] == "client_not_allowed"
    assert response.headers["x-request-id"] == "r-1"
    assert response.headers["connection"] == "close"
    assert scorer.calls == []


def test_an_allowed_client_is_served_and_refusals_are_counted() -> None:
    config = Settings(api_keys=(KEY,), allowed_clients=("10.0.0.0/8",))
    app = create_app(config, scorer=FakeScorer())
    with TestClient(app, client=("10.3.4.5", 1)) as allowed:
        stranger = TestClient(app, client=("192.0.2.1", 1))
        assert [stranger.get("/v1/health/live").status_code for _ in range(2)] == [403, 403]
        ok = allowed.post("/v1/score", json={"features": [0.1, 0, 0]}, headers={"X-API-Key": KEY})
        assert ok.status_code == 200
        families = text_string_to_metric_families(allowed.get("/metrics").text)
        counts = {s.name: s.value for f in families for s in f.samples}
    assert counts["fraud_clients_refused_total"] == 2


def test_the_trusted_proxy_header_reaches_the_app_only_from_the_proxy() -> None:
    settings: dict[str, Any] = {
        "allowed_clients": ("10.0.0.0/8",),
        "trusted_proxies": ("192.0.2.10/32",),
    }
    forwarded = {"X-Forwarded-For": "10.1.1.1"}
    with make_client("192.0.2.10", **settings) as client:
        assert client.get("/v1/health/live", headers=forwarded).status_code == 200
    with make_client("192.0.2.11", **settings) as client:
        assert client.get("/v1/health/live", headers=forwarded).status_code == 403
