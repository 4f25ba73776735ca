"""Property tests: whatever arrives, parsing gives a 4xx error or a valid float32 row, never
an unhandled exception."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.errors import ServingError
from server.payloads import FLOAT32_MAX, parse_batch_request, parse_json, parse_score_request
from server.tensors import parse_infer_request, split_body
from tests.server.fakes import FEATURES

PROPERTIES = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
# Feature-shaped values: lists of numbers of about the right length, and objects by name.
numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
)
features = st.one_of(
    json_values,
    st.lists(numbers, min_size=2, max_size=4),
    st.dictionaries(st.sampled_from([*FEATURES, "other"]), numbers, max_size=4),
)


def a_4xx(error: ServingError) -> bool:
    return 400 <= error.status_code < 500


def valid_row(row: Any) -> bool:
    values = np.asarray(row, dtype=np.float64)
    return (
        values.shape == (len(FEATURES),)
        and bool(np.isfinite(values).all())
        and float(np.abs(values).max()) <= FLOAT32_MAX
        and np.isfinite(values.astype(np.float32)).all()
    )


@PROPERTIES
@given(features, st.one_of(st.none(), json_values))
def test_any_features_give_a_4xx_or_a_valid_row(value: Any, transaction_id: Any) -> None:
    payload = {"features": value} | (
        {} if transaction_id is None else {"transaction_id": transaction_id}
    )
    try:
        request = parse_score_request(payload, FEATURES)
    except ServingError as error:
        assert a_4xx(error)
        return
    assert valid_row(request.features)
    assert request.transaction_id is None or isinstance(request.transaction_id, str)


@PROPERTIES
@given(json_values)
def test_any_payload_gives_a_4xx_or_requests(payload: Any) -> None:
    for parse in (
        lambda: [parse_score_request(payload, FEATURES)],
        lambda: parse_batch_request(payload, FEATURES, 10),
    ):
        try:
            requests = parse()
        except ServingError as error:
            assert a_4xx(error)
            continue
        assert all(valid_row(r.features) for r in requests)


@PROPERTIES
@given(st.binary(max_size=200))
def test_any_bytes_give_a_4xx_or_json(body: bytes) -> None:
    try:
        value = parse_json(body)
    except ServingError as error:
        assert a_4xx(error)
        return
    assert value == orjson.loads(body)  # what was accepted is exactly the JSON sent


@PROPERTIES
@given(st.binary(max_size=300), st.one_of(st.none(), st.text(max_size=6)))
def test_any_v2_body_gives_a_4xx_or_valid_rows(body: bytes, header_length: str | None) -> None:
    try:
        header, binary = split_body(body, header_length)
        request = parse_infer_request(
            header, binary, "features", len(FEATURES), ("fraud_probability",), 10
        )
    except ServingError as error:
        assert a_4xx(error)
        return
    assert request.rows.dtype == np.float32 and np.isfinite(request.rows).all()
    assert request.rows.shape[1] == len(FEATURES)
