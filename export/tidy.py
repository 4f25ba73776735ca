"""Rewrites of tf2onnx's output that compute the same values with fewer ops.

For a model this small onnxruntime's time goes mostly to dispatching ops, not to arithmetic,
and tf2onnx spells several things in many ops:
- an LSTM's zero initial state, built from the input's shape at run time (seven ops), and its
  last hidden state, sliced out of the whole output sequence (three): ONNX's LSTM starts from
  zeros when given no state, and hands out its last state itself (Y_h);
- a Conv1D as a 2-D Conv between reshapes, its bias and ReLU on the far side of a Squeeze,
  where onnxruntime cannot fuse them into the Conv;
- a clip as Min then Max, where ONNX has Clip.
Each rewrite matches its pattern exactly or leaves the graph alone; export's parity check
runs on the result.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.graphs import names, prune

# LSTM inputs: X, W, R, B, sequence_lens, initial_h, initial_c, P.
INITIAL_H, INITIAL_C = 5, 6
# Ops that only reshape: a tensor of zeros stays zeros through them.
SHAPE_ONLY = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Identity", "Cast", "Expand"})


def tidy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model with the rewrites applied and what they left unused removed."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type == "LSTM":
            drop_zero_state(node, producers, constants)
    take_last_state(graph, constants)
    prune(graph)
    # Each peephole rewrite changes one spot and says so; run them until none applies.
    while any(rewrite(graph, constants) for rewrite in PEEPHOLES):
        prune(graph)
    return model


def is_zeros(name: str, producers: dict[str, onnx.NodeProto], constants: dict) -> bool:
    """Whether the tensor is all zeros whatever the input: a zero constant, or one passed
    through ops that only reshape or broadcast it."""
    while name not in constants:
        node = producers.get(name)
        if node is None:
            return False
        if node.op_type == "ConstantOfShape":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return value is None or not numpy_helper.to_array(value).any()
        if node.op_type not in SHAPE_ONLY:
            return False
        name = node.input[0]
    return not numpy_helper.to_array(constants[name]).any()


def drop_zero_state(node: onnx.NodeProto, producers: dict, constants: dict) -> None:
    inputs = list(node.input)
    for index in (INITIAL_H, INITIAL_C):
        if index < len(inputs) and inputs[index] and is_zeros(inputs[index], producers, constants):
            inputs[index] = ""  # an omitted optional input: ONNX's LSTM starts from zeros
    while inputs and not inputs[-1]:
        inputs.pop()
    del node.input[:]
    node.input.extend(inputs)


def _int_list(name: str, constants: dict) -> list[int] | None:
    init = constants.get(name)
    return None if init is None else [int(v) for v in numpy_helper.to_array(init).ravel()]


def take_last_state(graph: onnx.GraphProto, constants: dict) -> None:
    """Squeeze(Y, [1]) -> Slice(t = -1) -> Squeeze([0]) on a forward LSTM's output sequence
    becomes Squeeze(Y_h, [0]): the same (batch, hidden) tensor in one op."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    def only_consumer(name: str, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type or name in graph_outputs:
            return None
        return users[0]

    replaced: list[tuple[list[onnx.NodeProto], onnx.NodeProto]] = []
    for lstm in graph.node:
        if lstm.op_type != "LSTM" or len(lstm.output) < 2 or not lstm.output[0]:
            continue
        direction = next((a.s for a in lstm.attribute if a.name == "direction"), b"forward")
        layout = next((a.i for a in lstm.attribute if a.name == "layout"), 0)
        # With sequence_lens, Y_h is each row's own last step, not the sequence's.
        lengths = len(lstm.input) > 4 and lstm.input[4]
        if direction != b"forward" or layout != 0 or lengths:
            continue
        squeeze = only_consumer(lstm.output[0], "Squeeze")
        if squeeze is None or _int_list(squeeze.input[1], constants) != [1]:
            continue
        sliced = only_consumer(squeeze.output[0], "Slice")
        if sliced is None or len(sliced.input) not in (4, 5):
            continue
        starts, ends, axes = (_int_list(n, constants) for n in sliced.input[1:4])
        steps = _int_list(sliced.input[4], constants) if len(sliced.input) == 5 else [1]
        if (starts, axes, steps) != ([-1], [0], [1]) or not ends or ends[0] < 1:
            continue
        last = only_consumer(sliced.output[0], "Squeeze")
        if last is None or _int_list(last.input[1], constants) != [0]:
            continue
        y_h = lstm.output[1] or _fresh(graph, f"{lstm.name or 'lstm'}_Y_h")
        outputs = list(lstm.output)
        outputs[1] = y_h
        del lstm.output[:]
        lstm.output.extend(outputs)
        axes_name = _fresh(graph, f"{lstm.name or 'lstm'}_num_directions_axis")
        graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes_name))
        constants[axes_name] = graph.initializer[-1]
        replacement = helper.make_node(
            "Squeeze", [y_h, axes_name], [last.output[0]], name=f"{lstm.name}_last_state"
        )
        replaced.append(([squeeze, sliced, last], replacement))
    for old, new in replaced:
        position = list(graph.node).index(old[-1])
        graph.node.insert(position, new)
        for node in old:
            graph.node.remove(node)
    # An output sequence no longer read is left unnamed, so that onnxruntime need not fill it.
    read = {name for node in graph.node for name in node.input} | graph_outputs
    for lstm in graph.node:
        if lstm.op_type == "LSTM" and lstm.output and lstm.output[0] not in read | {""}:
            outputs = list(lstm.output)
            outputs[0] = ""
            del lstm.output[:]
            lstm.output.extend(outputs)


