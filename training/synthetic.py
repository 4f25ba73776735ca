"""A synthetic raw mobile-money event stream, and the data set its features make.

    python -m training.synthetic --events-out events.csv --rows 100000 --seed 42

Each row is one outgoing event of a sending account (a transfer to a payee, or a cash-out at an
agent) with the columns of features.events.EVENT_FIELDS, plus `is_fraud` (0/1) and `typology`
("" for legitimate events). Timestamps run over 30 days from 2026-01-01T00:00:00Z. The model's
features are computed from this stream by features.events, the same code the server runs on
each event it scores, so training and serving agree by construction.

Accounts live in East African cities. Each has a home location, a usual amount, a balance
(salary on a pay day, its own outgoing events debited), one or two devices, regular payees and
agents, an activity rate and an hour-of-day profile, and usually an `account_opened_at` (months
or years before the stream, a few during it; absent for some accounts, so that the account's
age falls back to its first event).

Fraud (about 2 % of events by default) follows three typologies:

  account_takeover  an established account suddenly on a new device, often far from home and
                    at night, sending several times its usual amount (much of its balance) to
                    new payees, in a few events minutes apart;
  cash_out_drain    a mule account, often only days old, receiving funds and then cashing out
                    most of its balance at an agent within hours;
  card_testing      a burst of tiny amounts within minutes, checking whether stolen
                    credentials work, often from a new device and to new payees.

Legitimate customers overlap each typology on purpose: travellers (some on new phones) far
from home, new phones at home, rent day and salary withdrawals emptying the account, bursts of
small purchases, new payees, night owls and new accounts. No single feature separates the
classes.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from features.events import DEFINITIONS, EVENT_FIELDS, FEATURES, LOG_FEATURES, features_over_history
from features.reading import events_from_columns
from training.accounts import (
    ACCOUNT_PAYEE,
    AGENT_PAYEE,
    DAY,
    LEGIT_EVENTS_PER_ACCOUNT,
    PAYEE_KIND,
    SPAN_DAYS,
    START,
    Events,
    fund_customers,
    inflow_cents,
    legitimate,
    make_accounts,
)
from training.datasets import Dataset
from training.typologies import (
    TYPOLOGIES,
    account_takeover,
    card_testing,
    cash_out_drain,
    episode_counts,
)

__all__ = ["FEATURES", "LOG_FEATURES", "TYPOLOGIES", "generate", "generate_events"]

LABEL_COLUMN = "is_fraud"
TYPOLOGY_COLUMN = "typology"
END = START + SPAN_DAYS * DAY
# Customers opened during the stream, and accounts whose opening date the stream leaves out.
NEW_ACCOUNT_SHARE = 0.05
UNKNOWN_OPENING_SHARE = 0.15
# About one everyday event in eight asks for more than the account holds (after rent day, say,
# until the next pay) and does not happen; drawing this many more keeps the count near `rows`.
AFFORD_MARGIN = 1.14


def generate_events(rows: int = 100_000, seed: int = 42, fraud_rate: float = 0.02) -> pd.DataFrame:
    """About `rows` events in time order (ties kept in a fixed order); the same for a seed."""
    if rows < 1:
        raise ValueError("rows must be at least 1")
    if not 0.0 <= fraud_rate < 0.5:
        raise ValueError("fraud_rate must be in [0, 0.5)")
    rng = np.random.default_rng(seed)
    takeovers, drains, tests = episode_counts(rows, fraud_rate)
    customers = max(1, rows // LEGIT_EVENTS_PER_ACCOUNT)
    total = customers + drains + tests
    acc = make_accounts(rng, total, customers, NEW_ACCOUNT_SHARE)
    unknown_opening = rng.random(total) < UNKNOWN_OPENING_SHARE
    device_base = 4 * total  # fraudsters' devices, past every customer's

    parts = [account_takeover(rng, acc, customers, takeovers, device_base)]
    device_base += takeovers
    mules = np.arange(customers, customers + drains)
    parts.extend(cash_out_drain(rng, acc, mules, device_base))
    device_base += drains
    fresh = np.arange(customers + drains, total)
    parts.append(card_testing(rng, acc, customers, fresh, tests, device_base))
    taken = sum(len(p.account) for p in parts)
    parts.append(legitimate(rng, acc, customers, round(max(rows - taken, 0) * AFFORD_MARGIN)))
    events = _concat(parts)
    fund_customers(rng, acc, customers, events)

    keep = (events.time >= START) & (events.time < END)
    cols = {name: getattr(events, name)[keep] for name in Events.__dataclass_fields__}
    time = np.round(cols["time"], 3)
    # Balances are a running sum per account, so they are filled account by account in time
    # order; the stream is then put in time order.
    by_account = np.lexsort((time, cols["account"]))
    account = cols["account"][by_account]
    t = time[by_account]
    amount, before, happened = _balances(
        account,
        inflow_cents(acc, account, t),
        acc.initial_cents,
        cols["want_cents"][by_account],
        cols["frac"][by_account],
        cols["empty"][by_account],
        cols["typology"][by_account] > 0,
    )
    order = np.flatnonzero(happened)
    order = order[np.argsort(t[order], kind="stable")]
    account = account[order]
    final = by_account[order]
    typology = cols["typology"][final]
    opened = np.where(unknown_opening[account], np.nan, acc.opened_at[account])
    return pd.DataFrame(
        {
            "event_id": [f"evt-{i:08d}" for i in range(len(order))],
            "account_id": [f"acct-{a:06d}" for a in account.tolist()],
            "timestamp": t[order],
            "type": np.where(cols["cash_out"][final], "cash_out", "transfer"),
            "amount": amount[order] / 100.0,
            "balance_before": before[order] / 100.0,
            "payee_id": _payee_ids(cols["payee"][final]),
            "device_id": [f"dev-{d:07d}" for d in cols["device"][final].tolist()],
            "lat": np.round(cols["lat"][final], 5),
            "lon": np.round(cols["lon"][final], 5),
            "account_opened_at": np.round(opened, 3),
            LABEL_COLUMN: (typology > 0).astype(np.int8),
            TYPOLOGY_COLUMN: np.array(("", *TYPOLOGIES), dtype=object)[typology],
        }
    )


def _concat(parts: list[Events]) -> Events:
    return Events(
        **{
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in Events.__dataclass_fields__
        }
    )


def _balances(
    account: np.ndarray,
    inflow: np.ndarray,
    initial: np.ndarray,
    want: np.ndarray,
    frac: np.ndarray,
    empty: np.ndarray,
    fraud: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(amount, balance before) in cents of events sorted by account, then time, and whether
    each event happened.

    An event takes what it wants, or `frac` of the balance when it empties the account. A
    customer who cannot afford an event does not make it; a fraudster takes `frac` of what
    there is, and with nothing there still tries (seen, nothing debited). A running sum per
    account: the one loop that cannot be vectorised."""
    accounts = account.tolist()
    inflows = inflow.astype(np.int64).tolist()
    wants = want.astype(np.int64).tolist()
    fracs = frac.tolist()
    empties = empty.tolist()
    frauds = fraud.tolist()
    start = initial.astype(np.int64).tolist()
    amount = np.zeros(len(accounts), np.int64)
    before = np.zeros(len(accounts), np.int64)
    happened = np.ones(len(accounts), bool)
    previous, spent = -1, 0
    for i, a in enumerate(accounts):
        if a != previous:
            previous, spent = a, 0
        balance = start[a] + inflows[i] - spent
        x = wants[i]
        if empties[i] or (x > balance and frauds[i]):
            x = int(balance * fracs[i])
        if x > balance or x < 1:
            if not frauds[i]:
                happened[i] = False
                continue
            x = max(wants[i], 1)
        else:
            spent += x
        amount[i], before[i] = x, balance
    return amount, before, happened


