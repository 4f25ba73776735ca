"""The hybrid LSTM-CNN: features read as a short sequence, convolved, then summarised by an
LSTM, beside a wide branch that sees every feature directly."""

from __future__ import annotations

import keras

from training.config import TrainConfig

INPUT_NAME = "features"


def build_model(n_features: int, config: TrainConfig, name: str = "lstm_cnn") -> keras.Model:
    """Scaled features (batch, F) -> fraud probability (batch, 1)."""
    inputs = keras.Input(shape=(n_features,), name=INPUT_NAME)
    x = keras.layers.Reshape((n_features, 1))(inputs)
    x = keras.layers.Conv1D(
        config.conv_filters, config.kernel_size, padding="same", activation="relu"
    )(x)
    x = keras.layers.MaxPooling1D(pool_size=2, padding="same")(x)
    # The default (non-unrolled) LSTM converts to a single ONNX LSTM op.
    x = keras.layers.LSTM(config.lstm_units)(x)
    if config.wide_units:
        wide = keras.layers.Dense(config.wide_units, activation="relu", name="wide")(inputs)
        x = keras.layers.Concatenate()([x, wide])
    x = keras.layers.Dense(config.dense_units, activation="relu")(x)
    x = keras.layers.Dropout(config.dropout)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="fraud_probability")(x)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="binary_crossentropy",
        metrics=[
            keras.metrics.AUC(curve="PR", name="pr_auc"),
            keras.metrics.AUC(curve="ROC", name="roc_auc"),
        ],
    )
    return model


def average_members(members: list[keras.Model], n_features: int) -> keras.Model:
    """One model whose output is the mean of the members' probabilities, so that a single
    ONNX graph (and a single server call) holds them all."""
    if len(members) == 1:
        return members[0]
    inputs = keras.Input(shape=(n_features,), name=INPUT_NAME)
    outputs = keras.layers.Average(name="fraud_probability")([m(inputs) for m in members])
    return keras.Model(inputs, outputs, name="lstm_cnn_ensemble")
