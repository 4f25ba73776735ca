"""The three fraud typologies of the synthetic mobile-money stream, as events on its accounts.

Each typology is a number of episodes; an episode is a few events of one account close in
time. Mules and fresh accounts for card testing are accounts past the customers' range, whose
profiles the typologies set here (opening date, balance, deposit).
"""

from __future__ import annotations

import numpy as np

from training.accounts import (
    DAY,
    LOCAL_OFFSET_S,
    MERCHANT_PAYEE,
    MERCHANTS,
    PAYEE_KIND,
    SPAN_DAYS,
    START,
    Accounts,
    Events,
    agent_in,
    city_table,
    new_payee,
    offset,
    other_city,
)

TYPOLOGIES = ("account_takeover", "cash_out_drain", "card_testing")
TYPOLOGY_SHARES = (0.4, 0.3, 0.3)
# Mean events per episode, to turn a share of fraud events into a number of episodes.
EPISODE_EVENTS = (2.5, 1.6, 10.0)
# Card testing on freshly opened accounts rather than on customers' stolen credentials.
FRESH_TESTING_SHARE = 0.4


def episode_counts(rows: int, fraud_rate: float) -> tuple[int, int, int]:
    """Episodes of each typology for about rows * fraud_rate fraud events; at least one each
    whenever there is any fraud at all, so that every typology appears."""
    frauds = rows * fraud_rate
    counts = [
        round(frauds * share / size)
        for share, size in zip(TYPOLOGY_SHARES, EPISODE_EVENTS, strict=True)
    ]
    return tuple(max(c, 1) if frauds >= 1 else 0 for c in counts)  # type: ignore[return-value]


