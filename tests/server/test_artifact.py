"""A model folder that is missing, tampered with or inconsistent is refused at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from server.errors import ArtifactError
from server.scorer import OnnxScorer
from tests.model_edits import add_to_output, drop_last_feature, edit_metadata, flip_a_byte


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "repository" / "tiny" / "1"  # the repository layout
    shutil.copytree(tiny_model_dir, target)
    return target


def test_loads_and_warms_up(model_copy: Path) -> None:
    scorer = OnnxScorer.load(model_copy)
    assert scorer.info.name == "tiny"
    assert len(scorer.info.feature_names) == 10


def test_tampered_file_is_refused(model_copy: Path) -> None:
    flip_a_byte(model_copy)
    with pytest.raises(ArtifactError, match="sha256"):
        OnnxScorer.load(model_copy)


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="cannot read"):
        OnnxScorer.load(tmp_path / "nothing")


def test_missing_metadata_is_refused(model_copy: Path) -> None:
    edit_metadata(model_copy, {"feature_names": None})
    with pytest.raises(ArtifactError, match="feature_names"):
        OnnxScorer.load(model_copy)


def test_feature_count_mismatch_is_refused(model_copy: Path) -> None:
    drop_last_feature(model_copy)
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


@pytest.mark.parametrize("shift", [1.5, -2.0, float("nan")])
def test_a_model_whose_warm_up_is_not_a_probability_is_refused(
    model_copy: Path, shift: float
) -> None:
    add_to_output(model_copy, shift)
    with pytest.raises(ArtifactError, match="warm-up"):
        OnnxScorer.load(model_copy)


def test_a_model_without_the_named_output_is_refused(model_copy: Path) -> None:
    edit_metadata(model_copy, {"output_name": "score"})
    with pytest.raises(ArtifactError, match="outputs"):
        OnnxScorer.load(model_copy)


def test_a_model_without_the_named_input_is_refused(model_copy: Path) -> None:
    edit_metadata(model_copy, {"input_name": "rows"})
    with pytest.raises(ArtifactError, match="inputs"):
        OnnxScorer.load(model_copy)


def test_a_file_that_is_not_onnx_but_matches_its_manifest_is_refused(model_copy: Path) -> None:
    import hashlib

    data = b"not a model at all"
    (model_copy / "model.onnx").write_bytes(data)
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="onnxruntime cannot load"):
        OnnxScorer.load(model_copy)


def test_a_model_answering_two_columns_is_refused(model_copy: Path) -> None:
    add_to_output(model_copy, [0.0, 0.0])
    with pytest.raises(ArtifactError, match="warm-up failed"):
        OnnxScorer.load(model_copy)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"opset": "seventeen"}, "opset"),
        ({"file": ["model.onnx"]}, "not a file name"),
        ({"file": "../1/model.onnx"}, "not a file name"),
    ],
)
def test_a_malformed_manifest_is_refused(
    model_copy: Path, changes: dict[str, object], reason: str
) -> None:
    manifest = json.loads((model_copy / "manifest.json").read_text())
    (model_copy / "manifest.json").write_text(json.dumps(manifest | changes))
    with pytest.raises(ArtifactError, match=reason):
        OnnxScorer.load(model_copy)


def test_the_score_reference_is_read(model_copy: Path) -> None:
    from server.drift import ScoreDrift

    info = OnnxScorer.load(model_copy).info
    assert info.score_reference is not None
    edges, proportions = info.score_reference
    assert len(proportions) == len(edges) + 1 and abs(sum(proportions) - 1.0) < 1e-6
    ScoreDrift(edges, proportions)  # usable as it is


def test_an_artifact_without_a_score_reference_loads(model_copy: Path) -> None:
    edit_metadata(model_copy, {"score_reference": None})
    assert OnnxScorer.load(model_copy).info.score_reference is None


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        json.dumps([0.1, 0.2]),
        json.dumps({"edges": [0.1]}),
        json.dumps({"edges": [0.1, 0.2], "proportions": [0.5, 0.5]}),
        json.dumps({"edges": [0.2, 0.1], "proportions": [0.3, 0.3, 0.4]}),
        json.dumps({"edges": [0.1, 0.1], "proportions": [0.3, 0.3, 0.4]}),
        json.dumps({"edges": [0.1], "proportions": [1.5, -0.5]}),
        json.dumps({"edges": [0.1], "proportions": [0.5, 0.49]}),
        json.dumps({"edges": [0.1], "proportions": ["0.5", "0.5"]}),
        json.dumps({"edges": [True], "proportions": [0.5, 0.5]}),
        json.dumps({"edges": "0.1", "proportions": [0.5, 0.5]}),
        '{"edges": [NaN], "proportions": [0.5, 0.5]}',
    ],
)
def test_a_malformed_score_reference_is_refused(model_copy: Path, value: str) -> None:
    edit_metadata(model_copy, {"score_reference": value})
    with pytest.raises(ArtifactError, match="score_reference is malformed"):
        OnnxScorer.load(model_copy)


def test_a_model_claiming_to_fill_missing_inputs_must_fill_them(model_copy: Path) -> None:
    """This graph does not fill them (a NaN input scores NaN): metadata saying it does would
    let null features through to a model error, so the version is refused at load."""
    assert OnnxScorer.load(model_copy).info.fills_missing is False
    width = len(OnnxScorer.load(model_copy).info.feature_names)
    fill = json.dumps({"strategy": "median", "fill": [0.0] * width})
    edit_metadata(model_copy, {"missing_values": fill})
    with pytest.raises(ArtifactError, match="says missing inputs are filled"):
        OnnxScorer.load(model_copy)


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        json.dumps({"strategy": "median"}),
        json.dumps({"strategy": "median", "fill": [0.0]}),  # one value, not one per feature
        json.dumps({"strategy": 1, "fill": []}),
        json.dumps({"strategy": "median", "fill": "0"}),
        '{"strategy": "median", "fill": [NaN]}',
    ],
)
def test_malformed_missing_values_are_refused(model_copy: Path, value: str) -> None:
    edit_metadata(model_copy, {"missing_values": value})
    with pytest.raises(ArtifactError, match="missing_values is malformed"):
        OnnxScorer.load(model_copy)
