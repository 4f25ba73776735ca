"""Several averaged members of one architecture -> one network N times as wide that computes
all of them at once.

onnxruntime pays a fixed cost per op dispatched, and for a model this small that cost is most
of the time: two members side by side run twice the ops of one. Laid side by side inside each
layer instead (the Conv's filters and the wide Dense's units concatenated, the LSTM and the
head block-diagonal), every op runs once on wider tensors, and each member's numbers flow only
through its own blocks: the zeros between blocks add nothing, so the output is the members'
average up to float rounding. export proves that against the unfused Keras model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

# Keras stores an LSTM's four gates side by side in this order, each `units` wide.
LSTM_GATES = 4


class FusionError(ValueError):
    """The model is not an average of members that build_model made."""


@dataclass(frozen=True)
class MemberWeights:
    """One member's trained weights, by the role each layer plays in build_model."""

    conv_kernel: np.ndarray  # (kernel, 1, filters)
    conv_bias: np.ndarray
    conv_size: int
    pool_size: int
    lstm_kernel: np.ndarray  # (filters, 4 * units)
    lstm_recurrent: np.ndarray  # (units, 4 * units)
    lstm_bias: np.ndarray  # (4 * units,)
    wide_kernel: np.ndarray | None  # (features, wide)
    wide_bias: np.ndarray | None
    dense_kernel: np.ndarray  # (units + wide, dense)
    dense_bias: np.ndarray
    head_kernel: np.ndarray  # (dense, 1)
    head_bias: np.ndarray

    @property
    def units(self) -> int:
        return int(self.lstm_recurrent.shape[0])

    @property
    def filters(self) -> int:
        return int(self.conv_kernel.shape[-1])

    @property
    def wide(self) -> int:
        return 0 if self.wide_kernel is None else int(self.wide_kernel.shape[1])

    @property
    def dense(self) -> int:
        return int(self.dense_kernel.shape[1])

    def shape(self) -> tuple[object, ...]:
        return (self.conv_size, self.pool_size, self.filters, self.units, self.wide, self.dense)


def members_of(model: keras.Model) -> list[keras.Model]:
    """The members an ensemble averages, or the model itself when it is a single one."""
    import keras

    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not inner:
        return [model]
    averages = [layer for layer in model.layers if isinstance(layer, keras.layers.Average)]
    if len(averages) != 1 or len(model.layers) != len(inner) + 2:
        raise FusionError(
            f"{model.name}: expected an input, members and one Average; found "
            f"{[type(layer).__name__ for layer in model.layers]}"
        )
    return inner


def read_member(member: keras.Model) -> MemberWeights:
    import keras

    def only(kind: type, name: str | None = None) -> keras.layers.Layer | None:
        found = [
            layer
            for layer in member.layers
            if isinstance(layer, kind) and (name is None or layer.name == name)
        ]
        if len(found) > 1:
            raise FusionError(f"{member.name}: {len(found)} {kind.__name__} layers, expected one")
        return found[0] if found else None

    conv, pool, lstm = (
        only(keras.layers.Conv1D),
        only(keras.layers.MaxPooling1D),
        only(keras.layers.LSTM),
    )
    wide = only(keras.layers.Dense, "wide")
    denses = [
        layer
        for layer in member.layers
        if isinstance(layer, keras.layers.Dense) and layer is not wide
    ]
    if conv is None or pool is None or lstm is None or len(denses) != 2:
        raise FusionError(
            f"{member.name}: not the LSTM-CNN of training/model.py "
            f"(layers {[type(layer).__name__ for layer in member.layers]})"
        )
    dense, head = denses
    checks = {
        "conv padding same": conv.padding == "same",
        "conv stride 1": tuple(conv.strides) == (1,) and tuple(conv.dilation_rate) == (1,),
        "pool padding same": pool.padding == "same",
        "pool stride = size": tuple(pool.strides) == tuple(pool.pool_size),
        "biases": all(layer.use_bias for layer in (conv, dense, head, *([wide] if wide else []))),
        "relu conv, dense and wide": all(
            layer.activation is keras.activations.relu
            for layer in (conv, dense, *([wide] if wide else []))
        ),
        "sigmoid head of one unit": head.activation is keras.activations.sigmoid
        and head.units == 1,
        "default LSTM": lstm.activation is keras.activations.tanh
        and lstm.recurrent_activation is keras.activations.sigmoid
        and lstm.use_bias
        and not lstm.return_sequences
        and not lstm.go_backwards,
    }
    if failed := [what for what, ok in checks.items() if not ok]:
        raise FusionError(f"{member.name}: cannot fuse, expected {', '.join(failed)}")
    conv_kernel, conv_bias = (np.asarray(w) for w in conv.get_weights())
    lstm_kernel, lstm_recurrent, lstm_bias = (np.asarray(w) for w in lstm.get_weights())
    wide_kernel, wide_bias = (np.asarray(w) for w in wide.get_weights()) if wide else (None, None)
    dense_kernel, dense_bias = (np.asarray(w) for w in dense.get_weights())
    head_kernel, head_bias = (np.asarray(w) for w in head.get_weights())
    return MemberWeights(
        conv_kernel=conv_kernel,
        conv_bias=conv_bias,
        conv_size=int(conv.kernel_size[0]),
        pool_size=int(pool.pool_size[0]),
        lstm_kernel=lstm_kernel,
        lstm_recurrent=lstm_recurrent,
        lstm_bias=lstm_bias,
        wide_kernel=wide_kernel,
        wide_bias=wide_bias,
        dense_kernel=dense_kernel,
        dense_bias=dense_bias,
        head_kernel=head_kernel,
        head_bias=head_bias,
    )


