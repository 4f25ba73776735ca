"""The documented event timestamp against the reader that applies it (features/reading.py):
every string the pattern admits is taken, and every string taken is admitted, but for the
offsets at the 1970-2200 bounds that the pattern leaves out on purpose."""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from features.reading import EventError, parse_timestamp
from server.openapi_events import DATE_TIME

PATTERN = re.compile(DATE_TIME)
# Where a zone offset can carry a time across a bound, the pattern keeps only the safe zones.
EDGE_DAYS = {"1969-12-31", "1970-01-01", "2199-12-31", "2200-01-01"}


def taken(text: str) -> bool:
    try:
        parse_timestamp(text)
    except EventError:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(st.from_regex(PATTERN, fullmatch=True))
def test_every_documented_timestamp_is_taken(text: str) -> None:
    assert taken(text), text


def test_dates_are_documented_exactly_as_taken() -> None:
    years = [1, 1968, 1969, 1970, 1971, 2000, 2023, 2024, 2100, 2104, 2199, 2200, 2201, 9999]
    for year, month, day in itertools.product(years, range(14), range(33)):
        text = f"{year:04d}-{month:02d}-{day:02d}"
        if text not in EDGE_DAYS:
            assert bool(PATTERN.match(text)) == taken(text), text
    assert not PATTERN.match("2023-02-29") and PATTERN.match("2024-02-29")
    assert not PATTERN.match("2100-02-29") and PATTERN.match("2000-02-29")


def test_times_and_zones_are_documented_exactly_as_taken() -> None:
    for hour, minute in itertools.product(range(0, 100, 3), range(0, 100, 7)):
        for tail in ("", ":00", ":59", ":60", ":07.5", ",123456789", ":00,123456789", "Z", "z"):
            text = f"2020-06-15T{hour:02d}:{minute:02d}{tail}"
            assert bool(PATTERN.match(text)) == taken(text), text
    # Offset minutes up to 59 only: the reader also takes 60 to 99 (datetime reads +05:99 as
    # +06:39), a leniency the document does not promise.
    for sign, hour, minute, colon in itertools.product("+-", range(26), range(60), (":", "")):
        text = f"2020-06-15 12:00{sign}{hour:02d}{colon}{minute:02d}"
        assert bool(PATTERN.match(text)) == taken(text), text


def test_at_the_bounds_the_pattern_admits_only_zones_that_stay_within() -> None:
    for day, time in itertools.product(EDGE_DAYS, ("00:00", "00:30", "12:00", "23:59:59.9")):
        for zone in ("", "Z", "+00:00", "-00:00", "+01:00", "-01:00", "+2359", "-2359"):
            text = f"{day}T{time}{zone}"
            if PATTERN.match(text):
                assert taken(text), text
    assert PATTERN.match("1970-01-01T00:00-05:00") and PATTERN.match("2199-12-31T23:00+05:00")
    assert not PATTERN.match("1970-01-01T00:00+05:00")  # 1969 in UTC
    assert not PATTERN.match("2199-12-31T23:00-05:00")  # 2200, past the bound, in UTC
