"""What an operator needs around TensorFlow Serving, for any SavedModel that follows the kerasft
export contract (TF Serving layout ``<base>/<name>/<version>/saved_model.pb``; signature
``serving_default`` with a 1-D string input ``text`` or an image input ``image``; image models also
``serving_bytes`` with a 1-D string input ``image_bytes``; outputs ``probabilities``, ``class_ids``
and ``labels``).

* Warmup records: :func:`write_warmup_requests` / :func:`read_warmup_requests`
  (``<version>/assets.extra/tf_serving_warmup_requests``, a TFRecord of ``PredictionLog`` protos).
* Server config: :func:`write_models_config` / :func:`update_models_config` /
  :func:`read_models_config` (``models.config``, a text ``ModelServerConfig``), written atomically.
* Op check: :func:`list_graph_ops` / :func:`serving_op_allowlist` / :func:`check_serving_ops`
  (TF Serving cannot run ops it does not link, nor Python: ``tf.py_function``).
* Clients: :func:`predict_rest` / :func:`get_model_status_rest` (urllib only) and
  :func:`predict_grpc` (needs ``grpcio``), with request builders :func:`text_instances`,
  :func:`image_bytes_instances` and :func:`image_array_instances`.

Nothing here imports kerasft's training code. TensorFlow and the TF Serving protos are imported
inside the functions that need them, so ``import kerasft.serving`` stays cheap.
"""

from __future__ import annotations

import base64
import functools
import http.client
import importlib.util
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kerasft.errors import ExportError, KerasftError, expected
from kerasft.io import DEFAULT_MODE, atomic_path, atomic_write

__all__ = [
    "LABELS_FLAG",
    "MAX_WARMUP_RECORDS",
    "PYTHON_OPS",
    "RETRY_STATUSES",
    "ServedModel",
    "check_serving_ops",
    "get_model_status_rest",
    "image_array_instances",
    "image_bytes_instances",
    "list_graph_ops",
    "predict_grpc",
    "predict_rest",
    "read_models_config",
    "read_signatures",
    "read_warmup_requests",
    "serving_op_allowlist",
    "text_instances",
    "update_models_config",
    "write_models_config",
    "write_warmup_requests",
]

WARMUP_DIRNAME = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
#: TF Serving reads at most this many warmup records per model version.
MAX_WARMUP_RECORDS = 1000
#: Ops that call back into Python (``tf.py_function``, ``tf.numpy_function``,
#: ``tf.compat.v1.py_func``): registered in every Python process, never runnable in TF Serving.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
#: What TF Serving's standard build links, for error messages.
SERVING_OPS_NOTE = (
    "TF Serving's standard build links core TensorFlow ops and TensorFlow Text ops only, "
    "and cannot run Python (tf.py_function / tf.numpy_function)"
)

Policy = Literal["latest", "specific", "all"]
_POLICIES = ("latest", "specific", "all")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# A URI scheme as TensorFlow's io::ParseURI reads one (``gs://``, ``s3://``, ``hdfs://``).
_URI_RE = re.compile(r"^[A-Za-z][0-9A-Za-z.]*://")
#: Answers worth asking again: 503 (UNAVAILABLE: the server is starting or shedding load) and
#: 429 (RESOURCE_EXHAUSTED: the batch queue is full), as TF Serving's http_server.cc maps them.
#: 504 is TF Serving's own deadline (--rest_api_timeout_in_ms): a retry would wait as long again.
RETRY_STATUSES = frozenset({429, 503})
#: The flag TF Serving needs to start with labels in its models.config (server_core.cc checks
#: labels against the loaded versions before it loads any).
LABELS_FLAG = "--allow_version_labels_for_unavailable_models=true"


