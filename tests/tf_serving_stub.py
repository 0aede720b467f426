"""A loopback stand-in for TensorFlow Serving's REST (and gRPC Predict) API, for tests.

It loads SavedModels from a TF Serving model base folder (``<base>/<name>/<version>/``) with
TensorFlow and answers the predict and model-status requests in TF Serving's formats, as documented
in TF Serving's REST API guide (https://www.tensorflow.org/tfx/serving/api_rest) and implemented
in TF Serving's ``tensorflow_serving/util/json_tensor.cc``:

* ``POST /v1/models/NAME[/versions/N | /labels/L]:predict`` with a JSON object holding an optional
  ``signature_name`` (default ``serving_default``) and exactly one of

  - ``instances`` (row format): a non-empty list; each element is the value of the single input
    (bare value, or ``{"b64": ...}``), or an object with one key per input. All rows are stacked
    along a new batch axis. The answer is ``{"predictions": [...]}``: per row, the bare value when
    the signature has one output, else an object ``{output: value}``.
  - ``inputs`` (columnar format): the value of the single input, or an object input -> value. The
    answer is ``{"outputs": value}`` for one output, else ``{"outputs": {output: value}}``.

  ``{"b64": "..."}`` values are decoded for string inputs. String outputs are written as JSON
  strings, or as ``{"b64": ...}`` when the output name ends in ``_bytes``. Floats are written with
  the shortest digits that round-trip float32, as TF Serving does.
* ``GET /v1/models/NAME[/versions/N | /labels/L]``: ``{"model_version_status": [{"version": "N",
  "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}``.
* Errors: ``{"error": "..."}`` with 404 for an unknown model or version (``Servable not found for
  request: Latest(NAME)`` / ``Specific(NAME, N)``) or path, 400 for bad requests (unknown label,
  signature, malformed JSON or tensors).

Differences from TF Serving: every integer version folder is served (TF Serving's default policy
serves only the highest), the highest being the default; labels come from the ``labels`` argument
(``{model: {label: version}}``) instead of ``models.config``; ``:classify``, ``:regress`` and
``/metadata`` are not implemented. For tests: ``fail_next(n, status)`` answers the next ``n``
requests with a server error, and ``delay_s`` delays every answer.

The server binds 127.0.0.1 on a free port, never contacts anything, caps request bodies and runs
in daemon threads; use it as a context manager (``with TFServingStub(base) as stub: stub.url``).
:class:`GrpcPredictStub` serves ``PredictionService/Predict`` the same way over gRPC.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

try:  # text SavedModels use tensorflow-text ops: register them before loading
    import tensorflow_text  # noqa: F401
except ImportError:  # pragma: no cover - tensorflow-text is a kerasft dependency
    pass

HOST = "127.0.0.1"
MAX_BODY_BYTES = 32 * 1024 * 1024
_PATH_RE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>:predict)?$"
)


class StubError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ModelRepository:
    """Loads ``<base>/<name>/<version>`` SavedModels on first use and keeps them."""

    def __init__(self, base_dir: str | Path, labels: dict[str, dict[str, int]] | None = None):
        self.base_dir = Path(base_dir)
        self.labels = {k: dict(v) for k, v in (labels or {}).items()}
        self._loaded: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()

    def versions(self, name: str) -> list[int]:
        folder = self.base_dir / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
        )

    def resolve(self, name: str, version: int | None, label: str | None) -> int:
        versions = self.versions(name)
        if label is not None:
            mapped = self.labels.get(name, {}).get(label)
            if mapped is None or mapped not in versions:
                raise StubError(400, f"Unrecognized servable version label: {label}")
            return mapped
        if version is not None:
            if version not in versions:
                raise StubError(404, f"Servable not found for request: Specific({name}, {version})")
            return version
        if not versions:
            raise StubError(404, f"Servable not found for request: Latest({name})")
        return versions[-1]

    def get(self, name: str, version: int) -> Any:
        with self._lock:
            key = (name, version)
            if key not in self._loaded:
                self._loaded[key] = tf.saved_model.load(str(self.base_dir / name / str(version)))
            return self._loaded[key]

    def signature(self, name: str, version: int, signature_name: str) -> Any:
        loaded = self.get(name, version)
        if signature_name not in loaded.signatures:
            raise StubError(
                400, f'Serving signature name: "{signature_name}" not found in signature def'
            )
        return loaded.signatures[signature_name]


def input_specs(fn: Any) -> dict[str, tf.TensorSpec]:
    """The named inputs of a loaded signature function."""
    return dict(fn.structured_input_signature[1])


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _decode_value(value: Any, dtype: tf.DType, name: str) -> Any:
    """Nested JSON value -> nested Python value for ``dtype`` (b64 objects decoded for strings)."""
    if isinstance(value, list):
        return [_decode_value(v, dtype, name) for v in value]
    if _is_b64(value):
        if dtype != tf.string:
            raise StubError(400, f"JSON Value: b64 object for input {name} is not of type string")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError as err:
            raise StubError(400, f"Unable to base64 decode input {name}: {err}") from None
    if isinstance(value, dict):
        raise StubError(400, f"JSON Value: object for input {name} is not a tensor value")
    if dtype == tf.string:
        if not isinstance(value, str):
            raise StubError(400, f"JSON Value: {value!r} is not of expected type: string")
        return value.encode("utf-8")
    if isinstance(value, str):
        raise StubError(400, f"JSON Value: {value!r} is not of expected type: {dtype.name}")
    return value


def _to_tensor(value: Any, spec: tf.TensorSpec, name: str) -> tf.Tensor:
    try:
        tensor = tf.constant(value, dtype=spec.dtype)
    except (TypeError, ValueError) as err:
        raise StubError(400, f"Input {name}: {' '.join(str(err).split())}") from None
    if not spec.shape.is_compatible_with(tensor.shape):
        raise StubError(400, f"Input {name}: expected shape {spec.shape}, got {tensor.shape}")
    return tensor


def parse_predict_body(
    body: dict[str, Any], specs: dict[str, tf.TensorSpec]
) -> tuple[dict[str, tf.Tensor], str]:
    """TF Serving's JSON predict request -> (input tensors, "row" | "columnar")."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise StubError(
            400,
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist",
        )
    if not has_instances and not has_inputs:
        raise StubError(400, "Missing 'inputs' or 'instances' key")
    names = sorted(specs)
    if has_instances:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise StubError(400, "Excepting 'instances' to be an list/array")
        if not rows:
            raise StubError(400, "No values in 'instances' array")
        objects = isinstance(rows[0], dict) and not _is_b64(rows[0])
        if not objects and len(names) > 1:
            raise StubError(
                400,
                "instances is a plain list, but expecting list of objects as "
                "multiple input tensors required as per tensorinfo_map",
            )
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for index, row in enumerate(rows):
            row_is_object = isinstance(row, dict) and not _is_b64(row)
            if row_is_object != objects:
                raise StubError(
                    400,
                    f"Expecting {'object' if objects else 'value/list'} at "
                    f"item {index} of input list",
                )
            if objects:
                if sorted(row) != names:
                    raise StubError(
                        400,
                        f"Failed to process element: {index} of 'instances' "
                        f"list. keys must be equal to: {','.join(names)}",
                    )
                for n in names:
                    columns[n].append(_decode_value(row[n], specs[n].dtype, n))
            else:
                columns[names[0]].append(_decode_value(row, specs[names[0]].dtype, names[0]))
        return {n: _to_tensor(columns[n], specs[n], n) for n in names}, "row"
    value = body["inputs"]
    if isinstance(value, dict) and not _is_b64(value):
        missing = [n for n in names if n not in value]
        if missing:
            raise StubError(400, f"Missing named input: {missing[0]} in 'inputs' object.")
        values = {n: value[n] for n in names}
    else:
        if len(names) > 1:
            raise StubError(
                400,
                "inputs is a plain value/list, but expecting an object as "
                "multiple input tensors required as per tensorinfo_map",
            )
        values = {names[0]: value}
    return {
        n: _to_tensor(_decode_value(v, specs[n].dtype, n), specs[n], n) for n, v in values.items()
    }, "columnar"


