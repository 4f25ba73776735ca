"""Command line: python -m export.package --onnx FILE --validation TABLE --label COL --time COL
--name NAME [--features a,b,c] [--out models] [--version N] [--force] [--review-recall 0.8].

Packages a binary classifier that another toolkit converted to ONNX (skl2onnx, onnxmltools,
tf2onnx) as models/<name>/<version>/, the same contract `python -m export` writes: the graph
is rewritten to one input `features` and one output `fraud_probability`, scored on the
table, given thresholds, metadata, a manifest and a model card. Nothing is written unless
every check passes; a refusal is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from training.calibration import CHOICES as CALIBRATIONS

if TYPE_CHECKING:
    import onnx

REFUSED = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export.package",
        description="Package a binary-classifier ONNX file as a servable model version.",
    )
    parser.add_argument("--onnx", type=Path, required=True, help="the classifier's ONNX file")
    parser.add_argument(
        "--validation", type=Path, required=True, help="table (CSV or Parquet) to score it on"
    )
    parser.add_argument("--label", required=True, help="the 0/1 fraud label column")
    parser.add_argument("--time", required=True, help="the time column (orders the rows)")
    parser.add_argument(
        "--features",
        help="feature columns in the model's input order, comma-separated "
        "(default: every numeric column but the label and the time, in file order)",
    )
    parser.add_argument("--name", required=True, help="model name: the folder under --out")
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--version", help="version folder name (default: next integer)")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument(
        "--review-recall",
        type=float,
        default=0.8,
        help="REVIEW threshold: the highest keeping this recall on the earlier rows",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.5,
        help="latest share of the table's rows the card's test figures come from; "
        "thresholds are chosen on the rows before it",
    )
    parser.add_argument(
        "--output", help="the probability output, when the model has several candidates"
    )
    parser.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default="none",
        help="fit a probability map on the earlier rows and fold it into the graph "
        "(default: none; the model's own probabilities are served)",
    )
    return parser.parse_args(argv)


def read_onnx(path: Path) -> tuple[onnx.ModelProto, bytes]:
    import onnx

    from export.package.signature import PackageError, first_line

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf's DecodeError, the checker's ValidationError
        raise PackageError(f"{path} is not a valid ONNX model: {first_line(exc)}") from None
    if not proto.graph.node:
        raise PackageError(f"{path} is not a valid ONNX model: its graph has no nodes")
    return proto, data


def check_target(args: argparse.Namespace) -> Path:
    from export.cli import next_version
    from export.package.signature import PackageError

    name = args.name
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
        raise PackageError(f"model name {name!r} cannot be a folder name")
    version = args.version or next_version(args.out / name)
    # The server serves only folders named by a whole number, written canonically.
    if not (version.isascii() and version.isdigit() and version == str(int(version))):
        raise PackageError(f"version {version!r} is not a whole number such as 1, 2, 3")
    if not 0.0 < args.review_recall <= 1.0:
        raise PackageError(f"--review-recall must be in (0, 1], not {args.review_recall}")
    target: Path = args.out / name / version
    if target.exists() and not args.force:
        raise PackageError(f"{target} exists; pass --force or another --version")
    return target


def package(args: argparse.Namespace) -> Path:
    """Check, rewrite, score; then write the version folder in one rename."""
    from export.artifact import MANIFEST_FILE, MODEL_FILE, publish_version, utc_now
    from export.cli import SAMPLES_FILE, dump_samples
    from export.package.card import build_package
    from export.package.rewrite import adapt
    from export.package.signature import check_features, inspect_model
    from training import train as run_files
    from training.plots import save_curves
    from training.table import load_table

    target = check_target(args)
    source, source_bytes = read_onnx(args.onnx)
    signature = inspect_model(source, args.output)

    features = [f.strip() for f in args.features.split(",")] if args.features else None
    data = load_table(args.validation, args.label, args.time, features)
    check_features(signature, data.feature_names)
    adapted = adapt(source, signature)
    built = build_package(
        source=source,
        adapted=adapted,
        signature=signature,
        source_bytes=source_bytes,
        source_file=args.onnx.name,
        data=data,
        name=args.name,
        version=target.name,
        review_recall=args.review_recall,
        test_fraction=args.test_fraction,
        created_at=utc_now(),
        calibration=args.calibration,
    )
    config = {
        "kind": "packaged",
        "model_name": args.name,
        "onnx": args.onnx.name,
        "validation": args.validation.name,
        "label": args.label,
        "time": args.time,
        "features": list(data.feature_names),
        "output": signature.probability.output,
        "review_recall": args.review_recall,
        "test_fraction": args.test_fraction,
        "calibration": args.calibration,
    }

    def dump(payload: object) -> str:
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"

    def write(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(built.proto.SerializeToString())
        (folder / MANIFEST_FILE).write_text(dump(built.manifest))
        (folder / run_files.METRICS_FILE).write_text(dump(built.metrics))
        (folder / run_files.DATA_FILE).write_text(dump(built.data))
        (folder / run_files.CONFIG_FILE).write_text(dump(config))
        (folder / SAMPLES_FILE).write_text(dump_samples(built.samples))
        validation, test = built.scores
        save_curves(
            folder / run_files.CURVES_FILE,
            {"validation": validation, "test": test},
            built.thresholds,
            title=f"{args.name}: packaged {signature.producer[0] or 'ONNX'} model",
        )

    return publish_version(target, write)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from export.package.signature import PackageError
    from training.datasets import DataError
    from training.table import TableError

    try:
        target = package(args)
    except (PackageError, TableError, DataError) as exc:
        # The table loader's messages are whole sentences naming the column and the row.
        print(f"cannot package: {' '.join(str(exc).split())}", file=sys.stderr)
        return REFUSED
    print(f"wrote {target}")
    return 0
