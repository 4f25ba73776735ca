"""Prove an ONNX artifact before it is written: well-formed, a real LSTM op, parity with Keras."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from export.convert import INPUT_NAME, OUTPUT_NAME
from training.preprocessing import Preprocessing

PARITY_TOLERANCE = 1e-5
PARITY_BATCH_SIZES = (1, 7, 64)
# Batch size 1 is a session call per row; this many rows prove it without a long wait.
SINGLE_ROW_LIMIT = 2_000
FORBIDDEN_OPS = ("Loop", "Scan")


class VerificationError(RuntimeError):
    pass


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: dict[int, float]  # batch size -> worst difference
    rows: dict[int, int]


def check_graph(proto: onnx.ModelProto) -> None:
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    if "LSTM" not in ops:
        raise VerificationError(f"no ONNX LSTM op in the graph; ops: {sorted(ops)}")
    loops = ops.intersection(FORBIDDEN_OPS)
    if loops:
        raise VerificationError(f"the LSTM was converted to {sorted(loops)}, not an LSTM op")
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise VerificationError(
            f"graph signature {inputs} -> {outputs}, expected [{INPUT_NAME}] -> [{OUTPUT_NAME}]"
        )
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if batch_dim.HasField("dim_value"):
        raise VerificationError("the batch dimension is fixed; it must be dynamic")


def check_parity(
    proto: onnx.ModelProto, keras_model: object, prep: Preprocessing, raw_rows: np.ndarray
) -> ParityReport:
    """Keras on numpy-preprocessed rows vs onnxruntime on the same rows, raw."""
    raw_rows = raw_rows.astype(np.float32)
    expected = keras_model.predict(
        prep.transform(raw_rows),
        batch_size=4096,  # type: ignore[attr-defined]
        verbose=0,
    ).ravel()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst: dict[int, float] = {}
    rows: dict[int, int] = {}
    for batch in PARITY_BATCH_SIZES:
        limit = SINGLE_ROW_LIMIT if batch == 1 else len(raw_rows)
        subset = raw_rows[:limit]
        got = np.concatenate(
            [
                session.run([OUTPUT_NAME], {INPUT_NAME: subset[i : i + batch]})[0].ravel()
                for i in range(0, len(subset), batch)
            ]
        )
        worst[batch] = float(np.max(np.abs(got - expected[:limit])))
        rows[batch] = len(subset)
        if not np.all(np.isfinite(got)) or worst[batch] > PARITY_TOLERANCE:
            raise VerificationError(
                f"parity at batch {batch}: max |keras - onnx| = "
                f"{worst[batch]:.3g} > {PARITY_TOLERANCE}"
            )
    return ParityReport(worst, rows)
