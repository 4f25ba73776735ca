"""The server never imports TensorFlow, Keras, tf2onnx, training/ or export/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SERVE_PYTHON

FORBIDDEN = ("tensorflow", "keras", "tf2onnx", "training", "export", "onnx")
SERVE_REQUIREMENTS = ROOT / "requirements-serve.txt"

PROBE = """
import sys
from pathlib import Path
from server.app import create_app
from server.settings import Settings
from starlette.testclient import TestClient
folder = Path(sys.argv[1])
settings = Settings(
    model_repository=folder.parent.parent, model_name=folder.parent.name, api_keys=("k",)
)
with TestClient(create_app(settings)) as client:
    assert client.get("/v1/health/ready").status_code == 200
loaded = sorted({name.split(".")[0] for name in sys.modules})
print(",".join(loaded))
"""


def loaded_by(probe: str, *args: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running `probe`, which prints
    them comma-separated."""
    result = subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(result.stdout.strip().split(","))


def test_serving_imports_no_training_stack(tiny_model_dir: Path) -> None:
    loaded = loaded_by(PROBE, str(tiny_model_dir))
    assert "onnxruntime" in loaded and "starlette" in loaded  # the probe did serve
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)


def test_serving_requirements_hold_no_training_stack() -> None:
    names = {
        line.split("==")[0].strip().lower()
        for line in SERVE_REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {
        "onnxruntime",
        "numpy",
        "starlette",
        "uvicorn",
        "orjson",
        "uvloop",
        "httptools",
    } <= names
    assert not names & {"tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx"}
    assert all(
        "==" in line
        for line in SERVE_REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )


@pytest.mark.skipif(not SERVE_PYTHON.exists(), reason="make test builds the serving venv first")
def test_serving_venv_has_no_tensorflow() -> None:
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnx') if u.find_spec(m)])"
    )
    result = subprocess.run(
        [str(SERVE_PYTHON), "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_shared_feature_definitions_import_neither_side() -> None:
    """features/ is imported by training and by the server: it must pull in neither."""
    probe = (
        "import sys, features.events, features.reading; "
        "print(','.join(sorted({name.split('.')[0] for name in sys.modules})))"
    )
    loaded = loaded_by(probe)
    assert "features" in loaded and "numpy" in loaded
    assert not loaded & {*FORBIDDEN, "server", "starlette", "onnxruntime", "pandas"}
