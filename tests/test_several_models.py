"""Both shipped models in one real uvicorn: the named v1 routes and v2 answer each with its own
scores, /v1/score answers the default, and a reload of one model under load leaves the other
untouched, with no failed request."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from tests.client_threads import ClientThreads
from tests.conftest import ROOT, TEST_API_KEY, LiveServer, start_server, stop_server
from tests.model_edits import make_version

SHIPPED = {
    "creditcard": ROOT / "models" / "creditcard" / "4",
    "mobile-money": ROOT / "models" / "mobile-money" / "4",
}
ADMIN_KEY = "admin-key-several-0123"
SCORE = {"X-API-Key": TEST_API_KEY}
LOAD_THREADS = 4
MAX_LOAD_SECONDS = 60.0
MAX_LOAD_REQUESTS = 100_000


def samples(name: str) -> tuple[list[str], np.ndarray]:
    found = json.loads((SHIPPED[name] / "samples.json").read_text())
    rows = np.asarray([r["features"] for r in found["rows"]], dtype=np.float32)
    return found["feature_names"], rows


def direct(name: str, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(SHIPPED[name] / "model.onnx"))
    return np.asarray(session.run(None, {"features": rows})[0]).ravel()


@pytest.fixture
def both(tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    repository = tmp_path / "repo"
    for name, folder in SHIPPED.items():
        shutil.copytree(folder, repository / name / folder.name)
    env = {
        "FRAUD_MODEL_NAME": "",  # every model in the repository
        "FRAUD_DEFAULT_MODEL": "creditcard",
        "FRAUD_ADMIN_KEYS": ADMIN_KEY,
        "FRAUD_POLL_INTERVAL_S": "0",
    }
    server = start_server(repository / "creditcard" / "4", tmp_path / "uvicorn.log", env)
    yield server, repository
    stop_server(server)


def test_each_model_answers_its_own_scores_on_v1_and_v2(both: tuple[LiveServer, Path]) -> None:
    server, _ = both
    triton_client = triton.InferenceServerClient(server.base_url.removeprefix("http://"))
    with server.client(headers=SCORE) as client:
        listing = client.get("/v1/models").json()
        assert listing["default_model"] == "creditcard"
        assert {m["name"]: m["default_version"] for m in listing["models"]} == {
            "creditcard": "4",
            "mobile-money": "4",
        }
        for name in SHIPPED:
            names, rows = samples(name)
            expected = direct(name, rows)
            assert client.get(f"/v1/models/{name}").json()["features"] == names
            items = [{"features": [float(v) for v in row]} for row in rows]
            batch = client.post(f"/v1/models/{name}/score/batch", json={"transactions": items})
            served = [r["fraud_probability"] for r in batch.json()["results"]]
            assert np.max(np.abs(np.asarray(served) - expected)) <= 1e-6
            one = client.post(f"/v1/models/{name}/score", json=items[0]).json()
            assert abs(one["fraud_probability"] - float(expected[0])) <= 1e-6
            infer_input = triton.InferInput("features", list(rows.shape), "FP32")
            infer_input.set_data_from_numpy(rows, binary_data=True)
            result = triton_client.infer(name, [infer_input], headers=dict(SCORE))
            assert np.max(np.abs(result.as_numpy("fraud_probability").ravel() - expected)) <= 1e-6
        # The unnamed route is the default model's.
        _, rows = samples("creditcard")
        body = {"features": [float(v) for v in rows[0]]}
        default = client.post("/v1/score", json=body).json()
        named = client.post("/v1/models/creditcard/score", json=body).json()
        assert default == named
        unknown = client.post("/v1/models/cards/score", json=body)
        assert unknown.status_code == 404
        assert "creditcard, mobile-money" in unknown.json()["error"]["message"]


class TwoModelLoad(ClientThreads):
    """Clients scoring both models without pause (bounded in time and count), recording
    every answer's (model route, status, version) and every transport error."""

    def __init__(self, server: LiveServer) -> None:
        super().__init__(LOAD_THREADS, join_s=MAX_LOAD_SECONDS)
        self.server = server
        self.bodies = {
            name: {"features": [float(v) for v in samples(name)[1][0]]} for name in SHIPPED
        }
        self.answers: Counter[tuple[str, int, str | None]] = Counter()
        self.errors: list[str] = []
        self.started = time.monotonic()

    def send(self, index: int) -> None:
        # Half the clients on each model; one of each on the unnamed default route.
        name = list(SHIPPED)[index % 2]
        path = "/v1/score" if index < 2 and name == "creditcard" else f"/v1/models/{name}/score"
        with self.server.client(headers=SCORE) as client:
            while not self.stop.is_set() and time.monotonic() - self.started < MAX_LOAD_SECONDS:
                if self.total() >= MAX_LOAD_REQUESTS:
                    return
                try:
                    answer = client.post(path, json=self.bodies[name])
                    key = (name, answer.status_code, answer.json().get("model_version"))
                except (httpx.HTTPError, ValueError) as exc:
                    with self.lock:
                        self.errors.append(repr(exc))
                    continue
                with self.lock:
                    self.answers[key] += 1

    def total(self) -> int:
        with self.lock:
            return sum(self.answers.values()) + len(self.errors)

    def seen(self, name: str, version: str) -> bool:
        with self.lock:
            return self.answers[(name, 200, version)] > 0


def test_a_reload_of_one_model_under_load_leaves_the_other_alone(
    both: tuple[LiveServer, Path],
) -> None:
    server, repository = both
    triton_client = triton.InferenceServerClient(server.base_url.removeprefix("http://"))
    with TwoModelLoad(server) as load:
        time.sleep(0.5)
        make_version(SHIPPED["mobile-money"], repository / "mobile-money", "5")
        triton_client.load_model("mobile-money", headers={"X-API-Key": ADMIN_KEY})
        deadline = time.monotonic() + 15
        while not load.seen("mobile-money", "5"):
            assert time.monotonic() < deadline, "mobile-money version 4 never answered"
            time.sleep(0.05)
        time.sleep(0.5)
    failed = {k: n for k, n in load.answers.items() if k[1] != 200}
    assert failed == {} and load.errors == []
    versions = {(name, version) for name, _, version in load.answers}
    assert versions == {("creditcard", "4"), ("mobile-money", "4"), ("mobile-money", "5")}
    assert sum(n for (name, _, _), n in load.answers.items() if name == "creditcard") > 100
    with server.client(headers=SCORE) as client:
        listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    # Only the reloaded model loaded anything.
    assert listing["creditcard"]["loads"] == {"ok": 1, "refused": 0}
    assert listing["mobile-money"]["loads"] == {"ok": 2, "refused": 0}
    assert [v["version"] for v in listing["mobile-money"]["versions"]] == ["5", "4"]