def gate_block_diagonal(blocks: list[np.ndarray], units: int) -> np.ndarray:
    """Members' LSTM matrices (rows_i, 4 * units) -> (sum rows_i, 4 * n * units): member i's
    gate g lands in rows of member i and columns [g * n * units + i * units, + units)."""
    n = len(blocks)
    rows = sum(b.shape[0] for b in blocks)
    fused = np.zeros((rows, LSTM_GATES * n * units), dtype=blocks[0].dtype)
    row = 0
    for i, block in enumerate(blocks):
        for gate in range(LSTM_GATES):
            start = gate * n * units + i * units
            fused[row : row + block.shape[0], start : start + units] = block[
                :, gate * units : (gate + 1) * units
            ]
        row += block.shape[0]
    return fused


def gate_concatenated(biases: list[np.ndarray], units: int) -> np.ndarray:
    return np.concatenate(
        [b[gate * units : (gate + 1) * units] for gate in range(LSTM_GATES) for b in biases]
    )


def block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
    rows = sum(b.shape[0] for b in blocks)
    cols = sum(b.shape[1] for b in blocks)
    fused = np.zeros((rows, cols), dtype=blocks[0].dtype)
    r = c = 0
    for block in blocks:
        fused[r : r + block.shape[0], c : c + block.shape[1]] = block
        r, c = r + block.shape[0], c + block.shape[1]
    return fused


# How the members' LSTMs run: "split", one LSTM op per member on its own filters, or "block",
# one LSTM op of n * units with block-diagonal weights. Split measured the faster at every
# batch size (benchmarks/graphcost.py): an LSTM's work grows with units squared, so one of
# n * units does n times the work of the n members' own, zeros included.
LSTM_LAYOUTS = ("split", "block")


def fuse_members(model: keras.Model, n_features: int, lstm: str = "split") -> keras.Model:
    """The ensemble as one network whose output equals the members' average. A single model
    comes back unchanged: it has nothing to fuse."""
    import keras

    if lstm not in LSTM_LAYOUTS:
        raise ValueError(f"lstm must be one of {LSTM_LAYOUTS}, not {lstm!r}")
    members = members_of(model)
    if len(members) == 1:
        return model
    weights = [read_member(member) for member in members]
    if len({w.shape() for w in weights}) != 1:
        raise FusionError(f"members differ in shape: {[w.shape() for w in weights]}")
    first, n = weights[0], len(weights)
    units, filters = first.units, first.filters

    inputs = keras.Input(shape=(n_features,), name="features")
    x = keras.layers.Reshape((n_features, 1))(inputs)
    conv = keras.layers.Conv1D(n * filters, first.conv_size, padding="same", activation="relu")
    x = keras.layers.MaxPooling1D(pool_size=first.pool_size, padding="same")(conv(x))
    if lstm == "block":
        lstms = [keras.layers.LSTM(n * units)]
        states = [lstms[0](x)]
    else:
        lstms = [keras.layers.LSTM(units) for _ in weights]
        states = [layer(x[:, :, i * filters : (i + 1) * filters]) for i, layer in enumerate(lstms)]
    wide = (
        keras.layers.Dense(n * first.wide, activation="relu", name="wide") if first.wide else None
    )
    if wide is not None:
        states.append(wide(inputs))
    x = keras.layers.Concatenate()(states) if len(states) > 1 else states[0]
    dense = keras.layers.Dense(n * first.dense, activation="relu")
    head = keras.layers.Dense(n, activation="sigmoid")
    # The average as a product with 1/n: one MatMul, and no custom layer to serialise.
    average = keras.layers.Dense(1, use_bias=False, name="fraud_probability")
    fused = keras.Model(inputs, average(head(dense(x))), name=f"{model.name}_fused")

    conv.set_weights(
        [
            np.concatenate([w.conv_kernel for w in weights], axis=-1),
            np.concatenate([w.conv_bias for w in weights]),
        ]
    )
    if lstm == "block":
        # Its input is the members' filters side by side, its state their units.
        lstms[0].set_weights(
            [
                gate_block_diagonal([w.lstm_kernel for w in weights], units),
                gate_block_diagonal([w.lstm_recurrent for w in weights], units),
                gate_concatenated([w.lstm_bias for w in weights], units),
            ]
        )
    else:
        for layer, w in zip(lstms, weights, strict=True):
            layer.set_weights([w.lstm_kernel, w.lstm_recurrent, w.lstm_bias])
    if wide is not None:
        wide.set_weights(
            [
                np.concatenate([w.wide_kernel for w in weights], axis=1),  # type: ignore[misc]
                np.concatenate([w.wide_bias for w in weights]),  # type: ignore[misc]
            ]
        )
    # Either way the dense layer sees [lstm_0 .. lstm_n, wide_0 .. wide_n]; member i's kernel
    # has its LSTM rows first, then its wide rows.
    parts = [block_diagonal([w.dense_kernel[:units] for w in weights])]
    if wide is not None:
        parts.append(block_diagonal([w.dense_kernel[units:] for w in weights]))
    dense.set_weights(
        [np.concatenate(parts, axis=0), np.concatenate([w.dense_bias for w in weights])]
    )
    head.set_weights(
        [
            block_diagonal([w.head_kernel for w in weights]),
            np.concatenate([w.head_bias for w in weights]),
        ]
    )
    average.set_weights([np.full((n, 1), 1.0 / n, dtype=np.float32)])
    return fused
