"""The ratios this server is held to against each peer and the floor, and whether each is met."""

from __future__ import annotations

from typing import Any

from benchmarks.summary import GOALS as BENCH_GOALS
from benchmarks.summary import goal_at

# (field, concurrency): (goal for server/peer, True if the ratio must be at least the goal)
PEER_GOALS: dict[tuple[str, int], tuple[float, bool]] = {
    ("rps", 32): (10.0, True),
    ("rps", 1): (3.0, True),
    # p99 ratio is server / peer: the server's tail at most a third of the peer's.
    ("p99_ms", 1): (1 / 3, False),
}
FIELD_NAMES = {"rps": "rps", "p99_ms": "p99"}


def floor_goal(field: str, c: int) -> tuple[float, bool] | None:
    """The server/floor goal of `make bench` (benchmarks/summary.py) for this point, if any."""
    name = f"server/floor {FIELD_NAMES[field]}"
    return goal_at(name, c) if name in BENCH_GOALS else None


def ratio(results: dict[str, dict[str, Any]], baseline: str, field: str, c: int) -> float | None:
    """server/baseline of `field` at concurrency c; None unless both were measured."""
    a = results.get("server", {}).get(str(c), {}).get(field)
    b = results.get(baseline, {}).get(str(c), {}).get(field)
    return a / b if a and b else None


def check(results: dict[str, dict[str, Any]], peers: list[str]) -> list[dict[str, Any]]:
    """Each peer's ratios with their goals, then the floor's; `met` is None where not measured
    or where no goal is set."""
    rows = []
    for baseline in [*peers, "floor"]:
        for field, c in PEER_GOALS:
            found = PEER_GOALS[(field, c)] if baseline != "floor" else floor_goal(field, c)
            value = ratio(results, baseline, field, c)
            goal, at_least = found if found else (None, True)
            met = None
            if value is not None and goal is not None:
                met = value >= goal if at_least else value <= goal
            rows.append(
                {
                    "ratio": f"server/{baseline} {FIELD_NAMES[field]}",
                    "concurrency": c,
                    "value": value,
                    "goal": goal,
                    "at_least": at_least,
                    "met": met,
                }
            )
    return rows


def describe(row: dict[str, Any]) -> str:
    """One line: the ratio, its value, the goal and whether it is met."""
    value = "not measured" if row["value"] is None else f"{row['value']:.2f}"
    line = f"{row['ratio'] + ' at c=' + str(row['concurrency']):<40}{value:>14}"
    if row["goal"] is None:
        return line
    sign = ">=" if row["at_least"] else "<="
    verdict = {True: "met", False: "MISSED", None: "-"}[row["met"]]
    return f"{line}  goal {sign} {row['goal']:.3g}  {verdict}"
