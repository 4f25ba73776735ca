"""The model repository's passes, with fake scorers: which versions serve, swaps, refusals.

A fake version folder holds a manifest that tells the fake loader what to be: its
name and version, or a reason to refuse. The real loader's checks are in
test_artifact.py; the same passes against a real uvicorn are in tests/test_reload.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from server.app import create_app, make_service
from server.errors import ArtifactError, NotFound, SettingsError
from server.repository import ModelRepository, Snapshot, resolve_models, scan, signature
from server.service import ScoringService
from server.settings import Settings
from tests.conftest import ROOT
from tests.model_edits import make_version
from tests.server.fakes import FakeScorer, fake_info

NAME = "cards"


def write_version(root: Path, version: str, /, **manifest: object) -> Path:
    folder = root / NAME / version
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"name": NAME, "version": version} | manifest
    (folder / "manifest.json").write_text(json.dumps(fields))
    (folder / "model.onnx").write_bytes(b"fake")
    return folder


class FakeLoader:
    """Loads what a fake folder describes; `gate` can hold a load half-way."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def __call__(self, folder: Path) -> FakeScorer:
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            (folder / "model.onnx").read_bytes()
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read model folder {folder}: {exc}") from exc
        if manifest.get("broken"):
            raise ArtifactError(manifest["broken"])
        if manifest.get("crash"):  # not an ArtifactError: an error nobody foresaw
            raise ValueError(manifest["crash"])
        self.loaded.append(folder.name)
        scorer = FakeScorer()
        scorer.info = fake_info(name=manifest["name"], version=manifest["version"])
        return scorer


class Published:
    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def __call__(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)


def repository(
    root: Path,
    max_versions: int = 0,
    settings: Settings | None = None,
    keep: Callable[[], Collection[str]] = frozenset,
) -> tuple[ModelRepository, FakeLoader, Published]:
    loader, published = FakeLoader(), Published()
    config = settings or Settings(api_keys=("k",))
    repo = ModelRepository(
        root,
        NAME,
        loader,
        lambda scorer: make_service(scorer, config),
        published,
        max_versions,
        keep,
    )
    return repo, loader, published


def served(repo: ModelRepository) -> list[str]:
    assert repo.snapshot is not None
    return list(repo.snapshot.services)


def test_versions_are_numbers_newest_first_and_nothing_else(tmp_path: Path) -> None:
    for version in ("2", "10", "9"):
        write_version(tmp_path, version)
    for other in (".staging-11", "latest", "README.md", "3a", "07"):
        (tmp_path / NAME / other).mkdir()
    (tmp_path / NAME / "12").write_text("a file, not a version folder")
    assert list(scan(tmp_path / NAME)) == ["10", "9", "2"]


def test_a_folder_signature_changes_with_what_mtime_misses(tmp_path: Path) -> None:
    folder = write_version(tmp_path, "1")
    manifest = folder / "manifest.json"
    before = signature(folder)
    os.chmod(manifest, 0o600)  # only ctime moves
    after_chmod = signature(folder)
    assert after_chmod != before
    # Same size and mtime, new inode: a copy that keeps times, renamed into place.
    stat = manifest.stat()
    replacement = folder / "replacement"
    replacement.write_text(manifest.read_text().replace(NAME, NAME.upper()))
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, manifest)
    assert signature(folder) != after_chmod
    assert signature(tmp_path / "gone") is None


