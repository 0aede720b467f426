"""A loopback stand-in for TensorFlow Serving's REST (and gRPC Predict) API, for tests.

It is meant to fail wherever the real server fails, so every rule below was read from
tensorflow/serving's source and names the file and function it comes from where it is decided:

* Loading. Each version is loaded with TensorFlow's session-based loader
  (``tf.compat.v1.saved_model.loader.load`` into a fresh ``Graph``/``Session``; inputs fed and
  outputs fetched by the ``signature_def`` tensor names), as TF Serving's ``LoadSavedModel`` does,
  never with ``tf.saved_model.load``. ``assets.extra/tf_serving_warmup_requests`` is replayed at
  load; one failing record fails the version (``saved_model_warmup_util.cc``
  ``RunSavedModelWarmupUntracked``, ``saved_model_warmup.cc`` ``RunWarmupRequest``).
* Configuration. Versions, policies and labels come only from a ``models.config`` (text
  ``ModelServerConfig``) or, for a single model path, the config ``server.cc``
  ``BuildSingleModelConfig`` builds (default policy ``latest {num_versions: 1}``,
  ``file_system_storage_path_source.proto``). Duplicate names and relative base paths are refused
  (``server_core.cc`` ``ValidateModelConfigList``). A label may only name a version that is already
  available unless ``allow_version_labels_for_unavailable_models`` is set, and even then an existing
  label may only move to an available version (``server_core.cc`` ``UpdateModelVersionLabelMap``,
  run by ``ReloadConfig`` *before* the new versions load: at start-up nothing is loaded yet).
  A new model none of whose versions becomes available stops the start
  (``server_core.cc`` ``WaitUntilModelsAvailable``).
* REST. Paths and errors as in ``http_rest_api_handler.cc`` ``ProcessRequest`` and
  ``http_rest_api_util.cc`` ``ParseModelInfo`` (case-insensitive routes, "Malformed request",
  "Missing model name in request."); status codes from ``http_server.cc`` ``ToHTTPStatusCode``;
  request parsing and answer formatting ported from ``json_tensor.cc``; model status from
  ``get_model_status_impl.cc`` (labels ignored, versions newest first).

Differences from TF Serving, each a refusal rather than a silent success: ``:classify``,
``:regress`` and ``/metadata`` answer 501; warmup records other than ``predict_log`` fail the load
(the stand-in runs Predict only); a model whose base path holds no version at start-up is an error
(the real server waits for one to appear); a config refused by validation or by the label check
raises and changes nothing (the real server logs the error and keeps polling). Test hooks:
``fail_next(n, status)`` answers the next ``n`` HTTP requests with ``status``; ``delay_s`` delays
every answer.

The server binds 127.0.0.1 on a free port, never contacts anything, caps request bodies and runs in
daemon threads: ``with TFServingStub("/abs/models.config") as stub: stub.url``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import threading
import time
import urllib.parse
import urllib.request
import warnings
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

try:
    from tests.session_loader import SessionModel
except ImportError:  # imported as a top-level module (tests/ on sys.path)
    from session_loader import SessionModel

HOST = "127.0.0.1"
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_WARMUP_RECORDS = 1000  # saved_model_warmup_util.h WarmupConsts::kMaxNumRecords
DEFAULT_SIGNATURE = "serving_default"

# http_server.cc ToHTTPStatusCode: canonical status code -> HTTP status.
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
_TF_ERROR_CODES = {
    tf.errors.CancelledError: "CANCELLED", tf.errors.InvalidArgumentError: "INVALID_ARGUMENT",
    tf.errors.DeadlineExceededError: "DEADLINE_EXCEEDED", tf.errors.NotFoundError: "NOT_FOUND",
    tf.errors.AlreadyExistsError: "ALREADY_EXISTS",
    tf.errors.PermissionDeniedError: "PERMISSION_DENIED",
    tf.errors.ResourceExhaustedError: "RESOURCE_EXHAUSTED",
    tf.errors.FailedPreconditionError: "FAILED_PRECONDITION", tf.errors.AbortedError: "ABORTED",
    tf.errors.OutOfRangeError: "OUT_OF_RANGE", tf.errors.UnimplementedError: "UNIMPLEMENTED",
    tf.errors.InternalError: "INTERNAL", tf.errors.UnavailableError: "UNAVAILABLE",
    tf.errors.DataLossError: "DATA_LOSS", tf.errors.UnauthenticatedError: "UNAUTHENTICATED",
}
# DataTypeString() names, as TF Serving writes them in type errors.
_DTYPE_NAMES = {
    tf.float32: "float", tf.float64: "double", tf.int32: "int32", tf.int16: "int16",
    tf.int8: "int8", tf.uint8: "uint8", tf.string: "string", tf.int64: "int64", tf.bool: "bool",
    tf.uint32: "uint32", tf.uint64: "uint64", tf.float16: "half", tf.bfloat16: "bfloat16",
}

# http_rest_api_util.cc kPredictionApiGegex / kModelStatusApiRegex (RE2 "(?i)": whole path).
_PREDICT_RE = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_RE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_HANDLER_RE = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)  # kHTTPRestApiHandlerPathRegex
_URI_RE = re.compile(r"^[A-Za-z][0-9A-Za-z.]*://")
_INT64_MAX = 2**63 - 1


class ServingError(Exception):
    """A canonical status (``code`` as TF Serving names it) and its message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def to_string(self) -> str:  # absl::Status::ToString()
        return f"{self.code}: {self.message}"


