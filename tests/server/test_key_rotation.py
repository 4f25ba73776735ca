"""The key files re-read in place: what changes a guard's table, and what keeps the old one."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from server.auth import ApiKeyGuard, KeyReloader, key_guards
from server.errors import InvalidApiKey
from server.keys import digest_of
from server.settings import Settings

KEYS_LOGGER = "uvicorn.error.fraud.keys"


def entry(name: str, key: str) -> str:
    return f"{name}:sha256:{digest_of(key).hex()}\n"


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def reload(reloader: KeyReloader) -> None:
    asyncio.run(reloader.reload())


def accepts(guard: ApiKeyGuard, key: str) -> bool:
    try:
        guard.check(key)
    except InvalidApiKey:
        return False
    return True


def guards(**settings: object) -> tuple[ApiKeyGuard, ApiKeyGuard | None, KeyReloader]:
    guard, admin_guard, reloader = key_guards(Settings(**settings))  # type: ignore[arg-type]
    assert reloader is not None
    return guard, admin_guard, reloader


def test_an_added_key_works_and_a_removed_one_is_refused_after_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text(entry("stays", "stays-key-0123") + entry("leaves", "leaves-key-0123"))
    guard, _, reloader = guards(api_key_file=path)
    table = guard.table
    reload(reloader)
    assert guard.table is table and reloader.reloads == 0  # nothing changed, nothing swapped
    write_atomically(path, entry("stays", "stays-key-0123") + entry("joins", "joins-key-0123"))
    assert accepts(guard, "leaves-key-0123")  # not before the next look
    reload(reloader)
    assert accepts(guard, "stays-key-0123") and accepts(guard, "joins-key-0123")
    assert not accepts(guard, "leaves-key-0123")
    assert guard.check("joins-key-0123") == "joins" and reloader.reloads == 1


def test_a_rewrite_of_the_same_size_in_the_same_instant_is_seen(tmp_path: Path) -> None:
    # Content is compared, not mtime and size: an in-place edit inside the clock's
    # granularity changes neither.
    path = tmp_path / "api-keys"
    path.write_text(entry("a", "first-key-0000"))
    stat = path.stat()
    guard, _, reloader = guards(api_key_file=path)
    path.write_text(entry("a", "other-key-0000"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reload(reloader)
    assert accepts(guard, "other-key-0000") and not accepts(guard, "first-key-0000")


def test_a_kubernetes_secret_swap_is_followed_through_its_symlinks(tmp_path: Path) -> None:
    # The layout of a mounted Secret: api-keys -> ..data/api-keys, ..data -> ..<timestamp>.
    first, second = tmp_path / "..2026_01_01_a", tmp_path / "..2026_01_01_b"
    first.mkdir()
    (first / "api-keys").write_text(entry("old", "old-key-0123"))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "api-keys").symlink_to("..data/api-keys")
    guard, _, reloader = guards(api_key_file=tmp_path / "api-keys")
    second.mkdir()
    (second / "api-keys").write_text(entry("new", "new-key-0123"))
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    reload(reloader)
    assert accepts(guard, "new-key-0123") and not accepts(guard, "old-key-0123")


@pytest.mark.parametrize(
    "break_it",
    [
        lambda path: path.write_text("sha256:not-a-digest\n"),
        lambda path: path.unlink(),
        lambda path: path.write_text("# every key gone\n"),
        lambda path: path.write_bytes(b"\xff\xfe garbage"),
    ],
    ids=["bad line", "gone", "no key left", "not text"],
)
def test_a_broken_file_keeps_the_keys_in_use_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, break_it: object
) -> None:
    caplog.set_level(logging.INFO, logger=KEYS_LOGGER)
    path = tmp_path / "api-keys"
    path.write_text(entry("client", "client-key-0123"))
    guard, _, reloader = guards(api_key_file=path)
    break_it(path)  # type: ignore[operator]
    for _ in range(3):
        reload(reloader)
    assert accepts(guard, "client-key-0123")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "FRAUD_API_KEY_FILE" in errors[0].getMessage()
    assert (reloader.failures, reloader.gauges()["fraud_key_files_failing"][2]) == (3, {(): 1.0})
    write_atomically(path, entry("client", "fixed-key-0123"))
    reload(reloader)
    assert accepts(guard, "fixed-key-0123") and not accepts(guard, "client-key-0123")
    assert reloader.error is None and reloader.gauges()["fraud_key_files_failing"][2] == {(): 0.0}


def test_with_keys_in_the_environment_the_file_may_empty(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text(entry("file", "file-key-0123"))
    guard, _, reloader = guards(api_keys=("env-key-0123456",), api_key_file=path)
    path.write_text("")
    reload(reloader)
    assert accepts(guard, "env-key-0123456") and not accepts(guard, "file-key-0123")


def test_the_admin_file_is_reloaded_may_empty_and_never_takes_a_scoring_key(
    tmp_path: Path,
) -> None:
    scoring, admin = tmp_path / "api-keys", tmp_path / "admin-keys"
    scoring.write_text(entry("client", "client-key-0123"))
    admin.write_text(entry("ops", "ops-key-0123"))
    guard, admin_guard, reloader = guards(api_key_file=scoring, admin_key_file=admin)
    assert admin_guard is not None and admin_guard.check("ops-key-0123") == "ops"
    write_atomically(admin, entry("ops", "client-key-0123"))  # a scoring key: refused
    reload(reloader)
    assert accepts(admin_guard, "ops-key-0123") and reloader.error is not None
    write_atomically(admin, entry("oncall", "oncall-key-0123"))
    reload(reloader)
    assert admin_guard.check("oncall-key-0123") == "oncall"
    assert not accepts(admin_guard, "ops-key-0123")
    # Emptying the admin file turns the repository routes off; it locks out no client.
    write_atomically(admin, "")
    reload(reloader)
    assert not accepts(admin_guard, "oncall-key-0123") and accepts(guard, "client-key-0123")


def test_no_reloader_without_files_or_with_polling_off(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text(entry("client", "client-key-0123"))
    assert key_guards(Settings(api_keys=("env-key-0123456",)))[2] is None
    assert key_guards(Settings(api_key_file=path, key_poll_s=0))[2] is None
    assert key_guards(Settings(api_key_file=path))[1] is None  # no admin keys: routes off


def test_the_watch_polls_until_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text(entry("old", "old-key-0123"))
    guard, _, reloader = guards(api_key_file=path, key_poll_s=0.1)

    async def rotate() -> None:
        watching = asyncio.create_task(reloader.watch(0.05))
        write_atomically(path, entry("new", "new-key-0123"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if accepts(guard, "new-key-0123"):
                break
        watching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watching

    asyncio.run(rotate())
    assert accepts(guard, "new-key-0123") and not accepts(guard, "old-key-0123")
