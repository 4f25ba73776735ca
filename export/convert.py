"""Keras model + fitted preprocessing -> one ONNX graph on raw features. No file I/O here."""

from __future__ import annotations

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx

from export.artifact import INPUT_NAME, OPSET, OUTPUT_NAME, embed_metadata
from export.tidy import tidy
from training.preprocessing import SCALED_LIMIT, Preprocessing

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "convert", "embed_metadata", "serving_function"]


def serving_function(model: tf.keras.Model, prep: Preprocessing) -> tf.types.experimental.Function:
    """The exact numpy transform of training/preprocessing.py, in TensorFlow, before the model."""
    n = len(prep.feature_names)
    # numpy arrays, not tf.constant: captured tensors would become graph inputs.
    log_mask = np.array(prep.log_mask, dtype=np.float32)
    mean = np.array(prep.mean, dtype=np.float32)
    std = np.array(prep.std, dtype=np.float32)
    fill = np.array(prep.fill_values, dtype=np.float32) if prep.fill_values else None

    @tf.function(input_signature=[tf.TensorSpec([None, n], tf.float32, name=INPUT_NAME)])
    def serve(raw: tf.Tensor) -> dict[str, tf.Tensor]:
        if fill is not None:
            # A missing cell arrives as NaN (or +-inf): it takes the feature's fill value
            # before the log and the scaling, as Preprocessing.transform does. One where per
            # test: tf2onnx keeps a Select whose condition is IsNaN or IsInf itself as an ONNX
            # Where, but turns any other into cond * x + (1 - cond) * y, where NaN * 0 = NaN.
            raw = tf.where(tf.math.is_nan(raw), fill, raw)
            raw = tf.where(tf.math.is_inf(raw), fill, raw)
        # Each op left out is one onnxruntime does not dispatch: no log part without log
        # features, and no mix when every feature takes the log.
        x = raw
        if log_mask.any():
            # log(|x| + 1) rather than log1p: ONNX opset 17 has no Log1p op.
            logged = tf.sign(raw) * tf.math.log(tf.abs(raw) + 1.0)
            x = logged if log_mask.all() else raw * (1.0 - log_mask) + logged * log_mask
        x = tf.clip_by_value((x - mean) / std, -SCALED_LIMIT, SCALED_LIMIT)
        return {OUTPUT_NAME: model(x, training=False)}

    return serve


def convert(model: tf.keras.Model, prep: Preprocessing) -> onnx.ModelProto:
    serve = serving_function(model, prep)
    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=OPSET
    )
    return tidy(proto)
