"""A canary that fails on a raw event: the champion answers it from the features the event
was folded into, once, not from the state the event left behind (where it would be taken
for a replay and counted twice in its account's velocity)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest

from features.events import DEFINITIONS
from server.accounts import MemoryStore
from server.app import make_service
from server.errors import NotFound
from server.events import EventScoring
from server.repository import Snapshot
from server.service import ScoringService
from server.settings import Settings
from server.traffic import TrafficManager
from tests.server.test_events import event, events_scorer, offline


def service(version: str, fail: bool, definitions: str | None = DEFINITIONS) -> ScoringService:
    scorer = events_scorer(definitions=definitions)
    scorer.info = replace(scorer.info, version=version)
    scorer.fail = fail
    made = make_service(scorer, Settings(api_keys=("k",)))
    made.runner.start()
    return made


def test_the_champion_answers_a_failed_canary_s_event_from_the_same_fold(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text(json.dumps({"champion": "1", "canary": "2", "share": 1}))
    published: list[Snapshot] = []
    manager = TrafficManager(tmp_path, "wallet", published.append)
    champion, canary = service("1", fail=False), service("2", fail=True)
    manager.on_snapshot(Snapshot("wallet", {"2": canary, "1": champion}))
    scoring = EventScoring(MemoryStore(), 512)
    first, second = event(1), event(2)

    async def scenario() -> list[dict[str, object]]:
        answers = []
        for body in (first, second, first):
            snapshot = published[-1]
            answers.append(
                await manager.answer(
                    snapshot, scoring.score, body | {"return_features": True}, None, "account_id"
                )
            )
        return answers

    try:
        answered, followed, again = asyncio.run(scenario())
    finally:
        for one in (champion, canary):
            one.runner.close()
    expected = offline([first, second])
    assert answered["model_version"] == "1" and answered["replayed"] is False
    assert list(answered["features"].values()) == expected[0]  # type: ignore[union-attr]
    # The canary was rolled back by its failure; the account holds the first event once.
    policy = json.loads((tmp_path / "policy.json").read_text())
    assert policy["champion"] == "1" and "canary" not in policy
    assert published[-1].canary is None
    assert followed["replayed"] is False
    assert list(followed["features"].values()) == expected[1]  # type: ignore[union-attr]
    assert again["replayed"] is True


def test_a_champion_that_takes_no_events_does_not_answer_one(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text(json.dumps({"champion": "1", "canary": "2", "share": 1}))
    published: list[Snapshot] = []
    manager = TrafficManager(tmp_path, "wallet", published.append)
    champion, canary = service("1", fail=False, definitions=None), service("2", fail=True)
    manager.on_snapshot(Snapshot("wallet", {"2": canary, "1": champion}))
    scoring = EventScoring(MemoryStore(), 512)

    async def scenario() -> None:
        await manager.answer(published[-1], scoring.score, event(1), None, "account_id")

    try:
        with pytest.raises(NotFound, match="does not score raw events"):
            asyncio.run(scenario())
    finally:
        for one in (champion, canary):
            one.runner.close()
