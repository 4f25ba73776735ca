"""Rewrite an inspected graph to the contract: one input `features` (None, F) and one
float32 output `fraud_probability` (N, 1), the label outputs and the nodes only they needed
dropped. No file I/O here.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from export.artifact import INPUT_NAME, OPSET, OUTPUT_NAME
from export.graphs import names as _names
from export.graphs import prune as _prune
from export.graphs import unique as _unique
from export.graphs import walk as _walk
from export.package.signature import PackageError, Signature, first_line


def adapt(proto: onnx.ModelProto, signature: Signature) -> onnx.ModelProto:
    """A copy of the graph taking `features` (None, F) and giving `fraud_probability` (N, 1)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    _tidy_opsets(model)
    probability = signature.probability
    source = probability.tensor  # followed through the renames below
    if signature.input_name != INPUT_NAME:
        moved = _free_name(graph, INPUT_NAME)
        source = moved if source == INPUT_NAME else source
        _rename(graph, signature.input_name, INPUT_NAME)
        source = INPUT_NAME if source == signature.input_name else source
    if probability.column is not None or source != OUTPUT_NAME:
        moved = _free_name(graph, OUTPUT_NAME)
        source = moved if source == OUTPUT_NAME else source
        graph.node.extend(_probability_nodes(graph, source, probability.column))
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param or "N"
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, 1]))
    _prune(graph)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # the checker and shape inference raise several kinds
        raise PackageError(f"the rewritten graph does not check: {first_line(exc)}") from None
    return model


def _probability_nodes(
    graph: onnx.GraphProto, source: str, column: int | None
) -> list[onnx.NodeProto]:
    if column is None:
        return [helper.make_node("Identity", [source], [OUTPUT_NAME])]
    index = _unique(graph, "fraud_column")
    return [
        helper.make_node(
            "Constant",
            [],
            [index],
            value=helper.make_tensor(index, TensorProto.INT64, [1], [column]),
        ),
        # Gather with indices [c] on axis 1 keeps the rank: (N, 2) -> (N, 1). Unlike Slice
        # and Unsqueeze, its signature is the same in every opset.
        helper.make_node("Gather", [source, index], [OUTPUT_NAME], axis=1),
    ]


def _tidy_opsets(model: onnx.ModelProto) -> None:
    """One import per domain (skl2onnx can list one twice), and a default domain for Gather."""
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    # onnxmltools' tree graphs import ai.onnx.ml alone.
    versions.setdefault("", OPSET)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(versions.items()))


def _free_name(graph: onnx.GraphProto, name: str) -> str:
    """Move a tensor already called `name` out of the way of the contract's names; returns
    its new name (or `name` when nothing was called so)."""
    if name not in set(_names(graph)):
        return name
    moved = _unique(graph, name)
    _rename(graph, name, moved)
    return moved


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for g in _walk(graph):
        for node in g.node:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]
        for value in (*g.input, *g.output, *g.value_info, *g.initializer):
            if value.name == old:
                value.name = new