def _one_line(text: object, limit: int = 300) -> str:
    """Collapses whitespace (newlines included) and cuts long texts, for one-line messages."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# SavedModel inspection
# --------------------------------------------------------------------------------------------


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


def _read_saved_model(export_dir: str | os.PathLike[str], where: str) -> Any:
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = _saved_model_pb_path(export_dir, where)
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as err:
        raise ExportError(
            expected("a readable saved_model.pb", "error", _one_line(err), where)
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
    meta_graph = _serve_meta_graph(_read_saved_model(export_dir, "read_signatures"))
    out: dict[str, dict[str, Any]] = {}
    for name, sig in meta_graph.signature_def.items():
        if name.startswith("__"):  # e.g. __saved_model_init_op
            continue
        out[name] = {
            "inputs": {k: _tensor_info_dict(v) for k, v in sig.inputs.items()},
            "outputs": {k: _tensor_info_dict(v) for k, v in sig.outputs.items()},
        }
    return out


# --------------------------------------------------------------------------------------------
# Warmup requests
# --------------------------------------------------------------------------------------------


def _shape_matches(want: list[int] | None, shape: list[int]) -> bool:
    if want is None:
        return True
    if len(want) != len(shape):
        return False
    return all(w in (-1, s) for w, s in zip(want, shape, strict=True))


def write_warmup_requests(
    export_dir: str | os.PathLike[str],
    signature_name: str,
    inputs: Mapping[str, np.ndarray | Sequence[Any]],
    model_name: str | None = None,
    num_records: int = 1,
) -> Path:
    """Writes ``<export_dir>/assets.extra/tf_serving_warmup_requests`` and returns its path.

    ``export_dir`` is one version folder (``<base>/<name>/<version>``). Each of the
    ``num_records`` records (1 to 1000) is a ``PredictionLog`` holding the same ``PredictRequest``
    for ``signature_name`` with ``inputs`` (signature input name -> batch array, e.g.
    ``{"text": np.array(["a review"])}``). The inputs are checked against the signature read from
    ``saved_model.pb``: same names, convertible dtypes, matching ranks and fixed sizes, one batch
    size. ``model_name`` defaults to the name of the parent folder. The file is written to a
    temporary name and renamed, so TF Serving never reads half of it.
    """
    where = "write_warmup_requests"
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    if (
        isinstance(num_records, bool)
        or not isinstance(num_records, int)
        or not 1 <= num_records <= MAX_WARMUP_RECORDS
    ):
        raise ExportError(
            expected(
                f"an integer from 1 to {MAX_WARMUP_RECORDS} (TF Serving's limit)",
                "num_records",
                num_records,
                where,
            )
        )
    signatures = read_signatures(export_dir)
    if signature_name not in signatures:
        raise ExportError(
            expected(
                f"one of the SavedModel's signatures {sorted(signatures)}",
                "signature_name",
                signature_name,
                where,
            )
        )
    spec = signatures[signature_name]["inputs"]
    if not isinstance(inputs, Mapping) or set(inputs) != set(spec):
        got = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
        raise ExportError(
            expected(
                f"inputs keyed by the signature's input names {sorted(spec)}",
                "inputs",
                got,
                where,
            )
        )
    if model_name is None:
        model_name = Path(export_dir).resolve().parent.name
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
    )
    batch_sizes = set()
    for key, value in inputs.items():
        dtype = tf.dtypes.as_dtype(spec[key]["dtype"])
        try:
            proto = tf.make_tensor_proto(value, dtype=dtype)
        except (TypeError, ValueError) as err:
            raise ExportError(
                expected(
                    f"values convertible to {dtype.name}", f"inputs[{key!r}]", _one_line(err), where
                )
            ) from err
        shape = [d.size for d in proto.tensor_shape.dim]
        want = spec[key]["shape"]
        if not shape or not _shape_matches(want, shape):
            raise ExportError(
                expected(
                    f"a batch array of shape {want} (-1: any size)",
                    f"inputs[{key!r}].shape",
                    shape,
                    where,
                )
            )
        batch_sizes.add(shape[0])
        request.inputs[key].CopyFrom(proto)
    if len(batch_sizes) != 1 or 0 in batch_sizes:
        raise ExportError(
            expected(
                "one non-zero batch size for all inputs", "batch_sizes", sorted(batch_sizes), where
            )
        )
    record = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    ).SerializeToString()

    target_dir = Path(export_dir) / WARMUP_DIRNAME
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / WARMUP_FILENAME
    with atomic_path(target, mode=DEFAULT_MODE) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for _ in range(num_records):
            writer.write(record)
    return target


def read_warmup_requests(path: str | os.PathLike[str]) -> list[Any]:
    """Reads a warmup file (or the one under a version folder) into ``PredictionLog`` protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    file = Path(path)
    if file.is_dir():
        file = file / WARMUP_DIRNAME / WARMUP_FILENAME
    if not file.is_file():
        raise ExportError(
            expected("a TF Serving warmup file", "path", str(file), "read_warmup_requests")
        )
    logs = []
    try:
        for raw in tf.data.TFRecordDataset(str(file)):
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(raw.numpy())
            logs.append(log)
    except tf.errors.DataLossError as err:
        raise ExportError(
            expected(
                "a valid TFRecord file",
                "error",
                _one_line(err.message),
                f"read_warmup_requests {file}",
            )
        ) from err
    return logs


