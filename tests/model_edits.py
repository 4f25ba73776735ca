"""Edits to real exported model folders, for tests of what the server accepts and refuses.

Each edit re-signs the manifest unless asked not to, so that the server gets past the
sha256 check and meets the defect the test is about.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def rewrite(model_dir: Path, proto: onnx.ModelProto) -> None:
    data = proto.SerializeToString()
    (model_dir / "model.onnx").write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def edit_metadata(model_dir: Path, changes: dict[str, str | None]) -> None:
    """Set (or, with None, drop) metadata entries and re-sign the manifest."""
    proto = onnx.load(model_dir / "model.onnx")
    entries = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        if value is None:
            entries.pop(key)
        else:
            entries[key] = value
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    rewrite(model_dir, proto)


def meta(model_dir: Path, key: str) -> list[object]:
    proto = onnx.load(model_dir / "model.onnx")
    return json.loads(next(p.value for p in proto.metadata_props if p.key == key))


def add_to_output(model_dir: Path, value: float | list[float]) -> None:
    """Make the graph answer probability + value (NaN for value=nan): a model that lies.
    A list of two values makes it answer two columns per row."""
    proto = onnx.load(model_dir / "model.onnx")
    output = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [f"{name}_raw" if name == output else name for name in node.output]
    proto.graph.initializer.append(
        numpy_helper.from_array(np.asarray(value, dtype=np.float32), name="shift")
    )
    proto.graph.node.append(helper.make_node("Add", [f"{output}_raw", "shift"], [output]))
    rewrite(model_dir, proto)


def make_version(
    source: Path, model_root: Path, version: str, edit: Callable[[Path], None] | None = None
) -> Path:
    """A copy of `source` as `model_root/version`, its metadata saying so, then `edit`ed,
    moved into place in one rename, as an export does, so a poll never sees half a folder."""
    staging = model_root / f".staging-{version}"
    shutil.copytree(source, staging)
    edit_metadata(staging, {"model_version": version})
    if edit is not None:
        edit(staging)
    target = model_root / version
    os.rename(staging, target)
    return target


def flip_a_byte(model_dir: Path) -> None:
    """Corrupt the model file after the manifest was signed."""
    data = bytearray((model_dir / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (model_dir / "model.onnx").write_bytes(bytes(data))


def drop_last_feature(model_dir: Path) -> None:
    """Signed, but the metadata names one feature fewer than the graph takes."""
    keys = ("feature_names", "feature_mean", "feature_std")
    edit_metadata(model_dir, {key: json.dumps(meta(model_dir, key)[:-1]) for key in keys})
