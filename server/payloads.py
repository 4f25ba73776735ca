"""Turn request bytes into validated model rows, or a precise 4xx error. Pure functions."""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import numpy as np
import orjson

from server.errors import InvalidJSON, InvalidRequest

FLOAT32_MAX = float(np.finfo(np.float32).max)
NUMBER_TYPES = frozenset({float, int})  # not bool: type(True) is bool
MAX_TRANSACTION_ID = 128
SCORE_FIELDS = frozenset({"transaction_id", "features", "explain"})


class ScoreRequest(NamedTuple):  # built per request: a tuple is cheaper than a dataclass
    transaction_id: str | None
    features: list[float]
    explain: bool = False  # reasons asked for even if the decision is APPROVE


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise InvalidJSON(f"duplicate key {shown(duplicate)}")
    return obj


def _reject_constant(name: str) -> None:
    raise InvalidJSON(f"{name} is not valid JSON")


_STRICT = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def _count_pairs(value: Any, strings: bool = False) -> int:
    """Keys in all objects within `value`, plus, with `strings`, the colons inside its keys
    and string values; a loop, since orjson allows nesting deeper than Python's recursion
    limit."""
    pairs, pending = 0, [value]
    while pending:
        item = pending.pop()
        if type(item) is dict:
            pairs += len(item)
            if strings:
                pairs += "".join(item).count(":")
            for v in item.values():
                if type(v) is str:
                    if strings:
                        pairs += v.count(":")
                elif type(v) is dict or type(v) is list:
                    pending.append(v)
        elif type(item) is list:
            for v in item:
                if type(v) is str:
                    if strings:
                        pairs += v.count(":")
                elif type(v) is dict or type(v) is list:
                    pending.append(v)
    return pairs


