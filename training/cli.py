"""Command line: python -m training --data {synthetic,creditcard} [--csv PATH] --out DIR, or
python -m training --table PATH --label COL --time COL [--features a,b] [--log-features x]
[--fill-missing median] --out DIR, or python -m training --events PATH --label COL --out DIR."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from training.calibration import CHOICES as CALIBRATIONS
from training.config import TrainConfig
from training.datasets import DataError

# --data's choices: a table comes with --table instead.
PRESETS = ("synthetic", "creditcard")
# Problems with what was asked for, or with the data: one line on stderr and this exit code,
# the one argparse uses for a bad command line.
USAGE_ERROR = 2
TUNABLE = (
    "seed",
    "synthetic_rows",
    "epochs",
    "batch_size",
    "learning_rate",
    "patience",
    "conv_filters",
    "lstm_units",
    "dense_units",
    "wide_units",
    "members",
    "class_weight_power",
    "review_recall",
    "verbose",
)


def names(text: str) -> tuple[str, ...]:
    """a,b,c -> ('a', 'b', 'c'), spaces around names dropped; empty names are kept for
    TrainConfig to refuse by name."""
    return tuple(part.strip() for part in text.split(","))


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The config asked for; ValueError (a one-line message) when it does not hold together."""
    parser = argparse.ArgumentParser(
        prog="python -m training", description="Train the LSTM-CNN fraud model."
    )
    parser.add_argument("--data", choices=PRESETS, help="a preset (default: synthetic)")
    parser.add_argument("--csv", dest="csv_path", help="path to creditcard.csv")
    parser.add_argument("--table", dest="table_path", help="a CSV or Parquet table to train on")
    parser.add_argument(
        "--events",
        dest="events_path",
        help="a CSV or Parquet table of raw mobile-money events to compute the features from",
    )
    parser.add_argument(
        "--label", dest="label_column", help="the table's (or event table's) 0/1 fraud column"
    )
    parser.add_argument(
        "--time", dest="time_column", help="the table's time column (epoch seconds or ISO-8601)"
    )
    parser.add_argument(
        "--features", type=names, help="comma-separated feature columns (default: every numeric)"
    )
    parser.add_argument(
        "--log-features",
        type=names,
        default=(),
        help="comma-separated features that get sign(x) * log(1 + |x|) before scaling",
    )
    parser.add_argument("--fill-missing", help="fill missing feature cells: median")
    parser.add_argument(
        "--synthetic-seed", type=int, help="the generator's seed (default: the run's --seed)"
    )
    parser.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default="auto",
        help="score -> probability map fitted on validation (default: the better one)",
    )
    parser.add_argument("--out", dest="out_dir", required=True, help="output folder")
    parser.add_argument(
        "--name", dest="model_name", help="model name (default: the preset, or the table's stem)"
    )
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in TUNABLE:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=type(defaults[name]),
            default=defaults[name],
        )
    args = vars(parser.parse_args(argv))
    if args["events_path"] is not None:
        for flag, key in (("--data", "data"), ("--table", "table_path"), ("--csv", "csv_path")):
            if args[key] is not None:
                raise ValueError(
                    f"--events and {flag} cannot be combined: events are their own data"
                )
        if args["label_column"] is None:
            raise ValueError("--events needs --label COL, the events' 0/1 fraud column")
        table_only = ("--time", "--features", "--log-features", "--fill-missing")
        keys = ("time_column", "features", "log_features", "fill_missing")
        given = [f for f, k in zip(table_only, keys, strict=True) if args[k] not in (None, ())]
        if given:
            raise ValueError(
                f"{', '.join(given)} apply to --table; events have their time and features"
            )
        args["data"] = "events"
    elif args["table_path"] is not None:
        if args["data"] is not None:
            raise ValueError("--table and --data cannot be combined: a table is its own data")
        if args["csv_path"] is not None:
            raise ValueError("--csv is for --data creditcard; a table comes with --table")
        args["data"] = "table"
    else:
        table_flags = ("--label", "--time", "--features", "--log-features", "--fill-missing")
        table_values = ("label_column", "time_column", "features", "log_features", "fill_missing")
        given = [
            flag
            for flag, key in zip(table_flags, table_values, strict=True)
            if args[key] not in (None, ())
        ]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise ValueError(f"{', '.join(given)} {verb} --table PATH")
        args["data"] = args["data"] or "synthetic"
    return TrainConfig(**args)


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ValueError as exc:
        return fail(str(exc))
    from training.train import run

    try:
        metrics = run(config)
    except DataError as exc:
        return fail(str(exc))
    test = metrics["test"]
    assert isinstance(test, dict)
    print(
        f"test ROC-AUC {test['roc_auc']:.4f}  AP {test['average_precision']:.4f}"
        f"  -> {config.out_dir}"
    )
    return 0


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return USAGE_ERROR
