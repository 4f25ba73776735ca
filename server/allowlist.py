"""The client allowlist (FRAUD_ALLOWED_CLIENTS): a request from an address outside it gets
403 `client_not_allowed` before anything of it is read, from the outermost layer of the app.

The client is the connection's peer (the ASGI scope's "client"). Only when that peer is one of
FRAUD_TRUSTED_PROXIES is X-Forwarded-For believed: its addresses, every X-Forwarded-For header
in order, are read from the right, past those that are trusted proxies themselves, and the
first that is not is the client (the left-most, if all are). That address was written by the
last proxy the server trusts; anything further left is whatever the client chose to send. No
other header (Forwarded, X-Real-IP) is read. A request with no client address (a Unix socket)
or an unreadable one is refused.

uvicorn has its own X-Forwarded-For handling (`--proxy-headers`, on by default for peers in
`--forwarded-allow-ips`, 127.0.0.1 and ::1 by default), which rewrites the scope's client
before the app sees it: run uvicorn with `--no-proxy-headers` so that this rule is the only one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from time import perf_counter

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import ClientNotAllowed, SettingsError
from server.middleware import CLOSE, REQUEST_ID, log_access, route_label, route_path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
FORWARDED_FOR = b"x-forwarded-for"
CACHE_SIZE = 4096  # addresses whose verdict is kept; the cache starts afresh when full


def parse_networks(entries: Iterable[str], setting: str) -> tuple[Network, ...]:
    """CIDRs (or single addresses), IPv4 or IPv6; SettingsError naming the setting."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip()))
        except ValueError as exc:
            raise SettingsError(f"{setting}: {entry.strip()!r} is not a CIDR: {exc}") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as a peer or an X-Forwarded-For entry gives it (also `1.2.3.4:port` and
    `[v6]:port`), IPv4-mapped IPv6 taken as IPv4; None if it is none."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def within(address: Address | None, networks: tuple[Network, ...]) -> bool:
    # An IPv4 address is in no IPv6 network and the reverse: `in` says False, not an error.
    return address is not None and any(address in network for network in networks)


class ClientAllowlist:
    """Which client a request is from, and whether it may be answered."""

    def __init__(self, allowed: tuple[Network, ...], trusted_proxies: tuple[Network, ...] = ()):
        self.allowed = allowed
        self.trusted_proxies = trusted_proxies
        self._verdicts: dict[str, bool] = {}  # address as given -> allowed
        self._proxies: dict[str, bool] = {}  # peer address -> is a trusted proxy
        self.refused = 0

    def allows(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        peer: str = client[0]
        if self.trusted_proxies and self._is_proxy(peer):
            return self._allows(self.forwarded_client(scope["headers"]) or peer)
        return self._allows(peer)

    def forwarded_client(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The right-most X-Forwarded-For address that is not a trusted proxy."""
        entries: list[str] = []
        for name, value in headers:
            if name == FORWARDED_FOR:
                entries += value.decode("latin-1").split(",")
        entries = [entry.strip() for entry in entries if entry.strip()]
        for entry in reversed(entries):
            if not within(parse_address(entry), self.trusted_proxies):
                return entry
        return entries[0] if entries else None

    def _is_proxy(self, peer: str) -> bool:
        known = self._proxies.get(peer)
        if known is None:
            known = within(parse_address(peer), self.trusted_proxies)
            remember(self._proxies, peer, known)
        return known

    def allows_address(self, address: str) -> bool:
        """For a protocol without proxy headers (gRPC): the peer's address alone."""
        return self._allows(address)

    def _allows(self, address: str) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = within(parse_address(address), self.allowed)
            remember(self._verdicts, address, verdict)
        return verdict

    def counters(self) -> dict[str, tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]]:
        return {
            "fraud_clients_refused": (
                "Requests answered 403 client_not_allowed: from outside FRAUD_ALLOWED_CLIENTS.",
                (),
                {(): self.refused},
            )
        }


def allowlist_of(allowed: Iterable[str], trusted_proxies: Iterable[str]) -> ClientAllowlist | None:
    """The allowlist of FRAUD_ALLOWED_CLIENTS and FRAUD_TRUSTED_PROXIES; None if unset."""
    networks = parse_networks(allowed, "FRAUD_ALLOWED_CLIENTS")
    if not networks:
        return None
    return ClientAllowlist(networks, parse_networks(trusted_proxies, "FRAUD_TRUSTED_PROXIES"))


def remember(cache: dict[str, bool], address: str, verdict: bool) -> None:
    if len(cache) >= CACHE_SIZE:  # many addresses (or made-up X-Forwarded-For ones)
        cache.clear()
    cache[address] = verdict


def refusal_body(v2: bool) -> bytes:
    error = ClientNotAllowed()
    return orjson.dumps({"error": error.message} if v2 else error.to_body())


V1_REFUSAL, V2_REFUSAL = refusal_body(False), refusal_body(True)


class AllowlistGate:
    """Plain ASGI, outside everything else: a refused request's body is never read, and its
    connection is closed after the 403, which carries a request id as every answer does."""

    def __init__(
        self,
        app: ASGIApp,
        allowlist: ClientAllowlist,
        request_id: Callable[[bytes | None], bytes],
        access_log: bool = False,
    ) -> None:
        self.app = app
        self.allowlist = allowlist
        self.request_id = request_id
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or self.allowlist.allows(scope):
            await self.app(scope, receive, send)
            return
        self.allowlist.refused += 1
        if scope["type"] != "http":  # a WebSocket: closed before it is accepted
            await send({"type": "websocket.close", "code": 1008})
            return
        started = perf_counter()
        given = next((value for name, value in scope["headers"] if name == REQUEST_ID), None)
        request_id = self.request_id(given)
        path = route_path(scope)
        body = V2_REFUSAL if path == "/v2" or path.startswith("/v2/") else V1_REFUSAL
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (REQUEST_ID, request_id),
            CLOSE,
        ]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if self.access_log:
            seconds = perf_counter() - started
            log_access(scope["method"], route_label(path), 403, seconds, request_id)
