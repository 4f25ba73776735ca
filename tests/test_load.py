"""Overload and soak against a real uvicorn serving the shipped model (about 2 minutes).

The figures these print go into the README's Reliability section; `make soak` runs the
10-minute soak.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import overload, soak


@pytest.mark.load
def test_overload_sheds_nothing_it_cannot_answer_and_recovers() -> None:
    summary = overload.run(overload.parse_args(["--overload-s", "20"]))
    print(json.dumps(summary, indent=2))
    phases = summary["phases"]
    for phase in phases.values():
        assert set(phase["statuses"]) <= {"200", "429", "503"}, phase["statuses"]
    offered = phases["overload"]["due"] / 20
    assert offered > 2.5 * summary["capacity_per_s"]
    # The server answered at about its capacity throughout; the rest waited in the
    # callers' pool and was given up after their timeout, never reaching the server.
    assert phases["overload"]["answered_per_s"] > 0.7 * summary["capacity_per_s"]
    assert phases["overload"]["abandoned"] > 0
    normal = phases["normal"]["p99_server_ms"]
    assert phases["overload"]["p99_server_ms"] <= 5 * normal
    assert max(summary["recovery_p99_ms_by_second"]["server"][2:]) <= 2 * normal
    assert summary["failures"] == []


@pytest.mark.load
def test_soak_keeps_memory_flat_answers_everything_and_logs_no_secrets() -> None:
    summary = soak.run(soak.parse_args(["--duration-s", "60"]))
    print(json.dumps(summary, indent=2))
    assert summary["requests"] > 0.95 * summary["rate_per_s"] * 60
    assert summary["bad_requests"] > 0
    assert summary["unexpected"] == 0 and summary["no_answer"] == 0
    assert summary["growth"] < 0.10
    assert summary["failures"] == []