def _payee_ids(codes: np.ndarray) -> list[str]:
    prefix = {ACCOUNT_PAYEE: "acct-", 1: "merch-", AGENT_PAYEE: "agent-"}
    return [
        f"{prefix[c // PAYEE_KIND]}{c % PAYEE_KIND:06d}" for c in codes.astype(np.int64).tolist()
    ]


def dataset_from_events(events: pd.DataFrame, source: str = "synthetic") -> Dataset:
    """The features of a time-ordered event table, folded with the shared definitions."""
    columns = {name: events[name] for name in EVENT_FIELDS if name in events}
    values = features_over_history(events_from_columns(columns)).astype(np.float32)
    labels = events[LABEL_COLUMN].to_numpy(np.int8)
    times = events["timestamp"].to_numpy(np.float64)
    digest = hashlib.sha256(values.tobytes() + labels.tobytes() + times.tobytes()).hexdigest()
    return Dataset(values, labels, times, FEATURES, LOG_FEATURES, source, digest, DEFINITIONS)


def generate(rows: int = 100_000, seed: int = 42, fraud_rate: float = 0.02) -> Dataset:
    return dataset_from_events(generate_events(rows, seed, fraud_rate))


def write_events(events: pd.DataFrame, path: Path) -> None:
    """CSV, or Parquet for a .parquet path."""
    if path.suffix == ".parquet":
        events.to_parquet(path, index=False)
    else:
        events.to_csv(path, index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events-out", type=Path, required=True, help=".csv or .parquet")
    parser.add_argument("--rows", type=int, default=100_000, help="about this many events")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fraud-rate", type=float, default=0.02)
    args = parser.parse_args(argv)
    try:
        events = generate_events(args.rows, args.seed, args.fraud_rate)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_events(events, args.events_out)
    print(
        f"wrote {len(events)} events ({int(events[LABEL_COLUMN].sum())} fraud) to {args.events_out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
