"""The raw-event routes in process, on a fake model trained "on" the event definitions: the
features match the offline fold, replays count once, bad events get 422, the snapshot keeps
the state over a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from features.events import DEFINITIONS, FEATURES, MAX_EVENT_IDS, features_over_history
from features.reading import event_from_mapping
from server.accounts import MemoryStore, Update, Versioned
from server.app import create_app
from server.errors import SettingsError
from server.events import EventPipeline, Folded
from server.settings import Settings
from tests.server.fakes import FakeScorer, fake_info

KEY = "events-test-key-0123"
HEADERS = {"X-API-Key": KEY}
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def events_scorer(name: str = "wallet", definitions: str | None = DEFINITIONS) -> FakeScorer:
    """Probability = the amount clipped to [0, 1]: the tests choose the decision."""
    scorer = FakeScorer()
    scorer.info = fake_info(
        name=name,
        version="1",
        feature_names=FEATURES,
        feature_mean=(0.0,) * len(FEATURES),
        feature_std=(1e6,) * len(FEATURES),
        feature_definitions=definitions,
        review_threshold=0.3,
        decline_threshold=0.6,
    )
    return scorer


def event(n: int, account: str = "acct-1", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": f"evt-{account}-{n}",
        "account_id": account,
        "timestamp": T0 + 3600 * 24 * 40 + 60.0 * n,
        "type": "transfer",
        "amount": 0.5 + 0.01 * n,
        "balance_before": 100.0,
        "payee_id": f"payee-{n % 3}",
        "device_id": "phone-1" if n % 4 else "phone-2",
        "lat": -1.286 + 0.001 * n,
        "lon": 36.817,
        "account_opened_at": "2025-06-01T00:00:00Z",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def client_for(*scorers: FakeScorer, default: str | None = None, **settings: Any) -> TestClient:
    app = create_app(
        Settings(api_keys=(KEY,), default_model=default, poll_interval_s=0, **settings),
        scorers=scorers,
    )
    return TestClient(app)


def offline(bodies: list[dict[str, Any]]) -> list[list[float]]:
    return features_over_history(event_from_mapping(b) for b in bodies).tolist()


def test_single_events_get_the_offline_features_and_the_usual_answer() -> None:
    bodies = [event(n) for n in range(12)]
    with client_for(events_scorer()) as client:
        answers = []
        for body in bodies:
            response = client.post(
                "/v1/events/score", json=body | {"return_features": True}, headers=HEADERS
            )
            assert response.status_code == 200, response.text
            answers.append(response.json())
    expected = offline(bodies)
    for body, answer, row in zip(bodies, answers, expected, strict=True):
        assert answer["event_id"] == body["event_id"]
        assert answer["model_version"] == "1"
        assert answer["replayed"] is False
        assert list(answer["features"]) == list(FEATURES)
        assert list(answer["features"].values()) == row
        assert answer["fraud_probability"] == pytest.approx(min(body["amount"], 1.0), abs=1e-6)
        assert answer["decision"] == ("DECLINE" if body["amount"] >= 0.6 else "REVIEW")
    # The history shows in the features: a second event in the hour, a known device.
    assert expected[-1][FEATURES.index("txns_last_hour")] == 11
    assert expected[1][FEATURES.index("new_device")] == 1.0  # phone-1 first seen
    assert expected[2][FEATURES.index("new_device")] == 0.0


def test_without_return_features_the_answer_holds_none() -> None:
    with client_for(events_scorer()) as client:
        answer = client.post("/v1/events/score", json=event(1), headers=HEADERS).json()
    assert "features" not in answer
    explained = {"reasons"} if answer["decision"] != "APPROVE" else set()
    assert (
        set(answer)
        == {
            "event_id",
            "fraud_probability",
            "decision",
            "model_version",
            "out_of_distribution",
            "unusual_features",
            "replayed",
        }
        | explained
    )


def test_a_replayed_event_id_is_answered_and_counted_once() -> None:
    with client_for(events_scorer()) as client:
        for n in range(3):
            client.post("/v1/events/score", json=event(n), headers=HEADERS)
        again = client.post("/v1/events/score", json=event(1), headers=HEADERS).json()
        last = client.post(
            "/v1/events/score", json=event(3) | {"return_features": True}, headers=HEADERS
        ).json()
        exposition = client.get("/metrics").text
    assert again["replayed"] is True
    assert last["replayed"] is False
    assert last["features"]["txns_last_hour"] == 3  # events 0, 1, 2: the replay not again
    assert 'fraud_events_total{model="wallet",result="applied"} 4.0' in exposition
    assert 'fraud_events_total{model="wallet",result="replayed"} 1.0' in exposition
    assert 'fraud_state_conflicts_total{model="wallet"} 0.0' in exposition


def test_the_batch_route_folds_each_account_in_time_order() -> None:
    # Two accounts interleaved, one of them sent out of time order within the batch.
    first = [event(n, "acct-a") for n in range(5)]
    second = [event(n, "acct-b", amount=0.9) for n in range(4)]
    sent = [second[1], first[0], second[0], first[1], first[2], second[3], second[2], *first[3:]]
    with client_for(events_scorer()) as client:
        response = client.post(
            "/v1/models/wallet/events/score/batch",
            json={"events": sent, "return_features": True},
            headers=HEADERS,
        )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["event_id"] for r in results] == [e["event_id"] for e in sent]
    by_id = {r["event_id"]: r["features"] for r in results}
    for history in (first, second):
        for body, row in zip(history, offline(history), strict=True):
            assert list(by_id[body["event_id"]].values()) == row
    assert {r["decision"] for r in results} == {"REVIEW", "DECLINE"}


def test_named_and_default_routes_reach_their_models() -> None:
    with client_for(events_scorer("wallet"), events_scorer("agent"), default="agent") as client:
        client.post("/v1/models/wallet/events/score", json=event(0), headers=HEADERS)
        named = client.post(
            "/v1/models/wallet/events/score",
            json=event(1) | {"return_features": True},
            headers=HEADERS,
        ).json()
        default = client.post(
            "/v1/events/score", json=event(1) | {"return_features": True}, headers=HEADERS
        ).json()
    # Each model keeps its own accounts: the default model never saw event 0.
    assert named["features"]["txns_last_hour"] == 1
    assert default["features"]["txns_last_hour"] == 0


def test_a_model_not_trained_on_the_definitions_refuses_events() -> None:
    plain = events_scorer("cards", definitions=None)
    with client_for(plain, events_scorer("wallet"), default="cards") as client:
        response = client.post("/v1/events/score", json=event(0), headers=HEADERS)
        unknown = client.post("/v1/models/nope/events/score", json=event(0), headers=HEADERS)
        no_key = client.post("/v1/models/wallet/events/score", json=event(0))
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert DEFINITIONS in message and "models that do: wallet" in message
    assert unknown.status_code == 404 and "unknown model" in unknown.json()["error"]["message"]
    assert no_key.status_code == 401


BAD_EVENTS = [
    ({"type": "refund"}, "type"),
    ({"amount": -5}, "amount"),
    ({"amount": 0}, "amount"),
    ({"amount": "12"}, "amount"),
    ({"amount": True}, "amount"),
    ({"balance_before": -0.01}, "balance_before"),
    ({"lat": 91.0}, "lat"),
    ({"lat": -90.5}, "lat"),
    ({"lon": 180.01}, "lon"),
    ({"lon": None}, "lon"),
    ({"event_id": None}, "event_id"),
    ({"account_id": ""}, "account_id"),
    ({"payee_id": 17}, "payee_id"),
    ({"device_id": "x" * 129}, "device_id"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"timestamp": "2026-13-01T00:00:00Z"}, "timestamp"),
    ({"timestamp": 1.7e12}, "timestamp"),  # milliseconds, not seconds
    ({"timestamp": -1}, "timestamp"),
    ({"timestamp": None}, "timestamp"),
    ({"account_opened_at": "soon"}, "account_opened_at"),
    ({"ammount": 3.0}, "ammount"),
    ({"return_features": "yes"}, "return_features"),
]


@pytest.mark.parametrize(("change", "field"), BAD_EVENTS, ids=[f for _, f in BAD_EVENTS])
def test_bad_events_get_422_naming_the_field_and_change_nothing(
    change: dict[str, Any], field: str
) -> None:
    body = event(5) | change
    if any(value is None for value in change.values()):
        body = {k: v for k, v in body.items() if k not in change}  # the field left out
    with client_for(events_scorer()) as client:
        response = client.post("/v1/events/score", json=body, headers=HEADERS)
        batch = client.post(
            "/v1/events/score/batch", json={"events": [event(1), body]}, headers=HEADERS
        )
        after = client.post(
            "/v1/events/score", json=event(6) | {"return_features": True}, headers=HEADERS
        ).json()
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field
    assert batch.status_code == 422
    assert batch.json()["error"]["field"] == f"events[1].{field}"
    assert batch.json()["error"]["message"].startswith("event 1: ")
    # Neither refused request touched the account: event 6 is its first.
    assert after["features"]["txns_last_hour"] == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ([], 422),
        ("event", 422),
        ({"events": []}, 422),
        ({"events": "all"}, 422),
        ({"events": [event(1)], "extra": 1}, 422),
        ({"events": [event(1)] * 3}, 422),  # over FRAUD_MAX_BATCH_ITEMS=2
        ({"events": [3]}, 422),
    ],
)
def test_bad_batches_get_4xx(body: Any, status: int) -> None:
    with client_for(events_scorer(), max_batch_items=2) as client:
        response = client.post("/v1/events/score/batch", json=body, headers=HEADERS)
    assert response.status_code == status, response.text


def test_timestamps_may_be_iso_or_epoch_and_mean_the_same() -> None:
    iso = event(1, timestamp="2026-02-10T00:01:00Z", return_features=True)
    epoch = event(1, "acct-2", timestamp=1_770_681_660, return_features=True)
    naive = event(1, "acct-3", timestamp="2026-02-10T00:01:00", return_features=True)
    with client_for(events_scorer()) as client:
        answers = [
            client.post("/v1/events/score", json=body, headers=HEADERS).json()
            for body in (iso, epoch, naive)
        ]
    hours = {a["features"]["hour"] for a in answers}
    assert hours == {1 / 60}


def test_the_snapshot_keeps_account_state_over_a_clean_restart(tmp_path: Path) -> None:
    snapshot = tmp_path / "state" / "accounts.json"
    for n in range(4):
        with client_for(events_scorer(), state_snapshot=snapshot) as client:
            answer = client.post(
                "/v1/events/score", json=event(n) | {"return_features": True}, headers=HEADERS
            ).json()
        assert answer["features"]["txns_last_hour"] == n
        assert snapshot.exists()
    assert not snapshot.with_name(snapshot.name + ".partial").exists()


def test_a_corrupt_snapshot_stops_the_start_with_its_name(tmp_path: Path) -> None:
    snapshot = tmp_path / "accounts.json"
    snapshot.write_text("{not json")
    with (
        pytest.raises(SettingsError, match=r"accounts\.json.*unreadable"),
        client_for(events_scorer(), state_snapshot=snapshot),
    ):
        pass


def test_the_idempotency_window_is_the_accounts_last_events() -> None:
    with client_for(events_scorer()) as client:
        for n in range(MAX_EVENT_IDS + 1):
            client.post("/v1/events/score", json=event(n), headers=HEADERS)
        recent = client.post("/v1/events/score", json=event(1 + 1), headers=HEADERS).json()
        forgotten = client.post("/v1/events/score", json=event(0), headers=HEADERS).json()
    assert recent["replayed"] is True
    assert forgotten["replayed"] is False  # older than the window: counted again


def test_answers_match_the_documented_schemas_and_the_example_scores() -> None:
    from jsonschema import Draft202012Validator

    from server.openapi import openapi_document
    from server.openapi_events import EXAMPLE_EVENT

    document = openapi_document(FEATURES, 10)

    def check(name: str, instance: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        errors = [e.message for e in Draft202012Validator(schema).iter_errors(instance)]
        assert not errors, (name, errors)

    with client_for(events_scorer()) as client:
        single = client.post(
            "/v1/events/score", json=EXAMPLE_EVENT | {"return_features": True}, headers=HEADERS
        )
        batch = client.post(
            "/v1/events/score/batch", json={"events": [event(1), event(2)]}, headers=HEADERS
        )
    assert single.status_code == batch.status_code == 200
    check("EventResult", single.json())
    check("EventBatchResponse", batch.json())
    check("EventRequest", EXAMPLE_EVENT)


def test_a_lost_redis_gives_503_state_unavailable_and_applies_nothing(tmp_path: Path) -> None:
    from tests.conftest import start_redis, stop_redis

    process, url = start_redis(tmp_path)
    try:
        with client_for(events_scorer(), state_url=url) as client:
            first = client.post("/v1/events/score", json=event(0), headers=HEADERS)
            stop_redis(process)
            lost = client.post("/v1/events/score", json=event(1), headers=HEADERS)
            batch = client.post(
                "/v1/events/score/batch", json={"events": [event(2)]}, headers=HEADERS
            )
            features = client.post("/v1/score", json={"features": [0.1] * 10}, headers=HEADERS)
    finally:
        stop_redis(process)
    assert first.status_code == 200
    assert lost.status_code == batch.status_code == 503
    assert lost.json()["error"]["code"] == "state_unavailable"
    assert features.status_code == 200  # the feature routes do not need the store


class SlowStore(MemoryStore):
    """The in-process store behind a real wait, so that the pipeline batches as with Redis."""

    never_waits = False

    async def get_many(self, keys: Sequence[str]) -> list[Versioned]:
        await asyncio.sleep(0.01)
        return await super().get_many(keys)


class LostReplyStore(SlowStore):
    """Writes, then reports every write as a conflict: what a client that resent a script
    whose reply was lost sees (its own write met its own version)."""

    async def apply_many(self, updates: Sequence[Update]) -> list[int]:
        await super().apply_many(updates)
        return list(range(len(updates)))


def test_requests_batched_together_keep_their_arrival_order_per_account() -> None:
    late = event_from_mapping(event(2, timestamp=T0 + 100_000, device_id="dev-a"))
    early = event_from_mapping(event(3, timestamp=T0 + 99_990, device_id="dev-a"))
    pipeline = EventPipeline(SlowStore(), "wallet")

    async def batched() -> list[list[Folded]]:
        # The two requests wait together for one batch: sent at once, late first.
        return list(await asyncio.gather(pipeline.fold([late]), pipeline.fold([early])))

    (a,), (b,) = asyncio.run(batched())
    device = FEATURES.index("new_device")
    assert a.features[device] == 1.0 and b.features[device] == 0.0  # as they arrived


def test_a_write_whose_reply_was_lost_keeps_its_features_and_is_not_a_replay() -> None:
    pipeline = EventPipeline(LostReplyStore(), "wallet")
    bodies = [event(n) for n in range(3)]

    async def send() -> list[Folded]:
        return [(await pipeline.fold([event_from_mapping(b)]))[0] for b in bodies]

    folded = asyncio.run(send())
    assert [f.replayed for f in folded] == [False] * 3
    assert [f.features for f in folded] == offline(bodies)
    assert pipeline.conflicts == 0 and pipeline.applied == 3