def _episodes(
    rng: np.random.Generator, starts: np.ndarray, sizes: np.ndarray, gap_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(episode index, time) of every event: episode i has sizes[i] events from starts[i],
    exponential gaps of mean gap_s apart."""
    episode = np.repeat(np.arange(len(sizes)), sizes)
    step = rng.exponential(gap_s, len(episode))
    cum = np.cumsum(step)
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)
    return episode, starts[episode] + cum - cum[first]


def _hours_to_utc(day: np.ndarray, local_hour: np.ndarray) -> np.ndarray:
    return START + day * DAY + local_hour * 3600.0 - LOCAL_OFFSET_S


def account_takeover(
    rng: np.random.Generator, acc: Accounts, legit: int, episodes: int, device_base: int
) -> Events:
    """Established customers' accounts in a stranger's hands for a few events."""
    established = np.flatnonzero(acc.opened_at[:legit] < START - 30 * DAY)
    victim = rng.choice(established if len(established) else np.arange(legit), episodes)
    night = rng.random(episodes) < 0.6
    hour = np.where(night, rng.uniform(0.0, 5.0, episodes), rng.uniform(0.0, 24.0, episodes))
    start = _hours_to_utc(np.floor(rng.uniform(3.0, SPAN_DAYS, episodes)), hour)
    episode, t = _episodes(rng, start, 1 + rng.poisson(1.5, episodes), 300.0)
    a = victim[episode]
    n = len(a)

    far = rng.random(episodes) < 0.5
    city_lat, city_lon, _ = city_table()
    there = np.where(far, other_city(rng, acc.city[victim]), acc.city[victim])
    base_lat = np.where(far, city_lat[there], acc.lat[victim])[episode]
    base_lon = np.where(far, city_lon[there], acc.lon[victim])[episode]
    lat, lon = offset(rng, base_lat, base_lon, rng.exponential(np.where(far, 5.0, 15.0)[episode]))
    new_device = (rng.random(episodes) < 0.8)[episode]
    device = np.where(new_device, device_base + episode, acc.devices[a, 0])
    cash_out = rng.random(n) < 0.4
    regular = acc.payees[a, (rng.random(n) * acc.n_payees[a]).astype(int)]
    payee = np.where(rng.random(n) < 0.75, new_payee(rng, n, legit), regular)
    payee = np.where(cash_out, agent_in(rng, there[episode]), payee)
    return Events(
        account=a,
        time=t,
        cash_out=cash_out,
        want_cents=np.round(acc.usual_cents[a] * rng.lognormal(np.log(6.0), 0.8, n)),
        frac=rng.uniform(0.7, 1.0, n),
        empty=np.zeros(n, bool),
        payee=payee,
        device=device,
        lat=lat,
        lon=lon,
        typology=np.full(n, 1, np.int8),
    )


def cash_out_drain(
    rng: np.random.Generator, acc: Accounts, mules: np.ndarray, device_base: int
) -> tuple[Events, Events]:
    """(the drains, the mules' earlier everyday-looking events). A mule, often days old,
    receives a deposit and cashes out most of it at an agent within hours."""
    episodes = len(mules)
    start = _hours_to_utc(
        np.floor(rng.uniform(1.0, SPAN_DAYS, episodes)), rng.normal(14.0, 4.0, episodes) % 24.0
    )
    fresh = rng.random(episodes) < 0.6
    acc.opened_at[mules] = np.where(
        fresh, start - rng.uniform(0.5, 20.0, episodes) * DAY, acc.opened_at[mules]
    )
    acc.initial_cents[mules] = np.round(acc.usual_cents[mules] * rng.uniform(1.0, 3.0, episodes))
    acc.deposit_cents[mules] = np.round(rng.lognormal(np.log(150_000.0), 0.8, episodes))
    acc.deposit_time[mules] = start - rng.uniform(600.0, 6 * 3600.0, episodes)

    sizes = 1 + rng.binomial(2, 0.3, episodes)
    episode, t = _episodes(rng, start, sizes, 1200.0)
    a = mules[episode]
    n = len(a)
    first = np.r_[True, episode[1:] != episode[:-1]]
    cash_out = rng.random(n) < 0.85
    agent = acc.agents[a, (rng.random(n) * acc.n_agents[a]).astype(int)]
    device = np.where(
        (rng.random(episodes) < 0.3)[episode], device_base + episode, acc.devices[a, 0]
    )
    lat, lon = offset(rng, acc.lat[a], acc.lon[a], rng.exponential(3.0, n))
    drains = Events(
        account=a,
        time=t,
        cash_out=cash_out,
        want_cents=np.round(acc.usual_cents[a]),
        frac=np.where(first, rng.beta(12.0, 1.5, n), rng.uniform(0.8, 1.0, n)),
        empty=np.ones(n, bool),
        payee=np.where(cash_out, agent, new_payee(rng, n, len(acc.city))),
        device=device,
        lat=lat,
        lon=lon,
        typology=np.full(n, 2, np.int8),
    )

    # Half the mules were used like any account first: a few small transfers after opening.
    groomed = np.flatnonzero((rng.random(episodes) < 0.5) & (acc.opened_at[mules] < start - DAY))
    g_sizes = rng.integers(1, 6, len(groomed))
    g_episode = np.repeat(groomed, g_sizes)
    opened = np.maximum(acc.opened_at[mules[g_episode]], START)
    g_t = opened + rng.uniform(0.0, 1.0, len(g_episode)) * (start[g_episode] - 3600.0 - opened)
    ga = mules[g_episode]
    m = len(ga)
    g_lat, g_lon = offset(rng, acc.lat[ga], acc.lon[ga], rng.exponential(2.5, m))
    grooming = Events(
        account=ga,
        time=g_t,
        cash_out=np.zeros(m, bool),
        want_cents=np.round(acc.usual_cents[ga] * rng.lognormal(-1.0, 0.5, m)),
        frac=rng.uniform(0.3, 0.9, m),
        empty=np.zeros(m, bool),
        payee=acc.payees[ga, (rng.random(m) * acc.n_payees[ga]).astype(int)],
        device=acc.devices[ga, 0],
        lat=g_lat,
        lon=g_lon,
        typology=np.zeros(m, np.int8),
    )
    return drains, grooming


def card_testing(
    rng: np.random.Generator,
    acc: Accounts,
    legit: int,
    fresh: np.ndarray,
    episodes: int,
    device_base: int,
) -> Events:
    """Bursts of tiny amounts minutes apart: customers' stolen credentials, or fresh accounts
    (`fresh`, as many as there are episodes; the first FRESH_TESTING_SHARE are used)."""
    start = _hours_to_utc(
        np.floor(rng.uniform(1.0, SPAN_DAYS, episodes)), rng.uniform(0.0, 24.0, episodes)
    )
    on_fresh = rng.random(episodes) < FRESH_TESTING_SHARE
    account = np.where(on_fresh, fresh, rng.integers(0, legit, episodes))
    acc.opened_at[fresh] = start - rng.uniform(0.0, 3.0, episodes) * DAY
    acc.initial_cents[fresh] = np.round(rng.uniform(1000.0, 8000.0, episodes))

    episode, t = _episodes(rng, start, 4 + rng.poisson(6.0, episodes), 40.0)
    a = account[episode]
    n = len(a)
    new_device = (~on_fresh & (rng.random(episodes) < 0.3))[episode]
    device = np.where(new_device, device_base + episode, acc.devices[a, 0])
    one_merchant = MERCHANT_PAYEE * PAYEE_KIND + rng.integers(0, MERCHANTS, episodes)
    payee = np.where(
        rng.random(n) < 0.5,
        MERCHANT_PAYEE * PAYEE_KIND + rng.integers(0, MERCHANTS, n),
        one_merchant[episode],
    )
    cash_out = rng.random(n) < 0.05
    agent = acc.agents[a, 0]
    lat, lon = offset(rng, acc.lat[a], acc.lon[a], rng.exponential(3.0, n))
    return Events(
        account=a,
        time=t,
        cash_out=cash_out,
        want_cents=np.round(rng.uniform(50.0, 500.0, n)),
        frac=rng.uniform(0.3, 0.9, n),
        empty=np.zeros(n, bool),
        payee=np.where(cash_out, agent, payee),
        device=device,
        lat=lat,
        lon=lon,
        typology=np.full(n, 3, np.int8),
    )
