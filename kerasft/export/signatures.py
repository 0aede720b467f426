"""Reading a SavedModel's ``saved_model.pb`` without loading it: the MetaGraph TF Serving serves
(tag ``serve``) and the inputs and outputs of its signatures.

Nothing is loaded and no op needs to be registered, so a text model's signatures read without
tensorflow_text. TensorFlow's protos are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kerasft.errors import ExportError, expected, one_line


def _saved_model_pb_path(export_dir: str | os.PathLike[str], where: str) -> Path:
    path = Path(export_dir) / "saved_model.pb"
    if not path.is_file():
        raise ExportError(
            expected(
                "a SavedModel folder holding saved_model.pb (TF Serving layout "
                "<base>/<name>/<version>/)",
                "export_dir",
                str(export_dir),
                where,
            )
        )
    return path


def read_saved_model(export_dir: str | os.PathLike[str], where: str) -> Any:
    """The ``SavedModel`` proto of ``<export_dir>/saved_model.pb``, parsed, not loaded; a missing
    or unreadable file, or one without a MetaGraph, is an :class:`ExportError` naming `where`."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = _saved_model_pb_path(export_dir, where)
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as err:
        raise ExportError(
            expected("a readable saved_model.pb", "error", one_line(err), where)
        ) from err
    if not proto.meta_graphs:
        raise ExportError(expected("a SavedModel with a MetaGraph", "export_dir", str(path), where))
    return proto


def _serve_meta_graph(proto: Any) -> Any:
    for meta_graph in proto.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    return proto.meta_graphs[0]


def _tensor_info_dict(info: Any) -> dict[str, Any]:
    from tensorflow.python.framework import dtypes

    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    return {"dtype": dtypes.as_dtype(info.dtype).name, "shape": shape}


def read_signatures(export_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Reads the signatures of a SavedModel from ``saved_model.pb``, without loading it.

    Returns ``{signature: {"inputs": {name: {"dtype", "shape"}}, "outputs": {...}}}``, shapes as
    lists with ``-1`` for unknown sizes (``None`` for an unknown rank). Works for text models
    without importing tensorflow_text.
    """
    meta_graph = _serve_meta_graph(read_saved_model(export_dir, "read_signatures"))
    out: dict[str, dict[str, Any]] = {}
    for name, sig in meta_graph.signature_def.items():
        if name.startswith("__"):  # e.g. __saved_model_init_op
            continue
        out[name] = {
            "inputs": {k: _tensor_info_dict(v) for k, v in sig.inputs.items()},
            "outputs": {k: _tensor_info_dict(v) for k, v in sig.outputs.items()},
        }
    return out
