"""Fold a training run's calibration (training/calibration.py) into the ONNX graph.

The graph's probability becomes the calibrated one: the members' average is renamed and the
map is appended after it, in float32, so the server serves probabilities with no code of its
own and every check of export (parity, reference scores, samples) sees what will be served.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.artifact import OUTPUT_NAME
from export.graphs import names, unique
from training.calibration import EPSILON, METHODS

UNCALIBRATED = "uncalibrated_probability"


def fold(proto: onnx.ModelProto, spec: dict[str, object]) -> onnx.ModelProto:
    """The graph with `spec` applied to its output; unchanged for method "none"."""
    method = spec.get("method")
    if method == "none":
        return proto
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    graph = proto.graph
    if [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ValueError(f"calibration expects one output {OUTPUT_NAME!r}")
    raw = unique(graph, UNCALIBRATED)
    for node in graph.node:
        node.output[:] = [raw if n == OUTPUT_NAME else n for n in node.output]
        node.input[:] = [raw if n == OUTPUT_NAME else n for n in node.input]
    for value in graph.value_info:
        if value.name == OUTPUT_NAME:
            value.name = raw
    if method == "platt":
        nodes, constants = platt(raw, float(spec["a"]), float(spec["b"]))  # type: ignore[arg-type]
    else:
        nodes, constants = isotonic(raw, spec["x"], spec["y"])  # type: ignore[arg-type]
    taken = set(names(graph))
    clash = taken.intersection(c.name for c in constants)
    if clash:
        raise ValueError(f"the graph already has tensors named {sorted(clash)}")
    graph.initializer.extend(constants)
    graph.node.extend(nodes)
    return proto


def constant(name: str, value: float | Sequence[float] | np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def platt(raw: str, a: float, b: float) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """sigmoid(a * (log(p) - log(1 - p)) + b), p clipped to [EPSILON, 1 - EPSILON]."""
    c = "calibration_platt_"
    constants = [
        constant(c + "low", EPSILON),
        constant(c + "high", 1.0 - EPSILON),
        constant(c + "one", 1.0),
        constant(c + "a", a),
        constant(c + "b", b),
    ]
    nodes = [
        helper.make_node("Clip", [raw, c + "low", c + "high"], [c + "p"]),
        helper.make_node("Log", [c + "p"], [c + "log_p"]),
        helper.make_node("Sub", [c + "one", c + "p"], [c + "q"]),
        helper.make_node("Log", [c + "q"], [c + "log_q"]),
        helper.make_node("Sub", [c + "log_p", c + "log_q"], [c + "logit"]),
        helper.make_node("Mul", [c + "logit", c + "a"], [c + "scaled"]),
        helper.make_node("Add", [c + "scaled", c + "b"], [c + "z"]),
        helper.make_node("Sigmoid", [c + "z"], [OUTPUT_NAME]),
    ]
    return nodes, constants


def isotonic(
    raw: str, x: Sequence[float], y: Sequence[float]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Straight lines between the knots, flat outside them, as numpy.interp draws them:
    y0 + sum over segments i of slope_i * (clip(p, x_i, x_i+1) - x_i), with the segments as
    one axis: (N, 1) against (K,) broadcasts to (N, K), and a MatMul sums it to (N, 1)."""
    xs = np.asarray(x, np.float64)
    ys = np.asarray(y, np.float64)
    if len(xs) != len(ys) or len(xs) == 0 or np.any(np.diff(xs) < 0):
        raise ValueError("isotonic knots must be as many x as y, x non-decreasing")
    c = "calibration_isotonic_"
    # A segment of no width adds nothing; float32 may also merge two close knots into one.
    width = np.diff(xs.astype(np.float32)).astype(np.float64)
    keep = width > 0
    low, high = xs[:-1][keep], xs[1:][keep]
    slopes = np.diff(ys)[keep] / width[keep]
    constants = [
        constant(c + "low", low),
        constant(c + "high", high),
        constant(c + "slopes", slopes.reshape(-1, 1)),
        constant(c + "start", ys[0]),
        constant(c + "zero", 0.0),
        constant(c + "one", 1.0),
    ]
    if not keep.any():
        # One knot (every validation score the same): a constant probability.
        constants[2] = constant(c + "slopes", np.zeros((1, 1)))
        constants[0] = constant(c + "low", [xs[0]])
        constants[1] = constant(c + "high", [xs[0]])
    nodes = [
        helper.make_node("Max", [raw, c + "low"], [c + "above"]),
        helper.make_node("Min", [c + "above", c + "high"], [c + "inside"]),
        helper.make_node("Sub", [c + "inside", c + "low"], [c + "run"]),
        helper.make_node("MatMul", [c + "run", c + "slopes"], [c + "rise"]),
        helper.make_node("Add", [c + "rise", c + "start"], [c + "sum"]),
        # The float32 sum may pass 1 (or 0) by a rounding; a probability may not.
        helper.make_node("Clip", [c + "sum", c + "zero", c + "one"], [OUTPUT_NAME]),
    ]
    return nodes, constants
