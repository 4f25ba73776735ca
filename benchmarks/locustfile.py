"""Locust load for the latency gate: real test-period rows at a fixed rate to POST /v1/score.

Run through `make gate` (benchmarks/gate.py starts the server and passes --host).
After ramp-up (--reset-stats) the run fails, by setting Locust's exit code, when
p99 is over budget, any request fails, or the server did not keep up with the
target rate: Locust is closed-loop, so a stalled server would otherwise just
lower the offered load and look fast.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import locust.stats
import numpy as np
from locust import FastHttpUser, constant_throughput, events, task

TARGET_RPS = 500.0  # shared by the users in locust.conf, each pacing itself to its part
P99_BUDGET_MS = 10.0
MIN_RATE_FRACTION = 0.95
# Measured only after the users have run this long: first connections and warm caches
# are not what the gate is about.
WARM_UP_S = 3.0
SAMPLES = Path(__file__).resolve().parent.parent / "models/creditcard/4/samples.json"


def keep_sub_millisecond(response_time: float) -> float:
    """Locust rounds times under 100 ms to whole milliseconds; keep 10 µs instead."""
    return round(response_time, 2) if response_time < 100 else round(response_time, -1)


locust.stats.bucket_response_time = keep_sub_millisecond  # type: ignore[assignment]


class Measurement:
    """Exact response times after ramp-up and warm-up, independent of Locust's histogram."""

    def __init__(self) -> None:
        self.times_ms: list[float] = []
        self.failures = 0
        self.started = float("inf")  # nothing counts until ramp-up is over

    def reset(self) -> None:
        self.times_ms.clear()
        self.failures = 0
        self.started = time.perf_counter() + WARM_UP_S

    def counting(self) -> bool:
        return time.perf_counter() >= self.started


measurement = Measurement()


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--gate-p99-ms", type=float, default=P99_BUDGET_MS, help="p99 budget in milliseconds"
    )
    parser.add_argument(
        "--gate-rps", type=float, default=TARGET_RPS, help="offered rate to sustain"
    )


@events.spawning_complete.add_listener
def ramp_up_done(user_count: int, **_: Any) -> None:
    measurement.reset()


@events.request.add_listener
def record(response_time: float, exception: BaseException | None = None, **_: Any) -> None:
    if measurement.counting():
        measurement.times_ms.append(response_time)
        measurement.failures += exception is not None


@events.user_error.add_listener
def user_error(**_: Any) -> None:
    # An exception in the task itself: a request that was never recorded must still fail.
    measurement.failures += 1


@events.quitting.add_listener
def judge(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    elapsed = max(time.perf_counter() - measurement.started, 0.0)
    times = np.asarray(measurement.times_ms)
    failures = measurement.failures
    p50, p99 = np.percentile(times, [50, 99]) if len(times) else (float("nan"),) * 2
    rate = len(times) / elapsed if elapsed > 0 else 0.0
    checks = {
        f"p99 {p99:.3f} ms <= {options.gate_p99_ms} ms": bool(p99 <= options.gate_p99_ms),
        f"failures {failures} == 0": failures == 0,
        f"rate {rate:.1f} rps >= {MIN_RATE_FRACTION:.0%} of {options.gate_rps:.0f}": rate
        >= MIN_RATE_FRACTION * options.gate_rps,
    }
    print(
        f"\ngate: {len(times)} requests in {elapsed:.1f} s after ramp-up and warm-up; "
        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {times.max() if len(times) else 0:.3f} ms"
    )
    for check, passed in checks.items():
        print(f"gate: {'PASS' if passed else 'FAIL'} {check}")
    if not all(checks.values()):
        environment.process_exit_code = 1  # otherwise Locust's own rules decide


def load_bodies() -> list[dict[str, Any]]:
    rows = json.loads(SAMPLES.read_text())["rows"]
    return [{"features": row["features"]} for row in rows]


class Scorer(FastHttpUser):
    bodies = itertools.cycle(load_bodies())
    counter = itertools.count()

    def on_start(self) -> None:
        self.headers = {"Content-Type": "application/json", "X-API-Key": os.environ["GATE_API_KEY"]}
        options = self.environment.parsed_options
        self.pace = constant_throughput(options.gate_rps / max(options.num_users, 1))

    def wait_time(self) -> float:
        return float(self.pace(self))

    @task
    def score(self) -> None:
        body = dict(next(self.bodies), transaction_id=f"gate-{next(self.counter)}")
        with self.client.post(
            "/v1/score", data=json.dumps(body), headers=self.headers, catch_response=True
        ) as response:
            if response.status_code != 200 or b'"decision"' not in (response.content or b""):
                # status 0 is a transport error (reset, refused, timeout): no body at all.
                detail = response.error if response.status_code == 0 else response.text
                response.failure(f"status {response.status_code}: {str(detail)[:200]}")
