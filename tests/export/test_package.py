"""python -m export.package: foreign ONNX classifiers in, the model contract out, or a refusal.

The models are trained here on a generated table and converted with skl2onnx (with and
without ZipMap) and onnxmltools (XGBoost), as a user of those toolkits would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper

from tests.conftest import ROOT

FEATURES = ("amount", "velocity", "distance", "hour_sin", "merchant_risk")
ROWS = 4000


def make_table(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """~5 % fraud, driven by a few of the features (one interaction), in time order."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    logit = 1.6 * x[:, 0] - 1.1 * x[:, 1] + 0.8 * x[:, 2] * x[:, 3] - 4.0
    fraud = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    frame = pd.DataFrame(x, columns=list(FEATURES))
    frame.insert(0, "event_time", np.sort(rng.uniform(0, 86_400 * 30, rows)).round(1))
    frame["is_fraud"] = fraud.astype(int)
    return frame


def features_of(frame: pd.DataFrame) -> np.ndarray:
    return frame[list(FEATURES)].to_numpy(np.float32)


def fit_logistic(frame: pd.DataFrame) -> object:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500).fit(features_of(frame), frame["is_fraud"])


def fit_xgboost(frame: pd.DataFrame) -> object:
    from xgboost import XGBClassifier

    return XGBClassifier(n_estimators=40, max_depth=3, n_jobs=1, random_state=0).fit(
        features_of(frame), frame["is_fraud"]
    )


def skl2onnx_model(
    model: object, zipmap: bool = True, shape: tuple[int | None, int] = (None, len(FEATURES))
) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = None if zipmap else {id(model): {"zipmap": False}}
    return convert_sklearn(
        model, initial_types=[("float_input", FloatTensorType(list(shape)))], options=options
    )


def onnxmltools_model(model: object) -> onnx.ModelProto:
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    return convert_xgboost(model, initial_types=[("input", FloatTensorType([None, len(FEATURES)]))])


def hand_graph(outputs: dict[str, float], width: int = len(FEATURES)) -> onnx.ModelProto:
    """features (None, width) -> one (N, 1) output per name: x @ ones * scale."""
    nodes, infos, inits = [], [], []
    for index, (name, scale) in enumerate(outputs.items()):
        weights = f"w{index}"
        inits.append(helper.make_tensor(weights, TensorProto.FLOAT, [width, 1], [scale] * width))
        nodes.append(helper.make_node("MatMul", ["x", weights], [name]))
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1]))
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        infos,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    frame = make_table()
    path = tmp_path_factory.mktemp("table") / "transactions.csv"
    frame.to_csv(path, index=False)
    return frame, path


@pytest.fixture(scope="module")
def logistic(table: tuple[pd.DataFrame, Path]) -> object:
    return fit_logistic(table[0])


