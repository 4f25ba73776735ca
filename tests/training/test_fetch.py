from __future__ import annotations

from pathlib import Path

import pytest

from training import fetch_creditcard
from training.fetch_creditcard import FetchError, verify

ROOT = Path(__file__).resolve().parents[2]


def test_wrong_checksum_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "creditcard.csv"
    fake.write_text("Time,Class\n0,0\n")
    with pytest.raises(FetchError, match="md5"):
        verify(fake)


def test_wrong_row_count_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "creditcard.csv"
    fake.write_text("Time,Class\n0,0\n")
    monkeypatch.setattr(fetch_creditcard, "MD5", fetch_creditcard.file_digest(fake, "md5"))
    with pytest.raises(FetchError, match="rows"):
        verify(fake)


def test_fetched_data_is_the_published_file() -> None:
    path = ROOT / "data" / "creditcard.csv"
    if not path.exists():
        pytest.fail("data/creditcard.csv is missing: run `make data` (make test does)")
    verify(path)
