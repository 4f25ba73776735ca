"""Key entries and digests, the guard, the names in logs and buckets, and the hash command."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from server import keys, logs
from server.app import create_app
from server.auth import ANONYMOUS, ApiKeyGuard
from server.errors import InvalidApiKey, MissingApiKey, SettingsError
from server.keys import KeyTable, default_name, digest_of, parse_key, parse_lines
from server.logs import JsonFormatter
from server.settings import Settings
from tests.server.fakes import FakeScorer

PLAIN = "plain-key-0123456789"
ALPHA, BETA = "alpha-secret-0123456789", "beta-secret-0123456789"
ALPHA_LINE = f"alpha:sha256:{hashlib.sha256(ALPHA.encode()).hexdigest()}"
BETA_LINE = f"beta:sha256:{hashlib.sha256(BETA.encode()).hexdigest().upper()}"
ACCESS_LOGGER = "uvicorn.error.fraud.access"


@pytest.fixture(autouse=True)
def fresh_log_context() -> Iterator[None]:
    """Checks made here, outside any request, leave no name behind for the next test."""
    token = logs.key_name.set(None)
    yield
    logs.key_name.reset(token)


# Entries


def test_the_three_forms_of_an_entry() -> None:
    digest = hashlib.sha256(PLAIN.encode()).digest()
    assert parse_key(PLAIN, "here") == keys.ApiKey(default_name(digest), digest)
    assert parse_key("sha256:" + digest.hex(), "here") == keys.ApiKey(default_name(digest), digest)
    assert parse_key("ops.team-1_a:sha256:" + digest.hex().upper(), "here") == keys.ApiKey(
        "ops.team-1_a", digest
    )


def test_a_default_name_is_stable_and_shows_nothing_of_the_key_or_its_digest() -> None:
    digest = digest_of(PLAIN)
    name = default_name(digest)
    assert name == default_name(digest_of(PLAIN)) != default_name(digest_of(PLAIN + "x"))
    assert name == "key-" + hashlib.sha256(digest).hexdigest()[:8]
    assert name[4:] not in digest.hex() and name[4:] not in PLAIN


def test_a_plain_key_with_a_colon_stays_a_plain_key() -> None:
    # Keys from before hashed entries keep working: "name:key" is not a named plain key.
    key = parse_key("team:secret-value", "here")
    assert key.digest == digest_of("team:secret-value")
    assert key.name == default_name(key.digest)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("sha256:abc", "64 hex digits"),
        ("sha256:" + "g" * 64, "64 hex digits"),
        ("sha256:" + "a" * 65, "64 hex digits"),
        ("alpha:sha256:" + "a" * 63, "64 hex digits"),
        ("bad name:sha256:" + "a" * 64, "name"),
        ("a:b:sha256:" + "a" * 64, "name"),
        ("ключ-secret", "printable ASCII"),
        ("tab\tsecret", "printable ASCII"),
    ],
)
def test_a_bad_entry_is_refused_without_being_shown(entry: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says) as refused:
        parse_key(entry, "FRAUD_API_KEYS entry 2")
    assert str(refused.value).startswith("FRAUD_API_KEYS entry 2: ")
    assert entry not in str(refused.value) and "secret" not in str(refused.value)


def test_a_key_file_names_the_file_and_line_of_a_bad_entry(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text(f"# clients\n{ALPHA_LINE}  # alpha's\n\nsha256:0123\n")
    with pytest.raises(SettingsError, match=rf"FRAUD_API_KEY_FILE {path} line 4: sha256:"):
        keys.read_key_file(path, "FRAUD_API_KEY_FILE")
    path.write_text(f"# clients\n{ALPHA_LINE}  # alpha's\n\n{PLAIN}\n")
    names = [key.name for key in keys.read_key_file(path, "FRAUD_API_KEY_FILE")]
    assert names == ["alpha", default_name(digest_of(PLAIN))]


def test_an_unreadable_or_undecodable_key_file_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read FRAUD_ADMIN_KEY_FILE"):
        keys.read_key_file(tmp_path / "absent", "FRAUD_ADMIN_KEY_FILE")
    (tmp_path / "latin").write_bytes(b"caf\xe9-key\n")
    with pytest.raises(SettingsError, match="not UTF-8"):
        keys.read_key_file(tmp_path / "latin", "FRAUD_API_KEY_FILE")


def test_a_table_refuses_one_key_under_two_names_and_merges_repeats() -> None:
    renamed = ALPHA_LINE.replace("alpha:", "other:")
    with pytest.raises(SettingsError, match="named 'alpha' and 'other'") as refused:
        KeyTable.of(parse_lines(f"{ALPHA_LINE}\n{renamed}\n", "f"))
    assert ALPHA not in str(refused.value)
    plain_then_hashed = f"{ALPHA}\nsha256:{digest_of(ALPHA).hex()}\n"
    assert len(KeyTable.of(parse_lines(plain_then_hashed, "f"))) == 1


def test_settings_take_hashed_entries_and_keep_admin_keys_apart(tmp_path: Path) -> None:
    admin_file = tmp_path / "admin-keys"
    admin_file.write_text(f"ops:sha256:{digest_of('admin-secret-1').hex()}\n")
    settings = Settings(api_keys=(ALPHA_LINE, PLAIN), admin_key_file=admin_file)
    assert sorted(settings.resolved_api_keys().name_set()) == sorted(
        ["alpha", default_name(digest_of(PLAIN))]
    )
    assert settings.resolved_admin_keys().name_set() == {"ops"}
    # The same key as a plain scoring key and a hashed admin one.
    with pytest.raises(SettingsError, match="admin key"):
        Settings(api_keys=("admin-secret-1",), admin_key_file=admin_file).resolved_admin_keys()
    with pytest.raises(SettingsError, match="FRAUD_ADMIN_KEYS entry 1"):
        Settings(api_keys=(PLAIN,), admin_keys=("sha256:00",)).resolved_admin_keys()


def test_the_new_key_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            "FRAUD_API_KEYS": f"{ALPHA_LINE}, {PLAIN}",
            "FRAUD_ADMIN_KEY_FILE": "/run/secrets/fraud-admin/admin-keys",
            "FRAUD_KEY_POLL_S": "0.5",
            "FRAUD_ALLOWED_CLIENTS": " 10.0.0.0/8 , 2001:db8::/32,",
            "FRAUD_TRUSTED_PROXIES": "10.1.0.5",
        }
    )
    assert settings.api_keys == (ALPHA_LINE, PLAIN)
    assert settings.admin_key_file == Path("/run/secrets/fraud-admin/admin-keys")
    assert settings.key_poll_s == 0.5
    assert settings.allowed_clients == ("10.0.0.0/8", "2001:db8::/32")
    assert settings.trusted_proxies == ("10.1.0.5",)
    assert Settings.from_env({}).key_poll_s == 5.0


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"FRAUD_KEY_POLL_S": "0.01"}, "FRAUD_KEY_POLL_S"),
        ({"FRAUD_KEY_POLL_S": "soon"}, "FRAUD_KEY_POLL_S"),
        ({"FRAUD_ALLOWED_CLIENTS": "10.0.0.0/33"}, "FRAUD_ALLOWED_CLIENTS"),
        ({"FRAUD_ALLOWED_CLIENTS": "10.0.0.1/8"}, "FRAUD_ALLOWED_CLIENTS"),  # host bits set
        ({"FRAUD_ALLOWED_CLIENTS": "localhost"}, "FRAUD_ALLOWED_CLIENTS"),
        ({"FRAUD_ALLOWED_CLIENTS": "::1", "FRAUD_TRUSTED_PROXIES": "x"}, "FRAUD_TRUSTED_PROXIES"),
        ({"FRAUD_TRUSTED_PROXIES": "10.0.0.1"}, "FRAUD_ALLOWED_CLIENTS"),
    ],
)
def test_bad_key_and_client_settings_are_refused_by_name(
    environ: dict[str, str], says: str
) -> None:
    with pytest.raises(SettingsError, match=says):
        Settings.from_env(environ)


# The guard


def guard_of(*entries: str, enabled: bool = True) -> ApiKeyGuard:
    return ApiKeyGuard(KeyTable.of(parse_key(e, "test") for e in entries), enabled=enabled)


def test_the_guard_answers_the_name_of_a_hashed_named_or_plain_key() -> None:
    guard = guard_of(ALPHA_LINE, BETA_LINE, PLAIN)
    assert guard.check(ALPHA) == "alpha"
    assert guard.check(BETA) == "beta"
    assert guard.check(PLAIN) == default_name(digest_of(PLAIN))
    with pytest.raises(MissingApiKey):
        guard.check(None)
    with pytest.raises(MissingApiKey):
        guard.check("")
    for wrong in (ALPHA[:-1], ALPHA + "x", ALPHA_LINE, digest_of(ALPHA).hex(), "alpha"):
        with pytest.raises(InvalidApiKey):
            guard.check(wrong)


def test_a_disabled_guard_gives_every_request_one_name() -> None:
    guard = guard_of(enabled=False)
    assert guard.check(None) == guard.check("anything") == ANONYMOUS


def test_the_guard_puts_the_name_in_the_log_context() -> None:
    guard_of(ALPHA_LINE).check(ALPHA)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "scored", None, None)
    assert '"key_name":"alpha"' in JsonFormatter().format(record)


def test_a_replaced_table_takes_effect_at_once() -> None:
    guard = guard_of(ALPHA_LINE)
    guard.replace(KeyTable.of([parse_key(BETA_LINE, "test")]))
    assert guard.check(BETA) == "beta"
    with pytest.raises(InvalidApiKey):
        guard.check(ALPHA)


# Names in the app: the access log and the rate limit


def make_client(**settings: Any) -> TestClient:
    config = Settings(api_keys=(ALPHA_LINE, BETA_LINE), **settings)
    return TestClient(create_app(config, scorer=FakeScorer()), raise_server_exceptions=False)


def score(client: TestClient, key: str | None, path: str = "/v1/score") -> int:
    headers = {"X-API-Key": key} if key is not None else {}
    return client.post(path, json={"features": [0.1, 0, 0]}, headers=headers).status_code


def test_the_access_log_carries_the_key_name_never_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    with make_client(access_log=True) as client:
        statuses = [score(client, ALPHA), score(client, BETA), score(client, None)]
        statuses.append(client.get("/v1/model", headers={"X-API-Key": BETA}).status_code)
        statuses.append(score(client, "wrong-key-0123456789"))
    assert statuses == [200, 200, 401, 200, 403]
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    # A request that had no valid key has no name, even right after one that had.
    assert [getattr(r, "key_name", None) for r in records] == ["alpha", "beta", None, "beta", None]
    for line in (JsonFormatter().format(record) for record in records):
        assert ALPHA not in line and BETA not in line and digest_of(ALPHA).hex() not in line


def test_each_key_name_has_its_own_bucket_and_keys_sharing_a_name_share_one() -> None:
    # A client's old and new key while it rotates: one name, one bucket.
    rotated = f"alpha:sha256:{digest_of('alpha-new-secret-0123').hex()}"
    config = Settings(
        api_keys=(ALPHA_LINE, BETA_LINE, rotated), rate_limit_rps=0.001, rate_limit_burst=2
    )
    app = create_app(config, scorer=FakeScorer())
    with TestClient(app, raise_server_exceptions=False) as client:
        assert [score(client, ALPHA), score(client, "alpha-new-secret-0123")] == [200, 200]
        assert score(client, ALPHA) == 429
        assert score(client, "alpha-new-secret-0123", "/v1/score/batch") == 429
        assert [score(client, BETA), score(client, BETA), score(client, BETA)] == [200, 200, 429]


# python -m server.keys hash


def run_hash(
    args: list[str], capsys: pytest.CaptureFixture[str], stdin: str = ""
) -> tuple[int, list[str]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(stdin))
        code = keys.main(args)
    return code, capsys.readouterr().out.splitlines()


def test_hash_makes_a_new_named_key_whose_line_accepts_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, lines = run_hash(["hash", "--name", "acme-payments"], capsys)
    assert code == 0 and len(lines) == 4
    assert lines[0].startswith("Key file line") and lines[2].startswith("Secret key")
    line, secret = lines[1], lines[3]
    assert line.startswith("acme-payments:sha256:") and secret not in line
    assert len(secret) >= 43
    guard = ApiKeyGuard(KeyTable.of(parse_lines(line + "\n", "file")))
    assert guard.check(secret) == "acme-payments"
    _, again = run_hash(["hash", "--name", "acme-payments"], capsys)
    assert again[3] != secret  # a new random key each time


def test_hash_of_a_key_on_stdin_prints_only_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_hash(["hash", "--stdin"], capsys, stdin=PLAIN + "\n")
    name = default_name(digest_of(PLAIN))
    assert code == 0
    assert lines == [lines[0], f"sha256:{digest_of(PLAIN).hex()}"] and name in lines[0]
    assert PLAIN not in "\n".join(lines)


@pytest.mark.parametrize("stdin", ["", "ключ\n", ALPHA_LINE + "\n"])
def test_hash_refuses_what_is_no_key(stdin: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_hash(["hash", "--stdin"], capsys, stdin=stdin)
    assert code == 2 and lines == []


def test_hash_refuses_a_bad_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        keys.main(["hash", "--name", "no spaces"])
    assert exited.value.code == 2
