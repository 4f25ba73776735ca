"""The ratios and goals bench results are held to, printed and plotted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (target, baseline): requests/s ratios, printed and saved (the report's "shares") when both ran
SHARES = (
    ("server_v2", "server"),
    ("server_grpc", "server"),
    ("server_grpc", "grpc_floor"),
    ("grpc_floor", "server"),
    ("server_named", "server"),
    ("server", "server_no_metrics"),
    ("server_access_log", "server"),
    ("events", "server"),
    ("events_redis", "server"),
)
# ratio: (True if it must be at least the goal, else at most; the goal per concurrency, where
# None stands for every concurrency without a goal of its own)
GOALS: dict[str, tuple[bool, dict[int | None, float]]] = {
    "server/floor rps": (True, {32: 0.70, 1: 0.60}),
    "server/floor p99": (False, {1: 2.0}),
    "server_grpc/server rps": (True, {32: 0.8}),
    "server_grpc/server p99": (False, {32: 1.5}),
    "server/fastapi_ort rps": (True, {None: 3.0}),
    "server/keras_predict rps": (True, {None: 300.0}),
    "events/server rps": (True, {32: 0.6}),
    "events_redis/server rps": (True, {32: 0.4}),
}


def goal_at(name: str, c: int) -> tuple[float, bool] | None:
    """(goal, at least) for the ratio at concurrency c, or None where it has none."""
    at_least, goals = GOALS[name]
    goal = goals.get(c, goals.get(None))
    return None if goal is None else (goal, at_least)


def goal_text(name: str) -> str:
    at_least, goals = GOALS[name]
    sign = ">=" if at_least else "<="
    return ", ".join(
        f"{sign} {g:g}" + ("" if c is None else f" at c={c}") for c, g in goals.items()
    )


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def compare(results: dict[str, dict[str, Any]], cs: list[int]) -> tuple[dict, list]:
    """Each GOALS ratio per concurrency (target/baseline), and the goals checked on them."""
    ratios: dict[str, dict[str, float | None]] = {}
    goals = []
    for name in GOALS:
        target, rest = name.split("/")
        baseline, field = rest.split()
        field = field if field == "rps" else f"{field}_ms"
        ratios[name] = {}
        for c in cs:
            a = results.get(target, {}).get(str(c), {}).get(field)
            b = results.get(baseline, {}).get(str(c), {}).get(field)
            ratios[name][str(c)] = value = a / b if a and b else None
            found = goal_at(name, c)
            if value is not None and found is not None:
                goal, at_least = found
                met = value >= goal if at_least else value <= goal
                goals.append(dict(ratio=name, concurrency=c, goal=goal, value=value, met=met))
    return ratios, goals


def shares(results: dict[str, dict[str, Any]], cs: list[int]) -> dict[str, dict[str, float]]:
    """The SHARES ratios of requests/s, per concurrency where both targets ran."""
    found = {}
    for target, baseline in SHARES:
        a, b = results.get(target, {}), results.get(baseline, {})
        both = [str(c) for c in cs if str(c) in a and str(c) in b]
        if both:
            found[f"{target}/{baseline} rps"] = {c: a[c]["rps"] / b[c]["rps"] for c in both}
    return found


def print_summary(report: dict[str, Any]) -> None:
    cs = report["concurrency"]
    print(f"\n{'ratio':<26}" + "".join(f"{'c=' + str(c):>10}" for c in cs) + "  goal")
    for name, values in report["ratios"].items():
        cells = "".join(f"{fmt(v):>10}" for v in values.values())
        print(f"{name:<26}{cells}  {goal_text(name)}")
    missed = [g for g in report["goals"] if not g["met"]]
    print(f"goals met: {len(report['goals']) - len(missed)} of {len(report['goals'])}", end="")
    print("".join(f"; missed {g['ratio']} at c={g['concurrency']}" for g in missed))
    for name, values in report["shares"].items():
        if name not in report["ratios"]:  # a goal's ratio is in the table above
            print(f"{name}: {', '.join(f'c={c}: {v:.3f}' for c, v in values.items())}")
    per_row = ", ".join(f"batch {b}: {us:.2f}" for b, us in report["ort_us_per_row"].items())
    print(f"onnxruntime session.run alone, median us per row: {per_row}")
    for target, note in report["notes"].items():
        print(f"note, {target}: {note}")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = report["concurrency"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for target, runs in report["results"].items():
        done = [c for c in cs if str(c) in runs]
        color = left.plot(done, [runs[str(c)]["rps"] for c in done], "o-", label=target)[0]
        for q, style in (("p50", "o--"), ("p99", "s-")):
            points = [(c, runs[str(c)][f"{q}_ms"]) for c in done if f"{q}_ms" in runs[str(c)]]
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            right.plot(xs, ys, style, color=color.get_color(), label=f"{target} {q}")
    left.set(title="throughput", ylabel="requests/s (log)")
    right.set(title="latency: p50 dashed, p99 solid", ylabel="ms (log)")
    for ax in (left, right):
        ax.set(xscale="log", yscale="log", xlabel="concurrent connections (wrk -c)")
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(
        f"POST /v1/score and raw events, {machine['nproc']} cores, {machine['git']},"
        f" {report['started_at']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