class StubStartError(RuntimeError):
    """The configuration was refused, as the real server refuses to start or to reload."""


def _from_tf_error(err: Exception) -> ServingError:
    code = next((c for k, c in _TF_ERROR_CODES.items() if isinstance(err, k)), "UNKNOWN")
    if isinstance(err, tf.errors.OpError):
        return ServingError(code, err.message)
    return ServingError("INVALID_ARGUMENT", " ".join(str(err).split()))


# ---------------------------------------------------------------------------------------------
# Model versions and the server core
# ---------------------------------------------------------------------------------------------


@dataclass
class VersionState:
    """What ``ServableStateMonitor`` knows of one version."""

    state: str  # LOADING, AVAILABLE, END (unloaded or failed)
    error_code: str = "OK"
    error_message: str = ""
    model: SessionModel | None = None


def _run_predict(model: SessionModel, signature_name: str,
                 inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """predict_util.cc ``RunPredict``: signature lookup, input-size check, one session run."""
    name = signature_name or DEFAULT_SIGNATURE
    if name not in model.signatures:
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
    sig = model.signatures[name]
    if set(inputs) != set(sig.inputs):  # VerifyRequestInputsSize (no signature defaults here)
        sent, want = set(inputs), set(sig.inputs)
        raise ServingError(
            "INVALID_ARGUMENT",
            f"input size does not match signature: {len(sent)}!={len(want)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(want))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - want))}}}. "
            f"Missing but required: {{{','.join(sorted(want - sent))}}}.",
        )
    try:
        return model.run(name, **inputs)
    except (tf.errors.OpError, ValueError, TypeError) as err:
        raise _from_tf_error(err) from None


def _replay_warmup(model: SessionModel, version_dir: Path) -> None:
    """saved_model_warmup_util.cc ``RunSavedModelWarmupUntracked`` with one thread, one
    iteration; saved_model_warmup.cc ``RunWarmupRequest`` for each record."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    if not path.exists():
        return  # warmup data is optional
    count = 0
    try:
        for raw in tf.data.TFRecordDataset(str(path)):
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(raw.numpy())
            except Exception:  # noqa: BLE001 - protobuf's DecodeError
                raise ServingError("INVALID_ARGUMENT",
                                   f"Failed to parse warmup record: {raw.numpy()!r} from {path}"
                                   ) from None
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                request = log.predict_log.request
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                _run_predict(model, request.model_spec.signature_name, inputs)
            elif kind in ("predict_streamed_log", "session_run_log"):
                number = prediction_log_pb2.PredictionLog.DESCRIPTOR.fields_by_name[kind].number
                raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {number}")
            elif kind is not None:
                raise ServingError("UNIMPLEMENTED",
                                   f"{kind} warmup records are not run by the stand-in")
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Number of warmup records exceeds the maximum "
                                   f"({MAX_WARMUP_RECORDS}) at {path}")
    except tf.errors.DataLossError as err:
        raise ServingError("DATA_LOSS", f"{err.message}. Please verify your warmup data is in "
                                        "TFRecord format.") from None


def _load_version(version_dir: Path) -> SessionModel:
    try:
        model = SessionModel(str(version_dir))
    except (tf.errors.OpError, OSError, RuntimeError, ValueError) as err:
        raise _from_tf_error(err) from None
    try:
        _replay_warmup(model, version_dir)
    except BaseException:
        model.close()
        raise
    return model


def _is_relative(path: str) -> bool:
    """server_core.cc ``UriIsRelativePath``: no scheme, no host, not an absolute path."""
    return not _URI_RE.match(path) and not path.startswith("/")


def _version_dirs(base_path: str) -> dict[int, Path]:
    """file_system_storage_path_source.cc ``IndexChildrenByVersion``: children whose name parses
    as an int64 (``ParseVersionNumber``); anything else is skipped."""
    root = Path(base_path)
    if not root.is_dir():
        return {}
    found: dict[int, Path] = {}
    for child in sorted(root.iterdir()):
        name = child.name.strip()
        if re.fullmatch(r"[+-]?\d+", name) and abs(int(name)) <= _INT64_MAX:
            found.setdefault(int(name), child)
    return found


def _aspired_versions(config: Any) -> dict[int, Path]:
    """file_system_storage_path_source.cc ``AspireLatestVersions`` / ``AspireAllVersions`` /
    ``AspireSpecificVersions``; no policy set is ``latest {num_versions: 1}``
    (file_system_storage_path_source.proto: "This is the default policy")."""
    on_disk = _version_dirs(config.base_path)
    policy = config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return on_disk
    if which == "specific":
        return {v: on_disk[v] for v in policy.specific.versions if v in on_disk}
    keep = max(policy.latest.num_versions, 1) if which == "latest" else 1
    return {v: on_disk[v] for v in sorted(on_disk, reverse=True)[:keep]}


def parse_models_config(path: str | Path) -> Any:
    """A ``models.config`` file -> ``ModelServerConfig``, as ``--model_config_file`` reads it."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(encoding="utf-8"), config)
    except text_format.ParseError as err:
        raise StubStartError(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig: {err}") from None
    return config


def single_model_config(model_name: str, base_path: str | Path) -> Any:
    """server.cc ``BuildSingleModelConfig`` (``--model_name`` / ``--model_base_path``)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = model_name
    entry.base_path = str(base_path)
    entry.model_platform = "tensorflow"
    return config


class ServerCore:
    """Models, versions and labels, managed as ``server_core.cc`` ``ServerCore`` does."""

    def __init__(self, config: Any, *,
                 allow_version_labels_for_unavailable_models: bool = False) -> None:
        self.allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self.states: dict[str, dict[int, VersionState]] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self.config: Any = None
        self._lock = threading.RLock()
        try:
            self.reload_config(config)
        except BaseException:  # the server exits: free what it had loaded
            self.close()
            raise

    # -- configuration -------------------------------------------------------------------
    def reload_config(self, config: Any) -> None:
        """``ServerCore::ReloadConfig``: validate, update labels (against what is loaded *now*),
        then load and unload versions. Raises :class:`StubStartError` on refusal."""
        if not hasattr(config, "model_config_list"):
            config = parse_models_config(config)
        if config.WhichOneof("config") != "model_config_list":
            raise StubStartError("only model_config_list configs are served by the stand-in")
        entries = list(config.model_config_list.config)
        with self._lock:
            self._validate(entries)
            labels = self._label_map(entries)
            previous = set(self.states) if self.config is not None else set()
            self.config, self.labels = config, labels
            self._apply(entries)
            new_models = [e.name for e in entries if e.name not in previous]
            self._wait_until_available(new_models)

    @staticmethod
    def _validate(entries: list[Any]) -> None:
        names: set[str] = set()
        for entry in entries:  # server_core.cc ValidateModelConfigList
            if entry.name in names:
                raise StubStartError(
                    f"Illegal to list model {entry.name} multiple times in config list")
            names.add(entry.name)
        for entry in entries:
            if _is_relative(entry.base_path):
                raise StubStartError(
                    f"Expected model {entry.name} to have an absolute path or URI; "
                    f"got base_path()={entry.base_path}")
        for entry in entries:  # server_core.cc GetPlatform
            if not entry.model_platform:
                raise StubStartError(
                    "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                    f"ModelServerConfig::model_platform, model name is {entry.name}")
            if entry.model_platform != "tensorflow":
                raise StubStartError(
                    f"Model platform {entry.model_platform} is not served by the stand-in")
        for entry in entries:
            if _URI_RE.match(entry.base_path):
                raise StubStartError(f"the stand-in reads local paths only: {entry.base_path}")

    def _label_map(self, entries: list[Any]) -> dict[str, dict[str, int]]:
        """server_core.cc ``UpdateModelVersionLabelMap``."""
        new: dict[str, dict[str, int]] = {}
        for entry in entries:
            states = self.states.get(entry.name, {})
            for label, version in entry.version_labels.items():
                existing = self.labels.get(entry.name, {}).get(label)
                allow_any = (self.allow_unavailable_labels
                             and (existing is None or existing == version))
                state = states.get(version)
                if not allow_any and (state is None or state.state != "AVAILABLE"):
                    raise StubStartError(
                        f"Request to assign label to version {version} of model {entry.name}, "
                        "which is not currently available for inference")
                new.setdefault(entry.name, {})[label] = version
        return new

    def _apply(self, entries: list[Any]) -> None:
        wanted = {e.name for e in entries}
        for name, versions in self.states.items():
            if name not in wanted:  # models left out of the new config are torn down
                for version in list(versions):
                    self._unload(name, version)
        for entry in entries:
            versions = self.states.setdefault(entry.name, {})
            aspired = _aspired_versions(entry)
            for version in list(versions):
                if version not in aspired:
                    self._unload(entry.name, version)
            for version in sorted(aspired, reverse=True):
                current = versions.get(version)
                if current is not None and current.state == "AVAILABLE":
                    continue
                versions[version] = VersionState("LOADING")
                try:
                    model = _load_version(aspired[version])
                except ServingError as err:
                    versions[version] = VersionState("END", err.code, err.message)
                else:
                    versions[version] = VersionState("AVAILABLE", model=model)

    def _unload(self, name: str, version: int) -> None:
        state = self.states[name][version]
        if state.model is not None:
            state.model.close()
        if state.state == "AVAILABLE":
            self.states[name][version] = VersionState("END")

    def _wait_until_available(self, models: list[str]) -> None:
        """server_core.cc ``WaitUntilModelsAvailable``: ``Latest(model)`` of each new model."""
        failed = []
        for name in models:
            versions = self.states.get(name, {})
            if not versions:
                failed.append(f"{{name: {name} version: none}} due to error: no version folder "
                              "found (the real server waits for one)")
                continue
            latest = max(versions)
            state = versions[latest]
            if state.state != "AVAILABLE":
                why = (f" due to error: {state.error_code}: {state.error_message}"
                       if state.error_code != "OK" else "")
                failed.append(f"{{name: {name} version: {latest}}}{why}")
        if failed:
            raise StubStartError(f"{len(failed)} model(s) did not become available: "
                                 f"{{{', '.join(failed)}, }}")

    # -- requests ------------------------------------------------------------------------
    def servable(self, name: str, version: int | None, label: str | None) -> tuple[int, Any]:
        """server_core.cc ``ServableRequestFromModelSpec`` + basic_manager.cc lookup."""
        with self._lock:
            if not name:
                raise ServingError("INVALID_ARGUMENT", "ModelSpec has no name specified.")
            if label is not None:
                mapped = self.labels.get(name, {}).get(label)
                if mapped is None:
                    raise ServingError("INVALID_ARGUMENT",
                                       f"Unrecognized servable version label: {label}")
                version = mapped
            versions = self.states.get(name, {})
            if version is not None:
                state = versions.get(version)
                if state is None or state.state != "AVAILABLE":
                    raise ServingError("NOT_FOUND", f"Servable not found for request: "
                                                    f"Specific({name}, {version})")
                return version, state.model
            available = [v for v, s in versions.items() if s.state == "AVAILABLE"]
            if not available:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            return max(available), versions[max(available)].model

    def model_status(self, name: str, version: int | None) -> dict[str, Any]:
        """get_model_status_impl.cc ``GetModelStatusWithModelSpec``: a version label is not
        looked at; all versions are listed newest first (``VersionMap`` is ``std::greater``)."""
        with self._lock:
            versions = self.states.get(name, {})
            if version is not None:
                if version not in versions:
                    raise ServingError("NOT_FOUND",
                                       f"Could not find version {version} of model {name}")
                chosen = [version]
            else:
                if not versions:
                    raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
                chosen = sorted(versions, reverse=True)
            return {"model_version_status": [
                {"version": str(v), "state": versions[v].state,
                 "status": {"error_code": versions[v].error_code,
                            "error_message": versions[v].error_message}}
                for v in chosen]}

    def close(self) -> None:
        with self._lock:
            for name, versions in self.states.items():
                for version in list(versions):
                    self._unload(name, version)


# ---------------------------------------------------------------------------------------------
# json_tensor.cc, ported
# ---------------------------------------------------------------------------------------------


def _json_debug_string(value: Any, limit: int = 256) -> str:
    """``JsonValueToDebugString``: pretty objects, single-line arrays, cut at 256 bytes."""
    def write(v: Any, indent: int) -> str:
        if isinstance(v, dict):
            if not v:
                return "{}"
            pad = "    " * (indent + 1)
            items = [f"{pad}{json.dumps(k)}: {write(x, indent + 1)}" for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + "    " * indent + "}"
        if isinstance(v, list):
            return "[" + ", ".join(write(x, indent) for x in v) + "]"
        return json.dumps(v)
    return write(value, 0)[:limit]


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value: Any, dtype: tf.DType) -> ServingError:
    return ServingError("INVALID_ARGUMENT",
                        f"JSON Value: {_json_debug_string(value)} Type: {_json_type(value)} "
                        f"is not of expected type: {_DTYPE_NAMES.get(dtype, dtype.name)}")


def _is_b64(value: Any) -> bool:  # IsValBase64Object
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _add_value(value: Any, dtype: tf.DType, out: list[Any]) -> None:
    """``AddValueToTensor``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in (tf.float32, tf.float64):
        ok = number
    elif dtype in (tf.int32, tf.int16, tf.int8, tf.uint8):
        ok = _is_int(value, -(2**31), 2**31 - 1)
    elif dtype == tf.string:
        ok = isinstance(value, str)
    elif dtype == tf.int64:
        ok = _is_int(value, -(2**63), _INT64_MAX)
    elif dtype == tf.bool:
        ok = isinstance(value, bool)
    elif dtype == tf.uint32:
        ok = _is_int(value, 0, 2**32 - 1)
    elif dtype == tf.uint64:
        ok = _is_int(value, 0, 2**64 - 1)
    else:
        raise ServingError("UNIMPLEMENTED", f"Conversion of JSON Value: "
                                            f"{_json_debug_string(value)} to type: "
                                            f"{_DTYPE_NAMES.get(dtype, dtype.name)}")
    if not ok:
        raise _type_error(value, dtype)
    out.append(value.encode("utf-8") if dtype == tf.string else value)


def _dense_shape(value: Any) -> list[int]:
    """``GetDenseTensorShape``: sizes along the first element of every level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: tf.DType, out: list[Any]) -> None:
    """``FillTensorProto``."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise ServingError("INVALID_ARGUMENT",
                               f"JSON Value: {_json_debug_string(value)} found at incorrect "
                               f"level: {level + 1} in the JSON DOM. Expected at level: {rank}")
        if isinstance(value, dict):
            if dtype != tf.string:
                raise _type_error(value, dtype)
            if not _is_b64(value):
                raise ServingError("INVALID_ARGUMENT", f"JSON Value: {_json_debug_string(value)}"
                                                       " not formatted correctly for base64 data")
            try:
                out.append(base64.b64decode(value["b64"], validate=True))
            except (binascii.Error, ValueError):
                raise ServingError("INVALID_ARGUMENT", "Unable to base64 decode") from None
            return
        _add_value(value, dtype, out)
        return
    if level >= rank:
        raise ServingError("INVALID_ARGUMENT",
                           f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise ServingError("INVALID_ARGUMENT",
                           f"Encountered list at unexpected size: {len(value)} at level: "
                           f"{level} expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _to_array(values: list[Any], shape: list[int], dtype: tf.DType) -> np.ndarray:
    if dtype == tf.string:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    with warnings.catch_warnings():  # float32 overflow becomes inf, as GetFloat() does
        warnings.simplefilter("ignore", RuntimeWarning)
        if dtype.is_integer:
            return np.array(values, dtype=np.int64).astype(dtype.as_numpy_dtype).reshape(shape)
        return np.array(values, dtype=np.float64).astype(dtype.as_numpy_dtype).reshape(shape)


class _Item:
    """One named tensor being assembled from "instances" (``AddInstanceItem``)."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.size: int | None = None
        self.shape: list[int] | None = None


def _add_instance_item(value: Any, name: str, infos: dict[str, tf.DType],
                       items: dict[str, _Item]) -> None:
    if name not in infos:
        raise ServingError("INVALID_ARGUMENT", f"JSON object: does not have named input: {name}")
    shape = _dense_shape(value)
    values: list[Any] = []
    _fill(value, 0, shape, infos[name], values)
    item = items.setdefault(name, _Item())
    if item.size is None:
        item.size, item.shape = len(values), shape
    elif item.size != len(values):
        raise ServingError("INVALID_ARGUMENT",
                           f"Expecting tensor size: {item.size} but got: {len(values)}")
    elif item.shape != shape:
        raise ServingError("INVALID_ARGUMENT",
                           f"Expecting shape [{','.join(map(str, item.shape))}] but got: "
                           f"[{','.join(map(str, shape))}]")
    item.values.extend(values)


def _instances_to_tensors(rows: list[Any], infos: dict[str, tf.DType]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInstancesList``."""
    if not isinstance(rows[0], dict) and len(infos) > 1:
        raise ServingError("INVALID_ARGUMENT",
                           "instances is a plain list, but expecting list of objects as multiple "
                           "input tensors required as per tensorinfo_map")

    def is_object(v: Any) -> bool:
        return isinstance(v, dict) and not _is_b64(v)

    objects = is_object(rows[0])
    names = sorted(infos)
    items: dict[str, _Item] = {}
    for index, row in enumerate(rows):
        if objects:
            if not is_object(row):
                raise ServingError("INVALID_ARGUMENT",
                                   f"Expecting object but got list at item {index} of input list")
            for key, value in row.items():
                try:
                    _add_instance_item(value, key, infos, items)
                except ServingError as err:
                    raise ServingError("INVALID_ARGUMENT",
                                       f"Failed to process element: {index} key: {key} of "
                                       f"'instances' list. Error: {err.to_string()}") from None
            if set(row) != set(names):
                raise ServingError("INVALID_ARGUMENT",
                                   f"Failed to process element: {index} of 'instances' list. "
                                   f"JSON object: {_json_debug_string(row)} keys must be equal "
                                   f"to: {','.join(names)}")
        else:
            if is_object(row):
                raise ServingError("INVALID_ARGUMENT", f"Expecting value/list but got object at "
                                                       f"item {index} of input list")
            try:
                _add_instance_item(row, names[0], infos, items)
            except ServingError as err:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Failed to process element: {index} of 'instances' list. "
                                   f"Error: {err.to_string()}") from None
    return {name: _to_array(item.values, [len(rows), *(item.shape or [])], infos[name])
            for name, item in items.items()}


def _inputs_to_tensors(value: Any, infos: dict[str, tf.DType]) -> dict[str, np.ndarray]:
    """``FillTensorMapFromInputsMap``."""
    names = sorted(infos)
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise ServingError("INVALID_ARGUMENT",
                               "inputs is a plain value/list, but expecting an object as multiple "
                               "input tensors required as per tensorinfo_map")
        columns = {names[0]: value}
    else:
        columns = {}
        for name in names:
            if name not in value:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Missing named input: {name} in 'inputs' object.")
            columns[name] = value[name]
    out = {}
    for name, column in columns.items():
        shape = _dense_shape(column)
        values: list[Any] = []
        _fill(column, 0, shape, infos[name], values)
        out[name] = _to_array(values, shape, infos[name])
    return out


_RAPIDJSON_ERRORS = {  # Python's json messages -> rapidjson's GetParseError_En texts
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
}


def parse_json_body(body: str) -> dict[str, Any]:
    """json_tensor.cc ``ParseJson``: NaN/Infinity accepted, parsing stops after the document."""
    if not body:
        raise ServingError("INVALID_ARGUMENT", "JSON Parse error: The document is empty")
    text = body.lstrip()
    if not text:
        raise ServingError("INVALID_ARGUMENT",
                           f"JSON Parse error: The document is empty. at offset: {len(body)}")
    try:
        doc, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as err:
        message = next((v for k, v in _RAPIDJSON_ERRORS.items() if err.msg.startswith(k)),
                       "Invalid value.")
        raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {message} at offset: "
                                               f"{err.pos + len(body) - len(text)}") from None
    if not isinstance(doc, dict):
        raise ServingError("INVALID_ARGUMENT", f"JSON Value: {_json_debug_string(doc)} Is not "
                                               "object")
    return doc


def fill_predict_request(doc: dict[str, Any], get_infos: Any) -> tuple[str, dict, str]:
    """json_tensor.cc ``FillPredictRequestFromJson`` -> (signature, input arrays, format)."""
    signature = ""
    if "signature_name" in doc:
        if not isinstance(doc["signature_name"], str):
            raise ServingError("INVALID_ARGUMENT",
                               f"JSON Value: {_json_debug_string(doc)} not formatted correctly. "
                               "'signature_name' key must be a string value.")
        signature = doc["signature_name"]
    infos = get_infos(signature)
    if not infos:
        raise ServingError("INVALID_ARGUMENT",
                           f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    if "instances" in doc:
        if "inputs" in doc:
            raise ServingError("INVALID_ARGUMENT",
                               f"JSON Value: {_json_debug_string(doc)} Not formatted correctly "
                               "expecting only one of 'inputs' or 'instances' keys to exist ")
        rows = doc["instances"]
        if not isinstance(rows, list):
            raise ServingError("INVALID_ARGUMENT", f"JSON Value: {_json_debug_string(doc)} "
                                                   "Expecting 'instances' to be an list/array")
        if not rows:
            raise ServingError("INVALID_ARGUMENT", f"JSON Value: {_json_debug_string(doc)} "
                                                   "No values in 'instances' array")
        return signature, _instances_to_tensors(rows, infos), "row"
    if "inputs" in doc:
        return signature, _inputs_to_tensors(doc["inputs"], infos), "columnar"
    raise ServingError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")


def format_decimal(value: float, dtype: Any) -> str:
    """json_tensor.cc ``WriteDecimal``: ``StrCat`` (six significant digits) when that round-trips,
    else ``max_digits10`` digits; ".0" added to whole numbers not in scientific notation."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    cast = np.float32 if dtype == np.float32 else np.float64
    if cast(float(text)) != cast(value):
        text = f"{value:.{9 if dtype == np.float32 else 17}g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _write_scalar(value: Any, dtype: np.dtype, as_bytes: bool) -> str:
    """``AddSingleValueAndAdvance``."""
    if dtype in (np.float32, np.float64):
        return format_decimal(float(value), dtype)
    if dtype.kind in "OSU":  # a scalar string output comes back as bytes, not an object array
        data = value if isinstance(value, bytes) else str(value).encode("utf-8")
        if as_bytes:
            return json.dumps({"b64": base64.b64encode(data).decode("ascii")})
        return json.dumps(data.decode("utf-8", "replace"), ensure_ascii=False)
    if dtype == np.bool_:
        return "true" if value else "false"
    if np.issubdtype(dtype, np.integer):
        return str(int(value))
    raise ServingError("INVALID_ARGUMENT", f"Failed to write JSON value for tensor type: "
                                           f"{tf.as_dtype(dtype).name}")


def _write_values(array: np.ndarray, as_bytes: bool) -> str:
    """``AddTensorValues``."""
    if array.ndim == 0:
        return _write_scalar(array[()], array.dtype, as_bytes)
    if array.ndim == 1:
        return "[" + ", ".join(_write_scalar(x, array.dtype, as_bytes) for x in array) + "]"
    return "[" + ", ".join(_write_values(sub, as_bytes) for sub in array) + "]"


def _row(array: np.ndarray, index: int) -> np.ndarray:
    return array[index:index + 1].reshape(array.shape[1:])


def make_json_from_tensors(outputs: dict[str, np.ndarray], style: str) -> str:
    """``MakeJsonFromTensors``: row (``predictions``) or columnar (``outputs``) answer."""
    if not outputs:
        raise ServingError("INVALID_ARGUMENT", "Cannot convert empty tensor map to JSON")
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    # IsNamedTensorBytes: string outputs whose name ends in "_bytes" are written as b64 objects.
    as_bytes = {k: a.dtype == object and k.endswith("_bytes") for k, a in arrays.items()}
    many = len(arrays) > 1
    if style == "columnar":
        if many:
            inner = ", ".join(f"{json.dumps(k)}: {_write_values(a, as_bytes[k])}"
                              for k, a in arrays.items())
            return '{"outputs": {' + inner + "}}"
        ((key, array),) = arrays.items()
        return '{"outputs": ' + _write_values(array, as_bytes[key]) + "}"
    batch = -1
    for name, array in arrays.items():
        if array.ndim == 0:
            raise ServingError("INVALID_ARGUMENT", f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise ServingError("INVALID_ARGUMENT", f"Tensor name: {name} has inconsistent batch "
                                                   f"size: {array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    rows = []
    for i in range(batch):
        if many:
            rows.append("{" + ", ".join(f"{json.dumps(k)}: {_write_values(_row(a, i), as_bytes[k])}"
                                        for k, a in arrays.items()) + "}")
        else:
            ((key, array),) = arrays.items()
            rows.append(_write_values(_row(array, i), as_bytes[key]))
    return '{"predictions": [' + ", ".join(rows) + "]}"


# ---------------------------------------------------------------------------------------------
# REST
# ---------------------------------------------------------------------------------------------


class RestApiHandler:
    """http_rest_api_handler.cc ``HttpRestApiHandler``, on a :class:`ServerCore`."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def process(self, method: str, path: str, body: str) -> tuple[int, str]:
        try:
            return 200, self._process(method, path, body)
        except ServingError as err:  # json_tensor.cc MakeJsonFromStatus
            return err.http_status, json.dumps({"error": err.message}, indent=4)

    def _process(self, method: str, path: str, body: str) -> str:
        malformed = ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
        match = None
        if method == "POST":
            match = _PREDICT_RE.fullmatch(path)
        elif method == "GET":
            match = _STATUS_RE.fullmatch(path)
        # http_rest_api_util.cc ParseModelInfo: decoding and version conversion come first.
        name, version, label, verb = "", None, None, ""
        if match:
            name = urllib.parse.unquote(match.group(1) or "")
            if match.group(2):
                if int(match.group(2)) > _INT64_MAX:
                    raise ServingError("INVALID_ARGUMENT", f"Failed to convert version: "
                                                           f"{match.group(2)} to numeric.")
                version = int(match.group(2))
            if match.group(3):
                label = urllib.parse.unquote(match.group(3))
            verb = match.group(4) or ""
        if method == "POST" and match:
            if verb == "predict":  # compared case-sensitively, unlike the path
                return self.predict(name, version, label, body)
            if verb in ("classify", "regress"):
                raise ServingError("UNIMPLEMENTED", f":{verb} is not served by the stand-in")
            raise malformed
        if method == "GET" and match:
            if verb == "metadata":
                raise ServingError("UNIMPLEMENTED", "/metadata is not served by the stand-in")
            if not name:  # ProcessModelStatusRequest
                raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
            return json.dumps(self.core.model_status(name, version), indent=1)
        raise malformed

    def predict(self, name: str, version: int | None, label: str | None, body: str) -> str:
        """``ProcessPredictRequest``: JSON first, then the servable, the signature, the tensors."""
        doc = parse_json_body(body)
        resolved: list[Any] = []

        def get_infos(signature: str) -> dict[str, tf.DType]:  # GetInfoMap
            _, model = self.core.servable(name, version, label)
            resolved.append(model)
            sig_name = signature or DEFAULT_SIGNATURE
            if sig_name not in model.signatures:
                raise ServingError("INVALID_ARGUMENT", f'Serving signature name: "{sig_name}" '
                                                       "not found in signature def")
            return {k: tf.as_dtype(v.dtype) for k, v in model.signatures[sig_name].inputs.items()}

        signature, inputs, style = fill_predict_request(doc, get_infos)
        outputs = _run_predict(resolved[0], signature, inputs)
        return make_json_from_tensors(outputs, style)


class _Handler(BaseHTTPRequestHandler):
    server: _StubHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        pass

    def _send(self, status: int, text: str) -> None:
        data = text.encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True

    def _handle(self) -> None:
        stub = self.server.stub
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send(400, json.dumps({"error": f"Request body of {length} bytes over "
                                                 f"{MAX_BODY_BYTES}"}))
            self.close_connection = True
            return
        raw = self.rfile.read(length) if length else b""
        injected = stub.before_answer()
        if injected is not None:
            self._send(injected, json.dumps({"error": "Injected failure (test hook)"}))
            return
        path = self.path.split("?", 1)[0]
        if not _HANDLER_RE.fullmatch(path):  # http_server.cc Dispatch: no handler
            self._send(404, "")
            return
        if self.command == "OPTIONS":  # http_server.cc ProcessRequest: a CORS preflight
            if re.search(r"https?://", self.headers.get("Origin") or ""):
                self._send(200, "")
            else:
                self._send(400, "")  # FAILED_PRECONDITION, written without a body
            return
        try:
            status, text = stub.handler.process(self.command, path,
                                                raw.decode("utf-8", "replace"))
        except Exception as err:  # noqa: BLE001 - a stand-in bug must not pass for an answer
            status, text = 500, json.dumps({"error": f"stand-in error {type(err).__name__}: "
                                                     f"{' '.join(str(err).split())}"})
        self._send(status, text)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle  # noqa: N815


class _StubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    stub: TFServingStub


def _make_core(config: str | Path | Any, model_name: str,
               allow_version_labels_for_unavailable_models: bool) -> ServerCore:
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.is_dir() or not path.exists():  # --model_name / --model_base_path
            config = single_model_config(model_name, config)
        else:  # --model_config_file
            config = parse_models_config(path)
    return ServerCore(config, allow_version_labels_for_unavailable_models=(
        allow_version_labels_for_unavailable_models))


class TFServingStub:
    """TF Serving's REST API on 127.0.0.1.

    ``config`` is a ``models.config`` file (``--model_config_file``), a single model's base path
    holding integer version folders (``--model_base_path``, served as ``model_name``), or a parsed
    ``ModelServerConfig``. Loading happens here: a config the real server would refuse raises
    :class:`StubStartError`. Pass ``core`` to share the models with a :class:`GrpcPredictStub`.
    """

    def __init__(
        self,
        config: str | Path | Any = None,
        *,
        model_name: str = "default",
        allow_version_labels_for_unavailable_models: bool = False,
        core: ServerCore | None = None,
    ) -> None:
        self._owns_core = core is None
        self.core = core or _make_core(config, model_name,
                                       allow_version_labels_for_unavailable_models)
        self.handler = RestApiHandler(self.core)
        self.delay_s = 0.0
        self._failures: list[int] = []
        self._fail_lock = threading.Lock()
        self._server: _StubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0

    # -- test hooks ----------------------------------------------------------------------
    def fail_next(self, count: int, status: int = 503) -> None:
        """Answers the next ``count`` requests with ``status`` and ``{"error": ...}``."""
        with self._fail_lock:
            self._failures.extend([status] * count)

    def before_answer(self) -> int | None:
        with self._fail_lock:
            self.requests += 1
            status = self._failures.pop(0) if self._failures else None
        if self.delay_s:
            time.sleep(self.delay_s)
        return status

    def reload_config(self, config: str | Path | Any) -> None:
        """What the server does when it polls a changed ``--model_config_file``."""
        self.core.reload_config(config)

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("TFServingStub is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> TFServingStub:
        if self._server is not None:
            return self
        server = _StubHTTPServer((HOST, 0), _Handler)
        server.stub = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="tf-serving-stub")
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
                self._thread = None
        if self._owns_core:
            self.core.close()

    def __enter__(self) -> TFServingStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GrpcPredictStub:
    """TF Serving's ``PredictionService/Predict`` over gRPC on 127.0.0.1 (needs grpcio); takes
    the same ``config`` as :class:`TFServingStub`, or its ``core``."""

    def __init__(self, config: str | Path | Any = None, *, model_name: str = "default",
                 allow_version_labels_for_unavailable_models: bool = False,
                 core: ServerCore | None = None) -> None:
        self._owns_core = core is None
        self.core = core or _make_core(config, model_name,
                                       allow_version_labels_for_unavailable_models)
        self._server: Any = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _predict(self, request: Any, context: Any) -> Any:
        import grpc
        from tensorflow_serving.apis import predict_pb2

        spec = request.model_spec
        which = spec.WhichOneof("version_choice")
        try:
            version, model = self.core.servable(
                spec.name, spec.version.value if which == "version" else None,
                spec.version_label if which == "version_label" else None)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            outputs = _run_predict(model, spec.signature_name, inputs)
        except ServingError as err:
            context.abort(getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN),
                          err.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def start(self) -> GrpcPredictStub:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        stub = self

        class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC API
                return stub._predict(request, context)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Servicer(), server)
        self.port = server.add_insecure_port(f"{HOST}:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None
        if self._owns_core:
            self.core.close()

    def __enter__(self) -> GrpcPredictStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def post_json(url: str, body: str) -> dict:
    """POSTs a JSON body as curl would (no proxy on loopback); returns the decoded answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body.encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=60) as response:
        return json.loads(response.read())
