"""The event feature definitions, on small hand-made histories whose answers are known."""

from __future__ import annotations

import math

import orjson
import pytest

from features.events import (
    DAY_S,
    FEATURES,
    MAX_DEVICES,
    MAX_EVENT_IDS,
    MAX_PAYEES,
    AccountState,
    Event,
    advance,
    features_over_history,
)
from features.reading import EventError, event_from_mapping, parse_timestamp

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a day boundary
NAIROBI = (-1.2864, 36.8172)
MOMBASA = (-4.0435, 39.6682)


def make(n: int, t: float, **changes: object) -> Event:
    fields: dict[str, object] = {
        "event_id": f"e{n}",
        "account_id": "a",
        "timestamp": t,
        "type": "transfer",
        "amount": 10.0,
        "balance_before": 100.0,
        "payee_id": "p",
        "device_id": "d",
        "lat": NAIROBI[0],
        "lon": NAIROBI[1],
        "account_opened_at": None,
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def fold(events: list[Event]) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, row, strict=True)) for row in features_over_history(events)]


def test_a_first_event_has_no_history() -> None:
    (first,) = fold([make(0, T0 + 5400.0, amount=30.0, balance_before=120.0, type="cash_out")])
    assert first == {
        "amount": 30.0,
        "amount_vs_usual": 1.0,
        "balance_fraction": 0.25,
        "hour": 1.5,
        "new_device": 1.0,
        "distance_km": 0.0,
        "txns_last_hour": 0.0,
        "account_age_days": 0.0,
        "new_payee": 1.0,
        "is_cash_out": 1.0,
    }


def test_usual_amount_and_distance_come_from_the_30_day_window() -> None:
    events = [
        make(0, T0, amount=10.0),
        make(1, T0 + 3600, amount=30.0),
        make(2, T0 + 7200, amount=40.0, lat=MOMBASA[0], lon=MOMBASA[1]),
    ]
    third = fold(events)[2]
    assert third["amount_vs_usual"] == pytest.approx(40.0 / 20.0)
    # Both earlier events were in Nairobi: Nairobi to Mombasa is about 440 km.
    assert third["distance_km"] == pytest.approx(440, abs=5)
    assert third["balance_fraction"] == 0.4
    # The day 30 days after the first: the window (that day and the 29 before) has lost it.
    later = fold([*events, make(3, T0 + 30 * DAY_S, amount=60.0)])[3]
    assert later["amount_vs_usual"] == 1.0 and later["distance_km"] == 0.0
    kept = fold([*events, make(3, T0 + 29 * DAY_S + 86_399, amount=60.0)])[3]
    assert kept["amount_vs_usual"] == pytest.approx(60.0 / (80.0 / 3))


def test_the_centroid_is_taken_on_the_sphere() -> None:
    # Two events either side of the antimeridian: their centroid is on it, not at longitude 0.
    events = [
        make(0, T0, lat=0.0, lon=179.0),
        make(1, T0 + 60, lat=0.0, lon=-179.0),
        make(2, T0 + 120, lat=0.0, lon=180.0),
    ]
    assert fold(events)[2]["distance_km"] == pytest.approx(0.0, abs=1e-6)


def test_the_hour_window_is_this_minute_and_the_59_before() -> None:
    start = T0 + 10 * 3600
    events = [make(n, start + 10.0 * n) for n in range(5)]  # five in the first minute
    inside = fold([*events, make(5, start + 59 * 60 + 59.0)])[5]
    outside = fold([*events, make(5, start + 60 * 60.0)])[5]
    assert inside["txns_last_hour"] == 5
    assert outside["txns_last_hour"] == 0


def test_devices_and_payees_are_remembered_up_to_their_caps() -> None:
    devices = [make(n, T0 + n, device_id=f"d{n}") for n in range(MAX_DEVICES + 1)]
    back_to_second = make(99, T0 + 100, device_id="d1")
    back_to_first = make(98, T0 + 101, device_id="d0")
    rows = fold([*devices, back_to_second, back_to_first])
    assert [r["new_device"] for r in rows[:-2]] == [1.0] * (MAX_DEVICES + 1)
    assert rows[-2]["new_device"] == 0.0  # among the 16 most recent
    assert rows[-1]["new_device"] == 1.0  # pushed out by the 17th
    payees = [make(n, T0 + n, payee_id=f"p{n}") for n in range(MAX_PAYEES + 1)]
    rows = fold([*payees, make(99, T0 + 100, payee_id="p1"), make(98, T0 + 101, payee_id="p0")])
    assert rows[-2]["new_payee"] == 0.0 and rows[-1]["new_payee"] == 1.0


def test_account_age_from_the_opening_date_else_the_first_event() -> None:
    opened = T0 - 10 * DAY_S
    rows = fold(
        [
            make(0, T0),
            make(1, T0 + DAY_S / 2),
            make(2, T0 + DAY_S, account_opened_at=opened),
            make(3, T0 + 2 * DAY_S),  # no date: the last one given still holds
            make(4, T0 + 3 * DAY_S, account_opened_at=T0 + 5 * DAY_S),  # in the future
        ]
    )
    ages = [r["account_age_days"] for r in rows]
    assert ages == [0.0, 0.5, 11.0, 12.0, 0.0]