def _json_value(value: Any, as_bytes: bool) -> Any:
    """A NumPy array (or scalar) -> nested JSON value, as TF Serving writes it."""
    array = np.asarray(value)
    if array.ndim:
        return [_json_value(a, as_bytes) for a in array]
    item = array.item()
    if isinstance(item, bytes):
        if as_bytes:
            return {"b64": base64.b64encode(item).decode("ascii")}
        return item.decode("utf-8", "replace")
    if array.dtype == np.float32:
        return float(str(array))  # shortest digits that round-trip float32
    return item


def format_predict_answer(outputs: dict[str, tf.Tensor], style: str) -> dict[str, Any]:
    """Signature outputs -> ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar)."""
    arrays = {k: np.asarray(v.numpy()) for k, v in sorted(outputs.items())}
    as_bytes = {k: a.dtype == object and k.endswith("_bytes") for k, a in arrays.items()}
    if style == "columnar":
        cols = {k: _json_value(a, as_bytes[k]) for k, a in arrays.items()}
        return {"outputs": next(iter(cols.values())) if len(cols) == 1 else cols}
    sizes = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise StubError(400, f"Tensors have inconsistent batch sizes: {sizes}")
    batch = next(iter(sizes.values()))
    rows = []
    for i in range(batch):
        row = {k: _json_value(a[i], as_bytes[k]) for k, a in arrays.items()}
        rows.append(next(iter(row.values())) if len(row) == 1 else row)
    return {"predictions": rows}