def test_the_served_models_and_the_default_come_from_the_repository(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    (tmp_path / "notes").mkdir()  # no version folders: not a model
    assert resolve_models(tmp_path, (), None) == ([NAME], NAME)
    assert resolve_models(tmp_path, ("other",), None) == (["other"], "other")
    (tmp_path / "second" / "1").mkdir(parents=True)
    with pytest.raises(SettingsError, match=r"FRAUD_DEFAULT_MODEL must name .* second"):
        resolve_models(tmp_path, (), None)
    assert resolve_models(tmp_path, (), "second") == ([NAME, "second"], "second")
    assert resolve_models(tmp_path, ("second", NAME), NAME)[0] == ["second", NAME]
    with pytest.raises(SettingsError, match="'third' is not among the served models"):
        resolve_models(tmp_path, (), "third")
    with pytest.raises(SettingsError, match="cannot read"):
        resolve_models(tmp_path / "missing", (), None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SettingsError, match="holds no model folder"):
        resolve_models(empty, (), None)


def test_serves_every_version_newest_by_default_and_pins_on_request(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    write_version(tmp_path, "2")
    repo, _, published = repository(tmp_path)
    result = asyncio.run(repo.refresh())
    assert sorted(result.loaded) == ["1", "2"] and not result.refused
    snapshot = published.snapshots[-1]
    assert snapshot.latest.info.version == "2"
    assert snapshot.get(None) is snapshot.latest
    assert snapshot.get("1").info.version == "1"
    with pytest.raises(NotFound, match="no version '3'"):
        snapshot.get("3")


def test_a_new_version_is_swapped_in_and_unchanged_ones_are_not_reloaded(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    repo, loader, published = repository(tmp_path)

    async def scenario() -> None:
        await repo.refresh()
        first = published.snapshots[-1]
        await repo.refresh()  # nothing changed: no load, no new snapshot
        assert loader.loaded == ["1"] and len(published.snapshots) == 1
        write_version(tmp_path, "2")
        result = await repo.refresh()
        assert result.loaded == ["2"] and loader.loaded == ["1", "2"]
        second = published.snapshots[-1]
        assert second.latest.info.version == "2"
        assert second.get("1") is first.get("1")  # the same session, not a reload
        assert first.latest.info.version == "1"  # a published snapshot never changes

    asyncio.run(scenario())


def test_a_broken_version_is_refused_counted_and_logged_and_the_old_one_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_version(tmp_path, "1")
    repo, _, published = repository(tmp_path)

    async def scenario() -> None:
        await repo.refresh()
        write_version(tmp_path, "2", broken="model sha256 does not match the manifest")
        with caplog.at_level(logging.ERROR, logger="uvicorn.error.fraud"):
            result = await repo.refresh()
        assert result.refused == {"2": "model sha256 does not match the manifest"}
        assert served(repo) == ["1"] and len(published.snapshots) == 1
        assert (repo.loads_ok, repo.loads_refused) == (1, 1)
        assert "refused model cards version 2: model sha256" in caplog.text
        assert repo.index() == [
            {"name": NAME, "version": "2", "state": "UNAVAILABLE", "reason": result.refused["2"]},
            {"name": NAME, "version": "1", "state": "READY", "reason": ""},
        ]
        # Unchanged files are not tried again on every poll...
        assert (await repo.refresh()).refused == {} and repo.loads_refused == 1
        # ...but are when asked explicitly,
        assert (await repo.refresh(force=True)).refused.keys() == {"2"}
        assert repo.loads_refused == 2
        # and as soon as the folder changes, here into a good version.
        write_version(tmp_path, "2", note="fixed")
        assert (await repo.refresh()).loaded == ["2"]
        assert served(repo) == ["2", "1"]
        assert repo.index()[0]["state"] == "READY" and repo.index()[0]["reason"] == ""

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [({"name": "other"}, "holds model 'other' version '2'"), ({"version": "7"}, "version '7'")],
)
def test_a_folder_holding_another_model_or_version_is_refused(
    tmp_path: Path, manifest: dict[str, str], reason: str
) -> None:
    write_version(tmp_path, "1")
    write_version(tmp_path, "2", **manifest)
    repo, _, _ = repository(tmp_path)
    result = asyncio.run(repo.refresh())
    assert reason in result.refused["2"]
    assert served(repo) == ["1"]


def test_a_served_version_corrupted_on_disk_keeps_serving_from_memory(tmp_path: Path) -> None:
    folder = write_version(tmp_path, "1")
    repo, _, published = repository(tmp_path)

    async def scenario() -> None:
        await repo.refresh()
        service = published.snapshots[-1].latest
        (folder / "model.onnx").unlink()
        result = await repo.refresh()
        assert "cannot read" in result.refused["1"]
        assert published.snapshots[-1].latest is service  # still the loaded session
        assert repo.index() == [
            {"name": NAME, "version": "1", "state": "READY", "reason": result.refused["1"]}
        ]
        scores = await service.predict_rows(np.asarray([[0.3, 0, 0]], np.float32))
        assert scores.tolist() == pytest.approx([0.3])

    asyncio.run(scenario())


def test_a_removed_version_is_retired_but_never_the_last_one(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    write_version(tmp_path, "2")
    repo, _, _ = repository(tmp_path)

    async def scenario() -> None:
        await repo.refresh()
        shutil.rmtree(tmp_path / NAME / "2")
        result = await repo.refresh()
        assert result.retired == ["2"] and served(repo) == ["1"]
        shutil.rmtree(tmp_path / NAME / "1")
        await repo.refresh()
        assert served(repo) == ["1"]  # an empty folder does not take the server down
        write_version(tmp_path, "3")
        await repo.refresh()
        assert served(repo) == ["3"]

    asyncio.run(scenario())


def test_max_versions_serves_only_the_newest_good_ones(tmp_path: Path) -> None:
    for version in ("1", "2", "3"):
        write_version(tmp_path, version)
    repo, loader, _ = repository(tmp_path, max_versions=2)

    async def scenario() -> None:
        await repo.refresh()
        assert served(repo) == ["3", "2"] and sorted(loader.loaded) == ["2", "3"]
        write_version(tmp_path, "4", broken="bad")
        await repo.refresh()
        assert served(repo) == ["3", "2"]  # a refused version does not count
        write_version(tmp_path, "5")
        result = await repo.refresh()
        assert served(repo) == ["5", "3"] and result.retired == ["2"]

    asyncio.run(scenario())


def test_the_versions_a_policy_names_are_served_beyond_max_versions(tmp_path: Path) -> None:
    for version in ("1", "2", "3"):
        write_version(tmp_path, version)
    named = {"1"}  # a policy's champion, older than the newest two
    repo, _, _ = repository(tmp_path, max_versions=2, keep=lambda: named)

    async def scenario() -> None:
        await repo.refresh()
        assert served(repo) == ["3", "2", "1"]
        write_version(tmp_path, "4")
        result = await repo.refresh()
        assert served(repo) == ["4", "3", "1"] and result.retired == ["2"]
        named.clear()  # the policy removed: max_versions alone decides again
        result = await repo.refresh()
        assert served(repo) == ["4", "3"] and result.retired == ["1"]
        named.add("2")  # named again, and still on disk: loaded again
        result = await repo.refresh()
        assert served(repo) == ["4", "3", "2"] and result.loaded == ["2"]

    asyncio.run(scenario())


def test_an_unforeseen_error_is_a_refusal_and_the_pass_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_version(tmp_path, "1")
    write_version(tmp_path, "2", crash="cannot reshape array of size 2 into shape (1,)")
    write_version(tmp_path, "3")
    repo, _, _ = repository(tmp_path)
    with caplog.at_level(logging.ERROR, logger="uvicorn.error.fraud"):
        result = asyncio.run(repo.refresh())
    assert result.refused == {"2": "cannot reshape array of size 2 into shape (1,)"}
    assert served(repo) == ["3", "1"] and repo.loads_refused == 1
    assert "Traceback" in caplog.text  # unforeseen: logged with its stack


def test_a_version_whose_thresholds_clash_with_the_settings_is_refused(tmp_path: Path) -> None:
    write_version(tmp_path, "1")
    # Overriding only the review threshold above the model's own decline threshold (0.9).
    settings = Settings(api_keys=("k",), review_threshold=0.95)
    repo, _, published = repository(tmp_path, settings=settings)
    result = asyncio.run(repo.refresh())
    assert "thresholds" in result.refused["1"] and not published.snapshots


class HeldScorer(FakeScorer):
    """predict waits for `release`: a batch in flight on the inference thread."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self.info = fake_info(name=NAME, version=version)
        self.started = threading.Event()
        self.release = threading.Event()

    def predict(self, features: np.ndarray) -> np.ndarray:
        self.started.set()
        assert self.release.wait(10)
        return super().predict(features)


@pytest.mark.parametrize("mode", ["thread", "loop"])
def test_requests_in_flight_finish_on_the_version_they_found(tmp_path: Path, mode: str) -> None:
    # Loop mode: a long queue delay keeps both requests waiting in the old batcher's
    # queue across the swap. Thread mode: the first is inside session.run on the
    # inference thread, the second queued behind it.
    settings = Settings(
        api_keys=("k",), inference_mode=mode, max_queue_delay_us=200_000, request_deadline_ms=0
    )
    old, new = HeldScorer("1"), HeldScorer("2")
    new.release.set()
    if mode == "loop":
        old.release.set()  # it runs on the loop: holding it would hold everything
    scorers = {"1": old, "2": new}
    published = Published()
    repo = ModelRepository(
        tmp_path,
        NAME,
        lambda folder: scorers[folder.name],
        lambda scorer: make_service(scorer, settings),
        published,
    )
    row = np.asarray([[0.4, 0, 0]], np.float32)

    async def scenario() -> None:
        write_version(tmp_path, "1")
        await repo.refresh()
        service: ScoringService = published.snapshots[-1].latest
        first = asyncio.ensure_future(service.predict_rows(row))
        if mode == "thread":
            await asyncio.to_thread(old.started.wait, 10)
        second = asyncio.ensure_future(service.predict_rows(row))
        await asyncio.sleep(0)
        assert not first.done() and not second.done()
        write_version(tmp_path, "2")
        await repo.refresh()
        assert published.snapshots[-1].latest.info.version == "2"
        old.release.set()
        for answer in await asyncio.gather(first, second):
            assert answer.tolist() == pytest.approx([0.4])
        assert sum(len(rows) for rows in old.calls) == 2 and not new.calls
        # New work goes to version 2; the retired batcher would refuse it.
        fresh = await published.snapshots[-1].latest.predict_rows(row)
        assert fresh.tolist() == pytest.approx([0.4]) and len(new.calls) == 1
        for current in published.snapshots[-1].services.values():
            current.runner.close()

    asyncio.run(scenario())


def test_a_policy_s_champion_stays_served_past_max_versions_in_the_app(tmp_path: Path) -> None:
    """The real wiring: the app's repository asks the model's policy what to keep, so a newer
    version arriving under FRAUD_MAX_VERSIONS=1 does not drop the champion the policy names."""
    shipped = ROOT / "models" / "creditcard" / "4"
    root = tmp_path / "creditcard"
    root.mkdir()
    for version in ("3", "4"):
        make_version(shipped, root, version)
    (root / "policy.json").write_text(json.dumps({"champion": "3"}))
    settings = Settings(
        api_keys=("score-key-0123456789",),
        admin_keys=("admin-key-0123456789",),
        model_repository=tmp_path,
        max_versions=1,
        poll_interval_s=0,
    )
    row = json.loads((shipped / "samples.json").read_text())["rows"][0]["features"]
    scoring = {"X-API-Key": "score-key-0123456789"}
    with TestClient(create_app(settings)) as client:

        def answered_by() -> str:
            answer = client.post("/v1/score", json={"features": row}, headers=scoring)
            assert answer.status_code == 200, answer.text
            return str(answer.json()["model_version"])

        def served(version: str) -> bool:
            found = client.get(f"/v1/models/creditcard?version={version}", headers=scoring)
            return found.status_code == 200

        assert answered_by() == "3" and served("4") and served("3")
        make_version(shipped, root, "5")
        loaded = client.post(
            "/v2/repository/models/creditcard/load", headers={"X-API-Key": "admin-key-0123456789"}
        )
        assert loaded.status_code == 200, loaded.text
        assert answered_by() == "3" and served("5") and not served("4") and served("3")
        # Without the policy, max_versions alone decides: the newest answers, 3 goes.
        (root / "policy.json").unlink()
        for _ in range(50):  # the policy file is looked at within a second
            if answered_by() == "5":
                break
            time.sleep(0.05)
        client.post(
            "/v2/repository/models/creditcard/load", headers={"X-API-Key": "admin-key-0123456789"}
        )
        assert answered_by() == "5" and not served("3")
        # An admin names it again: loaded from disk at once, and it answers.
        put = client.put(
            "/v1/models/creditcard/policy",
            json={"champion": "3"},
            headers={"X-API-Key": "admin-key-0123456789"},
        )
        assert put.status_code == 200, put.text
        assert answered_by() == "3" and served("5")
        missing = client.put(
            "/v1/models/creditcard/policy",
            json={"champion": "9"},
            headers={"X-API-Key": "admin-key-0123456789"},
        )
        assert missing.status_code == 409 and "does not serve version 9" in missing.text
        assert answered_by() == "3"
