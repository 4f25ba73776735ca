"""Members fused into one network, and tf2onnx's graph tidied: the same scores, fewer ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.artifact import INPUT_NAME, OUTPUT_NAME
from export.fuse import LSTM_LAYOUTS, FusionError, fuse_members, members_of
from export.tidy import tidy
from export.verify import check_graph, check_parity
from training.config import TrainConfig
from training.preprocessing import Preprocessing

keras = pytest.importorskip("keras")


def ensemble(n_features: int, members: int = 2, **config: object) -> keras.Model:
    """Members of build_model's architecture with random (not initial) weights: zero biases
    and a fresh forget gate would hide a bias or gate put in the wrong place."""
    from training.model import average_members, build_model

    sizes: dict[str, object] = {
        "conv_filters": 6,
        "lstm_units": 5,
        "dense_units": 4,
        "wide_units": 3,
    }
    settings = TrainConfig(out_dir="unused", **(sizes | config))  # type: ignore[arg-type]
    rng = np.random.default_rng(7)
    built = []
    for index in range(members):
        member = build_model(n_features, settings, name=f"m{index}")
        member.set_weights([rng.normal(0, 0.5, w.shape) for w in member.get_weights()])
        built.append(member)
    return average_members(built, n_features)


def prep_for(n_features: int, log: tuple[int, ...] = ()) -> Preprocessing:
    rng = np.random.default_rng(3)
    rows = rng.normal(2.0, 3.0, (500, n_features)).astype(np.float32)
    names = tuple(f"f{i}" for i in range(n_features))
    return Preprocessing.fit(rows, names, tuple(names[i] for i in log), None)


def raw_rows(n_features: int, count: int = 300) -> np.ndarray:
    return np.random.default_rng(11).normal(2.0, 4.0, (count, n_features)).astype(np.float32)


def onnx_scores(proto: onnx.ModelProto, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: rows})[0]).ravel()


def ops(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


# An odd width pools with padding at the end, an even one without: both must line up.
@pytest.mark.parametrize("n_features", [7, 10])
@pytest.mark.parametrize("lstm", LSTM_LAYOUTS)
def test_the_fused_network_scores_as_the_average_of_its_members(n_features: int, lstm: str) -> None:
    model = ensemble(n_features, members=3)
    fused = fuse_members(model, n_features, lstm)
    prep = prep_for(n_features)
    x = prep.transform(raw_rows(n_features))
    expected = model.predict(x, verbose=0).ravel()
    assert np.ptp(expected) > 0.05  # scores that differ from row to row
    np.testing.assert_allclose(fused.predict(x, verbose=0).ravel(), expected, atol=1e-6)
    # One Conv and one head for all three members; the LSTM once (block) or once each.
    layers = [type(layer).__name__ for layer in fused.layers]
    assert layers.count("Conv1D") == 1 and layers.count("LSTM") == (1 if lstm == "block" else 3)


def test_without_a_wide_branch_it_fuses_too() -> None:
    model = ensemble(8, wide_units=0)
    x = prep_for(8).transform(raw_rows(8))
    fused = fuse_members(model, 8)
    assert "wide" not in [layer.name for layer in fused.layers]
    np.testing.assert_allclose(
        fused.predict(x, verbose=0).ravel(), model.predict(x, verbose=0).ravel(), atol=1e-6
    )


def test_one_model_is_left_as_it_is() -> None:
    single = members_of(ensemble(6))[0]
    assert fuse_members(single, 6) is single


def test_a_model_of_another_shape_is_refused_by_name() -> None:
    inputs = keras.Input(shape=(4,), name="features")
    members = [
        keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs), name=f"d{i}")
        for i in range(2)
    ]
    averaged = keras.Model(inputs, keras.layers.Average()([m(inputs) for m in members]))
    with pytest.raises(FusionError, match="d0: not the LSTM-CNN"):
        fuse_members(averaged, 4)
    from training.model import build_model

    different = ensemble(5)
    other = build_model(5, TrainConfig(out_dir="unused", lstm_units=7), name="other")
    mixed_inputs = keras.Input(shape=(5,), name="features")
    mixed = keras.Model(
        mixed_inputs,
        keras.layers.Average()([members_of(different)[0](mixed_inputs), other(mixed_inputs)]),
    )
    with pytest.raises(FusionError, match="members differ in shape"):
        fuse_members(mixed, 5)


@pytest.mark.parametrize("log", [(), (1, 4), tuple(range(9))])
def test_the_exported_graph_is_smaller_and_keeps_parity(log: tuple[int, ...]) -> None:
    from export.convert import convert

    model, prep = ensemble(9), prep_for(9, log)
    plain = convert(model, prep)
    fused = convert(fuse_members(model, 9), prep)
    check_graph(fused)
    report = check_parity(fused, model, prep, raw_rows(9, 200))
    assert max(report.max_abs_diff.values()) <= 1e-5
    assert ops(fused).count("LSTM") == 2 and ops(fused).count("Conv") == 1
    assert len(ops(fused)) < len(ops(plain)) * 0.75  # both tidied: what fusing saves
    # What the tidy pass takes out: the state built at run time, the slice, Min/Max.
    assert not {"Shape", "Expand", "Min", "Max"} & set(ops(fused)) and "Clip" in ops(fused)
    # The log appears only when some feature takes it.
    assert ("Log" in ops(fused)) == bool(log)
    conv = next(node for node in fused.graph.node if node.op_type == "Conv")
    assert len(conv.input) == 3  # the bias inside the Conv, where onnxruntime fuses the ReLU


def lstm_graph(initial: float, lengths: bool = False) -> onnx.ModelProto:
    """An LSTM whose initial state is Expand(constant, shape of the batch), as tf2onnx
    writes it, then its last step sliced out of the output sequence."""
    hidden, width, steps = 3, 2, 4
    rng = np.random.default_rng(5)

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [
        const("W", rng.normal(size=(1, 4 * hidden, width)).astype(np.float32)),
        const("R", rng.normal(size=(1, 4 * hidden, hidden)).astype(np.float32)),
        const("fill", np.array(initial, np.float32)),
        const("one", np.array([1], np.int64)),
        const("zero", np.array([0], np.int64)),
        const("last", np.array([-1], np.int64)),
        const("end", np.array([2**31 - 1], np.int64)),
        const("hidden", np.array([hidden], np.int64)),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "one", "end"], ["batch"]),  # (batch, width)
        helper.make_node("Slice", ["batch", "zero", "one"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "hidden"], ["state_shape"], axis=0),
        helper.make_node("Expand", ["fill", "state_shape"], ["state2"]),
        helper.make_node("Unsqueeze", ["state2", "zero"], ["state"]),
        helper.make_node(
            "LSTM",
            ["x", "W", "R", "", "lens" if lengths else "", "state", "state"],
            ["Y", "Yh"],
            hidden_size=hidden,
        ),
        helper.make_node("Squeeze", ["Y", "one"], ["seq"]),
        helper.make_node("Slice", ["seq", "last", "end", "zero"], ["step"]),
        helper.make_node("Squeeze", ["step", "zero"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, None, width])]
        + ([helper.make_tensor_value_info("lens", TensorProto.INT32, [None])] if lengths else []),
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, hidden])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("initial", [0.0, 0.5])
def test_tidy_drops_only_a_zero_initial_state(initial: float) -> None:
    proto = lstm_graph(initial)
    tidied = tidy(proto)
    onnx.checker.check_model(tidied, full_check=True)
    x = np.random.default_rng(1).normal(size=(4, 6, 2)).astype(np.float32)

    def run(model: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(model.SerializeToString())
        return np.asarray(session.run(["out"], {"x": x})[0])

    np.testing.assert_allclose(run(tidied), run(proto), atol=1e-6)
    lstm = next(node for node in tidied.graph.node if node.op_type == "LSTM")
    assert ("Expand" in ops(tidied)) == (initial != 0.0)
    assert len(lstm.input) == (7 if initial else 3)
    # Either way the last state comes from Y_h, and Y is not computed for nothing.
    assert ops(tidied).count("Slice") == (2 if initial else 0) and lstm.output[0] == ""


def test_tidy_keeps_the_slice_when_rows_have_their_own_lengths() -> None:
    """With sequence_lens, the output's last step is not each row's last state (Y_h)."""
    proto = lstm_graph(0.0, lengths=True)
    tidied = tidy(proto)
    x = np.random.default_rng(2).normal(size=(4, 3, 2)).astype(np.float32)
    feeds = {"x": x, "lens": np.array([4, 2, 1], np.int32)}

    def run(model: onnx.ModelProto) -> np.ndarray:
        return np.asarray(ort.InferenceSession(model.SerializeToString()).run(["out"], feeds)[0])

    np.testing.assert_allclose(run(tidied), run(proto), atol=1e-6)
    assert "Squeeze" in ops(tidied) and ops(tidied).count("Slice") == 1


def test_tidy_leaves_min_then_max_alone_when_the_bounds_cross() -> None:
    """Max(Min(x, 1), 2) is 2 everywhere; Clip(x, 2, 1) would not be."""
    const = [
        numpy_helper.from_array(np.array(1.0, np.float32), "high"),
        numpy_helper.from_array(np.array(2.0, np.float32), "low"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Min", ["x", "high"], ["m"]),
            helper.make_node("Max", ["m", "low"], ["out"]),
        ],
        "crossed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None])],
        const,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    tidied = tidy(proto)
    assert ops(tidied) == ["Min", "Max"]
    x = np.array([-5.0, 1.5, 9.0], np.float32)
    session = ort.InferenceSession(tidied.SerializeToString())
    assert session.run(["out"], {"x": x})[0].tolist() == [2.0, 2.0, 2.0]