# --------------------------------------------------------------------------------------------
# models.config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """One ``config { ... }`` entry of a TF Serving ``models.config``.

    ``base_path`` is written as given: it is the path the server sees. When the server sees the
    models elsewhere (a Docker mount, a bucket), set ``local_base_path`` to the same folder as seen
    here: the version checks read it; it is not written to the config.
    """

    name: str
    base_path: str
    policy: Policy = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: Mapping[str, int] = field(default_factory=dict)
    local_base_path: str | None = None


def _validate_served_model(model: ServedModel, check_versions: bool, where: str) -> None:
    if not isinstance(model.name, str) or not _NAME_RE.match(model.name):
        raise KerasftError(
            expected("a model name of letters, digits, '.', '_' or '-'", "name", model.name, where)
        )
    where = f"{where} (model {model.name!r})"
    if not isinstance(model.base_path, str) or not model.base_path:
        raise KerasftError(expected("a non-empty path", "base_path", model.base_path, where))
    # server_core.cc ValidateModelConfigList refuses the whole config for one relative path.
    if not model.base_path.startswith("/") and not _URI_RE.match(model.base_path):
        raise KerasftError(
            expected(
                "an absolute path or a URI as the server sees it (TF Serving refuses relative "
                "base paths), e.g. /models/NAME",
                "base_path",
                model.base_path,
                where,
            )
        )
    if model.policy not in _POLICIES:
        raise KerasftError(expected(f"one of {list(_POLICIES)}", "policy", model.policy, where))
    if model.policy == "latest":
        if (
            isinstance(model.num_versions, bool)
            or not isinstance(model.num_versions, int)
            or (model.num_versions < 1)
        ):
            raise KerasftError(
                expected("an integer >= 1", "num_versions", model.num_versions, where)
            )
    elif model.num_versions != 1:
        raise KerasftError(
            expected(
                "num_versions only with policy='latest'", "num_versions", model.num_versions, where
            )
        )
    versions = list(model.versions)
    if model.policy == "specific":
        if (
            not versions
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in versions)
            or len(set(versions)) != len(versions)
        ):
            raise KerasftError(
                expected(
                    "a non-empty list of distinct integer versions >= 0 with policy='specific'",
                    "versions",
                    versions,
                    where,
                )
            )
    elif versions:
        raise KerasftError(
            expected("versions only with policy='specific'", "versions", versions, where)
        )
    for label, version in dict(model.labels).items():
        if not isinstance(label, str) or not _LABEL_RE.match(label):
            raise KerasftError(
                expected(
                    "a label name starting with a letter (e.g. 'stable')", "label", label, where
                )
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise KerasftError(
                expected("an integer version >= 0", f"labels[{label!r}]", version, where)
            )
    if check_versions:
        _check_versions_on_disk(model, where)


def _check_versions_on_disk(model: ServedModel, where: str) -> None:
    folder = model.local_base_path or model.base_path
    if "://" in folder:
        raise KerasftError(
            expected(
                "a local folder to check versions in: set local_base_path, or check_versions=False",
                "base_path",
                folder,
                where,
            )
        )
    root = Path(folder)
    if not root.is_dir():
        key = "local_base_path" if model.local_base_path else "base_path"
        raise KerasftError(
            expected(
                "an existing folder of integer version folders (set local_base_path when the "
                "server sees it under another path)",
                key,
                folder,
                where,
            )
        )
    on_disk = sorted(
        int(p.name)
        for p in root.iterdir()
        if p.is_dir()
        and p.name.isdigit()
        and ((p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file())
    )
    if model.policy == "specific":
        missing = sorted(set(model.versions) - set(on_disk))
        if missing:
            raise KerasftError(
                expected(
                    f"versions that exist as SavedModel folders under {folder} (found {on_disk})",
                    "versions",
                    missing,
                    where,
                )
            )
        served = set(model.versions)
    elif model.policy == "latest":
        served = set(on_disk[-model.num_versions :])
    else:
        served = set(on_disk)
    for label, version in dict(model.labels).items():
        if version not in on_disk:
            raise KerasftError(
                expected(
                    f"a version that exists as a SavedModel folder under {folder} "
                    f"(found {on_disk})",
                    f"labels[{label!r}]",
                    version,
                    where,
                )
            )
        if version not in served:
            raise KerasftError(
                expected(
                    f"a version the policy serves ({sorted(served)}; TF Serving refuses labels "
                    "on versions it does not load: use policy='specific')",
                    f"labels[{label!r}]",
                    version,
                    where,
                )
            )


def _served_by_entry(entry: Any, local_base_path: str | None) -> set[int] | None:
    """The versions an existing models.config entry makes the server load (None: unknown)."""
    policy = entry.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "specific":
        return set(policy.specific.versions)
    folder = local_base_path or entry.base_path
    if "://" in folder or not Path(folder).is_dir():
        return None
    on_disk = sorted(
        int(p.name)
        for p in Path(folder).iterdir()
        if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
    )
    if which == "all":
        return set(on_disk)
    keep = max(policy.latest.num_versions, 1) if which == "latest" else 1
    return set(on_disk[-keep:])


def _check_label_moves(entry: Any, model: ServedModel, where: str) -> None:
    """Refuses to move a label onto a version the current config does not serve yet.

    TF Serving (server_core.cc UpdateModelVersionLabelMap) checks labels against the versions
    loaded before the new config's versions load, and never lets an existing label move to a
    version that is not available, whatever its flags: such a config is refused at the reload.
    """
    served = _served_by_entry(entry, model.local_base_path)
    for label, version in dict(model.labels).items():
        old = entry.version_labels.get(label)
        if old is None or old == version or (served is not None and version in served):
            continue
        keep = sorted((served or set()) | {version})
        raise KerasftError(
            expected(
                f"label {label!r} to move only to a version the server already serves (TF "
                "Serving refuses to move a label onto a version that is still loading). Two "
                f"steps: serve version {version} first with the label unchanged (--policy "
                f"specific --versions {','.join(map(str, keep))} --label {label}={old}), wait "
                f"until GET /v1/models/{model.name}/versions/{version} says AVAILABLE, then "
                f"move the label (--label {label}={version})",
                f"labels[{label!r}]",
                version,
                f"{where} (model {model.name!r}: {label}={old} now, served "
                f"{sorted(served) if served is not None else 'unknown'})",
            )
        )


def _model_config_proto(model: ServedModel) -> Any:
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelConfig(
        name=model.name, base_path=model.base_path, model_platform="tensorflow"
    )
    policy = config.model_version_policy
    if model.policy == "latest":
        policy.latest.num_versions = model.num_versions
    elif model.policy == "specific":
        policy.specific.versions.extend(model.versions)
    else:
        policy.all.SetInParent()
    for label, version in dict(model.labels).items():
        config.version_labels[label] = version
    return config


def _as_served_model(item: ServedModel | Mapping[str, Any], where: str) -> ServedModel:
    if isinstance(item, ServedModel):
        return item
    if isinstance(item, Mapping):
        try:
            data = dict(item)
            if "versions" in data:
                data["versions"] = tuple(data["versions"])
            return ServedModel(**data)
        except TypeError as err:
            raise KerasftError(
                expected(
                    "ServedModel fields (name, base_path, policy, num_versions, versions, "
                    "labels, local_base_path)",
                    "model",
                    sorted(item),
                    where,
                )
            ) from err
    raise KerasftError(expected("a ServedModel or a dict", "model", type(item).__name__, where))


def _parse_models_config(path: Path, where: str) -> Any:
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except text_format.ParseError as err:
        raise KerasftError(
            expected("a text ModelServerConfig", "error", _one_line(err), f"{where} {path}")
        ) from err
    if config.HasField("custom_model_config"):
        raise KerasftError(
            expected(
                "a model_config_list config", "config", "custom_model_config", f"{where} {path}"
            )
        )
    return config


def write_models_config(
    path: str | os.PathLike[str],
    models: Sequence[ServedModel | Mapping[str, Any]],
    *,
    check_versions: bool = True,
) -> Path:
    """Writes a TF Serving ``models.config`` (text ``ModelServerConfig``) holding ``models``.

    Each model is validated (name, absolute or URI base path, policy, versions; with
    ``check_versions``, that the policy's and the labels' versions exist as integer SavedModel
    folders under the base path, and that labels only name versions the policy loads). When the
    file exists, a label of a model it holds may only move to a version that file already serves
    (TF Serving refuses the move otherwise; do it in two steps). The file is replaced atomically
    (temporary file + ``os.replace``), so a server polling it
    (``--model_config_file_poll_wait_seconds``) never reads half of it.
    """
    where = "write_models_config"
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    served = [_as_served_model(m, where) for m in models]
    if not served:
        raise KerasftError(expected("at least one model", "models", [], where))
    names = [m.name for m in served]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KerasftError(expected("distinct model names", "duplicates", duplicates, where))
    target = Path(path)
    # The file a server already polls: labels may not move onto versions it does not serve yet.
    current = (
        {e.name: e for e in _parse_models_config(target, where).model_config_list.config}
        if target.is_file()
        else {}
    )
    config = model_server_config_pb2.ModelServerConfig()
    for model in served:
        _validate_served_model(model, check_versions, where)
        if model.name in current:
            _check_label_moves(current[model.name], model, where)
        config.model_config_list.config.append(_model_config_proto(model))
    atomic_write(target, text_format.MessageToString(config))
    return target


def update_models_config(
    path: str | os.PathLike[str],
    name: str,
    base_path: str,
    policy: Policy = "latest",
    num_versions: int = 1,
    versions: Sequence[int] = (),
    labels: Mapping[str, int] | None = None,
    *,
    local_base_path: str | None = None,
    check_versions: bool = True,
) -> Path:
    """Adds or replaces the entry for model ``name`` in ``models.config`` (created if missing).

    Entries of other models are kept as they are (fields this module does not write included).
    Example of a canary: ``policy="specific", versions=[1, 2], labels={"stable": 1, "canary": 2}``.
    The new entry is validated as in :func:`write_models_config`; the file is replaced atomically.
    """
    where = "update_models_config"
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    model = ServedModel(
        name=name,
        base_path=base_path,
        policy=policy,
        num_versions=num_versions,
        versions=tuple(versions),
        labels=dict(labels or {}),
        local_base_path=local_base_path,
    )
    _validate_served_model(model, check_versions, where)
    target = Path(path)
    if target.exists():
        config = _parse_models_config(target, where)
    else:
        config = model_server_config_pb2.ModelServerConfig()
    entries = config.model_config_list.config
    for entry in entries:
        if entry.name == name:
            _check_label_moves(entry, model, where)
    new_entry = _model_config_proto(model)
    for index, entry in enumerate(entries):
        if entry.name == name:
            entries[index].CopyFrom(new_entry)
            break
    else:
        entries.append(new_entry)
    atomic_write(target, text_format.MessageToString(config))
    return target


def read_models_config(path: str | os.PathLike[str]) -> list[ServedModel]:
    """Reads ``models.config`` into :class:`ServedModel` entries (for inspection and tests)."""
    target = Path(path)
    if not target.is_file():
        raise KerasftError(
            expected("an existing models.config", "path", str(target), "read_models_config")
        )
    config = _parse_models_config(target, "read_models_config")
    out = []
    for entry in config.model_config_list.config:
        which = entry.model_version_policy.WhichOneof("policy_choice")
        policy = which or "latest"
        num_versions = 1
        versions: tuple[int, ...] = ()
        if which == "latest":
            num_versions = entry.model_version_policy.latest.num_versions or 1
        elif which == "specific":
            versions = tuple(entry.model_version_policy.specific.versions)
        out.append(
            ServedModel(
                name=entry.name,
                base_path=entry.base_path,
                policy=policy,  # type: ignore[arg-type]
                num_versions=num_versions,
                versions=versions,
                labels=dict(entry.version_labels),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Op check
# --------------------------------------------------------------------------------------------


def list_graph_ops(export_dir: str | os.PathLike[str]) -> set[str]:
    """Returns every op type used by the SavedModel: its graphs and their function libraries.

    Read from ``saved_model.pb`` only (nothing is loaded, no op needs to be registered). Nodes
    whose "op" is the name of a library function (direct function calls) are not op types and
    are left out.
    """
    return _graph_ops(export_dir, "list_graph_ops")


def _graph_ops(export_dir: str | os.PathLike[str], where: str) -> set[str]:
    proto = _read_saved_model(export_dir, where)
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


@functools.lru_cache(maxsize=1)
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


def check_serving_ops(
    export_dir: str | os.PathLike[str], extra_allowed_ops: Iterable[str] = ()
) -> set[str]:
    """Raises :class:`ExportError` naming the SavedModel's ops that TF Serving cannot run.

    Allowed: :func:`serving_op_allowlist` plus ``extra_allowed_ops`` (ops of a custom server
    build). Python ops (:data:`PYTHON_OPS`) are always rejected. Returns the model's op types.
    """
    ops = _graph_ops(export_dir, "check_serving_ops")
    extra = set(extra_allowed_ops) - PYTHON_OPS
    bad = sorted(
        op for op in ops if op in PYTHON_OPS or op not in serving_op_allowlist() and op not in extra
    )
    if bad:
        python = [op for op in bad if op in PYTHON_OPS]
        hint = f"; {python} come from tf.py_function/tf.numpy_function" if python else ""
        raise ExportError(
            expected(
                f"only ops TF Serving can run ({SERVING_OPS_NOTE}{hint})",
                "ops",
                bad,
                f"check_serving_ops {export_dir}",
            )
        )
    return ops


# --------------------------------------------------------------------------------------------
# Request builders
# --------------------------------------------------------------------------------------------


def text_instances(texts: Iterable[str]) -> list[str]:
    """Row-format instances for a text signature (one input ``text``): a list of bare strings.

    For a signature with a single named input TF Serving's row format accepts bare values
    (``["a", "b"]``) as well as objects (``[{"text": "a"}, ...]``); bare values are sent here.
    """
    out = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise KerasftError(
                expected("strings", f"texts[{index}]", type(text).__name__, "text_instances")
            )
        out.append(text)
    return out


def image_bytes_instances(
    images: Iterable[bytes | str | os.PathLike[str]],
) -> list[dict[str, str]]:
    """Row-format instances for ``serving_bytes`` (one input ``image_bytes``).

    Each image (encoded JPEG/PNG bytes, or a path to such a file) becomes ``{"b64": base64}``,
    TF Serving's JSON form for binary strings; as the signature has a single input the b64
    objects are sent bare, not as ``{"image_bytes": {"b64": ...}}``.
    """
    out = []
    for index, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise KerasftError(
                    expected(
                        "an image file", f"images[{index}]", str(path), "image_bytes_instances"
                    )
                )
            data = path.read_bytes()
        elif isinstance(image, (bytes, bytearray)):
            data = bytes(image)
        else:
            raise KerasftError(
                expected(
                    "encoded image bytes or a file path",
                    f"images[{index}]",
                    type(image).__name__,
                    "image_bytes_instances",
                )
            )
        out.append({"b64": base64.b64encode(data).decode("ascii")})
    return out


def image_array_instances(images: np.ndarray) -> list[Any]:
    """Row-format instances for an ``image`` signature: a ``[batch, h, w, 3]`` array as lists."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise KerasftError(
            expected(
                "an array of shape [batch, height, width, 3]",
                "images.shape",
                list(array.shape),
                "image_array_instances",
            )
        )
    return array.tolist()


