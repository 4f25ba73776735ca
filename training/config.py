"""The one configuration object of a training run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from training.calibration import CHOICES as CALIBRATIONS
from training.table import check_column_choice

DATA_SOURCES = ("synthetic", "creditcard", "table", "events")
# Only a table run has these; the presets fix their own columns.
TABLE_FIELDS = (
    "table_path",
    "label_column",
    "time_column",
    "features",
    "log_features",
    "fill_missing",
)


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str
    data: str = "synthetic"
    csv_path: str | None = None
    model_name: str | None = None  # defaults to the data source's name (a table's file stem)
    # A table (data="table"): CSV or Parquet; see training/table.py for its rules.
    table_path: str | None = None
    label_column: str | None = None
    time_column: str | None = None
    features: tuple[str, ...] | None = None  # None: every numeric column but label and time
    log_features: tuple[str, ...] = ()
    fill_missing: str | None = None  # "median", or None: a missing cell is an error
    # Raw events (data="events"): a CSV or Parquet table of features.events.EVENT_FIELDS and
    # label_column; the features are computed from them (see training/event_table.py).
    events_path: str | None = None
    seed: int = 42
    synthetic_rows: int = 100_000
    # The generator's seed; None: the run's seed. Set apart when runs of several seeds must
    # train on the same generated data (training/compare.py does).
    synthetic_seed: int | None = None
    # Time-ordered split: the latest `test_fraction` of rows is the test set; the
    # latest `validation_fraction` of the rest is validation (early stopping and
    # threshold choice). Everything before that is fitted on.
    test_fraction: float = 0.2
    validation_fraction: float = 0.2
    epochs: int = 30
    batch_size: int = 512
    learning_rate: float = 1e-3
    patience: int = 5
    conv_filters: int = 32
    kernel_size: int = 3
    lstm_units: int = 32
    dense_units: int = 32
    # A wide branch: one Dense layer on the scaled features, joined to the LSTM's summary
    # before the head. The sequence path alone reads each feature through a 3-wide window and
    # misses plain per-feature thresholds, which is what trees find on this data. 0 = off.
    wide_units: int = 32
    # Members trained alike from seeds seed, seed + 1000, ...; the saved (and exported) model
    # averages their probabilities in one graph. Each member costs its own single-row latency.
    members: int = 2
    dropout: float = 0.2
    # Fraud class weight = (negatives / positives) ** power: 1 is fully balanced,
    # 0 is unweighted. Fully balanced over-weights a 0.17 % class and costs precision;
    # on the credit-card data 0.25 (a weight of about 4.7) edged out 0.5 on validation.
    class_weight_power: float = 0.25
    # REVIEW threshold: the highest one that still catches this share of
    # validation fraud. DECLINE threshold: the best F1 on validation.
    review_recall: float = 0.8
    # The map from the ensemble's score to a probability, fitted on validation (see
    # training/calibration.py): "auto" (the better of Platt and isotonic), "platt",
    # "isotonic" or "none".
    calibration: str = "auto"
    verbose: int = 2

    def __post_init__(self) -> None:
        # config.json holds lists; the config holds tuples, so that a loaded config equals
        # the one that wrote it.
        for name in ("features", "log_features"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.data not in DATA_SOURCES:
            raise ValueError(f"data must be one of {DATA_SOURCES}, got {self.data!r}")
        if self.data == "creditcard" and not self.csv_path:
            raise ValueError("creditcard data needs csv_path")
        if self.data == "table":
            if not self.table_path:
                raise ValueError("a table run needs table_path (--table)")
            if not self.label_column or not self.time_column:
                raise ValueError("a table run needs its label and time columns (--label, --time)")
            check_column_choice(
                self.label_column,
                self.time_column,
                self.features,
                self.log_features,
                self.fill_missing,
            )
        elif self.data == "events":
            if not self.events_path or not self.label_column:
                raise ValueError(
                    "an events run needs events_path and its label (--events, --label)"
                )
            given = self._given(name for name in TABLE_FIELDS if name != "label_column")
            if given:
                raise ValueError(f"{', '.join(given)} apply to a table run only (--table)")
        else:
            given = self._given(TABLE_FIELDS)
            if given:
                raise ValueError(f"{', '.join(given)} apply to a table run only (--table)")
        if self.data != "events" and self.events_path is not None:
            raise ValueError("events_path applies to an events run only (--events)")
        name = self.resolved_model_name
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            raise ValueError(f"model name {name!r} cannot be a folder name; pass --name")
        for name in ("test_fraction", "validation_fraction", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.wide_units < 0:
            raise ValueError("wide_units must be at least 0")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(
                f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}"
            )
        if not 0.0 < self.review_recall <= 1.0:
            raise ValueError("review_recall must be in (0, 1]")
        for name in (
            "synthetic_rows",
            "epochs",
            "batch_size",
            "patience",
            "conv_filters",
            "kernel_size",
            "lstm_units",
            "dense_units",
            "members",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def _given(self, names: Iterable[str]) -> list[str]:
        """The fields among `names` set away from their defaults."""
        fields = TrainConfig.__dataclass_fields__
        return [name for name in names if getattr(self, name) != fields[name].default]

    @property
    def resolved_synthetic_seed(self) -> int:
        return self.seed if self.synthetic_seed is None else self.synthetic_seed

    @property
    def resolved_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.data == "table" and self.table_path:
            return Path(self.table_path).stem
        if self.data == "events" and self.events_path:
            return Path(self.events_path).stem
        return self.data

    def to_dict(self) -> dict[str, object]:
        values = dataclasses.asdict(self) | {"model_name": self.resolved_model_name}
        if values["synthetic_seed"] in (None, self.seed):
            # The same data either way: one form, the one saved before the field existed.
            del values["synthetic_seed"]
        if self.data == "events":
            return {k: v for k, v in values.items() if k not in TABLE_FIELDS or k == "label_column"}
        if self.data != "table":
            # A preset's config.json stays as it was before tables and event tables existed,
            # so a saved run still matches its config (training/compare.py reuses runs that do).
            return {k: v for k, v in values.items() if k not in (*TABLE_FIELDS, "events_path")}
        del values["events_path"]
        for name in ("features", "log_features"):
            names = getattr(self, name)
            if names is not None:
                values[name] = list(names)
        return values

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
