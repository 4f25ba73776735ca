"""The model: an onnxruntime session, numpy in, numpy out. No HTTP, no validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from server.artifact import ModelInfo, parse_metadata, read_model_bytes
from server.errors import ArtifactError


class Scorer(Protocol):
    info: ModelInfo

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(rows, F) float32 raw features -> (rows,) fraud probabilities."""
        ...


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # The model is a few thousand multiply-adds per row: thread hand-offs would
    # cost more than they save, and requests already run concurrently.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxScorer:
    def __init__(self, session: ort.InferenceSession, info: ModelInfo) -> None:
        self.session = session
        self.info = info
        self._outputs = [info.output_name]

    @classmethod
    def load(cls, model_dir: Path, intra_op_threads: int = 1) -> OnnxScorer:
        data, manifest = read_model_bytes(model_dir)
        try:
            session = ort.InferenceSession(
                data,
                sess_options=session_options(intra_op_threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            raise ArtifactError(f"onnxruntime cannot load {model_dir}: {exc}") from exc
        opset = manifest.get("opset", 0)
        if type(opset) is not int:
            raise ArtifactError(f"the manifest's opset {opset!r} is not an integer")
        info = dataclasses.replace(
            parse_metadata(session.get_modelmeta().custom_metadata_map, manifest["sha256"]),
            opset=opset,
            runtime=f"onnxruntime {ort.__version__}",
        )
        inputs = session.get_inputs()
        if [i.name for i in inputs] != [info.input_name]:
            raise ArtifactError(
                f"model inputs {[i.name for i in inputs]} are not [{info.input_name}]"
            )
        outputs = [o.name for o in session.get_outputs()]
        if info.output_name not in outputs:
            raise ArtifactError(f"model outputs {outputs} do not include {info.output_name!r}")
        width = inputs[0].shape[-1]
        if width != len(info.feature_names):
            raise ArtifactError(
                f"model takes {width} features, metadata names {len(info.feature_names)}"
            )
        scorer = cls(session, info)
        scorer.warm_up()
        return scorer

    def predict(self, features: np.ndarray) -> np.ndarray:
        result = self.session.run(self._outputs, {self.info.input_name: features})[0]
        return np.asarray(result).reshape(len(features))

    def warm_up(self) -> None:
        """One inference on the training means: allocates buffers and proves the graph runs."""
        row = np.asarray([self.info.feature_mean], dtype=np.float32)
        try:
            probability = self.predict(row)
        except Exception as exc:  # onnxruntime's errors, or an output of the wrong shape
            raise ArtifactError(f"warm-up failed: {exc}") from exc
        if not (np.isfinite(probability).all() and 0.0 <= probability[0] <= 1.0):
            raise ArtifactError(f"warm-up produced {probability!r}, not a probability")
        if self.info.fills_missing:
            # Its metadata says it fills missing inputs, so requests may send them: prove it,
            # or a null feature would meet a model error instead of a score.
            missing = np.full_like(row, np.nan)
            try:
                filled = self.predict(missing)
            except Exception as exc:  # onnxruntime's errors
                raise ArtifactError(f"warm-up on missing inputs failed: {exc}") from exc
            if not (np.isfinite(filled).all() and 0.0 <= filled[0] <= 1.0):
                raise ArtifactError(
                    f"the metadata says missing inputs are filled, but a row of them scored"
                    f" {filled!r}, not a probability"
                )