class _Handler(BaseHTTPRequestHandler):
    server: _StubHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, indent=1).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True

    def _handle(self, method: str) -> None:
        stub = self.server.stub
        try:
            stub.before_answer()
            match = _PATH_RE.match(self.path.split("?", 1)[0])
            if not match or (method == "POST") != bool(match["verb"]):
                raise StubError(404, f"Malformed request: {method} {self.path}")
            name = match["name"]
            version = int(match["version"]) if match["version"] else None
            label = match["label"]
            if method == "GET":
                self._send(200, stub.model_status(name, version, label))
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise StubError(400, f"Request body of {length} bytes over {MAX_BODY_BYTES}")
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw) if raw else None
            except ValueError as err:
                raise StubError(400, f"JSON Parse error: {err}") from None
            if not isinstance(body, dict):
                raise StubError(400, "JSON Value: request body Is not object")
            self._send(200, stub.predict(name, version, label, body))
        except StubError as err:
            self._send(err.status, {"error": err.message})
        except Exception as err:  # noqa: BLE001 - answered like TF Serving's generic errors
            self._send(500, {"error": f"{type(err).__name__}: {' '.join(str(err).split())}"})

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self._handle("POST")


class _StubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    stub: TFServingStub


class TFServingStub:
    """TF Serving's REST predict/status API on 127.0.0.1, for the SavedModels under ``base_dir``."""

    def __init__(
        self,
        base_dir: str | Path,
        labels: dict[str, dict[str, int]] | None = None,
    ) -> None:
        self.repository = ModelRepository(base_dir, labels)
        self.delay_s = 0.0
        self._failures: list[int] = []
        self._fail_lock = threading.Lock()
        self._server: _StubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0

    # -- test hooks ------------------------------------------------------------------------
    def fail_next(self, count: int, status: int = 503) -> None:
        """Answers the next ``count`` requests with ``status`` and ``{"error": ...}``."""
        with self._fail_lock:
            self._failures.extend([status] * count)

    def before_answer(self) -> None:
        with self._fail_lock:
            self.requests += 1
            status = self._failures.pop(0) if self._failures else None
        if self.delay_s:
            time.sleep(self.delay_s)
        if status is not None:
            raise StubError(status, "Injected failure (test hook)")

    # -- API -------------------------------------------------------------------------------
    def model_status(self, name: str, version: int | None, label: str | None) -> dict[str, Any]:
        if version is None and label is None:
            versions = self.repository.versions(name)
            if not versions:
                raise StubError(404, f"Could not find any versions of model {name}")
        else:
            versions = [self.repository.resolve(name, version, label)]
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
                for v in versions
            ]
        }

    def predict(
        self, name: str, version: int | None, label: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        resolved = self.repository.resolve(name, version, label)
        signature_name = body.get("signature_name", "serving_default")
        if not isinstance(signature_name, str):
            raise StubError(400, "JSON Value: signature_name is not of expected type: string")
        fn = self.repository.signature(name, resolved, signature_name or "serving_default")
        tensors, style = parse_predict_body(body, input_specs(fn))
        try:
            outputs = fn(**tensors)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as err:
            raise StubError(400, " ".join(str(err).split())[:500]) from None
        return format_predict_answer(outputs, style)

    # -- lifecycle -------------------------------------------------------------------------
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
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="tf-serving-stub",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TFServingStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GrpcPredictStub:
    """TF Serving's ``PredictionService/Predict`` over gRPC on 127.0.0.1 (needs grpcio)."""

    def __init__(self, base_dir: str | Path, labels: dict[str, dict[str, int]] | None = None):
        self.repository = ModelRepository(base_dir, labels)
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
            version = self.repository.resolve(
                spec.name,
                spec.version.value if which == "version" else None,
                spec.version_label if which == "version_label" else None,
            )
            fn = self.repository.signature(
                spec.name, version, spec.signature_name or "serving_default"
            )
            specs = input_specs(fn)
            if sorted(request.inputs) != sorted(specs):
                raise StubError(
                    400, f"Expected inputs {sorted(specs)}, got {sorted(request.inputs)}"
                )
            tensors = {
                k: _to_tensor(tf.make_ndarray(request.inputs[k]), specs[k], k) for k in specs
            }
            outputs = fn(**tensors)
        except StubError as err:
            found = err.status != 404
            code = grpc.StatusCode.INVALID_ARGUMENT if found else grpc.StatusCode.NOT_FOUND
            context.abort(code, err.message)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, " ".join(str(err).split())[:500])
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
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

    def __enter__(self) -> GrpcPredictStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
