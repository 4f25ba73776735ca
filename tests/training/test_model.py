"""The LSTM-CNN's shape: the sequence path, and the wide branch beside it."""

from __future__ import annotations

import pytest

from training.config import TrainConfig
from training.model import build_model


def layer_types(wide_units: int) -> list[str]:
    config = TrainConfig(out_dir="unused", wide_units=wide_units)
    return [type(layer).__name__ for layer in build_model(10, config).layers]


def test_the_wide_branch_joins_the_lstm_before_the_head() -> None:
    model = build_model(10, TrainConfig(out_dir="unused", wide_units=8))
    wide = model.get_layer("wide")
    assert wide.units == 8 and wide.input.shape == (None, 10)
    assert "Concatenate" in layer_types(8) and "LSTM" in layer_types(8)
    assert model.output_shape == (None, 1)


def test_without_the_wide_branch_the_sequence_path_alone_remains() -> None:
    types = layer_types(0)
    assert "Concatenate" not in types
    assert types[:5] == ["InputLayer", "Reshape", "Conv1D", "MaxPooling1D", "LSTM"]


def test_wide_units_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="wide_units"):
        TrainConfig(out_dir="unused", wide_units=-1)


def test_members_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="members"):
        TrainConfig(out_dir="unused", members=0)


def test_one_member_is_the_model_itself() -> None:
    from training.model import average_members

    config = TrainConfig(out_dir="unused")
    member = build_model(10, config)
    assert average_members([member], 10) is member
