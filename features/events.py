"""Mobile-money behavioural features from raw events: one definition, two executions.

`advance(state, event)` is the definition: from the sending account's state (what its earlier
events left) and one event, it gives the event's features and the state after it. Training
folds it over a history in time order (`features_over_history`); the server applies it to the
state it keeps per account. Both run this code, so the two agree by construction, and a replay
test proves it.

Every feature looks only at the account's earlier events (the event itself excluded):

  amount            the event's amount
  amount_vs_usual   amount / mean amount of the account's events in its 30-day window
                    (1.0 when the window is empty), at most 1e9
  balance_fraction  amount / balance_before (1.0 when the balance is 0), at most 1e9
  hour              UTC hour of day of the event, fractional (0 <= hour < 24)
  new_device        1 if the device is not among the account's 16 most recently used
  distance_km       great-circle distance from the centroid (on the sphere) of the locations of
                    the account's events in its 30-day window (0 when the window is empty)
  txns_last_hour    the account's events in its one-hour window
  account_age_days  days since account_opened_at (from this event, else the last event that
                    gave one), else since the account's first event; never below 0
  new_payee         1 if the payee is not among the account's 64 most recently paid
  is_cash_out       1 for a cash-out at an agent, 0 for a transfer

Windows are whole UTC buckets so that the state stays small and the result is exact: the
30-day window is the event's UTC day and the 29 days before it; the one-hour window is the
event's UTC minute and the 59 minutes before it (between 59 and 60 minutes of history).
The state of an account is bounded whatever its traffic: at most 30 day buckets, 60 minute
buckets, 16 devices, 64 payees and the ids of its last 64 events. Identifiers are kept as
64-bit BLAKE2b digests: two different ids share one with probability about 2^-64.

An event whose id is among the account's last 64 is a replay: it is answered from the state
as it stands and changes nothing, so a retried delivery is never counted twice.
"""

from __future__ import annotations

import binascii
import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

# Named in the model's metadata: a model is served on events only by code computing these.
DEFINITIONS = "mobile-money-events/1"
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
EVENT_TYPES = ("transfer", "cash_out")
# The fields of an event, in table order; account_opened_at may be absent.
EVENT_FIELDS = (
    "event_id",
    "account_id",
    "timestamp",
    "type",
    "amount",
    "balance_before",
    "payee_id",
    "device_id",
    "lat",
    "lon",
    "account_opened_at",
)
ID_FIELDS = ("event_id", "account_id", "payee_id", "device_id")

DAY_S = 86_400.0
MINUTE_S = 60.0
WINDOW_DAYS = 30
HOUR_MINUTES = 60
MAX_DEVICES = 16
MAX_PAYEES = 64
MAX_EVENT_IDS = 64
EARTH_RADIUS_KM = 6371.0088
# The two ratios stop here, so that a tiny balance or usual amount cannot push a feature past
# float32 (the model's input); nothing real comes near it.
RATIO_CAP = 1e9


class Event(NamedTuple):  # built per request: a tuple is cheaper than a dataclass
    event_id: str
    account_id: str
    timestamp: float  # UTC epoch seconds
    type: str
    amount: float
    balance_before: float
    payee_id: str
    device_id: str
    lat: float
    lon: float
    account_opened_at: float | None = None


class AccountState(NamedTuple):
    """What an account's events leave behind; never changed in place (advance makes a new one),
    so a store may hand out the object it holds."""

    first_seen: float
    opened_at: float | None
    # (minute index, events), oldest first; minute index = floor(timestamp / 60).
    minutes: tuple[tuple[int, int], ...]
    # (day index, events, sum of amounts, sums of the unit vectors' x, y, z), oldest first.
    days: tuple[tuple[int, int, float, float, float, float], ...]
    devices: tuple[int, ...]  # digests, most recent last
    payees: tuple[int, ...]
    event_ids: tuple[int, ...]

    def to_json(self) -> list[Any]:
        """A JSON-ready list; floats survive orjson and json exactly (shortest round-trip
        form). Digests go as base64 of their little-endian bytes: a third smaller than
        decimal and one string to decode instead of a hundred numbers."""
        return [
            self.first_seen,
            self.opened_at,
            self.minutes,
            self.days,
            _pack(self.devices),
            _pack(self.payees),
            _pack(self.event_ids),
        ]

    @classmethod
    def from_json(cls, value: Sequence[Any]) -> AccountState:
        first_seen, opened_at, minutes, days, devices, payees, event_ids = value
        # The values are what to_json wrote (JSON keeps ints and floats apart); only the
        # lists become tuples. This runs for every account of every batch read from Redis.
        return cls(
            float(first_seen),
            None if opened_at is None else float(opened_at),
            tuple(map(tuple, minutes)),
            tuple(map(tuple, days)),
            _unpack(devices),
            _unpack(payees),
            _unpack(event_ids),
        )


