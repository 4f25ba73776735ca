"""The side-by-side evaluation: thresholds from validation, the tables, and where they are written.

Small synthetic data and stand-in models only: nothing here trains an LSTM-CNN.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training import synthetic
from training.baselines import train_logistic_regression, train_xgboost
from training.compare import (
    EVALUATION_JSON,
    EVALUATION_MD,
    README_BEGIN,
    README_END,
    Result,
    measure,
    replace_between_markers,
    report,
    seed_table,
    single_row_latency_us,
    spread,
    summary_table,
    write_outputs,
)
from training.datasets import time_split
from training.evaluation import choose_thresholds, evaluate


def scored(seed: int, rows: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one feature whose value is a noisy score for the label."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.05).astype(int)
    return rng.normal(labels * 2.0, 1.0)[:, None].astype(np.float32), labels


def sigmoid(rows: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-rows[:, 0].astype(np.float64)))


def fake_result(model: str, seed: int, ap: float, latency: float = 20.0) -> Result:
    at = {"precision": 0.5, "recall": 0.8}
    test = {
        "roc_auc": 0.97,
        "average_precision": ap,
        "at_thresholds": {"review": at, "decline": at},
        "calibration": {"predicted_frauds": 90.0, "observed_frauds": 75, "ece": 3e-4},
    }
    return Result(model=model, seed=seed, validation_ap=ap - 0.01, test=test, latency_us=latency)


def test_measure_chooses_thresholds_on_validation_and_reports_test() -> None:
    validation, test = scored(0), scored(1)
    result = measure("m", 7, sigmoid, validation, test, review_recall=0.8, latency_calls=50)
    thresholds = choose_thresholds(validation[1], sigmoid(validation[0]), 0.8)
    assert result.test == evaluate(test[1], sigmoid(test[0]), thresholds)
    assert result.seed == 7 and result.latency_us > 0
    assert result.figures["average_precision"] == result.test["average_precision"]


def test_latency_times_single_rows() -> None:
    shapes: list[tuple[int, ...]] = []
    single_row_latency_us(lambda rows: shapes.append(rows.shape), np.zeros((5, 3)), calls=20)
    assert set(shapes) == {(1, 3)}


def test_spread_reads_mean_sd_and_range() -> None:
    assert spread([0.80, 0.82, 0.84], 2) == "0.82 ± 0.02 (0.80 to 0.84)"
    assert spread([0.5], 3) == "0.500"
    assert spread([0.5, 0.5], 1) == "0.5"


def test_tables_hold_every_model_and_seed() -> None:
    results = [
        fake_result("LSTM-CNN", 1, 0.80),
        fake_result("LSTM-CNN", 2, 0.84),
        fake_result("XGBoost", 1, 0.79, latency=150.0),
    ]
    shipped = fake_result("LSTM-CNN shipped", 2, 0.84)
    summary = summary_table(results, shipped).splitlines()
    assert len(summary) == 2 + 3
    assert summary[2].startswith("| **LSTM-CNN shipped** | 2 | 0.9700 | 0.8400 |")
    assert summary[3].startswith("| LSTM-CNN | 1, 2 | 0.9700 | 0.8200 ± 0.0283 (0.8000 to 0.8400)")
    assert summary[4].startswith("| XGBoost | 1 | ") and summary[4].endswith("| 150.0 |")
    per_seed = seed_table(results).splitlines()
    assert len(per_seed) == 2 + 3
    assert per_seed[3].startswith("| LSTM-CNN | 2 | 0.8300 | 0.9700 | 0.8400 |")
    text = report(results, shipped, test_rows=56_961, frauds=75)
    assert "56,961 rows, 75 frauds" in text


def test_markers_replace_only_the_region_between_them() -> None:
    text = f"intro\n{README_BEGIN}\nold table\n{README_END}\nafter\n"
    once = replace_between_markers(text, "new table\n")
    assert once == f"intro\n{README_BEGIN}\nnew table\n{README_END}\nafter\n"
    assert replace_between_markers(once, "new table\n") == once
    with pytest.raises(ValueError, match="markers"):
        replace_between_markers("no markers here", "table")


def test_outputs_go_to_the_model_card_and_the_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_BEGIN}\n{README_END}\n")
    results = [fake_result("LSTM-CNN", 1, 0.8), fake_result("XGBoost", 1, 0.79)]
    shipped = fake_result("LSTM-CNN shipped", 1, 0.8)
    text = report(results, shipped, 100, 5)
    write_outputs(text, results, shipped, tmp_path, readme)
    assert text in (tmp_path / EVALUATION_MD).read_text()
    assert text.rstrip("\n") in readme.read_text()
    saved = json.loads((tmp_path / EVALUATION_JSON).read_text())
    assert [r["model"] for r in saved["runs"]] == ["LSTM-CNN", "XGBoost"]
    assert saved["shipped"]["test"]["average_precision"] == 0.8


@pytest.mark.parametrize("train", [train_xgboost, train_logistic_regression])
def test_baselines_learn_from_the_fitted_rows(train: object) -> None:
    split = time_split(synthetic.generate(rows=4000, seed=5), 0.2, 0.2)
    baseline = train(split.fit, 1)  # type: ignore[operator]
    scores = baseline.predict(split.test.features)
    assert scores.shape == (len(split.test),)
    assert np.all((scores >= 0) & (scores <= 1))
    result = measure(
        baseline.name,
        1,
        baseline.predict,
        (split.validation.features, split.validation.labels),
        (split.test.features, split.test.labels),
        review_recall=0.8,
        latency_calls=20,
    )
    assert result.figures["roc_auc"] > 0.8


def test_interleaved_latency_times_both_models() -> None:
    from training.compare import interleaved_latency_us

    calls = {"a": 0, "b": 0}

    def counting(name: str) -> object:
        return lambda rows: calls.__setitem__(name, calls[name] + 1)

    first, second = interleaved_latency_us(counting("a"), counting("b"), np.zeros((4, 2)), rounds=2)
    assert first > 0 and second > 0
    assert calls["a"] == calls["b"] > 0


def test_a_saved_run_is_reused_when_it_trains_the_same_model() -> None:
    from training.compare import same_model
    from training.config import TrainConfig

    shipped = TrainConfig(out_dir="runs/a", data="synthetic", seed=1, verbose=2)
    saved = json.loads(json.dumps(shipped.to_dict()))
    # Where it was written and how much it printed do not change the model.
    assert same_model(saved, TrainConfig(out_dir="runs/b", data="synthetic", seed=1, verbose=0))
    assert not same_model(saved, TrainConfig(out_dir="runs/a", data="synthetic", seed=2))
    # The generator's seed given as the run's own seed is the same data: the same model.
    assert same_model(saved, TrainConfig(out_dir="x", data="synthetic", seed=1, synthetic_seed=1))
    assert "synthetic_seed" not in saved
    assert not same_model(
        saved, TrainConfig(out_dir="x", data="synthetic", seed=1, synthetic_seed=5)
    )


def test_a_saved_run_of_other_data_is_not_reused(tmp_path: Path) -> None:
    from training.compare import same_data

    (tmp_path / "data.json").write_text(json.dumps({"sha256": "abc", "rows": 3}))
    assert same_data(tmp_path / "data.json", "abc")
    # The same config on a changed generator: other data, so the run is trained again.
    assert not same_data(tmp_path / "data.json", "def")
    assert not same_data(tmp_path / "missing.json", "abc")


def test_other_seeds_train_on_the_shipped_models_generated_data() -> None:
    from training.config import TrainConfig
    from training.train import load_dataset

    shipped = TrainConfig(out_dir="x", data="synthetic", seed=1, synthetic_rows=500)
    other = TrainConfig(out_dir="y", data="synthetic", seed=3, synthetic_rows=500, synthetic_seed=1)
    assert load_dataset(other).sha256 == load_dataset(shipped).sha256
    assert other.to_dict()["synthetic_seed"] == 1
    unpinned = TrainConfig(out_dir="y", data="synthetic", seed=3, synthetic_rows=500)
    assert load_dataset(unpinned).sha256 != load_dataset(shipped).sha256
