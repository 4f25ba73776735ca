"""A model folder that is missing, tampered with or inconsistent is refused at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from server.errors import ArtifactError
from server.scorer import OnnxScorer


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "repository" / "tiny" / "1"  # the repository layout
    shutil.copytree(tiny_model_dir, target)
    return target


def rewrite(model_dir: Path, proto: onnx.ModelProto) -> None:
    import hashlib

    data = proto.SerializeToString()
    (model_dir / "model.onnx").write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def test_loads_and_warms_up(model_copy: Path) -> None:
    scorer = OnnxScorer.load(model_copy)
    assert scorer.info.name == "tiny"
    assert len(scorer.info.feature_names) == 10


def test_tampered_file_is_refused(model_copy: Path) -> None:
    data = bytearray((model_copy / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (model_copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        OnnxScorer.load(model_copy)


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot read"):
        OnnxScorer.load(tmp_path / "nothing")


def edit_metadata(model_dir: Path, changes: dict[str, str | None]) -> None:
    """Set (or, with None, drop) metadata entries and re-sign the manifest."""
    proto = onnx.load(model_dir / "model.onnx")
    entries = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        if value is None:
            entries.pop(key)
        else:
            entries[key] = value
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    rewrite(model_dir, proto)


def meta(model_dir: Path, key: str) -> list[object]:
    proto = onnx.load(model_dir / "model.onnx")
    return json.loads(next(p.value for p in proto.metadata_props if p.key == key))


def test_missing_metadata_is_refused(model_copy: Path) -> None:
    edit_metadata(model_copy, {"feature_names": None})
    with pytest.raises(ArtifactError, match="feature_names"):
        OnnxScorer.load(model_copy)


def test_feature_count_mismatch_is_refused(model_copy: Path) -> None:
    edit_metadata(
        model_copy,
        {
            key: json.dumps(meta(model_copy, key)[:-1])
            for key in ("feature_names", "feature_mean", "feature_std")
        },
    )
    with pytest.raises(ArtifactError, match="features"):
        OnnxScorer.load(model_copy)


def test_thresholds_out_of_order_are_refused(model_copy: Path) -> None:
    edit_metadata(model_copy, {"thresholds": json.dumps({"review": 0.9, "decline": 0.1})})
    with pytest.raises(ArtifactError, match="thresholds"):
        OnnxScorer.load(model_copy)


def test_a_server_with_a_broken_model_does_not_start(model_copy: Path, tmp_path: Path) -> None:
    from tests.conftest import start_server

    (model_copy / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="sha256"):
        start_server(model_copy, tmp_path / "server.log")