# --------------------------------------------------------------------------------------------
# REST client
# --------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _model_url(
    server_url: str, model: str, version: int | None, label: str | None, where: str
) -> str:
    if not isinstance(server_url, str) or not server_url:
        raise KerasftError(
            expected("a server URL like http://host:8501", "server_url", server_url, where)
        )
    base = server_url if "://" in server_url else f"http://{server_url}"
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise KerasftError(
            expected("an http(s) URL like http://host:8501", "server_url", server_url, where)
        )
    if not isinstance(model, str) or not _NAME_RE.match(model):
        raise KerasftError(
            expected("a model name of letters, digits, '.', '_' or '-'", "model", model, where)
        )
    if version is not None and label is not None:
        raise KerasftError(expected("either version or label, not both", "label", label, where))
    url = f"{base.rstrip('/')}/v1/models/{model}"
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise KerasftError(expected("an integer version >= 0", "version", version, where))
        url += f"/versions/{version}"
    elif label is not None:
        if not isinstance(label, str) or not _LABEL_RE.match(label):
            raise KerasftError(expected("a version label like 'stable'", "label", label, where))
        url += f"/labels/{urllib.parse.quote(label)}"
    return url


def _opener(url: str) -> urllib.request.OpenerDirector:
    # Environment proxies apply to remote servers; a loopback server is never reached through one.
    if urllib.parse.urlsplit(url).hostname in _LOOPBACK_HOSTS:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _http_json(
    method: str,
    url: str,
    body: bytes | None,
    timeout: float,
    retries: int,
    backoff: float,
    where: str,
) -> dict[str, Any]:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise KerasftError(expected("a timeout in seconds > 0", "timeout", timeout, where))
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise KerasftError(expected("an integer >= 0", "retries", retries, where))
    where = f"{where} {method} {url}"
    opener = _opener(url)
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    attempts = retries + 1
    for attempt in range(attempts):
        last = attempt == attempts - 1
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with opener.open(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = _error_detail(err)
            retried = err.code in RETRY_STATUSES
            if retried and not last:
                time.sleep(backoff * 2**attempt)
                continue
            tries = f" after {attempts} attempts" if retried and attempts > 1 else ""
            if err.code == 504:
                tries = " (the server's deadline, --rest_api_timeout_in_ms; not retried)"
            raise KerasftError(
                expected(
                    "a successful TF Serving answer",
                    "error",
                    f"HTTP {err.code}{tries}: {detail}",
                    where,
                )
            ) from None
        except TimeoutError as err:  # read timeout (not retried)
            raise KerasftError(
                expected(
                    f"an answer within timeout={timeout} s",
                    "error",
                    _one_line(err) or "timed out",
                    where,
                )
            ) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, TimeoutError):
                raise KerasftError(
                    expected(
                        f"a connection within timeout={timeout} s",
                        "error",
                        _one_line(reason) or "timed out",
                        where,
                    )
                ) from None
            if not last:
                time.sleep(backoff * 2**attempt)
                continue
            raise KerasftError(
                expected(
                    "a reachable TF Serving REST server",
                    "error",
                    f"{_one_line(reason)} (after {attempts} attempt{'s' if attempts > 1 else ''})",
                    where,
                )
            ) from None
        except (ConnectionError, http.client.HTTPException) as err:
            if not last:
                time.sleep(backoff * 2**attempt)
                continue
            raise KerasftError(
                expected(
                    "a reachable TF Serving REST server",
                    "error",
                    f"{type(err).__name__}: {_one_line(err)} (after {attempts} attempt"
                    f"{'s' if attempts > 1 else ''})",
                    where,
                )
            ) from None
        try:
            answer = json.loads(payload)
        except ValueError:
            raise KerasftError(
                expected("a JSON answer", "body", _one_line(payload[:200]), where)
            ) from None
        if not isinstance(answer, dict):
            raise KerasftError(expected("a JSON object", "body", _one_line(answer), where))
        return answer
    raise AssertionError("unreachable")  # pragma: no cover


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read()
    except OSError:
        raw = b""
    try:
        data = json.loads(raw)
        if isinstance(data, dict) and "error" in data:
            return _one_line(data["error"])
    except ValueError:
        pass
    return _one_line(raw.decode("utf-8", "replace")) or _one_line(err.reason)


