"""Small walks over an ONNX graph that export's rewrites share."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def walk(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in (*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])):
                yield from walk(sub)


def names(graph: onnx.GraphProto) -> Iterator[str]:
    for g in walk(graph):
        for node in g.node:
            yield from node.input
            yield from node.output
        for value in (*g.input, *g.output, *g.value_info):
            yield value.name
        for tensor in g.initializer:
            yield tensor.name


def unique(graph: onnx.GraphProto, stem: str) -> str:
    """`stem`, or `stem__1`, `stem__2`, ...: the first no tensor or node of the graph uses."""
    taken = set(names(graph))
    name, index = stem, 0
    while name in taken:
        index += 1
        name = f"{stem}__{index}"
    return name


def prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes no graph output needs any more, then the tensors only they used."""
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):  # a valid graph lists producers before consumers
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)  # "": an omitted input
            for attribute in node.attribute:  # names a subgraph reads from the outer scope
                for sub in (*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])):
                    needed.update(names(sub))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)
