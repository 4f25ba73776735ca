"""gRPC tensors: a ModelInferRequest -> rows, probabilities -> a ModelInferResponse.

The input travels either in `contents.fp32_contents` or as little-endian bytes in
`raw_input_contents`; the answer comes back the same way, so that a client reading raw
outputs (Triton's) and one reading typed contents both get what they sent. Pure functions;
errors are InvalidRequest, answered INVALID_ARGUMENT, with HTTP's wording where the two
protocols agree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from server.errors import InvalidRequest
from server.grpcapi.messages import ModelInferResponse
from server.tensors import DATATYPE

# The contents fields that hold another datatype's values.
OTHER_CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp64_contents",
    "bytes_contents",
)


class GrpcInfer(NamedTuple):
    id: str
    rows: np.ndarray  # (n, F) float32
    outputs: tuple[str, ...]  # in the order asked for
    raw: bool  # the input came as raw bytes: answer in raw_output_contents


def parse_infer(
    request: Any,
    input_name: str,
    n_features: int,
    output_names: tuple[str, ...],
    max_rows: int,
    missing_allowed: bool = False,
) -> GrpcInfer:
    """With `missing_allowed` (a model whose graph fills missing inputs), NaN marks a
    missing value."""
    if len(request.inputs) != 1:
        raise InvalidRequest(f"inputs must hold exactly one tensor, {input_name!r}")
    tensor = request.inputs[0]
    if tensor.name != input_name:
        raise InvalidRequest(f"the input tensor must be named {input_name!r}")
    if tensor.datatype != DATATYPE:
        raise InvalidRequest(f"the input datatype must be {DATATYPE}")
    shape = list(tensor.shape)
    if len(shape) != 2 or shape[1] != n_features or not 1 <= shape[0] <= max_rows:
        raise InvalidRequest(
            f"the input shape must be [n, {n_features}] with 1 <= n <= {max_rows}, got {shape!r}"
        )
    rows, size = shape[0], shape[0] * n_features
    contents = tensor.contents
    for field in OTHER_CONTENTS:
        if len(getattr(contents, field)):
            raise InvalidRequest(
                f"the input's values must be in contents.fp32_contents or raw_input_contents "
                f"(datatype {DATATYPE}), not contents.{field}"
            )
    raw = len(request.raw_input_contents) > 0
    if raw:
        if len(contents.fp32_contents):
            raise InvalidRequest("the input has both contents and raw_input_contents")
        if len(request.raw_input_contents) != 1:
            raise InvalidRequest("raw_input_contents must hold one entry per input: one")
        data = request.raw_input_contents[0]
        if len(data) != size * 4:
            raise InvalidRequest(
                f"raw_input_contents[0] must be {size * 4} bytes (shape {shape} of "
                f"{DATATYPE}), got {len(data)}"
            )
        values = np.frombuffer(data, dtype="<f4").reshape(rows, n_features).astype(np.float32)
    else:
        if len(contents.fp32_contents) != size:
            raise InvalidRequest(
                f"contents.fp32_contents must hold {size} numbers (shape {shape}), "
                f"got {len(contents.fp32_contents)}"
            )
        values = np.asarray(contents.fp32_contents, dtype=np.float32).reshape(rows, n_features)
    finite = np.isfinite(values)
    if not finite.all() and not (missing_allowed and (finite | np.isnan(values)).all()):
        what = "infinite" if missing_allowed else "NaN or infinite"
        raise InvalidRequest(f"the input holds {what} values")
    # None asked for is the first only: the others cost a model run more.
    outputs = output_names[:1]
    if len(request.outputs):
        asked = tuple(output.name for output in request.outputs)
        unknown = [name for name in asked if name not in output_names]
        if unknown:
            raise InvalidRequest(
                f"unknown output {unknown[0]!r}; this model has {list(output_names)}"
            )
        outputs = tuple(dict.fromkeys(asked))
    return GrpcInfer(request.id, values, outputs, raw)


def infer_response(
    name: str, version: str, infer: GrpcInfer, tensors: dict[str, np.ndarray]
) -> Any:
    response = ModelInferResponse(model_name=name, model_version=version, id=infer.id)
    for output in infer.outputs:
        values = tensors[output].astype("<f4", copy=False)
        entry = response.outputs.add(name=output, datatype=DATATYPE, shape=values.shape)
        if infer.raw:
            response.raw_output_contents.append(values.tobytes())
        else:
            entry.contents.fp32_contents.extend(values.reshape(-1).tolist())
    return response