def _pack(digests: tuple[int, ...]) -> str:
    raw = struct.pack(f"<{len(digests)}Q", *digests)
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _unpack(text: str) -> tuple[int, ...]:
    raw = binascii.a2b_base64(text, strict_mode=True)  # binascii: base64's checks cost more
    return struct.unpack(f"<{len(raw) // 8}Q", raw)


def digest(identifier: str) -> int:
    """A stable 64-bit digest (Python's hash() changes from process to process)."""
    # surrogatepass: JSON may carry lone surrogates (\\udXXX), which plain UTF-8 refuses.
    raw = identifier.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


def unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    phi, lam = math.radians(lat), math.radians(lon)
    return math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)


def features(state: AccountState | None, event: Event) -> list[float]:
    """The event's features, in FEATURES order, from the state its account's earlier events
    left (None: the account's first event)."""
    return _features(state, event, digest(event.device_id), digest(event.payee_id))


def _features(state: AccountState | None, event: Event, device: int, payee: int) -> list[float]:
    t = event.timestamp
    amount = event.amount
    balance_fraction = (
        min(amount / event.balance_before, RATIO_CAP) if event.balance_before > 0 else 1.0
    )
    hour = (t % DAY_S) / 3600.0
    is_cash_out = 1.0 if event.type == "cash_out" else 0.0
    if state is None:
        opened = event.account_opened_at
        age = 0.0 if opened is None else max(0.0, (t - opened) / DAY_S)
        return [amount, 1.0, balance_fraction, hour, 1.0, 0.0, 0.0, age, 1.0, is_cash_out]

    minute = math.floor(t / MINUTE_S)
    txns_last_hour = sum(c for m, c in state.minutes if minute - HOUR_MINUTES < m <= minute)
    day = math.floor(t / DAY_S)
    count, total, sx, sy, sz = 0, 0.0, 0.0, 0.0, 0.0
    for d, c, a, x, y, z in state.days:
        if day - WINDOW_DAYS < d <= day:
            count += c
            total += a
            sx += x
            sy += y
            sz += z
    amount_vs_usual = min(amount / (total / count), RATIO_CAP) if count else 1.0
    distance_km = 0.0
    norm = math.sqrt(sx * sx + sy * sy + sz * sz)
    if count and norm > 1e-12:
        ex, ey, ez = unit_vector(event.lat, event.lon)
        cx, cy, cz = sx / norm, sy / norm, sz / norm
        cross = math.sqrt(
            (cy * ez - cz * ey) ** 2 + (cz * ex - cx * ez) ** 2 + (cx * ey - cy * ex) ** 2
        )
        distance_km = EARTH_RADIUS_KM * math.atan2(cross, cx * ex + cy * ey + cz * ez)
    opened = event.account_opened_at
    if opened is None:
        opened = state.opened_at if state.opened_at is not None else state.first_seen
    age = max(0.0, (t - opened) / DAY_S)
    new_device = 0.0 if device in state.devices else 1.0
    new_payee = 0.0 if payee in state.payees else 1.0
    return [
        amount,
        amount_vs_usual,
        balance_fraction,
        hour,
        new_device,
        distance_km,
        float(txns_last_hour),
        age,
        new_payee,
        is_cash_out,
    ]


