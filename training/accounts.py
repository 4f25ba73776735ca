"""The accounts of the synthetic mobile-money stream and their everyday (legitimate) events.

Accounts live in East African cities (East Africa Time, UTC+3; behaviour is drawn in local time)
and spend in whole cents; training/synthetic.py documents the stream as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SPAN_DAYS = 30
DAY = 86_400.0
LOCAL_OFFSET_S = 3 * 3600.0  # East Africa Time
LEGIT_EVENTS_PER_ACCOUNT = 25
# (name, lat, lon, weight): where accounts live and travel.
CITIES = (
    ("Nairobi", -1.2864, 36.8172, 5.0),
    ("Mombasa", -4.0435, 39.6682, 1.5),
    ("Kisumu", -0.0917, 34.7680, 0.8),
    ("Nakuru", -0.3031, 36.0800, 0.8),
    ("Eldoret", 0.5143, 35.2698, 0.6),
    ("Kampala", 0.3476, 32.5825, 3.0),
    ("Gulu", 2.7724, 32.2881, 0.4),
    ("Dar es Salaam", -6.7924, 39.2083, 4.0),
    ("Arusha", -3.3869, 36.6830, 0.8),
    ("Mwanza", -2.5164, 32.9175, 0.8),
    ("Dodoma", -6.1630, 35.7516, 0.6),
)
AGENTS_PER_CITY = 400
MERCHANTS = 20_000
KM_PER_DEGREE = 111.2
# Payee codes: kind * PAYEE_KIND + index.
PAYEE_KIND = 10_000_000
ACCOUNT_PAYEE, MERCHANT_PAYEE, AGENT_PAYEE = 0, 1, 2
MAX_REGULAR_PAYEES = 8


@dataclass
class Accounts:
    """Per-account profiles, one array entry per account."""

    city: np.ndarray
    lat: np.ndarray  # home, jittered around the city
    lon: np.ndarray
    usual_cents: np.ndarray
    initial_cents: np.ndarray
    salary_cents: np.ndarray
    pay_time: np.ndarray  # the first pay of the stream
    pay_period: np.ndarray  # seconds between pays
    deposit_cents: np.ndarray  # funds a mule receives just before it drains them
    deposit_time: np.ndarray
    opened_at: np.ndarray  # NaN where absent
    devices: np.ndarray  # (n, 2): primary, second (-1: none)
    payees: np.ndarray  # (n, MAX_REGULAR_PAYEES)
    n_payees: np.ndarray
    agents: np.ndarray  # (n, 3)
    n_agents: np.ndarray
    peak_hour: np.ndarray  # local
    hour_sd: np.ndarray


@dataclass
class Events:
    """Event columns before balances: `want_cents` is what the event asks for; `frac` the share
    of the balance it takes when emptying (`empty`) or when the balance cannot cover it."""

    account: np.ndarray
    time: np.ndarray
    cash_out: np.ndarray
    want_cents: np.ndarray
    frac: np.ndarray
    empty: np.ndarray
    payee: np.ndarray
    device: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    typology: np.ndarray  # 0 legitimate, 1 + index into TYPOLOGIES


def city_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat = np.array([c[1] for c in CITIES])
    lon = np.array([c[2] for c in CITIES])
    weight = np.array([c[3] for c in CITIES])
    return lat, lon, weight / weight.sum()


def offset(
    rng: np.random.Generator, lat: np.ndarray, lon: np.ndarray, km: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Points about `km` away from (lat, lon) in a random direction."""
    angle = rng.uniform(0.0, 2 * np.pi, len(lat))
    dlat = km * np.cos(angle) / KM_PER_DEGREE
    dlon = km * np.sin(angle) / (KM_PER_DEGREE * np.cos(np.radians(lat)))
    return lat + dlat, lon + dlon


def other_city(rng: np.random.Generator, city: np.ndarray) -> np.ndarray:
    shift = rng.integers(1, len(CITIES), len(city))
    return (city + shift) % len(CITIES)


def agent_in(rng: np.random.Generator, city: np.ndarray) -> np.ndarray:
    return (
        AGENT_PAYEE * PAYEE_KIND
        + city * AGENTS_PER_CITY
        + rng.integers(0, AGENTS_PER_CITY, len(city))
    )


def new_payee(rng: np.random.Generator, n: int, accounts: int) -> np.ndarray:
    """Payees an account has (most likely) never paid: other accounts or merchants."""
    merchant = rng.random(n) < 0.5
    account_payee = ACCOUNT_PAYEE * PAYEE_KIND + rng.integers(0, max(accounts, 1), n)
    merchant_payee = MERCHANT_PAYEE * PAYEE_KIND + rng.integers(0, MERCHANTS, n)
    return np.where(merchant, merchant_payee, account_payee)


