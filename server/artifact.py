"""Read a model folder: the manifest, the ONNX file it vouches for, and the metadata contract.

The metadata keys are written by export/artifact.py; this module is the only
place the server knows them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.drift import check_reference
from server.errors import ArtifactError

SCHEMA_VERSION = "1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
REQUIRED_KEYS = (
    "fraud.schema_version",
    "model_name",
    "model_version",
    "input_name",
    "output_name",
    "feature_names",
    "thresholds",
    "metrics",
    "feature_mean",
    "feature_std",
    "created_at",
)
# Optional: artifacts exported before score drift existed lack it and still load.
SCORE_REFERENCE_KEY = "score_reference"
# Optional: present when the graph fills missing (NaN) inputs itself, with the fill values.
MISSING_VALUES_KEY = "missing_values"
# Optional: the version of the event feature definitions (features/events.py) the model was
# trained on; such a model also scores raw events.
FEATURE_DEFINITIONS_KEY = "feature_definitions"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_name: str
    output_name: str
    feature_names: tuple[str, ...]
    review_threshold: float
    decline_threshold: float
    metrics: dict[str, Any]
    feature_mean: tuple[float, ...]
    feature_std: tuple[float, ...]
    created_at: str
    sha256: str
    opset: int = 0  # from the manifest
    runtime: str = ""  # the library that runs the model, with its version
    # (edges, proportions) of the test-split scores at export, for server/drift.py.
    score_reference: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # The graph replaces a NaN input by a value chosen at training: requests may leave a
    # feature out (null, or absent from the object form).
    fills_missing: bool = False
    feature_definitions: str | None = None


def read_model_bytes(model_dir: Path) -> tuple[bytes, dict[str, Any]]:
    """The model file's bytes, after checking them against the manifest's sha256."""
    try:
        manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
        name = manifest.get("file", MODEL_FILE)
        if type(name) is not str or Path(name).name != name or name in ("", ".", ".."):
            raise ArtifactError(f"{model_dir}: the manifest's file {name!r} is not a file name")
        data = (model_dir / name).read_bytes()
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ArtifactError(f"cannot read model folder {model_dir}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("sha256"):
        raise ArtifactError(f"{model_dir}: model sha256 {digest} does not match the manifest")
    return data, manifest


def parse_metadata(meta: dict[str, str], sha256: str) -> ModelInfo:
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise ArtifactError(f"model metadata lacks {missing}")
    if meta["fraud.schema_version"] != SCHEMA_VERSION:
        raise ArtifactError(f"metadata schema {meta['fraud.schema_version']!r} is not supported")
    try:
        names = json.loads(meta["feature_names"])
        thresholds = json.loads(meta["thresholds"])
        info = ModelInfo(
            name=meta["model_name"],
            version=meta["model_version"],
            input_name=meta["input_name"],
            output_name=meta["output_name"],
            feature_names=tuple(str(n) for n in names),
            review_threshold=float(thresholds["review"]),
            decline_threshold=float(thresholds["decline"]),
            metrics=json.loads(meta["metrics"]),
            feature_mean=tuple(float(v) for v in json.loads(meta["feature_mean"])),
            feature_std=tuple(float(v) for v in json.loads(meta["feature_std"])),
            created_at=meta["created_at"],
            sha256=sha256,
            score_reference=parse_score_reference(meta.get(SCORE_REFERENCE_KEY)),
            fills_missing=parse_missing_values(meta.get(MISSING_VALUES_KEY), len(names)),
            feature_definitions=meta.get(FEATURE_DEFINITIONS_KEY),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"model metadata is malformed: {exc}") from exc
    if len(set(info.feature_names)) != len(info.feature_names) or not info.feature_names:
        raise ArtifactError("feature names must be present and distinct")
    if not len(info.feature_mean) == len(info.feature_std) == len(info.feature_names):
        raise ArtifactError("feature statistics do not match the feature names")
    if not 0.0 <= info.review_threshold <= info.decline_threshold <= 1.0:
        raise ArtifactError("thresholds must satisfy 0 <= review <= decline <= 1")
    return info


def parse_missing_values(value: str | None, n_features: int) -> bool:
    """JSON {"strategy": str, "fill": [one number per feature]} -> True; absent -> False."""
    if value is None:
        return False
    try:
        missing = json.loads(value)
        fill = missing["fill"]
        if type(missing["strategy"]) is not str or type(fill) is not list:
            raise TypeError("strategy must be a string and fill a list")
        numbers = all(type(v) in (int, float) and math.isfinite(v) for v in fill)
        if len(fill) != n_features or not numbers:
            raise ValueError(f"fill must hold {n_features} finite numbers")
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{MISSING_VALUES_KEY} is malformed: {exc!r}") from exc
    return True


def parse_score_reference(value: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """JSON {"edges": [...], "proportions": [...], ...} -> (edges, proportions), or None when
    the key is absent. The other fields (source, count) are for people reading the artifact."""
    if value is None:
        return None
    try:
        reference = json.loads(value)
        edges, proportions = reference["edges"], reference["proportions"]
        numbers = [*edges, *proportions]
        if not all(type(v) in (int, float) for v in numbers):  # bool is an int but not a number
            raise TypeError("edges and proportions must be lists of numbers")
        parsed = tuple(float(v) for v in edges), tuple(float(v) for v in proportions)
        check_reference(*parsed)
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{SCORE_REFERENCE_KEY} is malformed: {exc!r}") from exc
    return parsed
