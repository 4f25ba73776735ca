"""The v2 route's second output, `contributions`, with the official Triton HTTP client against a
real uvicorn serving the shipped credit-card model: given only when asked for, in both
encodings, from the same occlusion as the v1 reasons (so the v1 reasons are its top three), and
refused clearly on a server that explains nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, TEST_API_KEY, LiveServer, start_server, stop_server

SHIPPED = ROOT / "models" / "creditcard" / "4"
MODEL = "creditcard"
N_FEATURES = 29
# tritonclient writes into the headers dict it is given: pass a copy each time.
KEY = {"X-API-Key": TEST_API_KEY}


def sample_rows() -> np.ndarray:
    """The card's samples, frauds first: some are DECLINEd, most are APPROVEd."""
    samples = json.loads((SHIPPED / "samples.json").read_text())["rows"]
    ordered = sorted(samples, key=lambda s: not s["fraud"])
    return np.asarray([s["features"] for s in ordered], np.float32)[:12]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("contributions") / "uvicorn.log"
    served = start_server(SHIPPED, log)
    yield served
    stop_server(served)


def connect(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.base_url.removeprefix("http://"))


def infer(
    client: triton.InferenceServerClient, rows: np.ndarray, outputs: list[str] | None, binary: bool
) -> triton.InferResult:
    tensor = triton.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    asked = (
        None
        if outputs is None
        else [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    )
    return client.infer(MODEL, [tensor], outputs=asked, headers=dict(KEY))


def v1_explained(server: LiveServer, rows: np.ndarray) -> list[dict[str, object]]:
    body = {"transactions": [{"features": r.tolist(), "explain": True} for r in rows]}
    with server.client(headers=dict(KEY)) as http:
        answer = http.post(f"/v1/models/{MODEL}/score/batch", json=body)
    assert answer.status_code == 200
    return answer.json()["results"]


def test_metadata_lists_the_second_output(server: LiveServer) -> None:
    with connect(server) as client:
        meta = client.get_model_metadata(MODEL)
    assert meta["outputs"] == [
        {"name": "fraud_probability", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "contributions", "datatype": "FP32", "shape": [-1, N_FEATURES]},
    ]


def test_without_asking_only_the_probability(server: LiveServer) -> None:
    rows = sample_rows()
    with connect(server) as client:
        result = infer(client, rows, None, binary=False)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["fraud_probability"]
    assert result.as_numpy("contributions") is None


@pytest.mark.parametrize("binary", [True, False])
def test_contributions_are_the_v1_reasons_occlusion(server: LiveServer, binary: bool) -> None:
    """Each row's contributions: its probability less its probability with that feature at
    the training mean. The v1 reasons of the same rows are their three largest positive ones,
    and the probability is v1's."""
    rows = sample_rows()
    with connect(server) as client:
        result = infer(client, rows, ["fraud_probability", "contributions"], binary)
    probabilities = result.as_numpy("fraud_probability")
    contributions = result.as_numpy("contributions")
    assert probabilities.shape == (len(rows), 1) and contributions.shape == (len(rows), N_FEATURES)
    assert np.isfinite(contributions).all() and np.abs(contributions).max() <= 1.0
    explained = v1_explained(server, rows)
    names = json.loads((SHIPPED / "samples.json").read_text())["feature_names"]
    declined = 0
    for p, row_contributions, answer in zip(probabilities, contributions, explained, strict=True):
        assert float(p[0]) == pytest.approx(answer["fraud_probability"], abs=1e-6)
        declined += answer["decision"] == "DECLINE"
        reasons = answer["reasons"]
        order = np.argsort(-row_contributions, kind="stable")
        top = [names[i] for i in order[: len(reasons)] if row_contributions[i] > 0]
        assert top == [r["feature"] for r in reasons]
        for reason in reasons:
            got = row_contributions[names.index(reason["feature"])]
            assert float(got) == pytest.approx(reason["contribution"], abs=1e-6)
    assert declined >= 1, "the rows hold a DECLINE"


def test_only_the_contributions_when_only_they_are_asked(server: LiveServer) -> None:
    rows = sample_rows()[:3]
    with connect(server) as client:
        result = infer(client, rows, ["contributions"], binary=True)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["contributions"]
    assert result.as_numpy("contributions").shape == (3, N_FEATURES)


def test_a_server_that_explains_nothing_refuses_them(tmp_path: Path) -> None:
    served = start_server(SHIPPED, tmp_path / "uvicorn.log", {"FRAUD_REASONS": "0"})
    try:
        with connect(served) as client:
            meta = client.get_model_metadata(MODEL)
            assert [o["name"] for o in meta["outputs"]] == ["fraud_probability"]
            with pytest.raises(InferenceServerException) as refused:
                infer(client, sample_rows()[:2], ["contributions"], binary=False)
            assert refused.value.status() == "400"
            assert "FRAUD_REASONS=0" in refused.value.message()
            # The probability alone is still served.
            assert (
                infer(client, sample_rows()[:2], None, False).as_numpy("fraud_probability")
                is not None
            )
    finally:
        stop_server(served)
