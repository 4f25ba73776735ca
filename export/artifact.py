"""The contract with the server: ONNX metadata keys and the manifest beside model.onnx.

server/artifact.py reads exactly these keys; neither side imports the other.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.preprocessing import Preprocessing

if TYPE_CHECKING:
    import onnx

# The graph's names and opset: export/convert.py builds to them, and a packaged model from
# another toolkit is rewritten to them. Here, free of TensorFlow, so packaging needs none.
OPSET = 17
INPUT_NAME = "features"
OUTPUT_NAME = "fraud_probability"
SCHEMA_VERSION = "1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
TOOLS = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")
SCORE_BINS = 10
# Present only when the graph fills missing inputs (training's --fill-missing).
MISSING_VALUES_KEY = "missing_values"
# Present only when the features were computed from raw events by features.events: its
# DEFINITIONS string, which the server must run itself to score raw events for the model.
FEATURE_DEFINITIONS_KEY = "feature_definitions"
# Present when training calibrated the model's probability (training/calibration.py).
CALIBRATION_KEY = "calibration"


def tool_versions(
    tools: Sequence[str] = TOOLS, producer: tuple[str, str] | None = None
) -> dict[str, str]:
    """The installed versions of `tools`; for a model another toolkit made, `producer` is
    its file's (producer_name, producer_version), recorded as one more name -> version."""
    versions = {name: package_metadata.version(name) for name in tools}
    if producer is not None:
        versions[producer[0] or "unknown producer"] = producer[1] or "unknown"
    return versions


def build_metadata(
    *,
    name: str,
    version: str,
    prep: Preprocessing,
    metrics: dict[str, object],
    data: dict[str, object],
    created_at: str,
    score_reference: dict[str, object],
    tools: dict[str, str] | None = None,
) -> dict[str, str]:
    """Every value is a string (ONNX metadata_props); structured ones are JSON.

    `tools` replaces tool_versions() for a model this project did not convert itself."""

    def dump(value: object) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    return (
        {
            "fraud.schema_version": SCHEMA_VERSION,
            "model_name": name,
            "model_version": version,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "feature_names": dump(list(prep.feature_names)),
            "thresholds": dump(metrics["thresholds"]),
            "metrics": dump({part: card_metrics(metrics[part]) for part in ("validation", "test")}),
            "feature_mean": dump(list(prep.raw_mean)),
            "feature_std": dump(list(prep.raw_std)),
            "created_at": created_at,
            "data_source": str(data["source"]),
            "data_sha256": str(data["sha256"]),
            "tool_versions": dump(tool_versions() if tools is None else tools),
            "score_reference": dump(score_reference),
        }
        | missing_values_metadata(prep)
        | feature_definitions_metadata(data)
        | calibration_metadata(metrics)
    )


def card_metrics(part: object) -> object:
    """A period's metrics as the model carries them: the reliability table stays in the model
    card (metrics.json and its diagram), out of every GET /v1/models answer."""
    if not isinstance(part, dict) or not isinstance(part.get("calibration"), dict):
        return part
    calibration = {k: v for k, v in part["calibration"].items() if k != "reliability"}
    return {**part, "calibration": calibration}


def calibration_metadata(metrics: dict[str, object]) -> dict[str, str]:
    """`calibration` = {"method": "platt" | "isotonic" | "none"} when the run recorded one (the
    map itself is in the graph); absent for older runs and packaged models."""
    calibration = metrics.get("calibration")
    if not isinstance(calibration, dict):
        return {}
    return {CALIBRATION_KEY: json.dumps({"method": calibration["method"]}, sort_keys=True)}


def feature_definitions_metadata(data: dict[str, object]) -> dict[str, str]:
    """`feature_definitions` from the run's data.json when its features came from events;
    absent otherwise, as in older artifacts."""
    definitions = data.get(FEATURE_DEFINITIONS_KEY)
    return {} if definitions is None else {FEATURE_DEFINITIONS_KEY: str(definitions)}


def missing_values_metadata(prep: Preprocessing) -> dict[str, str]:
    """`missing_values` = {"strategy": "median", "fill": [one float per feature]} when the
    graph fills missing (non-finite) inputs; absent when it does not, as in older artifacts."""
    values = prep.missing_values()
    if values is None:
        return {}
    return {MISSING_VALUES_KEY: json.dumps(values, sort_keys=True, separators=(",", ":"))}


def build_score_reference(
    scores: np.ndarray, source: str = "test", bins: int = SCORE_BINS
) -> dict[str, object]:
    """The distribution of the model's probabilities, for the server's drift (PSI) gauge.

    Fraud probabilities pile up near 0, so equal-width bins would put nearly every score in
    the first one; the cut points are the reference scores' quantiles instead (deciles by
    default), each bin then holding about 1/bins of them. Ties (many equal scores) make equal
    quantiles, which collapse into one edge. `edges` are the inner cut points only: bin i
    holds edges[i-1] <= p < edges[i], and the outer bins reach -inf and +inf, so every
    probability falls in exactly one bin (the server bisects the same way).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("a score reference needs some scores, all finite")
    edges = np.unique(np.quantile(scores, np.arange(1, bins) / bins))
    counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(edges) + 1)
    return {
        "edges": edges.tolist(),
        "proportions": (counts / scores.size).tolist(),
        "source": source,
        "count": int(scores.size),
    }


def build_manifest(
    *, name: str, version: str, model_bytes: bytes, n_features: int, created_at: str
) -> dict[str, object]:
    return {
        "name": name,
        "version": version,
        "file": MODEL_FILE,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "bytes": len(model_bytes),
        "opset": OPSET,
        "features": n_features,
        "created_at": created_at,
    }


def utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def embed_metadata(proto: onnx.ModelProto, metadata: dict[str, str], version: str) -> None:
    del proto.metadata_props[:]
    for key in sorted(metadata):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, metadata[key]
    proto.producer_name = "fraud-scoring-export"
    if version.isdigit():
        proto.model_version = int(version)


def publish_version(target: Path, write: Callable[[Path], None]) -> Path:
    """`write` fills a folder beside `target`, which is then renamed into place: a server
    polling the repository never sees half a version. Nothing is left behind on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        staging.chmod(0o755)
        write(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
