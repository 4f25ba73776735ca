"""The calibration folded into an ONNX graph computes what training/calibration.py does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.artifact import INPUT_NAME, OPSET, OUTPUT_NAME
from export.calibration import UNCALIBRATED, fold
from training import calibration


def probability_graph() -> onnx.ModelProto:
    """features (N, 1) -> Sigmoid -> fraud_probability (N, 1): scores spread over (0, 1)."""
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", [INPUT_NAME], [OUTPUT_NAME])],
        "probability",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def served(proto: onnx.ModelProto, logits: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: logits.reshape(-1, 1)})[0].ravel()


# Logits from far below to far above: float32 sigmoids of exactly 0 and 1 included.
LOGITS = np.concatenate([[-200.0], np.linspace(-30, 30, 4001), [200.0]]).astype(np.float32)


def raw_scores() -> np.ndarray:
    return served(probability_graph(), LOGITS).astype(np.float64)


def fitted(method: str) -> dict[str, object]:
    rng = np.random.default_rng(0)
    scores = rng.beta(0.3, 3.0, 30_000)
    truth = calibration.sigmoid(0.9 * calibration.logit(scores) - 1.2)
    labels = (rng.random(len(scores)) < truth).astype(np.int64)
    return calibration.FITS[method](scores, labels)


@pytest.mark.parametrize("method", calibration.METHODS)
def test_the_folded_graph_matches_the_numpy_map(method: str) -> None:
    spec = fitted(method)
    got = served(fold(probability_graph(), spec), LOGITS)
    expected = calibration.apply(spec, raw_scores())
    assert np.max(np.abs(got - expected)) <= 1e-6
    assert got.min() >= 0.0 and got.max() <= 1.0
    # The map is monotone: wherever the raw score rises clearly, the served one rises too.
    # (Not at every step: onnxruntime's Sigmoid is accurate to about 1e-7, not to the last
    # bit, and near 1 the map's slope turns such a wobble into a few 1e-7.)
    raw = raw_scores()
    rising = np.diff(raw) > 1e-5
    assert rising.sum() > 900
    if method == "platt":
        assert np.all(np.diff(got)[rising] > 0)
    else:  # flat between knots of equal height
        assert np.all(np.diff(got)[rising] >= 0) and np.sum(np.diff(got)[rising] > 0) > 10
    assert np.max(np.abs(got - raw_scores())) > 1e-2


def test_the_contract_names_stay_and_the_raw_output_is_renamed() -> None:
    proto = fold(probability_graph(), fitted("platt"))
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert proto.graph.node[0].output == [UNCALIBRATED]
    assert proto.graph.node[-1].output == [OUTPUT_NAME]


def test_none_leaves_the_graph_alone_and_unknown_is_refused() -> None:
    proto = probability_graph()
    before = proto.SerializeToString()
    assert fold(proto, {"method": "none"}).SerializeToString() == before
    with pytest.raises(ValueError, match="unknown calibration method 'beta'"):
        fold(probability_graph(), {"method": "beta"})


def test_an_isotonic_map_of_one_knot_is_a_constant() -> None:
    got = served(fold(probability_graph(), {"method": "isotonic", "x": [0.3], "y": [0.07]}), LOGITS)
    np.testing.assert_allclose(got, 0.07, atol=1e-7)