def predict_rest(
    server_url: str,
    model: str,
    instances: Sequence[Any] | None = None,
    *,
    inputs: Any = None,
    signature_name: str = "serving_default",
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
    retries: int = 2,
    backoff: float = 0.5,
) -> dict[str, Any]:
    """Calls TF Serving's REST predict API and returns the decoded JSON answer.

    ``POST {server_url}/v1/models/{model}[/versions/{version} | /labels/{label}]:predict`` with
    ``{"signature_name": ..., "instances": [...]}`` (row format: the answer holds
    ``"predictions"``, one object per row with ``probabilities``, ``class_ids``, ``labels``) or
    ``{"signature_name": ..., "inputs": ...}`` (columnar: the answer holds ``"outputs"``, one list
    per output). Give exactly one of ``instances`` and ``inputs``; NumPy arrays are converted to
    lists and ``bytes`` to ``{"b64": ...}``. ``server_url`` may omit ``http://``.

    Errors are one-line :class:`KerasftError`: HTTP 4xx/5xx (with TF Serving's ``{"error": ...}``
    text), timeouts and unreachable servers. Connection failures, 503 (unavailable) and 429
    (batch queue full) are retried ``retries`` times, sleeping ``backoff * 2**attempt`` seconds.
    Not retried: 504 (TF Serving's own deadline: a retry waits as long again), every other 4xx
    (the request is wrong), every other 5xx (a model error repeats) and client timeouts.
    """
    where = "predict_rest"
    if (instances is None) == (inputs is None):
        raise KerasftError(
            expected(
                "exactly one of instances (row format) or inputs (columnar format)",
                "given",
                [k for k, v in (("instances", instances), ("inputs", inputs)) if v is not None],
                where,
            )
        )
    if instances is not None:
        if isinstance(instances, np.ndarray):
            instances = instances.tolist()
        if (
            isinstance(instances, (str, bytes))
            or not isinstance(instances, Sequence)
            or (len(instances) == 0)
        ):
            raise KerasftError(
                expected(
                    "a non-empty list of instances", "instances", _one_line(instances, 80), where
                )
            )
    if not isinstance(signature_name, str) or not signature_name:
        raise KerasftError(expected("a signature name", "signature_name", signature_name, where))
    url = _model_url(server_url, model, version, label, where) + ":predict"
    payload: dict[str, Any] = {"signature_name": signature_name}
    if instances is not None:
        payload["instances"] = list(instances)
    else:
        payload["inputs"] = inputs
    try:
        body = json.dumps(payload, default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise KerasftError(
            expected(
                "JSON-serializable inputs (lists, numbers, str, bytes, NumPy arrays)",
                "error",
                _one_line(err),
                where,
            )
        ) from None
    return _http_json("POST", url, body, timeout, retries, backoff, where)


def get_model_status_rest(
    server_url: str,
    model: str,
    *,
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
    retries: int = 2,
    backoff: float = 0.5,
) -> dict[str, Any]:
    """``GET {server_url}/v1/models/{model}[/versions/V | /labels/L]``: the versions' states.

    Returns TF Serving's answer, e.g. ``{"model_version_status": [{"version": "2", "state":
    "AVAILABLE", ...}]}``, newest version first; errors as in :func:`predict_rest`. TF Serving
    does not resolve a label here (get_model_status_impl.cc): with ``label`` the answer lists
    every version, as without it; ask for ``version`` to see one.
    """
    url = _model_url(server_url, model, version, label, "get_model_status_rest")
    return _http_json("GET", url, None, timeout, retries, backoff, "get_model_status_rest")


# --------------------------------------------------------------------------------------------
# gRPC client
# --------------------------------------------------------------------------------------------


def predict_grpc(
    server_address: str,
    model: str,
    inputs: Mapping[str, np.ndarray | Sequence[Any]],
    *,
    signature_name: str = "serving_default",
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
) -> dict[str, np.ndarray]:
    """Calls ``PredictionService/Predict`` on ``server_address`` (``host:8500``, insecure channel).

    ``inputs`` maps signature input names to batch arrays (``{"text": ["a", "b"]}``; image bytes
    as Python ``bytes``). Returns the outputs as NumPy arrays (``labels`` as bytes). Needs
    ``grpcio`` (not a kerasft dependency). Errors (unreachable server, deadline, unknown model or
    signature) are one-line :class:`KerasftError`.
    """
    where = "predict_grpc"
    try:
        import grpc
    except ImportError:
        raise KerasftError(
            expected(
                "grpcio installed for gRPC (pip install grpcio), or use predict_rest",
                "module",
                "grpc",
                where,
            )
        ) from None
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    if not isinstance(server_address, str) or ":" not in server_address or "/" in server_address:
        raise KerasftError(
            expected("host:port (no scheme)", "server_address", server_address, where)
        )
    if not isinstance(model, str) or not _NAME_RE.match(model):
        raise KerasftError(expected("a model name", "model", model, where))
    if version is not None and label is not None:
        raise KerasftError(expected("either version or label, not both", "label", label, where))
    if not isinstance(inputs, Mapping) or not inputs:
        raise KerasftError(
            expected(
                "a non-empty dict of input name -> batch array",
                "inputs",
                type(inputs).__name__,
                where,
            )
        )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    elif label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        try:
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        except (TypeError, ValueError) as err:
            raise KerasftError(
                expected("an array-like value", f"inputs[{key!r}]", _one_line(err), where)
            ) from None
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    where = f"{where} {server_address} model={model}"
    with grpc.insecure_channel(server_address, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            name = code.name if code is not None else "UNKNOWN"
            details = err.details() if hasattr(err, "details") else str(err)
            what = {
                "UNAVAILABLE": "a reachable TF Serving gRPC server",
                "DEADLINE_EXCEEDED": f"an answer within timeout={timeout} s",
            }.get(name, "a successful TF Serving answer")
            raise KerasftError(
                expected(what, "error", f"{name}: {_one_line(details)}", where)
            ) from None
    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
