"""peers.png: requests/s and latency of every target at each concurrency, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [str(c) for c in report["concurrency"]]
    targets = list(report["results"])
    width = 0.8 / max(len(targets), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, target in enumerate(targets):
        runs = report["results"][target]
        xs = [j + (i - (len(targets) - 1) / 2) * width for j in range(len(cs))]
        rps = [runs.get(c, {}).get("rps", 0.0) for c in cs]
        color = left.bar(xs, rps, width, label=target).patches[0].get_facecolor()
        for q, style in (("p50", "o"), ("p99", "s")):
            ys = [runs.get(c, {}).get(f"{q}_ms") for c in cs]
            points = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
            right.plot(*zip(*points, strict=True), style, color=color, label=f"{target} {q}")
        right.vlines(
            xs,
            [runs.get(c, {}).get("p50_ms") or 0 for c in cs],
            [runs.get(c, {}).get("p99_ms") or 0 for c in cs],
            color=color,
            alpha=0.4,
        )
    left.set(title="throughput", ylabel="requests/s (log)")
    right.set(title="latency: p50 circles, p99 squares", ylabel="ms (log)")
    for ax in (left, right):
        ax.set(yscale="log", xlabel="concurrent connections (wrk -c)")
        ax.set_xticks(range(len(cs)), cs)
        ax.grid(True, which="both", axis="y", alpha=0.3)
    left.legend(fontsize=8)
    right.legend(fontsize=7, ncol=2)
    machine = report["machine"]
    fig.suptitle(
        f"one row of 29 floats, the same ONNX model in every target, {machine['nproc']} cores,"
        f" {machine['git']}, {report['started_at']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