def shown(text: str, limit: int = 40) -> str:
    """A client-supplied name, quoted and cut short, for an error message or field."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_json(body: bytes) -> Any:
    """Strict JSON: no NaN/Infinity literals, no duplicate keys.

    orjson is fast but silently keeps the last of duplicated keys. Every key in
    the text needs a ':' of its own, so when the body has no more colons than
    the parsed objects have keys (and, in a body without escapes, than their
    strings hold), nothing was dropped; only otherwise (a colon in an escaped
    string, or a real duplicate) is the slower strict parser run.
    """
    if not body:
        raise InvalidJSON("the request body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    colons = body.count(b":")
    # Without a backslash no string holds an escape, so its text is what was parsed and its
    # colons (an ISO-8601 time has two) can be counted from the parsed value.
    if (
        colons
        and (type(value) is not dict or colons > len(value))
        and colons > _count_pairs(value, strings=b"\\" not in body)
    ):
        try:
            _STRICT.decode(body.decode("utf-8"))
        except InvalidJSON:
            raise
        except RecursionError:
            raise InvalidJSON("the body nests too deeply") from None
        except ValueError:
            raise InvalidJSON("the body is not valid JSON") from None
    return value


def parse_transaction_id(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise InvalidRequest("transaction_id must be a string", field=field)
    if not 1 <= len(value) <= MAX_TRANSACTION_ID:
        raise InvalidRequest(
            f"transaction_id must be 1 to {MAX_TRANSACTION_ID} characters", field=field
        )
    return value


def _check_number(value: Any, field: str, missing_allowed: bool = False) -> float:
    kind = type(value)
    if value is None and missing_allowed:
        return math.nan  # the model's graph fills it
    if kind is not float and kind is not int:  # bool is a distinct type and fails here
        raise InvalidRequest(f"must be a number, got {_json_type(value)}", field=field)
    number = float(value)
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise InvalidRequest("must be a finite number within float32 range", field=field)
    return number


def all_valid_numbers(values: list[Any]) -> bool:
    """The hot path: C-level passes over the values instead of a Python loop per value."""
    return (
        set(map(type, values)) <= NUMBER_TYPES
        and all(map(math.isfinite, values))
        and max(map(abs, values), default=0.0) <= FLOAT32_MAX
    )


def parse_features(
    value: Any, names: tuple[str, ...], field: str = "features", missing_allowed: bool = False
) -> list[float]:
    """The row in model order. With `missing_allowed` (a model that fills missing inputs
    itself), null and, in the object form, an absent feature become NaN."""
    if type(value) is list:
        if len(value) != len(names):
            raise InvalidRequest(f"expected {len(names)} features, got {len(value)}", field=field)
        if all_valid_numbers(value):
            return value
        # Something is wrong, or missing: find which value, for a precise error.
        return [_check_number(v, f"{field}[{i}]", missing_allowed) for i, v in enumerate(value)]
    if type(value) is dict:
        unknown = [key for key in value if key not in names]
        if unknown:
            raise InvalidRequest(
                f"unknown feature {shown(unknown[0])}", field=f"{field}.{unknown[0][:40]}"
            )
        missing = [name for name in names if name not in value]
        if missing and not missing_allowed:
            raise InvalidRequest(
                f"missing feature(s): {', '.join(missing)}", field=f"{field}.{missing[0]}"
            )
        ordered: list[Any] = [value.get(name) for name in names]
        if all_valid_numbers(ordered):
            return ordered
        return [
            _check_number(v, f"{field}.{name}", missing_allowed)
            for name, v in zip(names, ordered, strict=True)
        ]
    if value is None:
        raise InvalidRequest("features is required", field=field)
    raise InvalidRequest(
        f"features must be an array of {len(names)} numbers or an object "
        f"of feature names to numbers, got {_json_type(value)}",
        field=field,
    )


def parse_score_request(
    payload: Any, names: tuple[str, ...], where: str = "", missing_allowed: bool = False
) -> ScoreRequest:
    """One transaction; `where` prefixes field names ("transactions[3].") inside a batch."""
    if type(payload) is not dict:
        raise InvalidRequest(
            f"expected a JSON object, got {_json_type(payload)}", field=where.rstrip(".") or None
        )
    for key in payload:
        if key not in SCORE_FIELDS:
            raise InvalidRequest(f"unknown field {shown(key)}", field=where + key[:40])
    if "features" not in payload:
        raise InvalidRequest("features is required", field=where + "features")
    explain = payload.get("explain", False)
    if type(explain) is not bool:
        raise InvalidRequest("explain must be true or false", field=where + "explain")
    return ScoreRequest(
        transaction_id=parse_transaction_id(
            payload.get("transaction_id"), where + "transaction_id"
        ),
        features=parse_features(payload["features"], names, where + "features", missing_allowed),
        explain=explain,
    )


def batch_items(payload: Any, max_items: int) -> list[Any]:
    """The transactions of a /v1/score/batch body, the envelope checked, the items not yet."""
    if type(payload) is not dict:
        raise InvalidRequest(f"the body must be a JSON object, got {_json_type(payload)}")
    for key in payload:
        if key != "transactions":
            raise InvalidRequest(f"unknown field {shown(key)}", field=key[:40])
    items = payload.get("transactions")
    if type(items) is not list:
        raise InvalidRequest("transactions must be an array of transactions", field="transactions")
    if not 1 <= len(items) <= max_items:
        raise InvalidRequest(
            f"transactions must hold 1 to {max_items} items, got {len(items)}", field="transactions"
        )
    return items


def parse_batch_items(
    items: list[Any], start: int, stop: int, names: tuple[str, ...], missing_allowed: bool = False
) -> list[ScoreRequest]:
    """Items [start, stop) of a batch, each error naming the item's place in the whole."""
    requests = []
    for index in range(start, min(stop, len(items))):
        try:
            where = f"transactions[{index}]."
            requests.append(parse_score_request(items[index], names, where, missing_allowed))
        except InvalidRequest as exc:
            raise InvalidRequest(f"transaction {index}: {exc.message}", field=exc.field) from None
    return requests


def parse_batch_request(
    payload: Any, names: tuple[str, ...], max_items: int, missing_allowed: bool = False
) -> list[ScoreRequest]:
    items = batch_items(payload, max_items)
    return parse_batch_items(items, 0, len(items), names, missing_allowed)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)
