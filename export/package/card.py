"""Score a packaged graph on a table, choose its thresholds, and build the metadata contract.

The table has no separate test period, so it is split by time: the thresholds are chosen on
the earlier part (reported as "validation") and measured on the later part ("test"), the
same roles the two parts have in a training run. No file I/O here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from export.artifact import (
    INPUT_NAME,
    OUTPUT_NAME,
    build_manifest,
    build_metadata,
    build_score_reference,
    embed_metadata,
    tool_versions,
)
from export.calibration import fold as fold_calibration
from export.cli import pick_samples
from export.package.signature import PackageError, Signature, default_opset, first_line
from training import calibration as cal
from training.datasets import MIN_FRAUDS_PER_PART, Dataset
from training.evaluation import choose_thresholds, evaluate
from training.preprocessing import Preprocessing

# What a packaged model's tool_versions record: the runtime it was checked with, not
# TensorFlow's, plus the toolkit that made the source file.
PACKAGING_TOOLS = ("onnx", "onnxruntime", "numpy")
SCORING_BATCH = 4096
PARITY_BATCH_SIZES = (1, 7)  # besides SCORING_BATCH, on the first PARITY_ROWS rows
PARITY_ROWS = 64
PARITY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Parts:
    """The table in time order, cut in two: thresholds on `earlier`, figures on `later`."""

    earlier: Dataset
    later: Dataset


@dataclass(frozen=True)
class Package:
    proto: onnx.ModelProto  # metadata embedded
    manifest: dict[str, object]
    metrics: dict[str, object]  # metrics.json of the model card
    data: dict[str, object]  # data.json
    samples: dict[str, object]  # samples.json
    thresholds: dict[str, float]
    scores: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # for curves


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise PackageError(f"onnxruntime cannot load the model: {first_line(exc)}") from None


def source_scores(proto: onnx.ModelProto, signature: Signature, rows: np.ndarray) -> np.ndarray:
    """The source graph's own positive-class probabilities: what packaging must reproduce."""
    probability = signature.probability
    runner = session(proto)
    parts = []
    for start in range(0, len(rows), SCORING_BATCH):
        batch = rows[start : start + SCORING_BATCH]
        try:
            value = runner.run([probability.output], {signature.input_name: batch})[0]
        except Exception as exc:
            raise PackageError(f"the model fails on the table's rows: {first_line(exc)}") from None
        if isinstance(value, list):  # a ZipMap: one {class: probability} per row
            label = (probability.classes or (0, 1))[probability.column or 0]
            value = np.array([row[label] for row in value], dtype=np.float32)
        else:
            value = np.asarray(value)
            value = value[:, probability.column] if probability.column is not None else value
        parts.append(value.reshape(len(batch)))
    return np.concatenate(parts)


def packaged_scores(proto: onnx.ModelProto, rows: np.ndarray, batch: int) -> np.ndarray:
    """The packaged graph's output as the server reads it: one (N, 1) tensor, reshaped."""
    runner = session(proto)
    parts = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        try:
            value = np.asarray(runner.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0])
        except Exception as exc:
            raise PackageError(f"the model fails on the table's rows: {first_line(exc)}") from None
        if value.shape != (len(chunk), 1):
            raise PackageError(f"the rewritten graph gives shape {value.shape}, not (N, 1)")
        parts.append(value.reshape(len(chunk)))
    return np.concatenate(parts)


def check_probabilities(scores: np.ndarray) -> None:
    finite = np.isfinite(scores)
    inside = finite & (scores >= 0.0) & (scores <= 1.0)
    if not inside.all():
        bad = int((~inside).sum())
        shown = scores[finite]
        span = f"; they span {shown.min():.4g} to {shown.max():.4g}" if shown.size else ""
        raise PackageError(
            f"the model's scores are not probabilities: {bad} of {len(scores)} rows give a "
            f"value outside [0, 1] or not finite{span} (a raw margin or a regressor?)"
        )