def make_accounts(rng: np.random.Generator, n: int, legit: int, new_share: float) -> Accounts:
    """`n` accounts; the first `legit` are the customers (they appear as payees), the rest are
    filled in by the typologies. `new_share` of them are opened during the stream."""
    city_lat, city_lon, weight = city_table()
    city = rng.choice(len(CITIES), n, p=weight)
    lat, lon = offset(rng, city_lat[city], city_lon[city], rng.exponential(4.0, n))
    usual = np.maximum(rng.lognormal(np.log(4000.0), 0.9, n), 100.0)
    end = START + SPAN_DAYS * DAY
    age_days = np.minimum(rng.lognormal(np.log(500.0), 1.0, n), 15 * 365.0)  # since 2011
    opened = np.where(
        rng.random(n) < new_share, rng.uniform(START, end - 2 * DAY, n), START - age_days * DAY
    )
    payees = np.where(
        rng.random((n, MAX_REGULAR_PAYEES)) < 0.6,
        ACCOUNT_PAYEE * PAYEE_KIND + rng.integers(0, max(legit, 1), (n, MAX_REGULAR_PAYEES)),
        MERCHANT_PAYEE * PAYEE_KIND + rng.integers(0, MERCHANTS, (n, MAX_REGULAR_PAYEES)),
    )
    agents = np.stack([agent_in(rng, city) for _ in range(3)], axis=1)
    devices = np.stack(
        [np.arange(n) * 4, np.where(rng.random(n) < 0.2, np.arange(n) * 4 + 1, -1)], axis=1
    )
    night_owl = rng.random(n) < 0.05
    return Accounts(
        city=city,
        lat=lat,
        lon=lon,
        usual_cents=np.round(usual),
        initial_cents=np.round(usual * rng.lognormal(np.log(6.0), 0.7, n)),
        salary_cents=np.zeros(n),  # set by fund_customers once their spending is known
        pay_time=np.full(n, np.inf),
        pay_period=np.where(rng.random(n) < 0.5, 7.0, 30.0) * DAY,
        deposit_cents=np.zeros(n),
        deposit_time=np.full(n, np.inf),
        opened_at=opened,
        devices=devices,
        payees=payees,
        n_payees=rng.integers(2, MAX_REGULAR_PAYEES + 1, n),
        agents=agents,
        n_agents=rng.integers(1, 4, n),
        peak_hour=np.where(night_owl, rng.normal(23.0, 1.0, n), rng.normal(13.0, 2.5, n)),
        hour_sd=rng.uniform(2.0, 4.5, n),
    )


def local_time(
    rng: np.random.Generator, acc: Accounts, a: np.ndarray, day: np.ndarray
) -> np.ndarray:
    """UTC epoch seconds of events on stream days `day`, at hours drawn from each account's
    local profile."""
    hour = np.mod(acc.peak_hour[a] + acc.hour_sd[a] * rng.standard_normal(len(a)), 24.0)
    return START + day * DAY + hour * 3600.0 - LOCAL_OFFSET_S


