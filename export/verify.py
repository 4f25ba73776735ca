"""Prove an ONNX artifact before it is written: well-formed, a real LSTM op, parity with Keras."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from export.artifact import INPUT_NAME, OPSET, OUTPUT_NAME
from training.calibration import apply as apply_calibration
from training.preprocessing import Preprocessing

PARITY_TOLERANCE = 1e-5
# The calibration map's own float32 arithmetic in the graph, beside numpy's float64.
MAP_SLACK = 1e-6
PARITY_BATCH_SIZES = (1, 7, 64)
FORBIDDEN_OPS = ("Loop", "Scan")
# Rows copied with holes in them to prove the graph's fill of missing inputs.
HOLED_ROWS = 64


class VerificationError(RuntimeError):
    pass


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: dict[int, float]  # batch size -> worst difference
    rows: dict[int, int]


def check_ops(ops: set[str]) -> None:
    if "LSTM" not in ops:
        raise VerificationError(f"no ONNX LSTM op in the graph; ops: {sorted(ops)}")
    loops = ops.intersection(FORBIDDEN_OPS)
    if loops:
        raise VerificationError(f"the graph holds {sorted(loops)}: the LSTM was unrolled")


def check_graph(proto: onnx.ModelProto) -> None:
    onnx.checker.check_model(proto, full_check=True)
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise VerificationError(f"opset {opsets}, expected {OPSET}")
    check_ops({node.op_type for node in proto.graph.node})
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise VerificationError(
            f"graph signature {inputs} -> {outputs}, expected [{INPUT_NAME}] -> [{OUTPUT_NAME}]"
        )
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if batch_dim.HasField("dim_value"):
        raise VerificationError("the batch dimension is fixed; it must be dynamic")


def with_missing_cells(prep: Preprocessing, raw_rows: np.ndarray) -> np.ndarray:
    """The rows, and when the graph fills missing inputs, copies of some of them with holes:
    row i loses feature i mod F (NaN, or +-inf every third row), and one row loses all. The
    fill is then proven at every export, even when the test period held no missing cell."""
    if not prep.fill_values or len(raw_rows) == 0:
        return raw_rows
    n_features = len(prep.feature_names)
    holed = raw_rows[: max(HOLED_ROWS, n_features)].copy()
    blanks = np.resize(np.array([np.nan, np.nan, np.inf, np.nan, np.nan, -np.inf]), len(holed))
    holed[np.arange(len(holed)), np.arange(len(holed)) % n_features] = blanks
    holed[-1] = np.nan
    return np.concatenate([raw_rows, holed])


def calibration_of(calibration: dict[str, object] | None) -> bool:
    return calibration is not None and calibration.get("method", "none") != "none"


def allowed(
    raw: np.ndarray, calibration: dict[str, object] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Where onnxruntime's answer may lie: the map of Keras's raw score +- the tolerance. The
    map is monotone, so the ends of that interval bound it; where it is steep (an isotonic step
    between two close validation scores) float32's last digits move the calibrated answer much
    more than the raw score's, and it is the raw score the graph must get right."""
    if not calibration_of(calibration):
        return raw - PARITY_TOLERANCE, raw + PARITY_TOLERANCE
    assert calibration is not None
    below = apply_calibration(calibration, np.clip(raw - PARITY_TOLERANCE, 0.0, 1.0))
    above = apply_calibration(calibration, np.clip(raw + PARITY_TOLERANCE, 0.0, 1.0))
    # Platt's slope may be negative (a model that ranks backwards): the ends swap.
    return np.minimum(below, above) - MAP_SLACK, np.maximum(below, above) + MAP_SLACK


def check_parity(
    proto: onnx.ModelProto,
    keras_model: object,
    prep: Preprocessing,
    raw_rows: np.ndarray,
    calibration: dict[str, object] | None = None,
) -> ParityReport:
    """Keras on numpy-preprocessed rows, then the run's calibration in numpy, vs onnxruntime
    on the same rows, raw: the folded map is proven with the rest of the graph."""
    raw_rows = with_missing_cells(prep, raw_rows.astype(np.float32))
    if not prep.fill_values and not np.all(np.isfinite(raw_rows)):
        raise VerificationError(
            "the test rows hold missing (non-finite) values, but the model fills none"
        )
    expected = keras_model.predict(
        prep.transform(raw_rows),
        batch_size=4096,  # type: ignore[attr-defined]
        verbose=0,
    ).ravel()
    if not np.all(np.isfinite(expected)):
        raise VerificationError("Keras gives non-finite scores on the test rows")
    low, high = allowed(expected.astype(np.float64), calibration)
    if calibration_of(calibration):
        expected = apply_calibration(calibration, expected)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst: dict[int, float] = {}
    rows: dict[int, int] = {}
    for batch in PARITY_BATCH_SIZES:
        got = np.concatenate(
            [
                session.run([OUTPUT_NAME], {INPUT_NAME: raw_rows[i : i + batch]})[0].ravel()
                for i in range(0, len(raw_rows), batch)
            ]
        )
        worst[batch] = float(np.max(np.abs(got - expected)))
        rows[batch] = len(raw_rows)
        # Written so that a NaN fails too.
        if not np.all((got >= low) & (got <= high)):
            raise VerificationError(
                f"parity at batch {batch}: max |keras - onnx| = {worst[batch]:.3g}, more than "
                f"{PARITY_TOLERANCE} of raw score"
                + (" through the calibration map" if calibration_of(calibration) else "")
            )
    return ParityReport(worst, rows)