@pytest.fixture(scope="module")
def onnx_files(
    table: tuple[pd.DataFrame, Path], logistic: object, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    models = {
        "lr_zipmap": skl2onnx_model(logistic),
        "lr_tensor": skl2onnx_model(logistic, zipmap=False),
        "xgb": onnxmltools_model(fit_xgboost(table[0])),
    }
    for name, proto in models.items():
        onnx.save(proto, folder / f"{name}.onnx")
    return {name: folder / f"{name}.onnx" for name in models}


def run_cli(
    onnx_file: Path, table_path: Path, out: Path, *extra: str, name: str = "packaged"
) -> int:
    from export.package.cli import main

    return main(
        [
            "--onnx",
            str(onnx_file),
            "--validation",
            str(table_path),
            "--label",
            "is_fraud",
            "--time",
            "event_time",
            "--name",
            name,
            "--out",
            str(out),
            *extra,
        ]
    )


def refusal(capsys: pytest.CaptureFixture[str], run: Callable[[], int]) -> str:
    assert run() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cannot package: ") and "\n" not in err
    return err


@pytest.mark.parametrize(
    ("name", "output", "column"),
    [
        ("lr_zipmap", "output_probability", 1),
        ("lr_tensor", "probabilities", 1),
        ("xgb", "probabilities", 1),
    ],
)
def test_finds_the_probability_and_rewrites_to_the_contract(
    onnx_files: dict[str, Path],
    table: tuple[pd.DataFrame, Path],
    logistic: object,
    name: str,
    output: str,
    column: int,
) -> None:
    from export.package.rewrite import adapt
    from export.package.signature import inspect_model

    source = onnx.load(onnx_files[name])
    signature = inspect_model(source)
    assert signature.probability.output == output
    assert signature.probability.column == column
    assert signature.n_features == len(FEATURES)
    assert "label" in " ".join(signature.dropped_outputs)
    adapted = adapt(source, signature)
    assert [i.name for i in adapted.graph.input] == ["features"]
    assert [o.name for o in adapted.graph.output] == ["fraud_probability"]
    assert "ZipMap" not in {n.op_type for n in adapted.graph.node}
    rows = features_of(table[0])[:500]
    session = ort.InferenceSession(adapted.SerializeToString())
    got = session.run(None, {"features": rows})
    assert len(got) == 1 and got[0].shape == (500, 1) and got[0].dtype == np.float32
    if name.startswith("lr"):
        expected = logistic.predict_proba(rows)[:, 1]  # type: ignore[attr-defined]
        assert np.max(np.abs(got[0].ravel() - expected)) <= 1e-5


def test_packaged_version_holds_the_contract_and_card(
    onnx_files: dict[str, Path], table: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    from server.artifact import parse_metadata
    from server.scorer import OnnxScorer

    frame, path = table
    assert run_cli(onnx_files["lr_zipmap"], path, tmp_path, name="lr") == 0
    folder = tmp_path / "lr" / "1"
    assert sorted(p.name for p in tmp_path.joinpath("lr").iterdir()) == ["1"]  # no staging
    assert {p.name for p in folder.iterdir()} == {
        "model.onnx",
        "manifest.json",
        "metrics.json",
        "data.json",
        "config.json",
        "samples.json",
        "curves.png",
    }
    proto = onnx.load(folder / "model.onnx")
    meta = {p.key: p.value for p in proto.metadata_props}
    manifest = json.loads((folder / "manifest.json").read_text())
    info = parse_metadata(meta, manifest["sha256"])
    assert info.feature_names == FEATURES
    assert (info.input_name, info.output_name) == ("features", "fraud_probability")
    assert 0.0 < info.review_threshold <= info.decline_threshold < 1.0
    raw = features_of(frame).astype(np.float64)
    assert np.allclose(info.feature_mean, raw.mean(axis=0))
    assert np.allclose(info.feature_std, raw.std(axis=0))
    assert set(info.metrics) == {"validation", "test"}
    assert info.metrics["validation"]["rows"] + info.metrics["test"]["rows"] == ROWS
    tools = json.loads(meta["tool_versions"])
    assert "skl2onnx" in tools and "onnxruntime" in tools and "tensorflow" not in tools
    assert json.loads(meta["score_reference"])["count"] == ROWS
    assert manifest["opset"] == {o.domain: o.version for o in proto.opset_import}[""]
    assert manifest["features"] == len(FEATURES)
    assert max(manifest["parity_max_abs_diff"].values()) <= 1e-5
    data = json.loads((folder / "data.json").read_text())
    source_bytes = onnx_files["lr_zipmap"].read_bytes()
    import hashlib

    assert data["model_source"]["file"] == "lr_zipmap.onnx"
    assert data["model_source"]["sha256"] == hashlib.sha256(source_bytes).hexdigest()
    assert data["model_source"]["producer_name"] == "skl2onnx"
    assert data["parts"]["validation"]["time_to"] <= data["parts"]["test"]["time_from"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["thresholds"] == {
        "review": info.review_threshold,
        "decline": info.decline_threshold,
    }
    samples = json.loads((folder / "samples.json").read_text())
    assert samples["feature_names"] == list(FEATURES)
    assert any(r["fraud"] for r in samples["rows"]) and not all(r["fraud"] for r in samples["rows"])
    scorer = OnnxScorer.load(folder)  # the server's own loader, warm-up included
    row = np.asarray([samples["rows"][0]["features"]], dtype=np.float32)
    assert 0.0 <= float(scorer.predict(row)[0]) <= 1.0
    # The next packaging of the same name gets the next version.
    assert run_cli(onnx_files["xgb"], path, tmp_path, name="lr") == 0
    assert (tmp_path / "lr" / "2" / "model.onnx").exists()


def test_thresholds_are_chosen_on_the_earlier_rows(
    onnx_files: dict[str, Path], table: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    from training.evaluation import choose_thresholds

    frame, path = table
    assert run_cli(onnx_files["lr_tensor"], path, tmp_path, "--review-recall", "0.9") == 0
    metrics = json.loads((tmp_path / "packaged" / "1" / "metrics.json").read_text())
    earlier = frame.sort_values("event_time").iloc[: metrics["validation"]["rows"]]
    session = ort.InferenceSession(str(tmp_path / "packaged" / "1" / "model.onnx"))
    scores = session.run(None, {"features": features_of(earlier)})[0].ravel()
    assert metrics["thresholds"] == choose_thresholds(earlier["is_fraud"].to_numpy(), scores, 0.9)
    assert metrics["validation"]["at_thresholds"]["review"]["recall"] >= 0.9


def test_calibration_when_asked_is_fitted_on_the_earlier_rows_and_folded_in(
    onnx_files: dict[str, Path], table: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    from training import calibration

    frame, path = table
    assert run_cli(onnx_files["xgb"], path, tmp_path, "--calibration", "platt") == 0
    folder = tmp_path / "packaged" / "1"
    metrics = json.loads((folder / "metrics.json").read_text())
    record = metrics["calibration"]
    assert record["method"] == "platt" and record["chosen_by"] == "asked for"
    assert set(record["cross_validated"]) == {"platt", "isotonic"}
    ordered = frame.sort_values("event_time")
    source = ort.InferenceSession(str(onnx_files["xgb"]))
    probability = source.run(None, {source.get_inputs()[0].name: features_of(ordered)})[1]
    raw = np.asarray(probability)[:, 1]
    served = ort.InferenceSession(str(folder / "model.onnx"))
    got = served.run(None, {"features": features_of(ordered)})[0].ravel()
    assert np.max(np.abs(got - calibration.apply(record, raw))) <= 1e-5
    assert np.max(np.abs(got - raw)) > 1e-3  # the map is in the graph
    # Fitted on the earlier rows only: refitting there gives the same map.
    n = metrics["validation"]["rows"]
    again = calibration.fit_platt(raw[:n], ordered["is_fraud"].to_numpy()[:n])
    assert again["a"] == pytest.approx(record["a"]) and again["b"] == pytest.approx(record["b"])
    assert json.loads(
        {p.key: p.value for p in onnx.load(folder / "model.onnx").metadata_props}["calibration"]
    ) == {"method": "platt"}
    # Without --calibration the model's own probabilities are served, as before.
    assert run_cli(onnx_files["xgb"], path, tmp_path, "--version", "2") == 0
    plain = ort.InferenceSession(str(tmp_path / "packaged" / "2" / "model.onnx"))
    same = plain.run(None, {"features": features_of(ordered)})[0].ravel()
    assert np.max(np.abs(same - raw)) <= 1e-5


def test_refuses_a_fixed_batch_dimension(
    logistic: object,
    table: tuple[pd.DataFrame, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "fixed.onnx"
    onnx.save(skl2onnx_model(logistic, shape=(1, len(FEATURES))), model)
    err = refusal(capsys, lambda: run_cli(model, table[1], tmp_path / "models"))
    assert "fixed batch dimension of 1; it must be dynamic" in err
    assert not (tmp_path / "models").exists()


def test_refuses_a_model_of_another_width(
    table: tuple[pd.DataFrame, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.linear_model import LogisticRegression

    frame = table[0]
    narrow = LogisticRegression().fit(features_of(frame)[:, :4], frame["is_fraud"])
    model = tmp_path / "narrow.onnx"
    onnx.save(skl2onnx_model(narrow, shape=(None, 4)), model)
    err = refusal(capsys, lambda: run_cli(model, table[1], tmp_path))
    assert "the model takes 4 features" in err and "the table gives 5" in err
    # With the model's own four columns named, it packages.
    assert run_cli(model, table[1], tmp_path, "--features", ",".join(FEATURES[:4])) == 0


def test_refuses_a_double_input(
    logistic: object,
    table: tuple[pd.DataFrame, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType

    model = tmp_path / "double.onnx"
    proto = convert_sklearn(
        logistic, initial_types=[("float_input", DoubleTensorType([None, len(FEATURES)]))]
    )
    onnx.save(proto, model)
    err = refusal(capsys, lambda: run_cli(model, table[1], tmp_path))
    assert "takes float64, not float32" in err


def test_refuses_a_regressor(
    table: tuple[pd.DataFrame, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.linear_model import LinearRegression

    frame = table[0]
    model = tmp_path / "regressor.onnx"
    onnx.save(skl2onnx_model(LinearRegression().fit(features_of(frame), frame["is_fraud"])), model)
    err = refusal(capsys, lambda: run_cli(model, table[1], tmp_path))
    assert "no probability output" in err
    assert "the model is a regressor (LinearRegressor)" in err


@pytest.mark.parametrize("zipmap", [True, False])
def test_refuses_three_classes(
    table: tuple[pd.DataFrame, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    zipmap: bool,
) -> None:
    from sklearn.linear_model import LogisticRegression

    x = features_of(table[0])
    three = LogisticRegression(max_iter=500).fit(x, np.digitize(x[:, 0], [-0.5, 0.5]))
    model = tmp_path / "three.onnx"
    onnx.save(skl2onnx_model(three, zipmap=zipmap), model)
    err = refusal(capsys, lambda: run_cli(model, table[1], tmp_path))
    assert "the model has 3 classes" in err and "only a binary classifier" in err


def test_refuses_scores_that_are_not_probabilities(
    table: tuple[pd.DataFrame, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "margin.onnx"
    onnx.save(hand_graph({"margin": 3.0}), model)
    err = refusal(capsys, lambda: run_cli(model, table[1], tmp_path))
    assert "the model's scores are not probabilities" in err and "outside [0, 1]" in err


def test_several_candidates_need_output(
    table: tuple[pd.DataFrame, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from export.package.signature import inspect_model

    model = tmp_path / "two.onnx"
    onnx.save(hand_graph({"a": 0.0, "b": 0.0}), model)
    err = refusal(capsys, lambda: run_cli(model, table[1], tmp_path))
    assert "several outputs could be the probability ('a', 'b'); pass --output NAME" in err
    assert inspect_model(onnx.load(model), output="b").probability.tensor == "b"
    assert run_cli(model, table[1], tmp_path, "--output", "b", name="constant") == 0


def test_feature_names_in_the_model_must_match(
    onnx_files: dict[str, Path],
    table: tuple[pd.DataFrame, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proto = onnx.load(onnx_files["lr_tensor"])
    entry = proto.metadata_props.add()
    entry.key, entry.value = "feature_names", json.dumps(list(reversed(FEATURES)))
    model = tmp_path / "named.onnx"
    onnx.save(proto, model)
    err = refusal(capsys, lambda: run_cli(model, table[1], tmp_path))
    assert "the model names its features merchant_risk" in err and "in another order" in err
    reordered = ",".join(reversed(FEATURES))
    assert run_cli(model, table[1], tmp_path, "--features", reordered) == 0


def test_refuses_what_is_no_onnx_model(
    table: tuple[pd.DataFrame, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not a protobuf at all \xff\xff")
    assert "is not a valid ONNX model" in refusal(
        capsys, lambda: run_cli(garbage, table[1], tmp_path)
    )
    missing = tmp_path / "absent.onnx"
    assert "cannot read" in refusal(capsys, lambda: run_cli(missing, table[1], tmp_path))


def test_refuses_a_bad_table_with_its_message(
    onnx_files: dict[str, Path],
    table: tuple[pd.DataFrame, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frame = table[0].drop(columns=["is_fraud"])
    path = tmp_path / "unlabelled.csv"
    frame.to_csv(path, index=False)
    err = refusal(capsys, lambda: run_cli(onnx_files["lr_tensor"], path, tmp_path))
    assert "has no column 'is_fraud'" in err


def test_refuses_an_existing_version_without_force(
    onnx_files: dict[str, Path],
    table: tuple[pd.DataFrame, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_cli(onnx_files["lr_tensor"], table[1], tmp_path, "--version", "3") == 0
    first = (tmp_path / "packaged" / "3" / "manifest.json").read_text()
    err = refusal(capsys, lambda: run_cli(onnx_files["xgb"], table[1], tmp_path, "--version", "3"))
    assert "packaged/3 exists; pass --force or another --version" in err
    assert (tmp_path / "packaged" / "3" / "manifest.json").read_text() == first
    assert run_cli(onnx_files["xgb"], table[1], tmp_path, "--version", "3", "--force") == 0
    assert (tmp_path / "packaged" / "3" / "manifest.json").read_text() != first
    assert sorted(p.name for p in (tmp_path / "packaged").iterdir()) == ["3"]


def test_command_line_refusal_is_one_line_and_exit_2(
    table: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    model = tmp_path / "margin.onnx"
    onnx.save(hand_graph({"margin": 3.0}), model)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.package",
            "--onnx",
            str(model),
            "--validation",
            str(table[1]),
            "--label",
            "is_fraud",
            "--time",
            "event_time",
            "--name",
            "margin",
            "--out",
            str(tmp_path / "models"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cannot package: the model's scores")
    assert not (tmp_path / "models" / "margin").exists()


def test_rewrite_moves_tensors_already_named_as_the_contract(
    table: tuple[pd.DataFrame, Path],
) -> None:
    """An inner tensor called `features` and a (N, 2) output called `fraud_probability` are
    renamed out of the way, not confused with the new input and output."""
    from export.package.rewrite import adapt
    from export.package.signature import inspect_model

    width = len(FEATURES)
    weights = np.linspace(-1.0, 1.0, width * 2, dtype=np.float32).reshape(width, 2)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["features"]),
            helper.make_node("Softmax", ["features"], ["fraud_probability"], axis=1),
        ],
        "collide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("fraud_probability", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [width, 2], weights.ravel().tolist())],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    adapted = adapt(proto, inspect_model(proto))
    assert [i.name for i in adapted.graph.input] == ["features"]
    assert [o.name for o in adapted.graph.output] == ["fraud_probability"]
    rows = features_of(table[0])[:100]
    got = ort.InferenceSession(adapted.SerializeToString()).run(None, {"features": rows})[0]
    logits = rows.astype(np.float64) @ weights
    expected = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))
    assert got.shape == (100, 1) and np.max(np.abs(got.ravel() - expected)) <= 1e-5


def test_refuses_a_table_whose_later_rows_hold_no_fraud(
    onnx_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = make_table(rows=2000, seed=3)
    frame.loc[frame.index >= 1000, "is_fraud"] = 0  # rows are in time order
    path = tmp_path / "early_fraud.csv"
    frame.to_csv(path, index=False)
    err = refusal(capsys, lambda: run_cli(onnx_files["lr_tensor"], path, tmp_path))
    assert "the later part of the table by time (1000 rows, 0 frauds)" in err
    assert "needs at least 3 frauds" in err
