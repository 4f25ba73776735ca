"""The README's own commands on a table of our own making: make train TABLE=... LABEL=...
TIME=..., make export, make serve; the new model answers beside the shipped ones.

Only the folders differ from the README: the run and the model repository live in a temporary
folder (RUN_DIR, MODEL_REPOSITORY), so that the checkout is left as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import ROOT, free_port, start_make, stop_make
from tests.test_table_end_to_end import FEATURES, make_table

pytestmark = pytest.mark.training

README = ROOT / "README.md"
DEV_KEY = "readme-dev-key-0123456789"
FAST = "--epochs 2 --members 1 --batch-size 256 --patience 1 --verbose 0"


def make(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "MAKEFLAGS"))}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_readme_names_these_commands() -> None:
    text = README.read_text()
    flat = " ".join(text.split())
    assert re.search(r"make train TABLE=\S+ LABEL=\S+ TIME=\S+ RUN_DIR=\S+", flat)
    assert re.search(r"make export RUN_DIR=\S+", flat)
    assert "make serve" in text


def test_train_export_and_serve_a_table_with_the_readme_commands(tmp_path: Path) -> None:
    table = make_table(tmp_path / "transactions.csv")
    run = tmp_path / "runs" / "mine"
    trained = make(
        "train",
        f"TABLE={table}",
        "LABEL=is_fraud",
        "TIME=created_at",
        f"RUN_DIR={run}",
        "FILL_MISSING=median",
        "LOG_FEATURES=amount",
        f"TRAIN_FLAGS={FAST}",
    )
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    repository = tmp_path / "models"
    for name in ("creditcard", "mobile-money"):
        shutil.copytree(ROOT / "models" / name, repository / name)
    exported = make("export", f"RUN_DIR={run}", f"MODEL_REPOSITORY={repository}")
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    model_dir = repository / "transactions" / "1"  # the name is the table's file stem
    assert (model_dir / "model.onnx").is_file()

    port = free_port()
    serving = start_make(
        ["serve", f"PORT={port}", f"MODEL_REPOSITORY={repository}"],
        tmp_path / "serve.log",
        {"FRAUD_API_KEYS": DEV_KEY},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/v1/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.2)
        rows = np.load(run / "test_rows.npz")["features"]
        rows = rows[np.isfinite(rows).all(axis=1)][:20]
        expected = ort.InferenceSession(str(model_dir / "model.onnx")).run(None, {"features": rows})
        with httpx.Client(base_url=base, headers={"X-API-Key": DEV_KEY}, timeout=10) as client:
            listing = client.get("/v1/models").json()
            assert listing["default_model"] == "creditcard"
            assert {m["name"] for m in listing["models"]} == {
                "creditcard",
                "mobile-money",
                "transactions",
            }
            assert client.get("/v1/models/transactions").json()["features"] == FEATURES
            items = [
                {"features": dict(zip(FEATURES, map(float, row), strict=True))} for row in rows
            ]
            answer = client.post(
                "/v1/models/transactions/score/batch", json={"transactions": items}
            )
            assert answer.status_code == 200, answer.text
            served = np.asarray([r["fraud_probability"] for r in answer.json()["results"]])
            assert np.max(np.abs(served - np.asarray(expected[0]).ravel())) <= 1e-6
            # A missing amount is filled by the graph (the run used FILL_MISSING=median).
            partial = {"features": {"hours_since_login": 0.2, "noise": 0.0}}
            assert client.post("/v1/models/transactions/score", json=partial).status_code == 200
            # The README's own first request still answers from the default model.
            example = (ROOT / "examples" / "transaction.json").read_bytes()
            first = client.post(
                "/v1/score", content=example, headers={"Content-Type": "application/json"}
            )
            shipped = max((ROOT / "models" / "creditcard").iterdir(), key=lambda p: int(p.name))
            assert first.status_code == 200 and first.json()["model_version"] == shipped.name
    finally:
        stop_make(serving)
