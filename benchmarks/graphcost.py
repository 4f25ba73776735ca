"""What one model graph costs onnxruntime, beside others, in alternating rounds of one run.

    python -m benchmarks.graphcost --model v1=git:35a8c4e~1:models/creditcard/1 \\
        --model v2=git:HEAD:models/creditcard/2 --model shipped=models/creditcard/4

Each model is a version folder (or a .onnx file), optionally read from a git revision
(`git:REV:PATH`), loaded with the server's own session options. Every round times each model
at each batch size, in alternating order, on real rows of the model's samples; the median over
rounds is printed as microseconds per row, and beside it the median over rounds of its ratio to
the first model in the same round: on a shared machine whose speed drifts, a ratio within one
round moves far less than either time. `--levers` also
times onnxruntime's own options on the last model: the optimisation level, I/O binding with a
preallocated output, and flushing denormals to zero.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.serving import ROOT, shipped_model_dir
from server.scorer import session_options

BATCHES = (1, 8, 32, 64)
INPUT, OUTPUT = "features", "fraud_probability"
ROW = "{:<22}{:>6}" + "{:>16}" * len(BATCHES)

Run = Callable[[np.ndarray], object]


def model_bytes(spec: str) -> bytes:
    """A version folder's or .onnx file's model, from the work tree or `git:REV:PATH`."""
    if spec.startswith("git:"):
        rev, path = spec[4:].split(":", 1)
        if not path.endswith(".onnx"):
            path = f"{path.rstrip('/')}/model.onnx"
        shown = subprocess.run(
            ["git", "show", f"{rev}:{path}"], capture_output=True, cwd=ROOT, check=True
        )
        return shown.stdout
    path = Path(spec)
    return (path if path.suffix == ".onnx" else path / "model.onnx").read_bytes()


def plain_run(session: ort.InferenceSession) -> Run:
    return lambda rows: session.run([OUTPUT], {INPUT: rows})


def bound_run(session: ort.InferenceSession) -> Run:
    """I/O binding: the input bound in place, the output into a buffer kept per batch size."""
    binding = session.io_binding()
    outputs: dict[int, np.ndarray] = {}

    def run(rows: np.ndarray) -> object:
        out = outputs.setdefault(len(rows), np.empty((len(rows), 1), np.float32))
        binding.bind_cpu_input(INPUT, rows)
        binding.bind_output(OUTPUT, "cpu", 0, np.float32, out.shape, out.ctypes.data)
        session.run_with_iobinding(binding)
        return out

    return run


def variants(data: bytes, levers: bool) -> dict[str, Run]:
    def session(options: ort.SessionOptions) -> ort.InferenceSession:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    found = {"": plain_run(session(session_options(1)))}
    if levers:
        extended = session_options(1)
        extended.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        found[" +extended-opt"] = plain_run(session(extended))
        found[" +iobinding"] = bound_run(session(session_options(1)))
        denormal = session_options(1)
        denormal.add_session_config_entry("session.set_denormal_as_zero", "1")
        found[" +denormal-as-zero"] = plain_run(session(denormal))
    return found


def time_per_row(run: Run, rows: np.ndarray, batch: int, budget_s: float) -> float:
    """Median microseconds per row over calls on distinct slices; bounded in calls and time."""
    feeds = [np.ascontiguousarray(np.roll(rows, -i * batch, axis=0)[:batch]) for i in range(16)]
    for feed in feeds:
        run(feed)
    times: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5000 and time.perf_counter() < deadline:
        start = time.perf_counter_ns()
        run(feeds[len(times) % len(feeds)])
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000 / batch


def node_count(data: bytes) -> int:
    import onnx

    return len(onnx.load_from_string(data).graph.node)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="LABEL=folder|file|git:")
    parser.add_argument("--rows", type=Path, help="samples.json whose rows are timed")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--budget-s", type=float, default=0.25, help="per model, batch, round")
    parser.add_argument("--levers", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    models = dict(spec.split("=", 1) for spec in args.model)
    blobs = {label: model_bytes(spec) for label, spec in models.items()}
    labels = list(blobs)
    runs: dict[str, Run] = {}
    for label in labels:
        for suffix, run in variants(blobs[label], args.levers and label == labels[-1]).items():
            runs[label + suffix] = run
    samples = args.rows or shipped_model_dir("creditcard") / "samples.json"
    rows = np.asarray([r["features"] for r in json.loads(samples.read_text())["rows"]], np.float32)
    rows = np.resize(rows, (max(BATCHES) * 16, rows.shape[1]))

    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in runs}
    for number in range(args.rounds):
        order = list(runs) if number % 2 == 0 else list(runs)[::-1]
        for name in order:
            for batch in BATCHES:
                times[name][batch].append(time_per_row(runs[name], rows, batch, args.budget_s))
    medians = {n: {b: statistics.median(t) for b, t in per.items()} for n, per in times.items()}
    first = times[labels[0]]
    ratios = {
        n: {
            b: statistics.median(x / y for x, y in zip(t, first[b], strict=True))
            for b, t in per.items()
        }
        for n, per in times.items()
    }
    print(ROW.format("us per row (x first)", "nodes", *(f"batch {b}" for b in BATCHES)))
    for name, per in medians.items():
        label = next(lab for lab in reversed(labels) if name.startswith(lab))
        cells = [f"{per[b]:.2f} ({ratios[name][b]:.2f}x)" for b in BATCHES]
        print(ROW.format(name, node_count(blobs[label]), *cells))
    if args.out:
        result: dict[str, Any] = {
            "models": models,
            "rounds": args.rounds,
            "onnxruntime": ort.__version__,
            "us_per_row": {n: {str(b): v for b, v in per.items()} for n, per in medians.items()},
            "ratio_to_first": {n: {str(b): v for b, v in per.items()} for n, per in ratios.items()},
            "nodes": {label: node_count(blob) for label, blob in blobs.items()},
        }
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
