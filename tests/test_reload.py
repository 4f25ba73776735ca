"""Zero-downtime reload on a real uvicorn: new versions swap in under load, broken ones are
refused, and no request fails meanwhile."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import tritonclient.http as triton

from tests.client_threads import ClientThreads
from tests.conftest import TEST_API_KEY, LiveServer, start_server, stop_server
from tests.model_edits import drop_last_feature, flip_a_byte, make_version, meta

ADMIN_KEY = "admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}
SCORE = {"X-API-Key": TEST_API_KEY}
LOAD_THREADS = 4
MAX_LOAD_SECONDS = 60.0
MAX_LOAD_REQUESTS = 100_000


class LoadLoop(ClientThreads):
    """Clients scoring without pause until stopped (bounded in time and count),
    recording every answer's status and model version, and every transport error."""

    def __init__(self, server: LiveServer, n_features: int) -> None:
        super().__init__(LOAD_THREADS, join_s=MAX_LOAD_SECONDS)
        self.server = server
        self.body = {"transaction_id": "reload", "features": [0.0] * n_features}
        self.answers: Counter[tuple[int, str | None]] = Counter()
        self.errors: list[str] = []
        self.started = time.monotonic()

    def send(self, client_number: int) -> None:
        with self.server.client(headers=SCORE) as client:
            while not self.stop.is_set() and time.monotonic() - self.started < MAX_LOAD_SECONDS:
                if self.total() >= MAX_LOAD_REQUESTS:
                    return
                try:
                    answer = client.post("/v1/score", json=self.body)
                    key = (answer.status_code, answer.json().get("model_version"))
                except (httpx.HTTPError, ValueError) as exc:
                    with self.lock:
                        self.errors.append(repr(exc))
                    continue
                with self.lock:
                    self.answers[key] += 1

    def total(self) -> int:
        with self.lock:
            return sum(self.answers.values()) + len(self.errors)

    def versions(self) -> set[str | None]:
        with self.lock:
            return {version for _, version in self.answers}

    def wait_for(self, version: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while version not in self.versions():
            assert time.monotonic() < deadline, f"version {version} never answered"
            time.sleep(0.05)

    def failures(self) -> dict[str, object]:
        bad = {f"{status} {version}": n for (status, version), n in self.answers.items()}
        return {k: v for k, v in bad.items() if not k.startswith("200 ")} | (
            {"transport": self.errors} if self.errors else {}
        )


def repository_with(tiny_model_dir: Path, root: Path) -> Path:
    """A fresh repository holding the tiny model as version 1; returns the model folder."""
    model_root = root / "tiny"
    shutil.copytree(tiny_model_dir, model_root / "1")
    return model_root


def serve_repository(
    tiny_model_dir: Path, tmp_path: Path, poll_interval_s: str
) -> Iterator[tuple[LiveServer, Path]]:
    model_root = repository_with(tiny_model_dir, tmp_path / "repo")
    env = {"FRAUD_ADMIN_KEYS": ADMIN_KEY, "FRAUD_POLL_INTERVAL_S": poll_interval_s}
    server = start_server(model_root / "1", tmp_path / "uvicorn.log", env)
    yield server, model_root
    stop_server(server)


@pytest.fixture
def polling_off(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    yield from serve_repository(tiny_model_dir, tmp_path, "0")


@pytest.fixture
def polling_fast(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    yield from serve_repository(tiny_model_dir, tmp_path, "0.2")


def test_a_new_version_loaded_on_request_swaps_in_under_load_with_no_failure(
    polling_off: tuple[LiveServer, Path], tiny_model_dir: Path
) -> None:
    server, model_root = polling_off
    n_features = len(meta(tiny_model_dir, "feature_names"))
    triton_client = triton.InferenceServerClient(server.base_url.removeprefix("http://"))
    with LoadLoop(server, n_features) as load:
        time.sleep(0.5)
        make_version(tiny_model_dir, model_root, "2")
        time.sleep(0.3)  # polling is off: version 1 must still be the only one
        assert load.versions() == {"1"}
        # The official Triton client's repository call is the trigger.
        triton_client.load_model("tiny", headers=dict(ADMIN))
        load.wait_for("2")
        time.sleep(0.3)
    assert load.failures() == {}
    assert load.versions() == {"1", "2"}
    assert load.answers[(200, "1")] > 0 and load.answers[(200, "2")] > 0
    with server.client(headers=SCORE) as client:
        body = load.body
        assert client.post("/v1/score", json=body).json()["model_version"] == "2"
        assert client.post("/v1/score?version=1", json=body).json()["model_version"] == "1"
        assert client.get("/v1/models").json()["models"][0]["loads"] == {"ok": 2, "refused": 0}
        assert client.get("/v2/models/tiny").json()["versions"] == ["2", "1"]
    index = triton_client.get_model_repository_index(headers=dict(ADMIN))
    assert [(m["version"], m["state"]) for m in index] == [("2", "READY"), ("1", "READY")]
    triton_client.close()


def test_broken_versions_are_refused_while_scoring_continues(
    polling_fast: tuple[LiveServer, Path], tiny_model_dir: Path
) -> None:
    server, model_root = polling_fast
    n_features = len(meta(tiny_model_dir, "feature_names"))
    with LoadLoop(server, n_features) as load, server.client(headers=ADMIN) as admin:
        time.sleep(0.3)
        make_version(tiny_model_dir, model_root, "2", flip_a_byte)
        make_version(tiny_model_dir, model_root, "3", drop_last_feature)
        deadline = time.monotonic() + 15
        while len(index := admin.post("/v2/repository/index").json()) < 3:
            assert time.monotonic() < deadline, index
            time.sleep(0.1)
        refused_while_loading = load.total()
        # An explicit load retries them and says why they are refused, with a v2 error.
        answer = admin.post("/v2/repository/models/tiny/load")
        time.sleep(0.3)
    assert load.failures() == {}
    assert load.versions() == {"1"}
    assert load.total() > refused_while_loading > 0
    assert {m["version"]: m["state"] for m in index} == {
        "3": "UNAVAILABLE",
        "2": "UNAVAILABLE",
        "1": "READY",
    }
    reasons = {m["version"]: m["reason"] for m in index}
    assert "sha256" in reasons["2"] and "features" in reasons["3"]
    assert answer.status_code == 400
    assert "version 3" in answer.json()["error"] and "version 2" in answer.json()["error"]
    assert "serving versions 1" in answer.json()["error"]
    with server.client(headers=SCORE) as client:
        listing = client.get("/v1/models").json()
        assert listing["models"][0]["loads"]["refused"] == 4  # by poll, then on load
        # A good version after the broken ones is picked up by the poll.
        make_version(tiny_model_dir, model_root, "4")
        deadline = time.monotonic() + 15
        while client.post("/v1/score", json=load.body).json()["model_version"] != "4":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    # Once a newer version serves, the old broken folders no longer fail an explicit load.
    with server.client(headers=ADMIN) as admin:
        answer = admin.post("/v2/repository/models/tiny/load")
    assert answer.status_code == 200
    assert answer.json()["versions"] == ["4", "1"] and answer.json()["refused"].keys() == {"2", "3"}
    log = server.log.read_text()
    assert "refused model tiny version 2" in log and "refused model tiny version 3" in log
    assert "Traceback" not in log
