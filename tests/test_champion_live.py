"""Champion and challenger on a real uvicorn under load: a shadow, then a canary at 10 % and
50 %, then promotion, then rollback, with several clients sending all along and not one
request failing; the canary's share over 10,000 transactions; a transaction id always meeting
the same version; and a challenger that decides differently rolled back by the guard, with
the alert sent."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.client_threads import ClientThreads
from tests.conftest import ROOT, TEST_API_KEY, LiveServer, start_server, stop_server
from tests.model_edits import edit_metadata, make_version

SHIPPED = ROOT / "models" / "creditcard" / "4"
MODEL = "creditcard"
ADMIN = "champion-admin-key-0123456789"
CLIENTS = 4


def rows() -> list[list[float]]:
    samples = json.loads((SHIPPED / "samples.json").read_text())["rows"]
    return [s["features"] for s in samples]


def decides_everything_review(folder: Path) -> None:
    """The same scores, other thresholds: every answer REVIEW, where the champion approves
    nearly all."""
    edit_metadata(folder, {"thresholds": json.dumps({"review": 0.0, "decline": 1.0})})


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "repo" / MODEL
    root.mkdir(parents=True)
    for version in ("3", "4"):
        make_version(SHIPPED, root, version)
    make_version(SHIPPED, root, "5", decides_everything_review)
    return root


def serve(repository: Path, log: Path, extra: dict[str, str] | None = None) -> LiveServer:
    env = {
        "FRAUD_ADMIN_KEYS": ADMIN,
        "FRAUD_POLL_INTERVAL_S": "0",
        "FRAUD_REQUEST_DEADLINE_MS": "5000",
    }
    return start_server(repository / "3", log, env | (extra or {}))


def admin(server: LiveServer, method: str, path: str, body: Any = None) -> dict[str, Any]:
    with server.client(headers={"X-API-Key": ADMIN}) as http:
        answer = http.request(method, f"/v1/models/{MODEL}{path}", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


class Load(ClientThreads):
    """CLIENTS threads scoring distinct transactions until stopped; every answer kept."""

    def __init__(self, server: LiveServer) -> None:
        super().__init__(CLIENTS)
        self.server = server
        self.answers: list[tuple[str, int, str | None]] = []  # (id, status, version)

    def send(self, client: int) -> None:
        samples = rows()
        with self.server.client(headers={"X-API-Key": TEST_API_KEY}) as http:
            i = 0
            while not self.stop.is_set() and i < 200_000:
                tid = f"load-{client}-{i}"
                body = {"transaction_id": tid, "features": samples[i % len(samples)]}
                try:
                    answer = http.post("/v1/score", json=body)
                    version = answer.json().get("model_version")
                    record = (tid, answer.status_code, version)
                except httpx.HTTPError as error:
                    record = (tid, 0, repr(error))
                with self.lock:
                    self.answers.append(record)
                i += 1

    def count(self) -> int:
        with self.lock:
            return len(self.answers)

    def wait_for(self, more: int, timeout_s: float = 120.0) -> list[tuple[str, int, str | None]]:
        """The next `more` answers."""
        start = self.count()
        deadline = time.monotonic() + timeout_s
        while self.count() < start + more:
            assert time.monotonic() < deadline, "the load stalled"
            time.sleep(0.05)
        with self.lock:
            return self.answers[start : start + more]


def score_once(http: httpx.Client, tid: str) -> str:
    answer = http.post("/v1/score", json={"transaction_id": tid, "features": rows()[0]})
    assert answer.status_code == 200, answer.text
    return answer.json()["model_version"]


def test_shadow_canary_promote_rollback_under_load(repository: Path, tmp_path: Path) -> None:
    server = serve(repository, tmp_path / "uvicorn.log")
    try:
        with server.client(headers={"X-API-Key": ADMIN}) as http:
            none = http.get(f"/v1/models/{MODEL}/policy")
        assert none.status_code == 404
        assert none.json()["error"]["message"] == (
            "model 'creditcard' has no policy: its newest version (5) answers"
        )
        admin(server, "PUT", "/policy", {"champion": "3"})
        with Load(server) as load:
            load.wait_for(500)
            # Shadow: version 4 scored after every answer of version 3.
            admin(server, "PUT", "/policy", {"champion": "3", "shadow": "4"})
            shadow = load.wait_for(3000)
            assert {v for _, s, v in shadow[len(shadow) // 10 :]} == {"3"}
            # Canary at 10 %, over 10,000 transactions.
            admin(server, "PUT", "/policy", {"champion": "3", "canary": "4", "share": 0.1})
            canary = load.wait_for(10_500)[500:]  # those in flight at the change left out
            share = Counter(v for _, _, v in canary)["4"] / len(canary)
            assert abs(share - 0.1) <= 0.02, share
            # 50 %, and each transaction id meets one version, every time.
            admin(server, "PUT", "/policy", {"champion": "3", "canary": "4", "share": 0.5})
            half = load.wait_for(4500)[500:]
            assert abs(Counter(v for _, _, v in half)["4"] / len(half) - 0.5) <= 0.02
            with server.client(headers={"X-API-Key": TEST_API_KEY}) as http:
                met = {tid: score_once(http, tid) for tid in (f"sticky-{i}" for i in range(200))}
                for _ in range(2):
                    assert {tid: score_once(http, tid) for tid in met} == met
            assert set(met.values()) == {"3", "4"}
            compared = admin(server, "GET", "/policy")
            assert compared["applied"] and compared["policy"]["share"] == 0.5
            # Promote: version 4 answers everything, 3 is remembered.
            promoted = admin(server, "POST", "/promote")
            assert promoted["policy"] == promoted["policy"] | {"champion": "4", "previous": "3"}
            after = load.wait_for(2500)[500:]
            assert {v for _, _, v in after} == {"4"}
            # Roll back: version 3 again.
            assert admin(server, "POST", "/rollback")["champion"] == "3"
            back = load.wait_for(2500)[500:]
            assert {v for _, _, v in back} == {"3"}
        failed = [a for a in load.answers if a[1] != 200]
        assert failed == [], failed[:5]
        assert len(load.answers) >= 23_500
        # The policy is in the model's folder, as the last change left it.
        assert json.loads((repository / "policy.json").read_text())["champion"] == "3"
    finally:
        stop_server(server)


def test_shadow_comparison_of_identical_models(repository: Path, tmp_path: Path) -> None:
    """A shadow that is the champion's twin agrees on every request: agreement 1, PSI 0,
    correlation 1, and /metrics says so."""
    (repository / "policy.json").write_text(json.dumps({"champion": "3", "shadow": "4"}))
    server = serve(repository, tmp_path / "uvicorn.log")
    try:
        with server.client(headers={"X-API-Key": TEST_API_KEY}) as http:
            for i, row in enumerate(rows() * 5):
                assert http.post("/v1/score", json={"transaction_id": f"s{i}", "features": row})
            batch = {"transactions": [{"features": row} for row in rows()]}
            assert http.post("/v1/score/batch", json=batch).status_code == 200
            expected = 6 * len(rows())
            deadline = time.monotonic() + 10
            while True:
                found = http.get(f"/v1/models/{MODEL}/comparison").json()
                [shadow] = found["challengers"]
                if shadow["compared"] >= expected or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            metrics = http.get("/metrics").text
        assert found["champion"] == "3" and found["applied"]
        assert shadow["version"] == "4" and shadow["role"] == "shadow"
        assert shadow["compared"] == expected and shadow["dropped"] == 0
        assert shadow["agreement"] == 1.0 and shadow["psi"] == pytest.approx(0.0, abs=1e-9)
        assert shadow["score_correlation"] == pytest.approx(1.0, abs=1e-9)
        confusion = shadow["decisions"]
        off_diagonal = sum(
            n for mine, row in confusion.items() for theirs, n in row.items() if theirs not in mine
        )
        assert off_diagonal == 0 and confusion["champion DECLINE"]["DECLINE"] >= 1
        assert found["latency"]["3"]["count"] == 5 * len(rows())
        line = f'fraud_comparison_agreement{{model="{MODEL}",role="shadow",version="4"}} 1.0'
        assert line in metrics
    finally:
        stop_server(server)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.daemon_threads = True
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{hook.server_address[1]}/hook", received
    hook.shutdown()
    hook.server_close()


def test_a_challenger_that_decides_otherwise_is_rolled_back(
    repository: Path, tmp_path: Path, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = receiver
    window = 300
    policy = {
        "champion": "3",
        "canary": "5",
        "share": 0.3,
        "guard": {"window": window, "min_compared": 100},
    }
    (repository / "policy.json").write_text(json.dumps(policy))
    server = serve(repository, tmp_path / "uvicorn.log", {"FRAUD_ALERT_URLS": url})
    try:
        with Load(server) as load:
            deadline = time.monotonic() + 60
            while json.loads((repository / "policy.json").read_text()).get("canary"):
                assert time.monotonic() < deadline, "the guard never tripped"
                time.sleep(0.05)
            load.wait_for(1000)
        failed = [a for a in load.answers if a[1] != 200]
        assert failed == [], failed[:5]
        answered = Counter(v for _, _, v in load.answers)
        # Rolled back within the window: the canary answered fewer requests than it holds
        # (those judged, those in flight at the rollback, and one guard interval's worth).
        assert 100 <= answered["5"] <= window + 200, answered
        assert {v for _, _, v in load.answers[-500:]} == {"3"}
        state = admin(server, "GET", "/policy")
        assert state["policy"] == {"champion": "3", "guard": state["policy"]["guard"]}
        with server.client(headers={"X-API-Key": TEST_API_KEY}) as http:
            found = http.get(f"/v1/models/{MODEL}/comparison").json()
        [event] = found["events"]
        assert event["event"] == "canary_rolled_back" and event["version"] == "5"
        assert "decision agreement" in event["detail"]
        assert event["comparison"]["window"]["agreement"] < 0.95
        deadline = time.monotonic() + 10
        while not any(r.get("event") == "canary_rolled_back" for r in received):
            assert time.monotonic() < deadline, "no alert"
            time.sleep(0.05)
        [alert] = [r for r in received if r.get("event") == "canary_rolled_back"]
        assert alert["model"] == MODEL and alert["model_version"] == "5"
        assert "decision agreement" in alert["detail"]
        log = (tmp_path / "uvicorn.log").read_text()
        assert "canary version 5 rolled back" in log
        assert found["challengers"] == [] and found["rollbacks"] == 1
    finally:
        stop_server(server)


def test_policy_changes_that_cannot_apply_are_refused(repository: Path, tmp_path: Path) -> None:
    server = serve(repository, tmp_path / "uvicorn.log")
    try:
        with server.client(headers={"X-API-Key": ADMIN}) as http:
            put = http.put(f"/v1/models/{MODEL}/policy", json={"champion": "9"})
            assert put.status_code == 409
            assert put.json()["error"]["message"] == (
                "model 'creditcard' does not serve version 9 (serving 5, 4, 3)"
            )
            bad = http.put(f"/v1/models/{MODEL}/policy", content=b"{", headers={"X-API-Key": ADMIN})
            assert bad.status_code == 400 and "not valid JSON" in bad.text
            nothing = http.post(f"/v1/models/{MODEL}/rollback")
            assert nothing.status_code == 409 and "nothing to roll back" in nothing.text
            assert http.post(f"/v1/models/{MODEL}/promote").status_code == 409
            wrong = http.post(f"/v1/models/{MODEL}/policy")
            assert wrong.status_code == 405
            assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "DELETE"}
            unknown = http.get("/v1/models/nothing-here/policy")
            assert unknown.status_code == 404 and "creditcard" in unknown.text
            # Set, then removed: the newest answers again.
            assert http.put(f"/v1/models/{MODEL}/policy", json={"champion": "4"}).status_code == 200
            assert (repository / "policy.json").exists()
            removed = http.delete(f"/v1/models/{MODEL}/policy")
            assert removed.status_code == 200 and removed.json()["policy"] is None
            assert not (repository / "policy.json").exists()
            assert http.get(f"/v1/models/{MODEL}/policy").status_code == 404
            assert http.delete(f"/v1/models/{MODEL}/policy").status_code == 404
        with server.client(headers={"X-API-Key": TEST_API_KEY}) as http:
            # A scoring key is no admin key; the comparison needs only a scoring key.
            assert http.put(f"/v1/models/{MODEL}/policy", json={"champion": "4"}).status_code == 403
            assert http.get(f"/v1/models/{MODEL}/comparison").status_code == 200
            assert score_once(http, "after-removal") == "5"
        with server.client() as http:
            assert http.get(f"/v1/models/{MODEL}/policy").status_code == 401
            assert http.get(f"/v1/models/{MODEL}/comparison").status_code == 401
        # A policy file written by hand is read within the second, and a bad one is refused
        # with a log line while the last good one stays.
        (repository / "policy.json").write_text(json.dumps({"champion": "3"}))
        with server.client(headers={"X-API-Key": TEST_API_KEY}) as http:
            deadline = time.monotonic() + 10
            while score_once(http, "by-hand") != "3":
                assert time.monotonic() < deadline, "the file was not read"
                time.sleep(0.1)
            (repository / "policy.json").write_text('{"champion": "3", "share": 2}')
            time.sleep(1.5)
            assert score_once(http, "still") == "3"
        assert "policy.json is refused: share must be a number from 0 to 1" in (
            (tmp_path / "uvicorn.log").read_text()
        )
    finally:
        stop_server(server)


def test_raw_events_meet_the_canary_by_account(tmp_path: Path) -> None:
    """On the event routes the share is sticky by account: every event of one account meets
    one version, and both versions answer some accounts."""
    shipped = ROOT / "models" / "mobile-money" / "4"
    root = tmp_path / "repo" / "mobile-money"
    root.mkdir(parents=True)
    for version in ("3", "4"):
        make_version(shipped, root, version)
    (root / "policy.json").write_text(json.dumps({"champion": "3", "canary": "4", "share": 0.5}))
    server = serve(root, tmp_path / "uvicorn.log")
    event = json.loads((ROOT / "examples" / "mobile-money-event.json").read_text())
    met: dict[str, set[str]] = {}
    try:
        with server.client(headers={"X-API-Key": TEST_API_KEY}) as http:
            for n in range(3):
                for account in range(40):
                    body = event | {
                        "event_id": f"evt-{account}-{n}",
                        "account_id": f"acct-{account}",
                        "timestamp": f"2026-01-24T14:0{n}:17Z",
                    }
                    answer = http.post("/v1/models/mobile-money/events/score", json=body)
                    assert answer.status_code == 200, answer.text
                    met.setdefault(f"acct-{account}", set()).add(answer.json()["model_version"])
    finally:
        stop_server(server)
    assert all(len(versions) == 1 for versions in met.values()), met
    assert set().union(*met.values()) == {"3", "4"}
