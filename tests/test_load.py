"""Overload, soak and a connection storm against a real uvicorn serving the shipped model
(about 3 minutes).

`make overload`, `make soak` (10 minutes) and `make storm` (three storm sizes) run the same code
and write their figures to benchmarks/results/, which docs/reliability.md quotes.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import overload, soak, storm
from server.settings import Settings


def test_the_overload_benchmark_knows_the_server_s_default_deadline() -> None:
    assert Settings.request_deadline_ms == overload.DEFAULT_DEADLINE_MS
    args = overload.parse_args([])
    assert (
        overload.overload_limit_ms({}, args) == Settings.request_deadline_ms + args.batch_slack_ms
    )


@pytest.mark.load
def test_overload_answers_at_capacity_and_recovers() -> None:
    # Normal load at a third of capacity, not half: the shared machine's own capacity may fall
    # by half within a run (one CI run measured 4,248/s, then answered 2,815/s through the
    # overload and 1,882/s after it), and a recovery to a rate the machine no longer gives
    # cannot be judged.
    args = overload.parse_args(["--overload-s", "20", "--normal-share", "0.33"])
    summary = overload.run(args)
    print(json.dumps(summary, indent=2))
    phases = summary["phases"]
    for phase in phases.values():
        assert set(phase["statuses"]) <= {"200", "429", "503"}, phase["statuses"]
    capacity = summary["capacity_per_s"]
    assert phases["overload"]["due"] / args.overload_s > 0.9 * args.factor * capacity
    # The server kept scoring through the overload (one in congestive collapse, or shedding
    # nearly everything, scores a small part of its capacity; the shared machine alone may
    # take a third of it); the rest waited in the callers' pool and was given up after their
    # timeout, never reaching the server.
    assert phases["overload"]["accepted_per_s"] > 0.5 * capacity
    assert phases["overload"]["abandoned"] > 0
    normal = phases["normal"]["p99_server_ms"]
    # Bounded by the deadline and one batch: a queue that grew would give seconds.
    assert summary["overload_limit_ms"] == Settings.request_deadline_ms + args.batch_slack_ms
    assert phases["overload"]["p99_server_ms"] <= summary["overload_limit_ms"]
    limit = max(args.normal_tolerance * normal, normal + args.normal_slack_ms)
    assert summary["recovered_p99_server_ms"] <= limit
    assert summary["recovered_p99_ms"] <= limit
    assert summary["failures"] == []


@pytest.mark.load
def test_soak_keeps_memory_flat_answers_everything_and_logs_no_secrets() -> None:
    args = soak.parse_args(["--duration-s", "60"])
    summary = soak.run(args)
    print(json.dumps(summary, indent=2))
    assert summary["requests"] > 0.95 * summary["rate_per_s"] * args.duration_s
    assert summary["bad_requests"] > 0
    assert summary["unexpected"] == 0 and summary["no_answer"] == 0
    assert summary["growth"] < args.max_growth
    assert summary["failures"] == []


@pytest.mark.load
def test_a_storm_of_1024_connections_gets_answers_not_timeouts_and_recovers_at_once() -> None:
    args = storm.parse_args(
        ["--connections", "1024", "--storm-s", "8", "--capacity-s", "5", "--probe-s", "3"]
    )
    summary = storm.run(args)
    print(json.dumps(summary, indent=2))
    capacity = summary["capacity_per_s"]
    figures = summary["storms"]["1024"]
    wrk = figures["wrk"]
    # Every request wrk sent got an answer, a 200 or a quick 503, but for at most one in a
    # thousand: when the shared machine stalls (it answered 5,300/s at 32 connections in one
    # CI run, 9,000 to 12,000 on a quiet one), a few connections wait in the kernel's accept
    # queue past wrk's 5 s. make storm reports them against the target of none.
    errors = wrk["socket_errors"]
    assert errors["connect"] == errors["read"] == errors["write"] == 0
    assert errors["timeout"] <= wrk["requests"] / 1000
    assert wrk["ok_per_s"] >= args.ok_share * capacity
    # Without the deadline, the caps and the short accept queue, p99 was 2.5 s here.
    assert wrk["p99_ms"] < 1500
    assert figures["recovered_after_s"] is not None
    assert figures["recovered_after_s"] <= args.recovery_s
    assert "the server logged a traceback" not in summary["failures"]
