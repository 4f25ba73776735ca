"""What a binary classifier's ONNX graph from another toolkit takes and gives.

inspect_model() finds the one float32 (None, F) input and the positive-class probability,
wherever the converter put it: a (N, 1) or (N, 2) tensor, or skl2onnx's ZipMap (a sequence
of maps, whose input is the (N, 2) tensor); or says why the model does not fit. No file I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

ML_DOMAIN = "ai.onnx.ml"
# Where a converter or an earlier packaging may have written the feature order.
FEATURE_NAME_KEYS = ("feature_names", "features")
# ai.onnx.ml attributes holding a classifier's class labels, in column order.
CLASS_LABEL_ATTRIBUTES = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")
# A class label that means fraud (the table's label 1).
POSITIVE_LABELS = (1, "1", "true", "True", "fraud")


class PackageError(ValueError):
    """A model or table that cannot be packaged. The message is the whole one-line reason."""


@dataclass(frozen=True)
class Probability:
    """Where the positive-class probability is: a column of `tensor`, or all of it (N, 1)."""

    output: str  # the graph output it was found through (a ZipMap's output, or the tensor)
    tensor: str  # the float tensor with the probabilities
    column: int | None  # None when the tensor is (N, 1)
    classes: tuple[int | str, ...] | None  # the class labels in column order, when stated


@dataclass(frozen=True)
class Signature:
    input_name: str
    n_features: int
    feature_names: tuple[str, ...] | None  # as the model file states them, if it does
    probability: Probability
    dropped_outputs: tuple[str, ...]
    opset: int  # of the default domain; 0 when the graph imports none
    producer: tuple[str, str]  # (producer_name, producer_version)


def default_opset(proto: onnx.ModelProto) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions, default=0)


def inspect_model(proto: onnx.ModelProto, output: str | None = None) -> Signature:
    """The model's input and probability output, or PackageError saying why it does not fit."""
    input_name, n_features = _check_input(proto)
    probability = _choose(_candidates(proto), proto, output)
    dropped = tuple(o.name for o in proto.graph.output if o.name != probability.output)
    return Signature(
        input_name=input_name,
        n_features=n_features,
        feature_names=_stated_feature_names(proto),
        probability=probability,
        dropped_outputs=dropped,
        opset=default_opset(proto),
        producer=(proto.producer_name, proto.producer_version),
    )


def check_features(signature: Signature, names: Sequence[str]) -> None:
    """The model's width (and its feature names, when it states them) against the table's."""
    if signature.n_features != len(names):
        raise PackageError(
            f"the model takes {signature.n_features} features (input {signature.input_name!r} "
            f"is (None, {signature.n_features})), but the table gives {len(names)}: "
            f"{', '.join(names)}; pass --features with the model's columns in its order"
        )
    stated = signature.feature_names
    if stated is not None and tuple(stated) != tuple(names):
        how = "in another order" if sorted(stated) == sorted(names) else "other features"
        raise PackageError(
            f"the model names its features {', '.join(stated)} ({how} than the table's "
            f"{', '.join(names)}); pass --features in the model's order"
        )


def _check_input(proto: onnx.ModelProto) -> tuple[str, int]:
    graph = proto.graph
    # Before IR 4, initializers were listed among the inputs too; those are not fed.
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise PackageError(
            f"the model has {len(inputs)} inputs ({names}); it needs exactly one, "
            "a (None, F) float32 tensor of all the features"
        )
    value = inputs[0]
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise PackageError(f"input {value.name!r} is a {kind}, not a (None, F) float32 tensor")
    tensor = value.type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else None
        raise PackageError(
            f"input {value.name!r} takes {dtype or 'an unknown type'}, not float32; "
            "convert the model with a float32 input (e.g. FloatTensorType([None, F]))"
        )
    if not tensor.HasField("shape") or len(tensor.shape.dim) != 2:
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else "unknown"
        raise PackageError(
            f"input {value.name!r} has rank {rank}; it must be (None, F): rows by features"
        )
    batch, width = tensor.shape.dim
    if batch.HasField("dim_value"):
        raise PackageError(
            f"input {value.name!r} has a fixed batch dimension of {batch.dim_value}; it must "
            "be dynamic (None), or the server could score only that many rows at once"
        )
    if not width.HasField("dim_value") or width.dim_value < 1:
        raise PackageError(
            f"input {value.name!r} has no fixed feature dimension ({width.dim_param or '?'}); "
            "convert it with the number of features, (None, F)"
        )
    return value.name, int(width.dim_value)


def _stated_feature_names(proto: onnx.ModelProto) -> tuple[str, ...] | None:
    meta = {p.key: p.value for p in proto.metadata_props}
    for key in FEATURE_NAME_KEYS:
        if key in meta:
            try:
                names = json.loads(meta[key])
            except ValueError:
                names = meta[key].split(",")
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                return tuple(n.strip() for n in names)
    return None