def _recent(items: tuple[int, ...], item: int, cap: int) -> tuple[int, ...]:
    """`items` with `item` moved (or added) to the end, the oldest dropped beyond `cap`."""
    if items and items[-1] == item:  # the same device or payee as last time: the usual case
        return items
    kept = (*(v for v in items if v != item), item)
    return kept[-cap:]


def _count_minute(minutes: tuple[tuple[int, int], ...], minute: int) -> tuple[tuple[int, int], ...]:
    if minutes and minute >= minutes[-1][0] and minutes[0][0] > minute - HOUR_MINUTES:
        # In time order with nothing expired, the usual case: the same result, sooner.
        last, count = minutes[-1]
        if last == minute:
            return (*minutes[:-1], (minute, count + 1))
        return (*minutes, (minute, 1))
    newest = max(minute, minutes[-1][0]) if minutes else minute
    kept = [(m, c) for m, c in minutes if m > newest - HOUR_MINUTES]
    if minute <= newest - HOUR_MINUTES:  # too late to fall in any event's window again
        return tuple(kept)
    for i, (m, c) in enumerate(kept):
        if m == minute:
            kept[i] = (m, c + 1)
            return tuple(kept)
    kept.append((minute, 1))
    kept.sort()
    return tuple(kept)


def _count_day(
    days: tuple[tuple[int, int, float, float, float, float], ...], day: int, event: Event
) -> tuple[tuple[int, int, float, float, float, float], ...]:
    x, y, z = unit_vector(event.lat, event.lon)
    if days and day >= days[-1][0] and days[0][0] > day - WINDOW_DAYS:
        d, c, a, sx, sy, sz = days[-1]
        if d == day:
            return (*days[:-1], (d, c + 1, a + event.amount, sx + x, sy + y, sz + z))
        return (*days, (day, 1, event.amount, x, y, z))
    newest = max(day, days[-1][0]) if days else day
    kept = [bucket for bucket in days if bucket[0] > newest - WINDOW_DAYS]
    if day <= newest - WINDOW_DAYS:
        return tuple(kept)
    for i, (d, c, a, sx, sy, sz) in enumerate(kept):
        if d == day:
            kept[i] = (d, c + 1, a + event.amount, sx + x, sy + y, sz + z)
            return tuple(kept)
    kept.append((day, 1, event.amount, x, y, z))
    kept.sort()
    return tuple(kept)


def advance(state: AccountState | None, event: Event) -> tuple[list[float], AccountState, bool]:
    """(the event's features, the account's state after it, whether it was a replay).

    A replay (an id among the account's last MAX_EVENT_IDS) is scored from the state as it
    stands and leaves it unchanged.
    """
    event_key = digest(event.event_id)
    device, payee = digest(event.device_id), digest(event.payee_id)
    values = _features(state, event, device, payee)
    if state is not None and event_key in state.event_ids:
        return values, state, True
    t = event.timestamp
    minute, day = math.floor(t / MINUTE_S), math.floor(t / DAY_S)
    if state is None:
        x, y, z = unit_vector(event.lat, event.lon)
        after = AccountState(
            first_seen=t,
            opened_at=event.account_opened_at,
            minutes=((minute, 1),),
            days=((day, 1, event.amount, x, y, z),),
            devices=(device,),
            payees=(payee,),
            event_ids=(event_key,),
        )
        return values, after, False
    after = AccountState(
        first_seen=state.first_seen,
        opened_at=state.opened_at if event.account_opened_at is None else event.account_opened_at,
        minutes=_count_minute(state.minutes, minute),
        days=_count_day(state.days, day, event),
        devices=_recent(state.devices, device, MAX_DEVICES),
        payees=_recent(state.payees, payee, MAX_PAYEES),
        event_ids=(*state.event_ids, event_key)[-MAX_EVENT_IDS:],
    )
    return values, after, False


def features_over_history(events: Iterable[Event]) -> np.ndarray:
    """(n, len(FEATURES)) float64 features of `events`, folded in the order given: the
    offline execution. Pass a history sorted by time (ties in the order they happened)."""
    states: dict[str, AccountState] = {}
    rows = []
    for event in events:
        values, states[event.account_id], _ = advance(states.get(event.account_id), event)
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES))
