"""Export of a really trained (tiny) model: raw-feature graph, LSTM op, parity, contract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.artifact import MANIFEST_FILE, MODEL_FILE
from export.verify import (
    PARITY_TOLERANCE,
    VerificationError,
    check_graph,
    check_ops,
    check_parity,
)
from features.events import DEFINITIONS
from training.preprocessing import Preprocessing


def test_writes_model_manifest_and_card(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {
        MODEL_FILE,
        MANIFEST_FILE,
        "metrics.json",
        "curves.png",
        "config.json",
        "data.json",
        "samples.json",
    } <= names
    manifest = json.loads((tiny_model_dir / MANIFEST_FILE).read_text())
    data = (tiny_model_dir / MODEL_FILE).read_bytes()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["bytes"] == len(data)
    assert (manifest["name"], manifest["version"], manifest["opset"]) == ("tiny", "1", 17)
    assert max(manifest["parity_max_abs_diff"].values()) <= PARITY_TOLERANCE


def test_graph_has_an_lstm_op_and_no_loop(tiny_model_dir: Path) -> None:
    proto = onnx.load(tiny_model_dir / MODEL_FILE)
    ops = {node.op_type for node in proto.graph.node}
    assert "LSTM" in ops
    assert not ops & {"Loop", "Scan"}
    assert proto.opset_import[0].version == 17
    dim = proto.graph.input[0].type.tensor_type.shape.dim
    assert not dim[0].HasField("dim_value") and dim[1].dim_value == 10


def test_metadata_is_the_contract(tiny_model_dir: Path, tiny_run: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(tiny_model_dir / MODEL_FILE).metadata_props}
    prep = Preprocessing.load(tiny_run / "preprocessing.json")
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert json.loads(meta["feature_names"]) == list(prep.feature_names)
    assert json.loads(meta["thresholds"]) == metrics["thresholds"]
    carried = json.loads(meta["metrics"])
    for part in ("validation", "test"):
        # Everything but the reliability table, which stays in the model card.
        full = metrics[part]
        assert "reliability" in full["calibration"]
        del full["calibration"]["reliability"]
        assert carried[part] == full
    assert set(carried) == {"validation", "test"}
    assert json.loads(meta["calibration"]) == {"method": metrics["calibration"]["method"]}
    assert json.loads(meta["feature_mean"]) == list(prep.raw_mean)
    assert json.loads(meta["feature_std"]) == list(prep.raw_std)
    assert set(json.loads(meta["tool_versions"])) >= {"tensorflow", "tf2onnx", "onnxruntime"}
    assert meta["data_sha256"] == json.loads((tiny_run / "data.json").read_text())["sha256"]
    assert meta["model_name"] == "tiny" and meta["model_version"] == "1"
    assert meta["created_at"]
    # Features computed from the synthetic event stream name the definitions that made them.
    assert meta["feature_definitions"] == DEFINITIONS
    assert json.loads((tiny_run / "data.json").read_text())["feature_definitions"] == DEFINITIONS


def test_feature_definitions_only_for_features_made_from_events() -> None:
    from export.artifact import feature_definitions_metadata

    assert feature_definitions_metadata({"source": "table", "sha256": "0"}) == {}
    assert feature_definitions_metadata({"feature_definitions": "x/2"}) == {
        "feature_definitions": "x/2"
    }


def test_artifact_takes_raw_features(tiny_model_dir: Path, tiny_run: Path) -> None:
    """Same scores as Keras fed by the numpy preprocessing, then the run's calibration, at
    every batch size asked for."""
    import keras

    from training.calibration import apply

    rows = np.load(tiny_run / "test_rows.npz")["features"][:200]
    prep = Preprocessing.load(tiny_run / "preprocessing.json")
    model = keras.saving.load_model(tiny_run / "model.keras")
    raw = model.predict(prep.transform(rows), verbose=0).ravel()
    calibration = json.loads((tiny_run / "metrics.json").read_text())["calibration"]
    assert calibration["method"] != "none"
    expected = apply(calibration, raw)
    # The map changes the scores: without it folded in, the graph would not match.
    assert np.max(np.abs(expected - raw)) > 1e-3
    session = ort.InferenceSession(str(tiny_model_dir / MODEL_FILE))
    for batch in (1, 7, 64):
        got = np.concatenate(
            [
                session.run(None, {"features": rows[i : i + batch]})[0].ravel()
                for i in range(0, len(rows), batch)
            ]
        )
        assert np.max(np.abs(got - expected)) <= PARITY_TOLERANCE
    # Feeding already-scaled rows must give different scores: the scaler is inside.
    scaled_twice = session.run(None, {"features": prep.transform(rows)})[0].ravel()
    assert np.max(np.abs(scaled_twice - expected)) > 1e-3


def test_verification_rejects_a_wrong_preprocessing(tiny_model_dir: Path, tiny_run: Path) -> None:
    import keras

    proto = onnx.load(tiny_model_dir / MODEL_FILE)
    prep = Preprocessing.load(tiny_run / "preprocessing.json")
    shifted = Preprocessing(
        prep.feature_names,
        prep.log_mask,
        tuple(m + 0.5 for m in prep.mean),
        prep.std,
        prep.raw_mean,
        prep.raw_std,
    )
    rows = np.load(tiny_run / "test_rows.npz")["features"][:100]
    model = keras.saving.load_model(tiny_run / "model.keras")
    with pytest.raises(VerificationError, match="parity"):
        check_parity(proto, model, shifted, rows)


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ({"Conv", "MatMul", "Sigmoid"}, "no ONNX LSTM"),
        ({"LSTM", "Loop"}, "Loop"),
        ({"Scan", "MatMul"}, "no ONNX LSTM"),
    ],
)
def test_op_check_refuses_graphs_without_a_real_lstm(ops: set[str], message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        check_ops(ops)


def test_graph_check_refuses_another_opset(tiny_model_dir: Path) -> None:
    proto = onnx.load(tiny_model_dir / MODEL_FILE)
    check_graph(proto)  # as exported: passes
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 18
    with pytest.raises(VerificationError, match="opset"):
        check_graph(proto)


def test_existing_version_is_not_overwritten(tiny_run: Path, tiny_model_dir: Path) -> None:
    from export.cli import main

    assert (
        main(["--run", str(tiny_run), "--out", str(tiny_model_dir.parent.parent), "--version", "1"])
        == 1
    )


def test_samples_are_real_test_rows(tiny_model_dir: Path, tiny_run: Path) -> None:
    samples = json.loads((tiny_model_dir / "samples.json").read_text())
    test = np.load(tiny_run / "test_rows.npz")
    assert samples["feature_names"] == list(
        Preprocessing.load(tiny_run / "preprocessing.json").feature_names
    )
    assert any(r["fraud"] for r in samples["rows"]) and not all(r["fraud"] for r in samples["rows"])
    for row in samples["rows"]:
        match = np.flatnonzero((test["features"] == np.float32(row["features"])).all(axis=1))
        assert len(match) >= 1 and bool(test["labels"][match[0]]) == row["fraud"]


def test_score_reference_bins_the_onnx_scores_of_the_test_rows(
    tiny_model_dir: Path, tiny_run: Path
) -> None:
    meta = {p.key: p.value for p in onnx.load(tiny_model_dir / MODEL_FILE).metadata_props}
    reference = json.loads(meta["score_reference"])
    edges, proportions = np.asarray(reference["edges"]), np.asarray(reference["proportions"])
    rows = np.load(tiny_run / "test_rows.npz")["features"]
    assert reference["source"] == "test" and reference["count"] == len(rows)
    assert len(proportions) == len(edges) + 1 and np.all(np.diff(edges) > 0)
    assert np.all(proportions >= 0) and abs(proportions.sum() - 1.0) < 1e-9
    session = ort.InferenceSession(str(tiny_model_dir / MODEL_FILE))
    scores = session.run(None, {"features": rows})[0].ravel().astype(np.float64)
    counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(proportions))
    # One batch here, chunks of 4096 at export: allow a score on an edge to round across it.
    assert np.abs(counts / len(scores) - proportions).max() <= 1 / len(scores)


def test_score_reference_cuts_at_quantiles_and_collapses_ties() -> None:
    from export.artifact import build_score_reference

    # Half the scores are one value, as when a model saturates near 0.
    scores = np.concatenate([np.full(500, 1e-4), np.linspace(0.001, 0.9, 500)])
    reference = build_score_reference(scores)
    edges, proportions = reference["edges"], reference["proportions"]
    assert isinstance(edges, list) and isinstance(proportions, list)
    assert len(edges) < 9 and edges == sorted(set(edges))
    assert len(proportions) == len(edges) + 1 and sum(proportions) == pytest.approx(1.0)
    # The tie is one bin, the rest roughly deciles.
    assert max(proportions) == pytest.approx(0.5)
    assert reference["count"] == 1000
    with pytest.raises(ValueError, match="finite"):
        build_score_reference(np.asarray([0.1, np.nan]))


def test_an_ensemble_exports_as_one_graph_with_parity(tmp_path: Path) -> None:
    """Two members averaged inside one graph: two LSTM ops, one input, parity at 1, 7, 64."""
    import keras

    from export.cli import export_run
    from training.config import TrainConfig
    from training.train import run

    out = tmp_path / "run"
    run(
        TrainConfig(
            out_dir=str(out),
            synthetic_rows=4000,
            epochs=1,
            batch_size=256,
            patience=1,
            verbose=0,
            model_name="pair",
            members=2,
        )
    )
    model = keras.saving.load_model(out / "model.keras")
    members = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert [m.name for m in members] == ["lstm_cnn_0", "lstm_cnn_1"]
    rows = Preprocessing.load(out / "preprocessing.json").transform(
        np.load(out / "test_rows.npz")["features"][:50]
    )
    mean = np.mean([m.predict(rows, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(model.predict(rows, verbose=0), mean, atol=1e-7)

    target = export_run(out, tmp_path / "models", version="1")
    proto = onnx.load(target / MODEL_FILE)
    assert [node.op_type for node in proto.graph.node].count("LSTM") == 2
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    assert set(manifest["parity_max_abs_diff"]) == {"1", "7", "64"}
    assert max(manifest["parity_max_abs_diff"].values()) <= PARITY_TOLERANCE