class _Uses:
    """Who makes and who reads each tensor, as the graph stands now."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def sole_reader(self, name: str, op_type: str) -> onnx.NodeProto | None:
        readers = self.readers.get(name, [])
        if len(readers) != 1 or readers[0].op_type != op_type or name in self.outputs:
            return None
        return readers[0]


def _fresh(graph: onnx.GraphProto, stem: str) -> str:
    """A tensor name the graph does not use yet."""
    taken = set(names(graph))
    name, n = stem, 1
    while name in taken:
        name, n = f"{stem}_{n}", n + 1
    return name


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def bias_into_conv(graph: onnx.GraphProto, constants: dict) -> bool:
    """Conv -> Squeeze -> Add(per-channel constant) becomes Conv(with bias) -> Squeeze."""
    uses = _Uses(graph)
    for conv in graph.node:
        if conv.op_type != "Conv" or len(conv.input) != 2:
            continue
        squeeze = uses.sole_reader(conv.output[0], "Squeeze")
        if squeeze is None or 1 in (_int_list(squeeze.input[1], constants) or [1]):
            continue
        add = uses.sole_reader(squeeze.output[0], "Add")
        if add is None:
            continue
        bias_name = add.input[1] if add.input[0] == squeeze.output[0] else add.input[0]
        weight = constants.get(conv.input[1])
        if bias_name not in constants or weight is None or add.output[0] in uses.outputs:
            continue
        # tf2onnx's Conv1D: a 2-D Conv (rank-4 weight) whose output loses one spatial axis,
        # 2 or 3, so that the channels stay on axis 1 of a rank-3 result.
        squeezed = _int_list(squeeze.input[1], constants) or []
        if len(weight.dims) != 4 or len(squeezed) != 1 or squeezed[0] % 4 not in (2, 3):
            continue
        bias = numpy_helper.to_array(constants[bias_name])
        channels = weight.dims[0]
        # One value per channel, broadcast along the rest.
        if bias.shape != (1, channels, 1):
            continue
        name = _fresh(graph, f"{conv.name or 'conv'}_bias")
        graph.initializer.append(numpy_helper.from_array(bias.reshape(channels), name))
        constants[name] = graph.initializer[-1]
        conv.input.append(name)
        _rename_input(graph, add.output[0], squeeze.output[0])
        graph.node.remove(add)
        return True
    return False


def relu_across_squeeze(graph: onnx.GraphProto, constants: dict) -> bool:
    """Squeeze(a) -> Relu -> Unsqueeze(a) becomes Relu: elementwise, so shape does not
    matter, and a Relu straight after a Conv is fused into it."""
    uses = _Uses(graph)
    for squeeze in graph.node:
        if squeeze.op_type != "Squeeze" or len(squeeze.input) != 2:
            continue
        relu = uses.sole_reader(squeeze.output[0], "Relu")
        if relu is None:
            continue
        unsqueeze = uses.sole_reader(relu.output[0], "Unsqueeze")
        axes = _int_list(squeeze.input[1], constants)
        if unsqueeze is None or axes is None or _int_list(unsqueeze.input[1], constants) != axes:
            continue
        del relu.input[:]
        relu.input.append(squeeze.input[0])
        _rename_input(graph, unsqueeze.output[0], relu.output[0])
        graph.node.remove(unsqueeze)
        graph.node.remove(squeeze)
        return True
    return False


def reshape_chain(graph: onnx.GraphProto, constants: dict) -> bool:
    """Reshape(Unsqueeze|Reshape|Squeeze(x), constant shape) becomes Reshape(x): only the last
    shape counts, when it names every dimension itself (no 0, which copies one)."""
    uses = _Uses(graph)
    for reshape in graph.node:
        if reshape.op_type != "Reshape":
            continue
        shape = _int_list(reshape.input[1], constants)
        before = uses.producer.get(reshape.input[0])
        if shape is None or 0 in shape or before is None:
            continue
        if before.op_type not in ("Reshape", "Unsqueeze", "Squeeze"):
            continue
        if len(uses.readers.get(before.output[0], [])) != 1:
            continue
        reshape.input[0] = before.input[0]
        return True
    return False


def clip_from_min_max(graph: onnx.GraphProto, constants: dict) -> bool:
    """Max(Min(x, high), low) with scalar constants becomes Clip(x, low, high)."""
    uses = _Uses(graph)
    for low_op in graph.node:
        if low_op.op_type != "Max" or len(low_op.input) != 2:
            continue
        high_op = uses.producer.get(low_op.input[0])
        if high_op is None or high_op.op_type != "Min" or len(high_op.input) != 2:
            continue
        if len(uses.readers.get(high_op.output[0], [])) != 1:
            continue
        low, high = constants.get(low_op.input[1]), constants.get(high_op.input[1])
        if low is None or high is None or list(low.dims) or list(high.dims):
            continue
        # Max(Min(x, h), l) is l everywhere when l > h; Clip would give h.
        if numpy_helper.to_array(low) > numpy_helper.to_array(high):
            continue
        clip = helper.make_node(
            "Clip",
            [high_op.input[0], low_op.input[1], high_op.input[1]],
            [low_op.output[0]],
            name=f"{low_op.name}_clip",
        )
        graph.node.insert(list(graph.node).index(low_op), clip)
        graph.node.remove(low_op)
        graph.node.remove(high_op)
        return True
    return False


PEEPHOLES = (bias_into_conv, relu_across_squeeze, reshape_chain, clip_from_min_max)
