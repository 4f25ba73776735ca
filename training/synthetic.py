"""A synthetic mobile-money transaction stream with documented fraud typologies.

Every row is one transfer. Features, in model order:

  amount            transfer amount, in the account's currency
  amount_vs_usual   amount divided by the sender's 30-day average transfer
  balance_fraction  share of the sender's balance this transfer moves (0..1)
  hour              local hour of day, 0..24 (fractional)
  new_device        1 if the session's device was never seen on this account
  distance_km       distance from the sender's usual location
  txns_last_hour    transfers the sender made in the previous hour
  account_age_days  age of the sending account
  new_payee         1 if the sender never paid this recipient before
  is_cash_out       1 for a cash-out at an agent, 0 for a person-to-person transfer

Fraud (about 2 % by default) follows three typologies:

  account takeover  a stolen account on a new device, at night, far from home,
                    sending several times the usual amount to a new payee;
  cash-out drain    a mule account, often days old, emptying its balance at an
                    agent right after receiving funds;
  card testing      a burst of tiny amounts checking whether stolen credentials
                    work.

Legitimate customers overlap each typology on purpose (travellers on new phones,
rent day, salary withdrawals, bursts of small purchases), and every feature is
noisy, so that no single rule separates the classes.
"""

from __future__ import annotations

import hashlib

import numpy as np

from training.datasets import Dataset

FEATURES = (
    "amount",
    "amount_vs_usual",
    "balance_fraction",
    "hour",
    "new_device",
    "distance_km",
    "txns_last_hour",
    "account_age_days",
    "new_payee",
    "is_cash_out",
)
LOG_FEATURES = ("amount", "amount_vs_usual", "distance_km", "account_age_days", "txns_last_hour")
TYPOLOGIES = ("account_takeover", "cash_out_drain", "card_testing")
TYPOLOGY_SHARES = (0.4, 0.3, 0.3)
SPAN_SECONDS = 30 * 24 * 3600.0


def generate(rows: int = 100_000, seed: int = 42, fraud_rate: float = 0.02) -> Dataset:
    if rows < 1:
        raise ValueError("rows must be at least 1")
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0.0, SPAN_SECONDS, rows))
    is_fraud = rng.random(rows) < fraud_rate
    kind = np.where(is_fraud, rng.choice(len(TYPOLOGIES), rows, p=TYPOLOGY_SHARES), -1)
    ato, drain, testing = (kind == 0), (kind == 1), (kind == 2)

    # The sender's profile: a usual transfer size and a balance that covers it.
    usual = rng.lognormal(np.log(40.0), 0.9, rows)
    balance = usual * rng.lognormal(np.log(8.0), 0.8, rows)

    # Legitimate behaviour first; fraud rows are then overwritten per typology.
    amount = usual * rng.lognormal(0.0, 0.6, rows)
    rent_day = rng.random(rows) < 0.02  # legitimate transfers that empty the account
    amount[rent_day] = balance[rent_day] * rng.uniform(0.8, 1.0, rent_day.sum())
    hour = np.mod(rng.normal(14.0, 4.5, rows), 24.0)
    new_device = rng.random(rows) < 0.04
    distance = rng.exponential(8.0, rows)
    travelling = rng.random(rows) < 0.03
    distance[travelling] = rng.lognormal(np.log(400.0), 1.0, travelling.sum())
    new_device |= travelling & (rng.random(rows) < 0.3)
    txns_last_hour = rng.poisson(0.3, rows).astype(np.float64)
    shopping_burst = rng.random(rows) < 0.01
    txns_last_hour[shopping_burst] += rng.poisson(6.0, shopping_burst.sum())
    account_age = rng.lognormal(np.log(600.0), 1.0, rows)
    new_payee = rng.random(rows) < 0.15
    cash_out = rng.random(rows) < 0.12

    n = ato.sum()
    amount[ato] = usual[ato] * rng.lognormal(np.log(5.0), 0.8, n)
    night = rng.random(n) < 0.6
    hour[ato] = np.where(night, rng.uniform(0.0, 6.0, n), rng.uniform(0.0, 24.0, n))
    new_device[ato] = rng.random(n) < 0.8
    far = rng.random(n) < 0.5
    distance[ato] = np.where(far, rng.lognormal(np.log(600.0), 1.0, n), rng.exponential(15.0, n))
    new_payee[ato] = rng.random(n) < 0.75
    cash_out[ato] = rng.random(n) < 0.4

    n = drain.sum()
    amount[drain] = balance[drain] * rng.beta(12.0, 1.5, n)
    account_age[drain] = np.where(
        rng.random(n) < 0.6, rng.lognormal(np.log(15.0), 1.0, n), account_age[drain]
    )
    cash_out[drain] = rng.random(n) < 0.85
    new_device[drain] = rng.random(n) < 0.3
    new_payee[drain] = rng.random(n) < 0.6

    n = testing.sum()
    amount[testing] = rng.uniform(0.5, 5.0, n)
    txns_last_hour[testing] = 2.0 + rng.poisson(8.0, n)
    new_device[testing] = rng.random(n) < 0.3
    new_payee[testing] = rng.random(n) < 0.5
    cash_out[testing] = rng.random(n) < 0.05

    amount = np.round(np.maximum(amount, 0.01), 2)
    features = np.column_stack(
        [
            amount,
            amount / usual,
            np.minimum(amount / balance, 1.0),
            hour,
            new_device,
            distance,
            txns_last_hour,
            np.ceil(account_age),
            new_payee,
            cash_out,
        ]
    ).astype(np.float32)
    labels = is_fraud.astype(np.int8)
    digest = hashlib.sha256(features.tobytes() + labels.tobytes() + times.tobytes()).hexdigest()
    return Dataset(features, labels, times, FEATURES, LOG_FEATURES, "synthetic", digest)
