from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import SettingsError
from server.settings import Settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.model_dir == Path("models/creditcard/1")
    assert settings.api_keys == ()
    assert settings.max_body_bytes == 64 * 1024
    assert settings.intra_op_threads == 1
    assert (settings.max_batch, settings.max_queue_delay_us, settings.max_queue) == (64, 0, 1024)
    assert settings.inference_mode == "loop"


def test_reads_every_variable() -> None:
    settings = Settings.from_env(
        {
            "FRAUD_MODEL_DIR": "/srv/model",
            "FRAUD_API_KEYS": " a-key , b-key ,,",
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
            "OTHER_VARIABLE": "ignored",
        }
    )
    assert settings == Settings(
        model_dir=Path("/srv/model"),
        api_keys=("a-key", "b-key"),
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
    )


def test_keys_are_not_in_the_repr() -> None:
    assert "secret-value" not in repr(Settings(api_keys=("secret-value",)))


@pytest.mark.parametrize(
    "environ",
    [
        {"FRAUD_MAX_BODY_BYTES": "lots"},
        {"FRAUD_MAX_BODY_BYTES": "0"},
        {"FRAUD_INTRA_OP_THREADS": "0"},
        {"FRAUD_MAX_BATCH": "0"},
        {"FRAUD_MAX_QUEUE": "-1"},
        {"FRAUD_MAX_QUEUE_DELAY_US": "-5"},
        {"FRAUD_MAX_BATCH_ITEMS": "0"},
        {"FRAUD_INFERENCE_MODE": "gpu"},
        {"FRAUD_REVIEW_THRESHOLD": "1.5"},
        {"FRAUD_DECLINE_THRESHOLD": "-0.1"},
        {"FRAUD_DECLINE_THRESHOLD": "high"},
        {"FRAUD_INSECURE_DISABLE_AUTH": "maybe"},
    ],
)
def test_bad_values_are_refused_by_name(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(environ))):
        Settings.from_env(environ)
