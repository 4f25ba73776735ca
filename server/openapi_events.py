"""The OpenAPI schemas of the raw-event routes (see server/events.py and features/events.py)."""

from __future__ import annotations

from features.events import EVENT_TYPES, FEATURES
from features.reading import FLOAT_MAX, MAX_ID_CHARS, MAX_TIMESTAMP
from server.openapi_schemas import (
    BOOLEAN,
    PROBABILITY,
    REASONS,
    STRING,
    Schema,
    array,
    obj,
    ref,
)
from server.service import APPROVE, DECLINE, REVIEW

EVENT_ROUTES = (
    "/v1/events/score",
    "/v1/events/score/batch",
    "/v1/models/{name}/events/score",
    "/v1/models/{name}/events/score/batch",
)
EXAMPLE_EVENT = {
    "event_id": "evt-0001",
    "account_id": "acct-42",
    "timestamp": "2026-03-01T21:14:05Z",
    "type": "transfer",
    "amount": 125.0,
    "balance_before": 900.0,
    "payee_id": "acct-77",
    "device_id": "dev-a1",
    "lat": -1.2864,
    "lon": 36.8172,
    "account_opened_at": "2024-11-02T00:00:00Z",
}


# The ISO-8601 strings features/reading.py takes, as a pattern: calendar dates (leap days in
# leap years only), times of day and zones that datetime.fromisoformat accepts. The 1970-2200
# bound holds in UTC: a zone offset moves a time across it on the first and last days, so on
# 1970-01-01 and 2199-12-31 the pattern omits the offsets that could, and the two days beyond.
DAYS = {28: "(0[1-9]|1[0-9]|2[0-8])", 30: "(0[1-9]|[12][0-9]|30)", 31: "(0[1-9]|[12][0-9]|3[01])"}
MONTHS = [
    f"{m:02d}-{DAYS[n]}" for m, n in enumerate((31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31), 1)
]
YEARS = "(197[1-9]|19[89][0-9]|20[0-9]{2}|21[0-8][0-9]|219[0-8])"
LEAP_YEARS = (
    "(19(7[26]|8[048]|9[26])|20([02468][048]|[13579][26])|21(0[48]|[2468][048]|[13579][26]))"
)
DATES = (
    f"{YEARS}-({'|'.join(MONTHS)})|{LEAP_YEARS}-02-29"
    f"|1970-(01-(0[2-9]|[12][0-9]|3[01])|{'|'.join(MONTHS[1:])})"  # not 1970-01-01
    f"|2199-({'|'.join(MONTHS[:-1])}|12-(0[1-9]|[12][0-9]|30))"  # not 2199-12-31
)
TIME = "[T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.,][0-9]{1,9})?)?"
OFFSET = "([01][0-9]|2[0-3]):?[0-5][0-9]"
DATE_TIME = (
    f"^(({DATES})({TIME}(Z|[+-]{OFFSET})?)?"
    f"|1970-01-01({TIME}(Z|-{OFFSET}|[+]00:?00)?)?"
    f"|2199-12-31({TIME}(Z|[+]{OFFSET}|-00:?00)?)?)$"
)


def timestamp(description: str, nullable: bool = False) -> Schema:
    forms: list[Schema] = [
        {"type": "number", "minimum": 0, "maximum": MAX_TIMESTAMP},
        {"type": "string", "pattern": DATE_TIME},
    ]
    return {
        "oneOf": forms + ([{"type": "null"}] if nullable else []),
        "description": description + ": epoch seconds, or an ISO-8601 date with an optional "
        "time and zone (UTC when it names none), between 1970 and 2200 in UTC"
        + ("; null or absent: unknown." if nullable else "."),
    }


def event_schemas(max_items: int) -> dict[str, Schema]:
    identifier: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
    fields: dict[str, Schema] = {
        "event_id": identifier | {"description": "Unique per account: a repeat is a replay."},
        "account_id": identifier | {"description": "The sending account."},
        "timestamp": timestamp("When the event happened"),
        "type": {"type": "string", "enum": list(EVENT_TYPES)},
        "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": FLOAT_MAX},
        "balance_before": {"type": "number", "minimum": 0, "maximum": FLOAT_MAX},
        "payee_id": identifier,
        "device_id": identifier,
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "lon": {"type": "number", "minimum": -180, "maximum": 180},
        "account_opened_at": timestamp("When the account was opened", nullable=True),
    }
    wanted = BOOLEAN | {"description": "Also answer the features computed for each event."}
    result = {
        "event_id": STRING,
        "fraud_probability": PROBABILITY,
        "decision": {"type": "string", "enum": [APPROVE, REVIEW, DECLINE]},
        "model_version": STRING,
        "out_of_distribution": BOOLEAN,
        "unusual_features": array(STRING),
        "replayed": BOOLEAN
        | {"description": "The event id was seen before: answered, not counted again."},
        "features": obj({name: {"type": "number"} for name in FEATURES}, closed=True),
        "reasons": REASONS,
    }
    return {
        "EventRequest": obj(
            fields | {"return_features": wanted},
            ("account_opened_at", "return_features"),
            closed=True,
        ),
        "Event": obj(fields, ("account_opened_at",), closed=True),
        "EventBatchRequest": obj(
            {"events": array(ref("Event"), 1, max_items), "return_features": wanted},
            ("return_features",),
            closed=True,
        ),
        "EventResult": obj(result, ("features", "reasons")),
        "EventBatchResponse": obj({"results": array(ref("EventResult"), description="In order.")}),
    }


def event_request_bodies() -> dict[str, Schema]:
    single = {
        "required": True,
        "content": {
            "application/json": {
                "schema": ref("EventRequest"),
                "examples": {"event": {"value": EXAMPLE_EVENT}},
            }
        },
    }
    batch = {
        "required": True,
        "content": {
            "application/json": {
                "schema": ref("EventBatchRequest"),
                "examples": {"batch": {"value": {"events": [EXAMPLE_EVENT]}}},
            }
        },
    }
    return {path: batch if path.endswith("/batch") else single for path in EVENT_ROUTES}
