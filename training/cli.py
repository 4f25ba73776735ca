"""Command line: python -m training --data {synthetic,creditcard} [--csv PATH] --out DIR."""

from __future__ import annotations

import argparse
import dataclasses

from training.config import DATA_SOURCES, TrainConfig

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


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        prog="python -m training", description="Train the LSTM-CNN fraud model."
    )
    parser.add_argument("--data", choices=DATA_SOURCES, default="synthetic")
    parser.add_argument("--csv", dest="csv_path", help="path to creditcard.csv")
    parser.add_argument("--out", dest="out_dir", required=True, help="output folder")
    parser.add_argument("--name", dest="model_name", help="model name (default: data source)")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in TUNABLE:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=type(defaults[name]),
            default=defaults[name],
        )
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from training.train import run

    metrics = run(config)
    test = metrics["test"]
    assert isinstance(test, dict)
    print(
        f"test ROC-AUC {test['roc_auc']:.4f}  AP {test['average_precision']:.4f}"
        f"  -> {config.out_dir}"
    )
    return 0