def check_parity(
    source: np.ndarray, proto: onnx.ModelProto, rows: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """The packaged graph's scores, proven equal to the source's at several batch sizes."""
    scores = packaged_scores(proto, rows, SCORING_BATCH)
    worst = {str(SCORING_BATCH): float(np.max(np.abs(scores - source)))}
    head = rows[:PARITY_ROWS]
    for batch in PARITY_BATCH_SIZES:
        got = packaged_scores(proto, head, batch)
        worst[str(batch)] = float(np.max(np.abs(got - source[: len(head)])))
    for size, diff in worst.items():
        if not diff <= PARITY_TOLERANCE:  # written so that NaN fails too
            raise PackageError(
                f"the rewritten graph differs from the source by {diff:.3g} at batch {size}"
            )
    return scores, worst


def split_by_time(data: Dataset, test_fraction: float) -> Parts:
    """Earlier rows for the thresholds, the latest `test_fraction` to report on. Rows that
    share a moment stay on one side, so the later part holds no moment the earlier has."""
    if not 0.0 < test_fraction < 1.0:
        raise PackageError(f"--test-fraction must be between 0 and 1, not {test_fraction}")
    order = np.argsort(data.times, kind="stable")
    ordered = data.take(order)
    cut = round(len(ordered) * (1.0 - test_fraction))
    if cut < len(ordered):
        cut = int(np.searchsorted(ordered.times, ordered.times[cut], side="left"))
    parts = Parts(ordered.take(slice(0, cut)), ordered.take(slice(cut, len(ordered))))
    for name, part in (("earlier", parts.earlier), ("later", parts.later)):
        frauds = int(part.labels.sum())
        if frauds < MIN_FRAUDS_PER_PART or frauds == len(part):
            raise PackageError(
                f"the {name} part of the table by time ({len(part)} rows, {frauds} frauds) "
                f"needs at least {MIN_FRAUDS_PER_PART} frauds and some legitimate rows: "
                "use a longer table or another --test-fraction"
            )
    return parts


def copy_of(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def package_tool_versions(signature: Signature) -> dict[str, str]:
    return tool_versions(PACKAGING_TOOLS, producer=signature.producer)


def build_package(
    *,
    source: onnx.ModelProto,
    adapted: onnx.ModelProto,
    signature: Signature,
    source_bytes: bytes,
    source_file: str,
    data: Dataset,
    name: str,
    version: str,
    review_recall: float,
    test_fraction: float,
    created_at: str,
    calibration: str = "none",
) -> Package:
    """Everything a version folder holds, from the adapted graph and the table. With a
    `calibration` other than "none", the map is fitted on the earlier rows (where the
    thresholds are chosen) and folded into the graph, as training does."""
    parts = split_by_time(data, test_fraction)
    ordered = np.concatenate([parts.earlier.features, parts.later.features])
    expected = source_scores(source, signature, ordered)
    check_probabilities(expected)
    record: dict[str, object] = {"method": "none"}
    if calibration != "none":
        n = len(parts.earlier)
        try:
            spec, measured = cal.choose(expected[:n], parts.earlier.labels, calibration)
        except cal.CalibrationError as exc:
            raise PackageError(str(exc)) from None
        record = cal.describe(
            spec,
            measured,
            calibration,
            {
                "validation": (parts.earlier.labels, expected[:n]),
                "test": (parts.later.labels, expected[n:]),
            },
        )
        adapted = fold_calibration(copy_of(adapted), spec)
        # The folded graph is proven against the source's scores through the numpy map.
        expected = cal.apply(spec, expected)
    scores, parity = check_parity(expected, adapted, ordered)
    check_probabilities(scores)
    earlier, later = scores[: len(parts.earlier)], scores[len(parts.earlier) :]
    thresholds = choose_thresholds(parts.earlier.labels, earlier, review_recall)
    metrics: dict[str, object] = {
        "thresholds": thresholds,
        "review_recall": review_recall,
        "calibration": record,
        "validation": evaluate(parts.earlier.labels, earlier, thresholds),
        "test": evaluate(parts.later.labels, later, thresholds),
    }
    # raw_mean / raw_std over every row of the table: the server's out-of-distribution check
    # and warm-up; the scaling fields are unused, as the model does its own.
    stats = Preprocessing.fit(data.features, data.feature_names, ())
    card_data = describe_data(data, parts, signature, source_bytes, source_file)
    proto = onnx.ModelProto()
    proto.CopyFrom(adapted)
    embed_metadata(
        proto,
        build_metadata(
            name=name,
            version=version,
            prep=stats,
            metrics=metrics,
            data=card_data,
            created_at=created_at,
            score_reference=build_score_reference(scores, source="validation table"),
            tools=package_tool_versions(signature),
        ),
        version,
    )
    model_bytes = proto.SerializeToString()
    manifest = build_manifest(
        name=name,
        version=version,
        model_bytes=model_bytes,
        n_features=len(data.feature_names),
        created_at=created_at,
    )
    manifest["opset"] = default_opset(proto)
    manifest["parity_max_abs_diff"] = parity  # packaged vs source graph, by batch size
    samples = pick_samples(parts.later.features, parts.later.labels, data.feature_names)
    return Package(
        proto=proto,
        manifest=manifest,
        metrics=metrics,
        data=card_data,
        samples=samples,
        thresholds=thresholds,
        scores=((parts.earlier.labels, earlier), (parts.later.labels, later)),
    )


def describe_data(
    data: Dataset, parts: Parts, signature: Signature, source_bytes: bytes, source_file: str
) -> dict[str, object]:
    """data.json: the table the figures come from, and the model file that was packaged."""
    producer, producer_version = signature.producer
    return {
        "source": data.source,
        "sha256": data.sha256,
        "rows": len(data),
        "frauds": int(data.labels.sum()),
        "parts": {
            role: {
                "rows": len(part),
                "frauds": int(part.labels.sum()),
                "time_from": float(part.times[0]),
                "time_to": float(part.times[-1]),
            }
            for role, part in (("validation", parts.earlier), ("test", parts.later))
        },
        "model_source": {
            "file": source_file,
            "sha256": hashlib.sha256(source_bytes).hexdigest(),
            "producer_name": producer,
            "producer_version": producer_version,
            "input_name": signature.input_name,
            "probability_output": signature.probability.output,
            "positive_column": signature.probability.column,
            "dropped_outputs": list(signature.dropped_outputs),
        },
    }
