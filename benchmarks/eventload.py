"""Raw events for the benchmark's event targets: unique, realistic, cheap to make under wrk.

An event is scored only once per id (a repeated id among the account's last 64 is a replay and
changes no state), so every request carries a new event: event n of a run goes to account
n mod ACCOUNTS at START + n * STEP_S seconds, from one of five payees and (one time in 16) the
account's second device, near the account's home (one time in 50, 3 degrees away), with an
amount between 5 and 505 and every eighth or so a cash-out. benchmarks/wrk_events.lua makes the
same bodies inside wrk; `event_body` here is the reference the test holds it to.

One EventStream per server process hands each wrk run (and the priming) its own id prefix and
a start time after everything already sent, so ids never repeat and each account's clock only
goes forward. Before the load, every account is given PRIMED_PER_ACCOUNT earlier events through
the batch route: a served account has a history, and a first event (no state yet) is cheaper
to score than the events that follow.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from benchmarks.serving import ROOT
from features.events import DEFINITIONS, FEATURES

LUA = ROOT / "benchmarks/wrk_events.lua"
ACCOUNTS = 10_000
# An account sends one event every ACCOUNTS * STEP_S = 2,500 s of event time, about one in
# its one-hour window: a busy but plausible mobile-money user.
STEP_S = 0.25
START_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PRIMED_PER_ACCOUNT = 4
PRIME_BATCH = 1000  # events per request, the server's default FRAUD_MAX_BATCH_ITEMS
BODY = (
    '{"event_id":"%s-%d","account_id":"acct-%d","timestamp":%.3f,"type":"%s",'
    '"amount":%.2f,"balance_before":%.2f,"payee_id":"payee-%d-%d",'
    '"device_id":"device-%d-%d","lat":%.3f,"lon":%.3f}'
)


def event_body(n: int, prefix: str, start_s: float, step_s: float, accounts: int) -> str:
    """The JSON body of event n; wrk_events.lua computes the same, operation for operation."""
    account = n % accounts
    mix = (n * 7919) % 10007
    kind = "cash_out" if mix % 8 == 0 else "transfer"
    amount = 5 + mix * 0.05
    lat_m = -1500 + (account % 50) * 20 + mix % 7 + (3000 if mix % 50 == 0 else 0)
    lon_m = 36500 + (account // 50 % 50) * 20 + mix % 5
    return BODY % (
        prefix,
        n,
        account,
        start_s + n * step_s,
        kind,
        amount,
        amount * (1 + mix % 19) + 100,
        account,
        mix % 5,
        account,
        1 if mix % 16 == 0 else 0,
        lat_m / 1000,
        lon_m / 1000,
    )


@dataclass
class EventStream:
    """Unique events for one server process, run after run."""

    accounts: int = ACCOUNTS
    step_s: float = STEP_S
    start_s: float = START_S
    runs: int = 0

    def _next(self, count: int) -> tuple[str, float]:
        prefix, start = f"r{self.runs}", self.start_s
        self.runs += 1
        self.start_s += count * self.step_s
        return prefix, start

    def bodies(self, count: int) -> list[str]:
        prefix, start = self._next(count)
        return [event_body(n, prefix, start, self.step_s, self.accounts) for n in range(count)]

    def wrk_args(self, key: str, threads: int) -> list[str]:
        """The script arguments of wrk_events.lua for the next run; call `sent` after it."""
        prefix, start = self._next(0)
        return [key, prefix, repr(start), repr(self.step_s), str(self.accounts), str(threads)]

    def sent(self, count: int) -> None:
        """At most `count` events went out in the last run: later events come after them."""
        self.start_s += count * self.step_s

    def describe(self) -> dict[str, float | int]:
        return {
            "accounts": self.accounts,
            "step_s": self.step_s,
            "primed_per_account": PRIMED_PER_ACCOUNT,
        }


def prime(port: int, path: str, key: str, stream: EventStream) -> str | None:
    """Give every account PRIMED_PER_ACCOUNT events through the batch route `path`; None if
    every batch answered 200, else what went wrong."""
    bodies = stream.bodies(stream.accounts * PRIMED_PER_ACCOUNT)
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for start in range(0, len(bodies), PRIME_BATCH):
            batch = '{"events":[' + ",".join(bodies[start : start + PRIME_BATCH]) + "]}"
            conn.request("POST", path, batch.encode(), headers)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                return f"priming: POST {path} answered {response.status}: {answer!r:.300}"
            if any(r["replayed"] for r in json.loads(answer)["results"]):
                return "priming: the server took fresh event ids for replays"
    except OSError as exc:
        return f"priming: POST {path} failed: {exc}"
    finally:
        conn.close()
    return None


def model_problem(model_dir: Path) -> str | None:
    """None if the model at `model_dir` takes raw events, else why not."""
    path = model_dir / "model.onnx"
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        return f"cannot load {path}: {exc}"
    meta = session.get_modelmeta().custom_metadata_map
    shown = model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir
    definitions = meta.get("feature_definitions")
    if definitions != DEFINITIONS:
        return (
            f"{shown} does not take raw events: its ONNX metadata's feature_definitions is"
            f" {definitions!r}, not {DEFINITIONS!r}, so the event routes answer 404 for it."
            " The event targets need a mobile-money version trained on the event definitions"
            " (or --events-model-dir naming one); leave them out with --targets."
        )
    if tuple(json.loads(meta.get("feature_names", "[]"))) != FEATURES:
        return f"{shown} names features other than features.events.FEATURES, in that order"
    return None
