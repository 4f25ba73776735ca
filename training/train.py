"""One training run: data -> time split -> scaler -> LSTM-CNN -> thresholds -> outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from training.config import TrainConfig
from training.datasets import Dataset, Split, time_split

# Files a run writes into its output folder; export/ reads them by these names.
CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
PREPROCESSING_FILE = "preprocessing.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
TEST_ROWS_FILE = "test_rows.npz"
# Member i of an ensemble trains from seed + i * this: far apart, so that the members of
# runs with neighbouring seeds never coincide.
MEMBER_SEED_STRIDE = 1000


def set_determinism(seed: int) -> None:
    """Seed every generator and make TensorFlow kernels deterministic, before any model exists."""
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def load_dataset(config: TrainConfig) -> Dataset:
    if config.data == "table":
        from training.table import load_table

        assert config.table_path and config.label_column and config.time_column  # TrainConfig
        return load_table(
            config.table_path,
            label=config.label_column,
            time=config.time_column,
            features=config.features,
            log_features=config.log_features,
            fill_missing=config.fill_missing,
        )
    if config.data == "events":
        from training.event_table import load_events

        assert config.events_path and config.label_column  # checked by TrainConfig
        return load_events(config.events_path, label=config.label_column)
    if config.data == "creditcard":
        from training.creditcard import load_creditcard

        assert config.csv_path is not None  # checked by TrainConfig
        return load_creditcard(config.csv_path)
    from training.synthetic import generate

    return generate(rows=config.synthetic_rows, seed=config.resolved_synthetic_seed)


def write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def data_record(config: TrainConfig, data: Dataset, split: Split) -> dict[str, object]:
    """data.json: where the rows came from and how the split cut them."""
    record: dict[str, object] = {
        "source": data.source,
        "sha256": data.sha256,
        "rows": len(data),
        "frauds": int(data.labels.sum()),
        "parts": {
            name: {
                "rows": len(part),
                "frauds": int(part.labels.sum()),
                "time_from": float(part.times[0]),
                "time_to": float(part.times[-1]),
            }
            for name, part in (
                ("fit", split.fit),
                ("validation", split.validation),
                ("test", split.test),
            )
        },
    }
    if data.definitions is not None:
        # Which event-feature code computed the features: export names it in the model, and
        # the server scores raw events only for a model whose definitions it runs itself.
        record["feature_definitions"] = data.definitions
    if config.data == "events":
        record["events"] = {"path": config.events_path, "label": config.label_column}
    if config.data == "table":
        missing = np.isnan(data.features).sum(axis=0)
        record["table"] = {
            "path": config.table_path,
            "label": config.label_column,
            "time": config.time_column,
            "features": list(data.feature_names),
            "log_features": list(data.log_features),
            "fill_missing": config.fill_missing,
            "missing_cells": {
                name: int(count)
                for name, count in zip(data.feature_names, missing, strict=True)
                if count
            },
        }
    return record


def calibrate(
    config: TrainConfig, split: Split, raw_val: np.ndarray, raw_test: np.ndarray
) -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    """The calibration record for metrics.json (export folds its map into the graph), and the
    calibrated validation and test scores: float32, as the graph computes them, so that the
    thresholds are values the served probabilities can take."""
    from training import calibration as cal

    if config.calibration == "none":
        return {"method": "none"}, raw_val, raw_test
    spec, measured = cal.choose(
        raw_val, split.validation.labels, config.calibration, seed=config.seed
    )
    record = cal.describe(
        spec,
        measured,
        config.calibration,
        {
            "validation": (split.validation.labels, raw_val),
            "test": (split.test.labels, raw_test),
        },
    )
    return (
        record,
        cal.apply(spec, raw_val).astype(np.float32),
        cal.apply(spec, raw_test).astype(np.float32),
    )


def run(config: TrainConfig) -> dict[str, object]:
    """Train and write the run's files. The data is read, split and fitted first, so that a
    bad table fails in seconds and leaves nothing behind."""
    from training.preprocessing import Preprocessing

    data = load_dataset(config)
    split = time_split(data, config.test_fraction, config.validation_fraction)
    prep = Preprocessing.fit(
        split.fit.features, data.feature_names, data.log_features, config.fill_missing
    )

    set_determinism(config.seed)
    import keras

    from training.evaluation import choose_thresholds, evaluate
    from training.model import average_members, build_model
    from training.plots import save_curves

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)
    write_json(out / DATA_FILE, data_record(config, data, split))
    prep.save(out / PREPROCESSING_FILE)
    x_fit, x_val, x_test = (
        prep.transform(p.features) for p in (split.fit, split.validation, split.test)
    )

    positives = int(split.fit.labels.sum())
    negatives = len(split.fit) - positives
    class_weight = {0: 1.0, 1: float((negatives / positives) ** config.class_weight_power)}

    members = []
    for index in range(config.members):
        # Each member from its own seed; the first keeps the run's seed, so one member
        # reproduces the single model of the same config.
        keras.utils.set_random_seed(config.seed + index * MEMBER_SEED_STRIDE)
        name = "lstm_cnn" if config.members == 1 else f"lstm_cnn_{index}"
        member = build_model(len(data.feature_names), config, name=name)
        member.fit(
            x_fit,
            split.fit.labels,
            validation_data=(x_val, split.validation.labels),
            epochs=config.epochs,
            batch_size=config.batch_size,
            class_weight=class_weight,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="val_pr_auc",
                    mode="max",
                    patience=config.patience,
                    restore_best_weights=True,
                )
            ],
            verbose=config.verbose,
        )
        members.append(member)
    model = average_members(members, len(data.feature_names))
    model.save(out / MODEL_FILE)

    raw_val = model.predict(x_val, batch_size=4096, verbose=0).ravel()
    raw_test = model.predict(x_test, batch_size=4096, verbose=0).ravel()
    calibration, val_scores, test_scores = calibrate(config, split, raw_val, raw_test)
    thresholds = choose_thresholds(split.validation.labels, val_scores, config.review_recall)
    metrics = {
        "thresholds": thresholds,
        "class_weight": class_weight[1],
        "calibration": calibration,
        "validation": evaluate(split.validation.labels, val_scores, thresholds),
        "test": evaluate(split.test.labels, test_scores, thresholds),
    }
    write_json(out / METRICS_FILE, metrics)
    save_curves(
        out / CURVES_FILE,
        {
            "validation": (split.validation.labels, val_scores),
            "test": (split.test.labels, test_scores),
        },
        thresholds,
        uncalibrated=None if config.calibration == "none" else (split.test.labels, raw_test),
        title=f"{config.resolved_model_name}: LSTM-CNN, time-ordered split",
    )
    # Raw test rows travel with the run so export can prove parity on them.
    np.savez_compressed(
        out / TEST_ROWS_FILE, features=split.test.features, labels=split.test.labels
    )
    return metrics
