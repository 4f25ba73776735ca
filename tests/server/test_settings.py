from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import SettingsError
from server.keys import default_name, digest_of
from server.settings import Settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert (settings.model_repository, settings.model_name) == (Path("models"), None)
    assert (settings.max_versions, settings.poll_interval_s, settings.admin_keys) == (0, 10.0, ())
    assert settings.api_keys == ()
    assert settings.max_body_bytes == 64 * 1024
    assert settings.intra_op_threads == 1
    assert (settings.max_batch, settings.max_queue_delay_us, settings.max_queue) == (64, 0, 1024)
    assert settings.inference_mode == "loop"


def test_reads_every_variable() -> None:
    settings = Settings.from_env(
        {
            "FRAUD_MODEL_REPOSITORY": "/srv/models",
            "FRAUD_MODEL_NAME": "cards",
            "FRAUD_MAX_VERSIONS": "2",
            "FRAUD_POLL_INTERVAL_S": "2.5",
            "FRAUD_API_KEYS": " a-key , b-key ,,",
            "FRAUD_ADMIN_KEYS": "admin-key",
            "FRAUD_API_KEY_FILE": "/run/keys",
            "FRAUD_INSECURE_DISABLE_AUTH": "yes",
            "FRAUD_REVIEW_THRESHOLD": "0.2",
            "FRAUD_DECLINE_THRESHOLD": "0.8",
            "FRAUD_MAX_BODY_BYTES": "1000",
            "FRAUD_INTRA_OP_THREADS": "2",
            "FRAUD_MAX_BATCH": "16",
            "FRAUD_MAX_QUEUE_DELAY_US": "250",
            "FRAUD_MAX_QUEUE": "99",
            "FRAUD_INFERENCE_MODE": "Thread",
            "FRAUD_MAX_BATCH_ITEMS": "50",
            "FRAUD_MAX_BATCH_BODY_BYTES": "4096",
            "FRAUD_GRPC_PORT": "9001",
            "FRAUD_GRPC_HOST": "0.0.0.0",
            "FRAUD_GRPC_REUSE_PORT": "true",
            "OTHER_VARIABLE": "ignored",
        }
    )
    assert settings == Settings(
        model_repository=Path("/srv/models"),
        model_name="cards",
        max_versions=2,
        poll_interval_s=2.5,
        api_keys=("a-key", "b-key"),
        admin_keys=("admin-key",),
        api_key_file=Path("/run/keys"),
        insecure_disable_auth=True,
        review_threshold=0.2,
        decline_threshold=0.8,
        max_body_bytes=1000,
        intra_op_threads=2,
        max_batch=16,
        max_queue_delay_us=250,
        max_queue=99,
        inference_mode="thread",
        max_batch_items=50,
        max_batch_body_bytes=4096,
        grpc_port=9001,
        grpc_host="0.0.0.0",
        grpc_reuse_port=True,
    )


def test_grpc_is_on_port_8001_from_the_environment_and_off_when_composed_in_code() -> None:
    assert Settings.from_env({}).grpc_port == 8001
    assert Settings.from_env({"FRAUD_GRPC_PORT": "0"}).grpc_port == 0
    assert Settings().grpc_port == 0


def test_keys_are_not_in_the_repr() -> None:
    settings = Settings(api_keys=("secret-value",), admin_keys=("admin-secret",))
    assert "secret-value" not in repr(settings)
    assert "admin-secret" not in repr(settings)


def test_an_admin_key_must_not_score() -> None:
    with pytest.raises(SettingsError, match="admin key"):
        Settings(api_keys=("shared", "other"), admin_keys=("shared",)).resolved_admin_keys()
    admin = Settings(api_keys=("k",), admin_keys=("a",)).resolved_admin_keys()
    assert admin.names == {digest_of("a"): default_name(digest_of("a"))}


@pytest.mark.parametrize(
    "environ",
    [
        {"FRAUD_MAX_BODY_BYTES": "lots"},
        {"FRAUD_MAX_BODY_BYTES": "0"},
        {"FRAUD_INTRA_OP_THREADS": "0"},
        {"FRAUD_MAX_BATCH": "0"},
        {"FRAUD_MAX_QUEUE": "-1"},
        {"FRAUD_MAX_QUEUE_DELAY_US": "-5"},
        {"FRAUD_MAX_QUEUE_DELAY_US": "100000"},  # as long as the default deadline
        {"FRAUD_REQUEST_DEADLINE_MS": "-1"},
        {"FRAUD_REQUEST_DEADLINE_MS": "soon"},
        {"FRAUD_REQUEST_DEADLINE_MS": "inf"},
        {"FRAUD_MAX_CONNECTIONS": "-1"},
        {"FRAUD_MAX_REQUESTS_IN_HAND": "-3"},
        {"FRAUD_MAX_BATCH_ITEMS": "0"},
        {"FRAUD_INFERENCE_MODE": "gpu"},
        {"FRAUD_REVIEW_THRESHOLD": "1.5"},
        {"FRAUD_DECLINE_THRESHOLD": "-0.1"},
        {"FRAUD_DECLINE_THRESHOLD": "high"},
        {"FRAUD_INSECURE_DISABLE_AUTH": "maybe"},
        {"FRAUD_MAX_VERSIONS": "-1"},
        {"FRAUD_POLL_INTERVAL_S": "-1"},
        {"FRAUD_POLL_INTERVAL_S": "0.01"},
        {"FRAUD_MODEL_DIR": "models/creditcard/1"},
        {"FRAUD_POLL_INTERVAL_S": "soon"},
        {"FRAUD_MODEL_NAME": "../elsewhere"},
        {"FRAUD_MODEL_NAME": ".."},
        {"FRAUD_GRPC_PORT": "70000"},
        {"FRAUD_GRPC_PORT": "-1"},
        {"FRAUD_GRPC_PORT": "grpc"},
        {"FRAUD_GRPC_REUSE_PORT": "sometimes"},
    ],
)
def test_bad_values_are_refused_by_name(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(environ))):
        Settings.from_env(environ)
