"""A platform's own raw events -> make train EVENTS=... -> make export -> uvicorn: the new model
scores raw events on its own name, with the features and scores training computed."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from features.events import DEFINITIONS, EVENT_FIELDS, FEATURES, features_over_history
from features.reading import event_from_mapping
from tests.conftest import ROOT, start_server, stop_server
from tests.test_events_live import HEADERS, send_in_batches
from tests.test_readme_commands import FAST, make

pytestmark = pytest.mark.training


def test_a_model_trained_on_your_events_scores_your_events(tmp_path: Path) -> None:
    from training.synthetic import generate_events

    # The platform's history: an event log with the fields of the event routes and a label.
    frame = generate_events(8000, seed=11)
    table = tmp_path / "wallet-history.parquet"
    frame[[*EVENT_FIELDS, "is_fraud"]].to_parquet(table)
    run = tmp_path / "runs" / "wallet"
    trained = make(
        "train", f"EVENTS={table}", "LABEL=is_fraud", f"RUN_DIR={run}", f"TRAIN_FLAGS={FAST}"
    )
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "mobile-money", repository / "mobile-money")
    exported = make("export", f"RUN_DIR={run}", f"MODEL_REPOSITORY={repository}")
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    model_dir = repository / "wallet-history" / "1"  # named after the table's file stem
    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["feature_definitions"] == DEFINITIONS
    assert tuple(json.loads(meta["feature_names"])) == FEATURES

    # New events of the same platform, sent raw to the new model by name.
    later = generate_events(3000, seed=12)
    bodies = []
    for row in later[list(EVENT_FIELDS)].to_dict("records"):
        if row["account_opened_at"] != row["account_opened_at"]:  # NaN: unknown
            del row["account_opened_at"]
        bodies.append(row)
    env = {
        "FRAUD_MODEL_NAME": "",  # every model in the repository
        "FRAUD_DEFAULT_MODEL": "mobile-money",
        "FRAUD_POLL_INTERVAL_S": "0",
    }
    server = start_server(model_dir, tmp_path / "uvicorn.log", env)
    try:
        route = "/v1/models/wallet-history/events/score/batch"
        answers = asyncio.run(send_in_batches(server.base_url, bodies, route))
        with server.client(headers=HEADERS) as client:
            listing = {m["name"] for m in client.get("/v1/models").json()["models"]}
    finally:
        stop_server(server)
    assert listing == {"mobile-money", "wallet-history"}
    offline = features_over_history(event_from_mapping(b) for b in bodies)
    online = np.array([[a["features"][name] for name in FEATURES] for a in answers])
    assert np.array_equal(online, offline)
    direct = session.run(None, {"features": offline.astype(np.float32)})[0].reshape(-1)
    served = np.array([a["fraud_probability"] for a in answers])
    assert np.max(np.abs(served - direct)) <= 1e-6
    assert {a["model_version"] for a in answers} == {"1"}