def test_a_replay_changes_nothing_and_is_counted_once() -> None:
    state = None
    for n in range(3):
        _, state, replayed = advance(state, make(n, T0 + n))
        assert not replayed
    values, after, replayed = advance(state, make(1, T0 + 5))
    assert replayed and after is state
    assert values[FEATURES.index("txns_last_hour")] == 3.0
    # Only the account's last MAX_EVENT_IDS ids are known.
    for n in range(3, MAX_EVENT_IDS + 3):
        _, state, _ = advance(state, make(n, T0 + n))
    assert advance(state, make(n, T0 + 1000))[2] is True
    assert advance(state, make(0, T0 + 1000))[2] is False


def test_the_state_stays_bounded_and_survives_json_exactly() -> None:
    state = None
    times = [T0 + 864.0 * n for n in range(5_000)]  # 5,000 events over 50 days,
    times += [times[-1] + 60.0 * n for n in range(1, 61)]  # then one a minute for an hour
    for n, t in enumerate(times):
        event = make(n, t, device_id=f"d{n % 40}", payee_id=f"p{n % 300}")
        _, state, _ = advance(state, event)
    assert state is not None
    assert len(state.days) == 30 and len(state.minutes) == 60
    assert len(state.devices) == MAX_DEVICES and len(state.payees) == MAX_PAYEES
    assert len(state.event_ids) == MAX_EVENT_IDS
    assert len(orjson.dumps(state.to_json())) < 5_000  # the most an account can take
    assert AccountState.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state


def test_late_events_are_counted_in_their_own_buckets() -> None:
    # A late event sees the events before it in time, not those that arrived before it.
    rows = fold([make(0, T0 + 600), make(1, T0 + 60), make(2, T0 + 900)])
    assert [r["txns_last_hour"] for r in rows] == [0.0, 0.0, 2.0]
    # Older than every window: scored, and the windows left alone.
    rows = fold([make(0, T0 + 40 * DAY_S), make(1, T0), make(2, T0 + 40 * DAY_S + 60)])
    assert rows[2]["txns_last_hour"] == 1.0 and rows[2]["amount_vs_usual"] == 1.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (T0, T0),
        (int(T0), T0),
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T03:00:00+03:00", T0),
        ("2026-01-01T00:00:00", T0),
        ("2026-01-01 00:00:00.5", T0 + 0.5),
        ("2026-01-01", T0),
        ("2026-01-01T05:30+05:30", T0),
        ("2026-01-01T00:00:00.123456Z", T0 + 0.123456),
    ],
)
def test_timestamps(value: object, seconds: float) -> None:
    assert parse_timestamp(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",
        "2026-02-30T00:00:00Z",
        "tomorrow",
        "2026-01-01T00:00:00\u0000",
        "2026-W01-1",
        "20260101T000000Z",
        " 2026-01-01",
        "2026-01-01T00:00:00Z ",
        "٢٠٢٦-01-01",
        True,
        None,
        -1,
        1e13,
    ],
)
def test_bad_timestamps(value: object) -> None:
    with pytest.raises(EventError) as caught:
        parse_timestamp(value)
    assert caught.value.field == "timestamp"


def test_event_from_mapping_checks_every_field_and_names_the_first_bad_one() -> None:
    good = {
        "event_id": "e",
        "account_id": "a",
        "timestamp": "2026-01-01T00:00:00Z",
        "type": "cash_out",
        "amount": 5,
        "balance_before": 0,
        "payee_id": "agent-1",
        "device_id": "d",
        "lat": 90,
        "lon": -180,
    }
    event = event_from_mapping(good)
    assert event.timestamp == T0 and event.amount == 5.0 and type(event.amount) is float
    assert event.account_opened_at is None
    for field, bad in [
        ("event_id", ""),
        ("account_id", 3),
        ("type", "Transfer"),
        ("amount", math.inf),
        ("amount", 1e39),
        ("balance_before", math.nan),
        ("lat", 90.0001),
        ("lon", False),
        ("account_opened_at", "x"),
    ]:
        with pytest.raises(EventError) as caught:
            event_from_mapping(good | {field: bad})
        assert caught.value.field == field, (field, bad)
    for field in ("event_id", "timestamp", "amount", "lat", "device_id"):
        with pytest.raises(EventError, match=f"{field} is missing"):
            event_from_mapping({k: v for k, v in good.items() if k != field})


def test_ratios_are_capped_so_that_features_stay_within_float32() -> None:
    rows = fold(
        [
            make(0, T0, amount=1e-30, balance_before=1e-300),
            make(1, T0 + 60, amount=3e38, balance_before=2e-308),
        ]
    )
    assert rows[0]["balance_fraction"] == 1e9
    assert rows[1]["amount_vs_usual"] == 1e9 and rows[1]["balance_fraction"] == 1e9


def test_identifiers_may_hold_lone_surrogates() -> None:
    # JSON can escape half a surrogate pair (\\ud800); such an id is still an id.
    rows = fold([make(0, T0, device_id="\ud800x"), make(1, T0 + 1, device_id="\ud800x")])
    assert [r["new_device"] for r in rows] == [1.0, 0.0]