def legitimate(rng: np.random.Generator, acc: Accounts, legit: int, rows: int) -> Events:
    """`rows` everyday events of the first `legit` accounts, with travel, new phones, rent day
    and shopping bursts among them."""
    end = START + SPAN_DAYS * DAY
    first = np.clip(acc.opened_at[:legit], START, end)
    active = (end - first) / DAY
    rate = rng.lognormal(0.0, 0.8, legit) * active
    burst_rows = int(rows * 0.015)
    a = np.repeat(np.arange(legit), rng.multinomial(rows - burst_rows, rate / rate.sum()))
    n = len(a)
    t = local_time(rng, acc, a, np.floor(rng.uniform(0.0, SPAN_DAYS, n)))
    early = t < first[a]
    t[early] = first[a[early]] + rng.uniform(0.0, 1.0, early.sum()) * (end - first[a[early]])

    # Shopping bursts: several small purchases minutes apart, often at new merchants.
    bursts = max(burst_rows // 8, 0)
    burst_account = rng.integers(0, legit, bursts)
    sizes = rng.integers(4, 13, bursts)
    ba = np.repeat(burst_account, sizes)
    start = np.repeat(
        local_time(rng, acc, burst_account, rng.integers(0, SPAN_DAYS, bursts)), sizes
    )
    step = rng.exponential(150.0, len(ba))
    group_start = np.repeat(np.cumsum(sizes) - sizes, sizes)
    cum = np.cumsum(step)
    bt = np.maximum(start + cum - cum[group_start] + step[group_start], first[ba])
    is_burst = np.concatenate([np.zeros(n, bool), np.ones(len(ba), bool)])
    a = np.concatenate([a, ba])
    t = np.concatenate([t, bt])
    n = len(a)

    # Travellers: a few days in another city, some on a new phone they then keep.
    trip_start = np.where(
        rng.random(legit) < 0.03, START + rng.uniform(0.0, SPAN_DAYS - 2, legit) * DAY, np.inf
    )
    trip_end = trip_start + rng.uniform(2.0, 7.0, legit) * DAY
    trip_city = other_city(rng, acc.city[:legit])
    new_phone_at = np.where(rng.random(legit) < 0.3, trip_start, np.inf)
    new_phone_at = np.where(
        rng.random(legit) < 0.02, START + rng.uniform(0.0, SPAN_DAYS, legit) * DAY, new_phone_at
    )
    away = (t >= trip_start[a]) & (t < trip_end[a])
    city_lat, city_lon, _ = city_table()
    here_lat = np.where(away, city_lat[trip_city[a]], acc.lat[a])
    here_lon = np.where(away, city_lon[trip_city[a]], acc.lon[a])
    lat, lon = offset(rng, here_lat, here_lon, rng.exponential(np.where(away, 5.0, 2.5)))

    second = acc.devices[a, 1]
    device = np.where((second >= 0) & (rng.random(n) < 0.25), second, acc.devices[a, 0])
    device = np.where(t >= new_phone_at[a], acc.devices[a, 0] + 2, device)

    cash_out = (rng.random(n) < 0.12) & ~is_burst
    regular = rng.random(n) < np.where(away, 0.6, 0.85)
    payee = np.where(
        regular,
        acc.payees[a, (rng.random(n) * acc.n_payees[a]).astype(int)],
        new_payee(rng, n, legit),
    )
    burst_payee = np.where(
        rng.random(n) < 0.6,
        new_payee(rng, n, 0) % PAYEE_KIND + MERCHANT_PAYEE * PAYEE_KIND,
        payee,
    )
    payee = np.where(is_burst, burst_payee, payee)
    agent = np.where(
        away,
        agent_in(rng, trip_city[a]),
        acc.agents[a, (rng.random(n) * acc.n_agents[a]).astype(int)],
    )
    payee = np.where(cash_out, agent, payee)

    usual = acc.usual_cents[a]
    want = usual * rng.lognormal(0.0, 0.6, n) * np.where(cash_out, 2.0, 1.0)
    want = np.where(is_burst, rng.uniform(100.0, 1500.0, n), want)
    # Rent day and salary withdrawals: most of the balance in one go.
    empty = (rng.random(n) < 0.02) & ~is_burst
    return Events(
        account=a,
        time=t,
        cash_out=cash_out,
        want_cents=np.maximum(np.round(want), 1.0),
        frac=np.where(empty, rng.uniform(0.8, 1.0, n), rng.uniform(0.3, 0.9, n)),
        empty=empty,
        payee=payee,
        device=device,
        lat=lat,
        lon=lon,
        typology=np.zeros(n, np.int8),
    )


def fund_customers(rng: np.random.Generator, acc: Accounts, customers: int, events: Events) -> None:
    """Pay and opening balance of the first `customers` accounts from what their events ask
    for: weekly or monthly pay a little above their spending, and enough to start with to
    last until the first pay and a few days more."""
    everyday = (events.account < customers) & (events.typology == 0) & ~events.empty
    spend = np.bincount(
        events.account[everyday], weights=events.want_cents[everyday], minlength=customers
    )[:customers]
    per_second = spend / (SPAN_DAYS * DAY)
    period = acc.pay_period[:customers]
    acc.salary_cents[:customers] = np.round(per_second * period * rng.uniform(1.1, 1.6, customers))
    acc.pay_time[:customers] = START + rng.uniform(0.0, 1.0, customers) * period
    until_pay = acc.pay_time[:customers] - START
    acc.initial_cents[:customers] = np.round(
        per_second
        * (until_pay * rng.uniform(1.0, 1.3, customers) + rng.uniform(3.0, 10.0, customers) * DAY)
        + acc.usual_cents[:customers] * rng.uniform(0.0, 2.0, customers)
    )


def inflow_cents(acc: Accounts, account: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Everything paid into each event's account up to its time: pays and a mule's deposit."""
    pays = np.where(
        t >= acc.pay_time[account],
        np.floor((t - acc.pay_time[account]) / acc.pay_period[account]) + 1.0,
        0.0,
    )
    deposit = np.where(t >= acc.deposit_time[account], acc.deposit_cents[account], 0.0)
    return pays * acc.salary_cents[account] + deposit
