"""The op check: TF Serving cannot run ops it does not link, nor Python (``tf.py_function``).

:func:`list_graph_ops` reads every op type of a SavedModel from ``saved_model.pb`` (nothing is
loaded); :func:`serving_op_allowlist` is what TF Serving's standard build links (core TensorFlow
and TensorFlow Text ops); :func:`check_serving_ops` names the rest in one line. An export runs it
before its version is renamed into place. :data:`TOKENIZER_TEXT_OPS` says which tensorflow-text
ops each KerasHub tokenizer kind puts into a raw-text export (:func:`text_ops`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from kerasft.errors import ExportError, expected
from kerasft.export.signatures import read_saved_model

#: Ops that call back into Python (``tf.py_function``, ``tf.numpy_function``,
#: ``tf.compat.v1.py_func``): registered in every Python process, never runnable in TF Serving.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
#: What TF Serving's standard build links, for error messages.
SERVING_OPS_NOTE = (
    "TF Serving's standard build links core TensorFlow ops and TensorFlow Text ops only, "
    "and cannot run Python (tf.py_function / tf.numpy_function)"
)
#: The tensorflow-text ops a raw-text export holds, per KerasHub tokenizer kind (listed from
#: exports of tiny presets of each family with :func:`list_graph_ops`). Everything else a
#: tokenizer uses is core TensorFlow: byte-level BPE adds only string, regex and lookup-table
#: ops (StringSplitV2, StaticRegexReplace, UnsortedSegmentJoin, HashTableV2,
#: MutableHashTableV2 for its merge cache, While) to tensorflow-text's regex split.
TOKENIZER_TEXT_OPS: dict[str, frozenset[str]] = {
    # CaseFoldUTF8 with lowercase, NormalizeUTF8 with strip_accents (BERT-style tokenizers).
    "WordPiece": frozenset({"FastWordpieceTokenizeWithOffsets", "RegexSplitWithOffsets",
                            "CaseFoldUTF8", "NormalizeUTF8", "TFText>RoundRobinTrim"}),
    "BPE": frozenset({"RegexSplitWithOffsets", "TFText>RoundRobinTrim"}),
    "SentencePiece": frozenset({"SentencepieceOp", "SentencepieceTokenizeOp",
                                "TFText>RoundRobinTrim"}),
}


def list_graph_ops(export_dir: str | os.PathLike[str]) -> set[str]:
    """Returns every op type used by the SavedModel: its graphs and their function libraries.

    Read from ``saved_model.pb`` only (nothing is loaded, no op needs to be registered). Nodes
    whose "op" is the name of a library function (direct function calls) are not op types and
    are left out.
    """
    return _graph_ops(export_dir, "list_graph_ops")


def _graph_ops(export_dir: str | os.PathLike[str], where: str) -> set[str]:
    proto = read_saved_model(export_dir, where)
    ops: set[str] = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        functions = {f.signature.name for f in graph.library.function}
        used = {node.op for node in graph.node}
        for function in graph.library.function:
            used.update(node.op for node in function.node_def)
        ops |= used - functions
    return ops


def _tensorflow_text_ops() -> set[str]:
    """Op names registered by tensorflow_text's op libraries (empty if it is not installed).

    Each library under ``tensorflow_text/python`` is loaded with ``TF_LoadLibrary`` (the same
    call ``import tensorflow_text`` makes; loading twice is harmless) and asked for its own op
    list, so ops that other packages register are never counted as text ops.
    """
    spec = importlib.util.find_spec("tensorflow_text")
    if spec is None or not spec.submodule_search_locations:
        return set()
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    ops: set[str] = set()
    for location in spec.submodule_search_locations:
        for library in sorted(Path(location, "python").rglob("_*.so")):
            try:
                handle = pywrap_tf_session.TF_LoadLibrary(str(library))
            except Exception:  # noqa: BLE001 - not an op library, or built for another TF
                continue
            try:
                op_list = op_def_pb2.OpList()
                op_list.ParseFromString(pywrap_tf_session.TF_GetOpList(handle))
                ops.update(op.name for op in op_list.op)
            finally:
                pywrap_tf_session.TF_DeleteLibraryHandle(handle)
    return ops


@functools.cache
def serving_op_allowlist() -> frozenset[str]:
    """The op types TF Serving's standard build can run.

    Core TensorFlow's ops are the names in ``tf.raw_ops`` (the Python endpoints generated from
    core TensorFlow's op registry; unlike the process-wide registry, they leave out test, MKL
    and XLA-internal ops and anything another package loaded), plus the ops of tensorflow_text's
    op libraries, minus :data:`PYTHON_OPS`.
    """
    import tensorflow as tf

    core = {name for name in dir(tf.raw_ops) if not name.startswith("_")}
    return frozenset((core | _tensorflow_text_ops()) - PYTHON_OPS)


def text_ops(ops: Iterable[str]) -> list[str]:
    """The tensorflow-text ops among `ops` (what a server must link besides core TensorFlow)."""
    known = set().union(*TOKENIZER_TEXT_OPS.values()) | _tensorflow_text_ops()
    return sorted(set(ops) & known)


def check_serving_ops(
    export_dir: str | os.PathLike[str], extra_allowed_ops: Iterable[str] = (),
    tokenizer_kind: str | None = None,
) -> set[str]:
    """Raises :class:`ExportError` naming the SavedModel's ops that TF Serving cannot run.

    Allowed: :func:`serving_op_allowlist` plus ``extra_allowed_ops`` (ops of a custom server
    build). Python ops (:data:`PYTHON_OPS`) are always rejected. With `tokenizer_kind` (a key
    of :data:`TOKENIZER_TEXT_OPS`), a missing tensorflow-text op of that tokenizer is named as
    such. Returns the model's op types.
    """
    ops = _graph_ops(export_dir, "check_serving_ops")
    extra = set(extra_allowed_ops) - PYTHON_OPS
    bad = sorted(
        op for op in ops if op in PYTHON_OPS or op not in serving_op_allowlist() and op not in extra
    )
    if bad:
        python = [op for op in bad if op in PYTHON_OPS]
        hint = f"; {python} come from tf.py_function/tf.numpy_function" if python else ""
        tokenizer = sorted(set(bad) & TOKENIZER_TEXT_OPS.get(tokenizer_kind or "", frozenset()))
        if tokenizer:
            hint += (f"; {tokenizer} are tensorflow-text ops of the {tokenizer_kind} tokenizer: "
                     "install tensorflow-text for this TensorFlow version")
        raise ExportError(
            expected(
                f"only ops TF Serving can run ({SERVING_OPS_NOTE}{hint})",
                "ops",
                bad,
                f"check_serving_ops {export_dir}",
            )
        )
    return ops
