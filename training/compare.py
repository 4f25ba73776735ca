"""The LSTM-CNN side by side with XGBoost and logistic regression on the same time split.

    python -m training.compare --csv data/creditcard.csv --model-dir models/creditcard/4

Every model is trained on the same fitted rows for each seed, its thresholds are chosen on
validation, and it is measured once on the test period. The LSTM-CNN's runs are trained into
--runs (or reused when a run with the same configuration is already there); the shipped model
is re-scored from its ONNX file. The table goes to stdout, to evaluation.md and evaluation.json
in the model's folder, and between the markers in docs/models.md (--readme).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from training.config import TrainConfig
from training.evaluation import choose_thresholds, evaluate

EVALUATION_MD = "evaluation.md"
EVALUATION_JSON = "evaluation.json"
README_BEGIN = "<!-- evaluation:begin -->"
README_END = "<!-- evaluation:end -->"
LSTM_CNN = "LSTM-CNN"
LATENCY_CALLS = 3000
LATENCY_ROWS = 256


@dataclass(frozen=True)
class Result:
    """One model trained with one seed, measured on the test period."""

    model: str
    seed: int
    validation_ap: float
    test: dict[str, object]  # training.evaluation.evaluate() of the test rows
    latency_us: float

    @property
    def figures(self) -> dict[str, float]:
        at = self.test["at_thresholds"]
        assert isinstance(at, dict)
        return {
            "roc_auc": float(self.test["roc_auc"]),  # type: ignore[arg-type]
            "average_precision": float(self.test["average_precision"]),  # type: ignore[arg-type]
            "review_recall": at["review"]["recall"],
            "review_precision": at["review"]["precision"],
            "decline_recall": at["decline"]["recall"],
            "decline_precision": at["decline"]["precision"],
            **calibration_columns(self.test),
            "latency_us": self.latency_us,
        }


COLUMNS = {
    "roc_auc": "ROC-AUC",
    "average_precision": "average precision",
    "review_recall": "REVIEW recall",
    "review_precision": "REVIEW precision",
    "decline_recall": "DECLINE recall",
    "decline_precision": "DECLINE precision",
    "predicted_share": "predicted / observed frauds",
    "ece_e4": "ECE (1e-4)",
    "latency_us": "1-row latency (µs)",
}


def calibration_columns(test: dict[str, object]) -> dict[str, float]:
    """How far the probabilities are probabilities: their sum over the observed frauds (1 is
    right), and the expected calibration error in units of 1e-4 (fraud is that rare)."""
    figures = test.get("calibration")
    if not isinstance(figures, dict):
        return {"predicted_share": float("nan"), "ece_e4": float("nan")}
    observed = max(int(figures["observed_frauds"]), 1)
    return {
        "predicted_share": float(figures["predicted_frauds"]) / observed,
        "ece_e4": float(figures["ece"]) * 1e4,
    }


def measure(
    model: str,
    seed: int,
    predict: Callable[[np.ndarray], np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    review_recall: float,
    timed: Callable[[np.ndarray], object] | None = None,
    latency_calls: int = LATENCY_CALLS,
) -> Result:
    """Thresholds from validation scores, figures from test scores, latency of single rows
    through `timed` (default: `predict` itself)."""
    val_scores = predict(validation[0])
    thresholds = choose_thresholds(validation[1], val_scores, review_recall)
    return Result(
        model=model,
        seed=seed,
        validation_ap=float(average_precision_score(validation[1], val_scores)),
        test=evaluate(test[1], predict(test[0]), thresholds),
        latency_us=single_row_latency_us(timed or predict, test[0][:LATENCY_ROWS], latency_calls),
    )


def single_row_latency_us(
    predict: Callable[[np.ndarray], object], rows: np.ndarray, calls: int = LATENCY_CALLS
) -> float:
    """Median wall time of one call on one row, cycling through `rows`."""
    feeds = [row[None, :] for row in np.asarray(rows, dtype=np.float32)]
    for feed in feeds[:50]:  # warm caches and lazy initialisation
        predict(feed)
    times = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        feed = feeds[i % len(feeds)]
        start = time.perf_counter_ns()
        predict(feed)
        times[i] = time.perf_counter_ns() - start
    return float(np.median(times)) / 1000.0


def interleaved_latency_us(
    first: Callable[[np.ndarray], object],
    second: Callable[[np.ndarray], object],
    rows: np.ndarray,
    rounds: int = 6,
) -> tuple[float, float]:
    """Both models' single-row latency, timed in alternating rounds so that a busy spell on a
    shared machine falls on both alike; the median of the rounds' medians."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for predict, out in zip((first, second), times, strict=True):
            out.append(single_row_latency_us(predict, rows, LATENCY_CALLS // 3))
    return statistics.median(times[0]), statistics.median(times[1])


def spread(values: Sequence[float], digits: int) -> str:
    """'mean ± sd (min to max)', or the value alone for a single one."""
    if len(values) == 1 or max(values) == min(values):
        return f"{values[0]:.{digits}f}"
    return (
        f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} "
        f"({min(values):.{digits}f} to {max(values):.{digits}f})"
    )


def _digits(column: str) -> int:
    if column in ("latency_us", "ece_e4"):
        return 1
    return (
        4 if column in ("roc_auc", "average_precision") else 2 if column == "predicted_share" else 3
    )


def summary_table(results: Sequence[Result], shipped: Result | None = None) -> str:
    """One row per model, mean ± sd (min to max) over its seeds; the shipped model first."""
    models = list(dict.fromkeys(r.model for r in results))
    lines = [
        "| model | seeds | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    if shipped is not None:
        cells = [f"{shipped.figures[c]:.{_digits(c)}f}" for c in COLUMNS]
        lines.append(f"| **{shipped.model}** | {shipped.seed} | " + " | ".join(cells) + " |")
    for model in models:
        mine = [r for r in results if r.model == model]
        cells = [spread([r.figures[c] for r in mine], _digits(c)) for c in COLUMNS]
        seeds = ", ".join(str(r.seed) for r in mine)
        lines.append(f"| {model} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_table(results: Sequence[Result]) -> str:
    """Every run: validation AP (what choices are made on) beside the test figures."""
    lines = [
        "| model | seed | validation AP | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in results:
        cells = [f"{r.figures[c]:.{_digits(c)}f}" for c in COLUMNS]
        lines.append(
            f"| {r.model} | {r.seed} | {r.validation_ap:.4f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def report(results: Sequence[Result], shipped: Result | None, test_rows: int, frauds: int) -> str:
    intro = (
        f"Test period: the latest 20 % of transactions by time ({test_rows:,} rows, {frauds} "
        "frauds). Each model is fitted on the earliest 64 % and its REVIEW and DECLINE "
        "thresholds are chosen on the 16 % between; the cells read mean ± sd (min to max) over "
        "seeds. Latency is the median of single-row calls on one thread: onnxruntime for the "
        "LSTM-CNN, the library's own predict for the others. Predicted / observed frauds is "
        "the sum of the test probabilities over the frauds there were (1 is right), and ECE the "
        "expected calibration error over 10 equal-count bins, in units of 1e-4: the LSTM-CNN's "
        "after its calibration, the others' of their own probabilities.\n"
    )
    return intro + "\n" + summary_table(results, shipped) + "\n" + seed_table(results)


def markers(name: str) -> tuple[str, str]:
    """The comment lines a page marks a model's table with: one pair per model."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_between_markers(
    text: str, body: str, begin: str = README_BEGIN, end: str = README_END
) -> str:
    """`text` with everything between the two marker lines replaced by `body`."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"markers {begin} ... {end} not found in order")
    return text[: start + len(begin)] + "\n" + body.rstrip("\n") + "\n" + text[stop:]


def write_outputs(
    report_md: str,
    results: Sequence[Result],
    shipped: Result | None,
    model_dir: Path | None,
    readme: Path | None,
    marker: str = "evaluation",
) -> None:
    if model_dir is not None:
        (model_dir / EVALUATION_MD).write_text("# Evaluation\n\n" + report_md)
        payload = {
            "shipped": None if shipped is None else shipped.__dict__,
            "runs": [r.__dict__ for r in results],
        }
        (model_dir / EVALUATION_JSON).write_text(
            json.dumps(payload, indent=2, sort_keys=True) + "\n"
        )
    if readme is not None:
        begin, end = markers(marker)
        readme.write_text(replace_between_markers(readme.read_text(), report_md, begin, end))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--csv", dest="csv_path", help="path to creditcard.csv (the credit-card model only)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--runs", type=Path, default=Path("runs/evaluate"), help="LSTM-CNN runs")
    parser.add_argument(
        "--model-dir", type=Path, required=True, help="the shipped model, re-scored from ONNX"
    )
    parser.add_argument(
        "--readme", type=Path, help="Markdown page with the evaluation markers (docs/models.md)"
    )
    parser.add_argument(
        "--marker",
        default="evaluation",
        help="the markers' name: the table goes between <!-- NAME:begin --> and :end",
    )
    parser.add_argument(
        "--reference-onnx", type=Path, help="another model.onnx whose latency to set beside"
    )
    return parser.parse_args(argv)


# Settings that do not change the trained model: where it was written and how much it printed.
NOT_THE_MODEL = ("out_dir", "verbose")


def same_model(saved: dict[str, object], config: TrainConfig) -> bool:
    """Whether a run's saved config.json trains what `config` trains. Read back through
    TrainConfig, so fields added since the run was made take their defaults."""
    try:
        before = TrainConfig(**saved).to_dict()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    now = config.to_dict()
    keys = (before.keys() | now.keys()) - set(NOT_THE_MODEL)
    return all(before.get(k) == now.get(k) for k in keys)


def lstm_cnn_run(config: TrainConfig, data_sha256: str | None = None) -> Path:
    """A trained run of `config`, reused when its folder already holds one of the same config
    (and, given `data_sha256`, trained on that data: a changed generator makes other data from
    the same config)."""
    from training.train import CONFIG_FILE, DATA_FILE, MODEL_FILE, run

    out = Path(config.out_dir)
    saved = out / CONFIG_FILE
    if not (
        (out / MODEL_FILE).exists()
        and saved.exists()
        and same_model(json.loads(saved.read_text()), config)
        and (data_sha256 is None or same_data(out / DATA_FILE, data_sha256))
    ):
        run(config)
    return out


def same_data(data_file: Path, sha256: str) -> bool:
    return data_file.exists() and json.loads(data_file.read_text()).get("sha256") == sha256


def keras_predict(run_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A run's scores for raw rows: its preprocessing, then its Keras model, which export
    converts with parity to 1e-5."""
    import keras

    from training.calibration import apply as apply_calibration
    from training.preprocessing import Preprocessing
    from training.train import METRICS_FILE, MODEL_FILE, PREPROCESSING_FILE

    prep = Preprocessing.load(run_dir / PREPROCESSING_FILE)
    model = keras.saving.load_model(run_dir / MODEL_FILE)
    # The run's calibration, as export folds it into the graph (none for older runs).
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    calibration = metrics.get("calibration", {"method": "none"})

    def predict(rows: np.ndarray) -> np.ndarray:
        raw = np.asarray(model.predict(prep.transform(rows), batch_size=4096, verbose=0)).ravel()
        if calibration["method"] == "none":
            return raw
        return apply_calibration(calibration, raw).astype(np.float32)

    return predict


def onnx_predict(model_file: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Scores from an ONNX file through onnxruntime, on one thread as the server runs it."""
    import onnx
    import onnxruntime as ort

    meta = {p.key: p.value for p in onnx.load(model_file).metadata_props}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    outputs, input_name = [meta["output_name"]], meta["input_name"]

    def predict(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float32)
        return np.concatenate(
            [
                session.run(outputs, {input_name: rows[i : i + 4096]})[0].ravel()
                for i in range(0, len(rows), 4096)
            ]
        )

    return predict


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from training.baselines import TRAINERS
    from training.datasets import time_split
    from training.train import load_dataset

    card = json.loads((args.model_dir / "config.json").read_text())
    given = {"csv_path": args.csv_path} if args.csv_path else {}
    shipped_config = TrainConfig(**{**card, **given, "verbose": 0})
    # The shipped model's own data: the credit-card file, the generator, or its table.
    data = load_dataset(shipped_config)
    split = time_split(data, shipped_config.test_fraction, shipped_config.validation_fraction)
    validation = (split.validation.features, split.validation.labels)
    test = (split.test.features, split.test.labels)
    review_recall = shipped_config.review_recall
    shipped_onnx = onnx_predict(args.model_dir / "model.onnx")

    results: list[Result] = []
    for seed in args.seeds:
        # The shipped configuration with another seed. Every seed's graph has the shipped
        # one's shape, so the shipped ONNX file is what is timed.
        # Every seed trains on the shipped model's data: for the generator, its seed.
        config = dataclasses.replace(
            shipped_config,
            seed=seed,
            out_dir=str(args.runs / f"seed-{seed}"),
            synthetic_seed=shipped_config.resolved_synthetic_seed,
        )
        predict = keras_predict(lstm_cnn_run(config, data.sha256))
        results.append(
            measure(LSTM_CNN, seed, predict, validation, test, review_recall, timed=shipped_onnx)
        )
        print(f"{LSTM_CNN} seed {seed}: done", flush=True)
    for name, train in TRAINERS.items():
        for seed in args.seeds:
            baseline = train(split.fit, seed)
            results.append(measure(name, seed, baseline.predict, validation, test, review_recall))
            print(f"{name} seed {seed}: done", flush=True)
    shipped = measure(
        f"{LSTM_CNN} shipped (version {args.model_dir.name})",
        shipped_config.seed,
        shipped_onnx,
        validation,
        test,
        review_recall,
    )
    text = report(results, shipped, len(split.test), int(split.test.labels.sum()))
    if args.reference_onnx is not None:
        ours, theirs = interleaved_latency_us(
            shipped_onnx, onnx_predict(args.reference_onnx), test[0][:LATENCY_ROWS]
        )
        text += (
            f"\nSingle-row onnxruntime latency, the two timed in alternating rounds of one run: "
            f"{ours:.1f} µs for the shipped model, {theirs:.1f} µs for version "
            f"{args.reference_onnx.parent.name} ({ours / theirs:.2f} times).\n"
        )
    print(text)
    write_outputs(text, results, shipped, args.model_dir, args.readme, args.marker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