@dataclass(frozen=True)
class _Survey:
    candidates: list[Probability]
    reasons: list[str]  # why other outputs are not probabilities


def _candidates(proto: onnx.ModelProto) -> _Survey:
    graph = proto.graph
    producers = {name: node for node in graph.node for name in node.output}
    models = [n for n in graph.node if n.domain == ML_DOMAIN]
    classifiers = [n for n in models if n.op_type.endswith("Classifier")]
    regressors = [n for n in models if n.op_type.endswith("Regressor")]
    stated = [labels for n in classifiers if (labels := _class_labels(n)) is not None]
    # One classifier's labels name the columns of its probability tensor.
    classes = stated[0] if len(stated) == 1 else None
    found: list[Probability] = []
    reasons: list[str] = []
    for value in graph.output:
        kind = value.type.WhichOneof("value")
        if kind == "sequence_type":
            node = producers.get(value.name)
            if node is None or node.op_type != "ZipMap":
                reasons.append(f"{value.name!r} is a sequence not made by a ZipMap")
                continue
            labels = _class_labels(node)
            found.append(_columns(value.name, node.input[0], labels, len(labels or ()), reasons))
        elif kind == "tensor_type":
            tensor = value.type.tensor_type
            if tensor.elem_type != TensorProto.FLOAT:
                continue  # a label output (int64 or string): dropped
            dims = tensor.shape.dim if tensor.HasField("shape") else []
            if len(dims) != 2:
                reasons.append(f"{value.name!r} is a float tensor of rank {len(dims)}, not (N, k)")
                continue
            width = dims[1].dim_value if dims[1].HasField("dim_value") else None
            if width == 1:
                if regressors and not classifiers:
                    ops = ", ".join(sorted({n.op_type for n in regressors}))
                    reasons.append(
                        f"the model is a regressor ({ops}): its output {value.name!r} is a "
                        "predicted value, not a class probability"
                    )
                    continue
                found.append(Probability(value.name, value.name, None, None))
                continue
            if width is None and classes is not None:
                width = len(classes)
            found.append(_columns(value.name, value.name, classes, width, reasons))
    # A ZipMap and the tensor it reads can both be outputs: one candidate, not two.
    unique: dict[str, Probability] = {}
    for candidate in found:
        if candidate.tensor:
            unique.setdefault(candidate.tensor, candidate)
    return _Survey(list(unique.values()), reasons)


def _columns(
    output: str,
    tensor: str,
    classes: tuple[int | str, ...] | None,
    width: int | None,
    reasons: list[str],
) -> Probability:
    """A (N, k) probability tensor's positive column, or an empty Probability and a reason."""
    none = Probability(output, "", None, None)
    if width is None:
        reasons.append(f"{output!r} has a class dimension of unknown size")
        return none
    if width != 2:
        reasons.append(
            f"{output!r} gives {width} class probabilities: the model has {width} classes, "
            "and only a binary classifier (2 classes) can be packaged"
        )
        return none
    if classes is None:
        return Probability(output, tensor, 1, None)  # column 1: the positive class by custom
    positive = [i for i, label in enumerate(classes) if label in POSITIVE_LABELS]
    if len(positive) != 1:
        reasons.append(
            f"{output!r} is for classes {list(classes)}: none is 1 (fraud), so it cannot be "
            "told which column is the probability of fraud; train on 0/1 labels"
        )
        return none
    return Probability(output, tensor, positive[0], classes)


def _class_labels(node: onnx.NodeProto) -> tuple[int | str, ...] | None:
    for attribute in node.attribute:
        if attribute.name in CLASS_LABEL_ATTRIBUTES:
            if attribute.name == "classlabels_strings":
                return tuple(s.decode() for s in attribute.strings)
            return tuple(int(i) for i in attribute.ints)
    return None


def _choose(survey: _Survey, proto: onnx.ModelProto, output: str | None) -> Probability:
    outputs = ", ".join(repr(o.name) for o in proto.graph.output) or "none"
    found = survey.candidates
    if output is not None:
        chosen = [c for c in found if output in (c.output, c.tensor)]
        if not chosen:
            why = "; ".join(r for r in survey.reasons if r.startswith(repr(output)))
            raise PackageError(
                f"--output {output!r} is not a usable probability output "
                f"({why or 'the outputs are ' + outputs})"
            )
        return chosen[0]
    if not found:
        why = "; ".join(survey.reasons) or f"the outputs are {outputs}"
        raise PackageError(
            f"no probability output: {why}; need a float (N, 1) or (N, 2) tensor, "
            "or a ZipMap of 2 classes"
        )
    if len(found) > 1:
        # Converters name it so: skl2onnx and onnxmltools "probabilities", ZipMap's
        # "output_probability"; a name is the only tie-breaker left.
        named = [c for c in found if "prob" in c.output.lower()]
        if len(named) == 1:
            return named[0]
        names = ", ".join(repr(c.output) for c in found)
        raise PackageError(
            f"several outputs could be the probability ({names}); pass --output NAME"
        )
    return found[0]


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
