"""The peer benchmark's parts that need no peer installed: each protocol's body for a real row
and the probability read back from its answer, the check of an answer against onnxruntime on a
loopback server, the ratios and goals on given figures, the venv stamp, and the pins."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from benchmarks import bench
from benchmarks.peers import bodies, goals, runtime, venvs
from benchmarks.peers.__main__ import check_answer, load_rows
from benchmarks.serving import ROOT, shipped_model_dir

MODEL_DIR = shipped_model_dir("creditcard")
ROW = json.loads((MODEL_DIR / "samples.json").read_text())["rows"][3]["features"]


def decoded(peer: str, i: int = 5) -> Any:
    """The body as the peer receives it: encoded as wrk sends it, then parsed."""
    return json.loads(json.dumps(bodies.PROTOCOLS[peer].encode(i, ROW)))


def as_float32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def test_server_body_is_a_v1_score_request() -> None:
    body = decoded("server")
    assert body == {"transaction_id": "peers-5", "features": ROW}
    assert decoded("floor") == body


def test_mlserver_body_is_an_open_inference_protocol_v2_tensor_of_one_row() -> None:
    body = decoded("mlserver")
    (tensor,) = body["inputs"]
    assert tensor["name"] == "features" and tensor["datatype"] == "FP32"
    assert tensor["shape"] == [1, 29]
    np.testing.assert_array_equal(as_float32(tensor["data"]), as_float32(ROW))
    assert body["id"] != decoded("mlserver", 6)["id"]


def test_kserve_body_is_v1_instances_of_one_row() -> None:
    body = decoded("kserve")
    assert list(body) == ["instances"]
    assert as_float32(body["instances"]).shape == (1, 29)
    np.testing.assert_array_equal(as_float32(body["instances"])[0], as_float32(ROW))


def test_litserve_body_is_one_row_and_bentoml_body_a_batch_of_one() -> None:
    np.testing.assert_array_equal(as_float32(decoded("litserve")["features"]), as_float32(ROW))
    batch = as_float32(decoded("bentoml")["features"])
    assert batch.shape == (1, 29)
    np.testing.assert_array_equal(batch[0], as_float32(ROW))


@pytest.mark.parametrize(
    ("peer", "answer"),
    [
        ("server", {"fraud_probability": 0.25, "decision": "APPROVE"}),
        (
            "mlserver",
            {
                "model_name": "creditcard",
                "outputs": [
                    {"name": "other", "shape": [1, 1], "datatype": "FP32", "data": [0.9]},
                    {
                        "name": "fraud_probability",
                        "shape": [1, 1],
                        "datatype": "FP32",
                        "data": [0.25],
                    },
                ],
            },
        ),
        ("kserve", {"predictions": [[0.25]]}),
        ("litserve", {"fraud_probability": 0.25}),
        ("bentoml", [[0.25]]),
    ],
)
def test_probability_is_read_from_each_protocols_answer(peer: str, answer: Any) -> None:
    assert bodies.PROTOCOLS[peer].probability(answer) == 0.25


@pytest.mark.parametrize(
    ("peer", "answer"),
    [
        ("kserve", {"predictions": [[0.25], [0.5]]}),  # two rows for one asked
        ("bentoml", [[0.25, 0.5]]),
        ("mlserver", {"outputs": [{"name": "fraud_probability", "shape": [2, 1], "data": [1, 2]}]}),
    ],
)
def test_an_answer_for_other_than_one_row_is_refused(peer: str, answer: Any) -> None:
    with pytest.raises(ValueError):
        bodies.PROTOCOLS[peer].probability(answer)


def test_write_bodies_writes_one_body_a_row(tmp_path: Path) -> None:
    rows = [ROW, [x + 1 for x in ROW], [0.0] * 29]
    path = bodies.write_bodies(bodies.PROTOCOLS["kserve"], rows, tmp_path / "b.jsonl")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["instances"][0] for line in lines] == rows


def test_peer_sessions_score_as_the_servers_session() -> None:
    rows, expected = load_rows(MODEL_DIR)
    assert len(rows) == len(expected) > 1
    peer = runtime.predict(runtime.load_session(str(MODEL_DIR / "model.onnx")), as_float32(rows))
    server = bench.load_session(MODEL_DIR / "model.onnx")
    (direct,) = server.run(None, {"features": as_float32(rows)})
    np.testing.assert_array_equal(peer, direct)
    np.testing.assert_array_equal(expected, direct[:, 0])


class Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    reply: ClassVar[tuple[int, bytes]] = (200, b"{}")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = self.reply
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[tuple[int, type[Answer]]]:
    handler = type("Handler", (Answer,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_check_answer_takes_onnxruntimes_probability_within_the_tolerance(
    answering: tuple[int, type[Answer]],
) -> None:
    port, handler = answering
    body = json.dumps(bodies.PROTOCOLS["litserve"].encode(0, ROW))
    handler.reply = (200, b'{"fraud_probability": 0.123454}')
    assert check_answer("litserve", port, "/predict", body, "k", 0.123456) is None
    handler.reply = (200, b'{"fraud_probability": 0.1235}')
    assert "off by more than" in str(check_answer("litserve", port, "/predict", body, "k", 0.1234))
    handler.reply = (200, b'{"output": 0.1234}')
    assert "no probability" in str(check_answer("litserve", port, "/predict", body, "k", 0.1234))
    handler.reply = (503, b"busy")
    assert "503" in str(check_answer("litserve", port, "/predict", body, "k", 0.1234))
    # The floor answers a constant: its status is all that is checked.
    handler.reply = (200, b'{"fraud_probability": 0.5}')
    assert check_answer("floor", port, "/v1/score", body, "k", 0.1234) is None


def point(rps: float, p99: float) -> dict[str, float]:
    return {"rps": rps, "p99_ms": p99}


def test_ratios_and_goals_on_given_figures() -> None:
    results = {
        "server": {"1": point(5000, 0.30), "32": point(14000, 4.0)},
        "floor": {"1": point(10000, 0.20), "32": point(21000, 2.0)},
        "mlserver": {"1": point(2000, 1.20), "32": point(1000, 40.0)},
        "kserve": {"1": point(1000, 0.60), "32": point(1750, 30.0)},
    }
    rows = {(r["ratio"], r["concurrency"]): r for r in goals.check(results, ["mlserver", "kserve"])}
    assert rows[("server/mlserver rps", 32)]["value"] == pytest.approx(14.0)
    assert rows[("server/mlserver rps", 32)]["met"] is True
    assert rows[("server/mlserver rps", 1)]["value"] == pytest.approx(2.5)
    assert rows[("server/mlserver rps", 1)]["met"] is False  # goal >= 3
    assert rows[("server/mlserver p99", 1)]["value"] == pytest.approx(0.25)
    assert rows[("server/mlserver p99", 1)]["met"] is True  # goal <= 1/3
    assert rows[("server/kserve rps", 32)]["value"] == pytest.approx(8.0)
    assert rows[("server/kserve rps", 32)]["met"] is False
    assert rows[("server/kserve rps", 1)]["met"] is True
    assert rows[("server/kserve p99", 1)]["value"] == pytest.approx(0.5)
    assert rows[("server/kserve p99", 1)]["met"] is False
    # The floor's goals are make bench's: rps >= 0.7 at c=32 and >= 0.6 at c=1, p99 <= 2 at c=1.
    assert rows[("server/floor rps", 32)]["value"] == pytest.approx(14 / 21)
    assert rows[("server/floor rps", 32)]["met"] is False
    assert rows[("server/floor rps", 1)]["value"] == pytest.approx(0.5)
    assert rows[("server/floor rps", 1)]["goal"] == pytest.approx(0.6)
    assert rows[("server/floor rps", 1)]["met"] is False
    assert rows[("server/floor p99", 1)]["value"] == pytest.approx(1.5)
    assert rows[("server/floor p99", 1)]["met"] is True


def test_a_peer_not_measured_has_no_ratio_and_no_verdict() -> None:
    results = {"server": {"1": point(5000, 0.3), "32": point(14000, 4.0)}}
    rows = goals.check(results, ["bentoml"])
    bentoml = [r for r in rows if r["ratio"].startswith("server/bentoml")]
    assert len(bentoml) == 3
    assert all(r["value"] is None and r["met"] is None for r in bentoml)
    assert "not measured" in goals.describe(bentoml[0])


def test_describe_says_whether_a_goal_is_met() -> None:
    results = {"server": {"32": point(14000, 4.0)}, "litserve": {"32": point(2000, 30.0)}}
    row = next(r for r in goals.check(results, ["litserve"]) if r["concurrency"] == 32)
    assert row["value"] == pytest.approx(7.0)
    assert goals.describe(row).endswith("goal >= 10  MISSED")


def requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def serve_pin(package: str) -> str:
    for line in requirement_lines(ROOT / "requirements-serve.txt"):
        name, _, version = line.partition("==")
        if name.lower() == package:
            return version
    raise AssertionError(f"requirements-serve.txt does not pin {package}")


@pytest.mark.parametrize("peer", venvs.PEERS)
def test_requirements_pin_every_package_and_the_servings_onnxruntime(peer: str) -> None:
    lines = requirement_lines(venvs.requirements(peer))
    pins = {}
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[0-9][0-9A-Za-z.+!\-]*", line), line
        name, _, version = line.partition("==")
        pins[name.lower().replace("_", "-")] = version
    assert len(pins) == len(lines), "a package pinned twice"
    assert pins["onnxruntime"] == serve_pin("onnxruntime")
    assert pins[peer] == venvs.pinned_version(peer)
    assert "numpy" in pins


def test_a_stamp_that_matches_its_requirements_builds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(venvs, "VENVS", tmp_path)
    python = tmp_path / "litserve" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    digest = venvs.hashlib.sha256(venvs.requirements("litserve").read_bytes()).hexdigest()
    (tmp_path / "litserve" / venvs.STAMP).write_text(digest + "\n")
    assert venvs.ensure("litserve") == python
    assert sorted(p.name for p in (tmp_path / "litserve").iterdir()) == [".installed", "bin"]


def test_batching_is_on_unless_the_environment_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(runtime.BATCHING_ENV, raising=False)
    assert runtime.batching()
    monkeypatch.setenv(runtime.BATCHING_ENV, "off")
    assert not runtime.batching()
