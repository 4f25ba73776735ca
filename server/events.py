"""Raw mobile-money events in: features from per-account state, then the usual answer.

POST /v1/events/score and /v1/models/{name}/events/score take one event;
.../events/score/batch takes {"events": [...]}. The features are computed by
features.events.advance, the definition training used, from the sending account's state
in the store (server/accounts.py).

Per model, one EventPipeline applies events to the store in micro-batches: the events that
arrive while a batch is being applied wait and go together in the next, so with Redis the
batch, not the event, pays the round trips (one read, one compare-and-set write). One batch at
a time per worker keeps each account's events in the order they arrived; across workers the
compare-and-set catches a write that came in between, and those accounts are folded again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from time import perf_counter
from typing import Any, NamedTuple

import numpy as np

from features.events import DEFINITIONS, EVENT_FIELDS, FEATURES, Event, advance
from features.reading import EventError, event_from_mapping
from server.accounts import AccountStore, Update, account_key
from server.errors import InvalidRequest, ModelFailure, NotFound, StateUnavailable
from server.metrics import VALIDATED
from server.payloads import _json_type, shown
from server.service import ScoringService

logger = logging.getLogger("uvicorn.error").getChild("fraud")

EVENT_KEYS = frozenset(EVENT_FIELDS)
RETURN_FEATURES = "return_features"
REQUEST_KEYS = EVENT_KEYS | {RETURN_FEATURES}  # one event as the body: its fields and the flag
# A batch's writes lost to other workers' this many times in a row: give up with a 503
# rather than spin (nothing of the batch's conflicting accounts was applied).
MAX_ATTEMPTS = 8


class Folded(NamedTuple):
    features: list[float]
    replayed: bool  # the event id was already applied: answered, not counted again


def takes_events(service: ScoringService) -> bool:
    """Whether the model was trained on these event definitions, features in their order."""
    info = service.info
    return info.feature_definitions == DEFINITIONS and info.feature_names == FEATURES


def parse_event(item: Any, where: str = "", allowed: frozenset[str] = EVENT_KEYS) -> Event:
    if not isinstance(item, dict):
        raise InvalidRequest(f"an event must be a JSON object, got {_json_type(item)}")
    if not item.keys() <= allowed:
        key = next(key for key in item if key not in allowed)
        raise InvalidRequest(f"unknown field {shown(key)}", field=where + key[:40])
    try:
        return event_from_mapping(item)
    except EventError as exc:
        raise InvalidRequest(exc.message, field=where + exc.field) from None


def parse_return_features(value: Any) -> bool:
    if type(value) is not bool:
        raise InvalidRequest("return_features must be true or false", field=RETURN_FEATURES)
    return value


def parse_event_request(payload: Any) -> tuple[Event, bool]:
    """One event, and whether the answer should carry its features."""
    if not isinstance(payload, dict):
        raise InvalidRequest(f"the body must be a JSON object, got {_json_type(payload)}")
    wanted = parse_return_features(payload.get(RETURN_FEATURES, False))
    return parse_event(payload, allowed=REQUEST_KEYS), wanted


def parse_event_batch(payload: Any, max_items: int) -> tuple[list[Event], bool]:
    if not isinstance(payload, dict):
        raise InvalidRequest(f"the body must be a JSON object, got {_json_type(payload)}")
    for key in payload:
        if key not in ("events", RETURN_FEATURES):
            raise InvalidRequest(f"unknown field {shown(key)}", field=key[:40])
    items = payload.get("events")
    if not isinstance(items, list) or not items:
        raise InvalidRequest("events must be a non-empty array of events", field="events")
    if len(items) > max_items:
        raise InvalidRequest(f"at most {max_items} events per request", field="events")
    events = []
    for index, item in enumerate(items):
        try:
            events.append(parse_event(item, f"events[{index}]."))
        except InvalidRequest as exc:
            field = exc.field or f"events[{index}]"
            raise InvalidRequest(f"event {index}: {exc.message}", field=field) from None
    return events, parse_return_features(payload.get(RETURN_FEATURES, False))


class _Job(NamedTuple):
    events: Sequence[Event]
    future: asyncio.Future[list[Folded]]


class EventPipeline:
    """One model's events through the store, a micro-batch at a time."""

    def __init__(self, store: AccountStore, model: str, max_batch: int = 512) -> None:
        self.store = store
        self.model = model
        self.max_batch = max_batch  # events per store round trip (a request's are never split)
        self._waiting: deque[_Job] = deque()
        self._drainer: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly
        self.conflicts = 0  # accounts folded again after another worker wrote them
        self.replays = 0
        self.applied = 0
        # A store whose calls never wait (the in-process one) is applied at once, in the
        # request's own turn of the loop: no batch to wait for, no task, no future.
        self._at_once = getattr(store, "never_waits", False)

    async def fold(self, events: Sequence[Event]) -> list[Folded]:
        """Each event's features, with every event applied to its account's state."""
        if self._at_once:
            return completed(self.apply(events))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Folded]] = loop.create_future()
        self._waiting.append(_Job(events, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                jobs: list[_Job] = []
                size = 0
                waiting = self._waiting
                while waiting and (not jobs or size + len(waiting[0].events) <= self.max_batch):
                    job = waiting.popleft()
                    jobs.append(job)
                    size += len(job.events)
                await self._run(jobs)
        finally:
            self._drainer = None

    async def _run(self, jobs: list[_Job]) -> None:
        events = [event for job in jobs for event in job.events]
        requests = [n for n, job in enumerate(jobs) for _ in job.events]
        try:
            folded = await self.apply(events, requests)
        except Exception as exc:  # every waiting request gets it (a 503, or a logged 500)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            if not job.future.done():  # its request may have been cancelled meanwhile
                job.future.set_result(folded[start : start + len(job.events)])
            start += len(job.events)

    async def apply(
        self, events: Sequence[Event], requests: Sequence[int] | None = None
    ) -> list[Folded]:
        """Fold `events` into their accounts' states: read once, write once with
        compare-and-set, and fold again from fresh state the accounts that lost a race.
        `requests` numbers each event's request, so that an account's events go in arrival
        order across requests and in time order within one (ties as sent)."""
        by_key: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            by_key.setdefault(account_key(self.model, event.account_id), []).append(i)
        for positions in by_key.values():
            if requests is None:
                positions.sort(key=lambda i: events[i].timestamp)
            else:
                positions.sort(key=lambda i: (requests[i], events[i].timestamp))
        results: list[Folded | None] = [None] * len(events)
        keys = list(by_key)
        versioned = await self.store.get_many(keys)
        for _ in range(MAX_ATTEMPTS):
            updates = []
            for key, (state, version) in zip(keys, versioned, strict=True):
                changed = False
                for i in by_key[key]:
                    values, state, replayed = advance(state, events[i])
                    results[i] = Folded(values, replayed)
                    changed = changed or not replayed
                if changed and state is not None:
                    updates.append(Update(key, version, state))
            conflicts = await self.store.apply_many(updates) if updates else []
            if conflicts:
                lost = [updates[i] for i in conflicts]
                fresh = await self.store.get_many([update.key for update in lost])
                # A write whose reply was lost, and which the client sent again, meets its own
                # version and reports a conflict: the store then holds exactly what was
                # written, and this fold stands. Any other state is another writer's.
                again = [
                    (update.key, now)
                    for update, now in zip(lost, fresh, strict=True)
                    if not (now.version == update.version + 1 and now.state == update.state)
                ]
                self.conflicts += len(again)
                keys, versioned = [key for key, _ in again], [now for _, now in again]
            if not conflicts or not keys:
                done = [r for r in results if r is not None]
                replays = sum(r.replayed for r in done)
                self.replays += replays
                self.applied += len(done) - replays
                return done
        raise StateUnavailable(
            "the account state kept changing under other writers; some events may have been"
            " applied: send them again (a replayed event id is counted once)"
        )


def completed(coroutine: Coroutine[Any, Any, list[Folded]]) -> list[Folded]:
    """The value of a coroutine that never suspends, run to its end here and now."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a store that never waits waited")


class EventScoring:
    """The event routes' work, given the model's service: fold, score, answer. One store for
    every model; each model's accounts are its own (the key names the model)."""

    def __init__(self, store: AccountStore, max_batch_items: int) -> None:
        self.store = store
        self.max_batch_items = max_batch_items
        self.pipelines: dict[str, EventPipeline] = {}
        # The names of the served models that take events, for the 404 of one that does not.
        self.able: Callable[[], list[str]] = list

    def pipeline(self, service: ScoringService) -> EventPipeline:
        name = service.info.name
        if not takes_events(service):
            raise NotFound(
                f"model {shown(name)} version {service.info.version} does not score raw events:"
                f" it was not trained on the event feature definitions {DEFINITIONS}"
                f" (models that do: {', '.join(self.able()) or 'none'})"
            )
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            pipeline = self.pipelines[name] = EventPipeline(self.store, name)
        return pipeline

    async def score(
        self, service: ScoringService, payload: Any, stamps: list[float] | None = None
    ) -> dict[str, Any]:
        pipeline = self.pipeline(service)
        event, wanted = parse_event_request(payload)
        if stamps is not None:
            stamps[VALIDATED] = perf_counter()
        (folded,) = await pipeline.fold((event,))
        try:
            return (await self._answers(service, [event], [folded], wanted))[0]
        except ModelFailure as error:
            # The event is applied: another version answers it from the same features,
            # not from the state it left, where it would be taken for a replay.
            async def redo(other: ScoringService) -> dict[str, Any]:
                self.pipeline(other)  # a version not trained on events is a 404 here too
                return (await self._answers(other, [event], [folded], wanted))[0]

            error.redo = redo
            raise

    async def score_batch(
        self, service: ScoringService, payload: Any, stamps: list[float] | None = None
    ) -> dict[str, Any]:
        pipeline = self.pipeline(service)
        events, wanted = parse_event_batch(payload, self.max_batch_items)
        if stamps is not None:
            stamps[VALIDATED] = perf_counter()
        folded = await pipeline.fold(events)
        return {"results": await self._answers(service, events, folded, wanted)}

    async def _answers(
        self,
        service: ScoringService,
        events: Sequence[Event],
        folded: Sequence[Folded],
        wanted: bool,
    ) -> list[dict[str, Any]]:
        rows = np.asarray([f.features for f in folded], np.float32)
        probabilities = (await service.predict_rows(rows)).tolist()
        unusual = (
            service.unusual(rows) if len(rows) > 1 else [service.unusual_row(folded[0].features)]
        )
        reasons = await service.reasons_where(rows, [False] * len(probabilities), probabilities)
        answers = []
        for event, done, p, odd, why in zip(
            events, folded, probabilities, unusual, reasons, strict=True
        ):
            answer = service.result(event.event_id, p, odd, id_field="event_id", reasons=why)
            answer["replayed"] = done.replayed
            if wanted:
                answer["features"] = dict(zip(FEATURES, done.features, strict=True))
            answers.append(answer)
        return answers
