"""Command line: python -m export --run RUN_DIR --out models [--version N].

Reads a training run, converts, verifies, and only then writes
models/<name>/<version>/ (model.onnx, manifest.json and the model card).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.fuse import LSTM_LAYOUTS
from training import train as run_files

if TYPE_CHECKING:
    import onnx

# Sample rows of the test period, written beside the model card.
SAMPLES_FILE = "samples.json"
CARD_FILES = (
    run_files.METRICS_FILE,
    run_files.CURVES_FILE,
    run_files.CONFIG_FILE,
    run_files.DATA_FILE,
)


def pick_samples(
    rows: np.ndarray,
    labels: np.ndarray,
    names: tuple[str, ...],
    frauds: int = 16,
    legitimate: int = 48,
    seed: int = 0,
) -> dict[str, object]:
    """Real rows from the test period, for load tests and for trying the model by hand.

    Only rows with every feature present: JSON has no NaN, and a sample must be sendable."""
    rng = np.random.default_rng(seed)
    complete = np.isfinite(rows).all(axis=1)
    fraud = np.flatnonzero((labels == 1) & complete)
    legit = np.flatnonzero((labels == 0) & complete)
    chosen = np.concatenate(
        [
            rng.choice(fraud, min(frauds, len(fraud)), replace=False),
            rng.choice(legit, min(legitimate, len(legit)), replace=False),
        ]
    )
    chosen.sort()
    return {
        "feature_names": list(names),
        # str() of a float32 is its shortest exact form: 0.9086366, not 0.9086365699768066.
        "rows": [
            {"features": [float(str(v)) for v in rows[i]], "fraud": bool(labels[i])} for i in chosen
        ],
    }


def dump_samples(samples: dict[str, object]) -> str:
    """JSON with one row per line: readable, and small diffs between versions."""
    rows = samples["rows"]
    assert isinstance(rows, list)
    lines = ",\n".join("  " + json.dumps(row) for row in rows)
    return (
        f'{{"feature_names": {json.dumps(samples["feature_names"])},\n "rows": [\n{lines}\n ]}}\n'
    )


def onnx_scores(proto: onnx.ModelProto, rows: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The graph's probabilities for raw rows: what the server will see for them."""
    import onnxruntime as ort

    from export.artifact import INPUT_NAME, OUTPUT_NAME

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = rows.astype(np.float32)
    return np.concatenate(
        [
            session.run([OUTPUT_NAME], {INPUT_NAME: rows[i : i + batch]})[0].ravel()
            for i in range(0, len(rows), batch)
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="training output folder")
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--version", help="version folder name (default: next integer)")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument(
        "--lstm-layout",
        choices=LSTM_LAYOUTS,
        default=LSTM_LAYOUTS[0],
        help="members' LSTMs as one op each (split, faster) or one block-diagonal op",
    )
    return parser.parse_args(argv)


def next_version(model_root: Path) -> str:
    taken = [int(p.name) for p in model_root.glob("*") if p.is_dir() and p.name.isdigit()]
    return str(max(taken, default=0) + 1)


def export_run(
    run: Path,
    out: Path,
    version: str | None = None,
    force: bool = False,
    lstm_layout: str = LSTM_LAYOUTS[0],
) -> Path:
    """Convert and verify; write the version folder only when every check passed."""
    import keras

    from export.artifact import (
        MANIFEST_FILE,
        MODEL_FILE,
        build_manifest,
        build_metadata,
        build_score_reference,
        publish_version,
        utc_now,
    )
    from export.calibration import fold as fold_calibration
    from export.convert import convert, embed_metadata
    from export.fuse import fuse_members, members_of
    from export.verify import check_graph, check_parity
    from training.preprocessing import Preprocessing

    config = json.loads((run / run_files.CONFIG_FILE).read_text())
    metrics = json.loads((run / run_files.METRICS_FILE).read_text())
    data = json.loads((run / run_files.DATA_FILE).read_text())
    prep = Preprocessing.load(run / run_files.PREPROCESSING_FILE)
    model = keras.saving.load_model(run / run_files.MODEL_FILE)
    test_file = np.load(run / run_files.TEST_ROWS_FILE)
    test_rows, test_labels = test_file["features"], test_file["labels"]

    name = config["model_name"]
    version = version or next_version(out / name)
    target = out / name / version
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force or another --version")

    created_at = utc_now()
    # The members run as one network; parity below is checked against the unfused model.
    proto = convert(fuse_members(model, len(prep.feature_names), lstm_layout), prep)
    # A run from before calibration existed has none: its graph stays as it was.
    calibration = metrics.get("calibration", {"method": "none"})
    proto = fold_calibration(proto, calibration)
    # Scored before embedding (metadata does not change the outputs) so that the checks below
    # see the final proto, reference included; nothing is written unless they all pass.
    score_reference = build_score_reference(onnx_scores(proto, test_rows), source="test")
    embed_metadata(
        proto,
        build_metadata(
            name=name,
            version=version,
            prep=prep,
            metrics=metrics,
            data=data,
            created_at=created_at,
            score_reference=score_reference,
        ),
        version,
    )
    check_graph(proto)
    report = check_parity(proto, model, prep, test_rows, calibration)
    for batch, diff in report.max_abs_diff.items():
        print(
            f"parity batch {batch:>2}: max |keras - onnx| = {diff:.2e} over "
            f"{report.rows[batch]} test rows"
        )

    model_bytes = proto.SerializeToString()
    manifest = build_manifest(
        name=name,
        version=version,
        model_bytes=model_bytes,
        n_features=len(prep.feature_names),
        created_at=created_at,
    )
    manifest["parity_max_abs_diff"] = {str(k): v for k, v in report.max_abs_diff.items()}
    manifest["members"] = len(members_of(model))
    samples = pick_samples(test_rows, test_labels, prep.feature_names)

    def write(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(model_bytes)
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (folder / SAMPLES_FILE).write_text(dump_samples(samples))
        for card in CARD_FILES:
            shutil.copy(run / card, folder / card)

    return publish_version(target, write)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from export.fuse import FusionError
    from export.verify import VerificationError

    try:
        target = export_run(args.run, args.out, args.version, args.force, args.lstm_layout)
    except (VerificationError, FusionError, FileExistsError, FileNotFoundError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    return 0
