"""The Open Inference Protocol's request fields as typed by the protocol: a parameter or an id
that is present must hold its type, and null holds none."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from server.errors import InvalidRequest
from server.tensors import InferRequest, parse_infer_request
from tests.server.fakes import FEATURES

ROW = [0.5, 1.0, -2.0]
RAW = np.asarray([ROW], dtype="<f4").tobytes()


def tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "features", "datatype": "FP32", "shape": [1, len(FEATURES)]} | fields


def parse(payload: dict[str, Any], binary: bytes = b"") -> InferRequest:
    return parse_infer_request(
        orjson.dumps(payload), binary, "features", len(FEATURES), ("fraud_probability",), 10
    )


@pytest.mark.parametrize("size", [None, 0, len(RAW)])
def test_a_binary_data_size_beside_json_data_is_refused(size: int | None) -> None:
    # Present, the parameter says the tensor is in the binary tail; with data beside it the
    # request says both, whatever the size (a [1, 3] FP32 tensor is 12 bytes, never 0).
    payload = {"inputs": [tensor(data=ROW, parameters={"binary_data_size": size})]}
    with pytest.raises(InvalidRequest, match="both data and binary_data_size"):
        parse(payload)


@pytest.mark.parametrize("size", [None, "12", 12.5, True])
def test_a_binary_data_size_that_is_not_an_integer_is_refused(size: object) -> None:
    payload = {"inputs": [tensor(parameters={"binary_data_size": size})]}
    with pytest.raises(InvalidRequest, match="binary_data_size must be 12 bytes"):
        parse(payload, RAW)


def test_the_binary_form_and_the_json_form_still_parse_alike() -> None:
    binary = parse({"inputs": [tensor(parameters={"binary_data_size": len(RAW)})]}, RAW)
    as_json = parse({"inputs": [tensor(data=ROW, parameters={"other": None})]})
    assert binary.rows.tolist() == as_json.rows.tolist() == [ROW]


def test_a_null_id_is_refused_and_a_string_one_echoed() -> None:
    with pytest.raises(InvalidRequest, match="id must be a string"):
        parse({"id": None, "inputs": [tensor(data=ROW)]})
    assert parse({"id": "r-1", "inputs": [tensor(data=ROW)]}).id == "r-1"
    assert parse({"inputs": [tensor(data=ROW)]}).id is None
