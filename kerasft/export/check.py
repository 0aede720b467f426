"""The export check, run in a fresh Python process before a version folder appears.

It loads the SavedModel the way TensorFlow Serving does and then the way Python clients do:

1. the session-based loader (``tf.compat.v1.saved_model.loader.load`` into a fresh ``Session``;
   inputs fed and outputs fetched by the ``signature_def`` tensor names). TF Serving's C++
   ``LoadSavedModel`` and ``saved_model_cli run`` load this way; it fails on variables that the
   TF2 object loader still restores (keras-team/keras#19274, tensorflow/serving#2250);
2. every record of ``assets.extra/tf_serving_warmup_requests`` replayed through that session
   (TF Serving replays them at load time and one failing record fails the load);
3. the sample requests on every signature through the session;
4. the TF2 object loader (``tf.saved_model.load``) on the same requests: the same graph under
   two loaders, so every output must agree (floats within ``TOLERANCE``, the rest exactly).

Usage: ``python -m kerasft.export.check EXPORT_DIR REQUESTS.npz OUTPUTS.npz``, where the request
arrays are keyed ``<signature>/<input>``; the session's answers are written keyed
``<signature>/<output>`` (string arrays packed as bytes + offsets, :func:`pack`, so no pickle is
needed). On failure it prints one line (which signature, record, variable or op) on stderr and
exits 1. It imports NumPy, TensorFlow and TF Serving's protos only: the check must not depend on
the code that wrote the export.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 1e-5
# Spelled out, not imported from kerasft.export.warmup: the check shares no code with the export.
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
CHECKS = (
    "session loader (tf.compat.v1.saved_model.loader.load, as TF Serving and saved_model_cli)",
    "warmup records replayed through the session",
    "object loader (tf.saved_model.load) gives the same outputs",
)


class CheckFailed(Exception):
    """One line saying what failed."""


def error_line(err: BaseException) -> str:
    """A TensorFlow error as one line: its first meaningful sentence and the failing node."""
    text = str(getattr(err, "message", None) or err)
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("Graph execution error", "[["))]
    first = lines[0] if lines else type(err).__name__
    first = first.split(". This could mean")[0].split(" Debug info:")[0]
    node = re.search(r"\{\{node ([^}]+)\}\}", text)
    if node and node.group(1) not in first:
        first += f" (node {node.group(1)})"
    return first[:400]


def _grouped(requests: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    grouped: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for key, value in requests.items():
        signature, name = key.split("/", 1)
        grouped[signature][name] = value
    return dict(grouped)


def _session_run(session: Any, signature: Any, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    missing = sorted(set(signature.inputs) - set(inputs))
    if missing:
        raise CheckFailed(f"inputs {missing} not given")
    feeds = {signature.inputs[k].name: v for k, v in inputs.items()}
    fetches = {k: v.name for k, v in signature.outputs.items()}
    return session.run(fetches, feeds)


def check(path: str, requests: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the four checks; returns the session's answers keyed ``<signature>/<output>``."""
    import tensorflow as tf

    try:  # text exports tokenise with tensorflow-text ops; TF Serving's build links them
        import tensorflow_text  # noqa: F401
    except ImportError:
        pass
    from tensorflow_serving.apis import prediction_log_pb2

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    except Exception as err:  # noqa: BLE001 - any load failure is the answer
        raise CheckFailed(f"session loader: {error_line(err)}") from err
    signatures = {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}

    warmup = Path(path) / WARMUP_FILE
    if warmup.is_file():
        for index, raw in enumerate(tf.compat.v1.io.tf_record_iterator(str(warmup))):
            log = prediction_log_pb2.PredictionLog.FromString(raw)
            request = log.predict_log.request
            name = request.model_spec.signature_name or "serving_default"
            if name not in signatures:
                raise CheckFailed(f"warmup record {index}: signature {name!r} not in the "
                                  f"SavedModel (has {sorted(signatures)})")
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            try:
                _session_run(session, signatures[name], inputs)
            except Exception as err:  # noqa: BLE001
                raise CheckFailed(f"warmup record {index} (signature {name}) under the session "
                                  f"loader: {error_line(err)}") from err

    answers: dict[str, np.ndarray] = {}
    grouped = _grouped(requests)
    for name in sorted(signatures):
        if name not in grouped:
            raise CheckFailed(f"signature {name}: no sample request to check it with")
    for name, inputs in grouped.items():
        if name not in signatures:
            raise CheckFailed(f"signature {name!r} not in the SavedModel "
                              f"(has {sorted(signatures)})")
        try:
            out = _session_run(session, signatures[name], inputs)
        except Exception as err:  # noqa: BLE001
            raise CheckFailed(f"signature {name} under the session loader: "
                              f"{error_line(err)}") from err
        answers.update({f"{name}/{k}": np.asarray(v) for k, v in out.items()})
    session.close()

    try:
        loaded = tf.saved_model.load(path)
    except Exception as err:  # noqa: BLE001
        raise CheckFailed(f"object loader: {error_line(err)}") from err
    for name, inputs in grouped.items():
        fn = loaded.signatures[name]
        try:
            out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        except Exception as err:  # noqa: BLE001
            raise CheckFailed(f"signature {name} under the object loader: "
                              f"{error_line(err)}") from err
        for key, value in out.items():
            mine, theirs = answers[f"{name}/{key}"], value.numpy()
            if mine.shape != theirs.shape:
                raise CheckFailed(f"signature {name} output {key}: shape {list(mine.shape)} "
                                  f"under the session loader, {list(theirs.shape)} under the "
                                  "object loader")
            if mine.dtype.kind == "f":
                diff = float(np.max(np.abs(mine - theirs), initial=0.0))
                if not diff <= TOLERANCE:
                    raise CheckFailed(f"signature {name} output {key}: the two loaders differ "
                                      f"by {diff:.3g} (expected <= {TOLERANCE})")
            elif not np.array_equal(mine, theirs):
                raise CheckFailed(f"signature {name} output {key}: the two loaders give "
                                  "different values")
    return answers


def pack(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays for ``np.savez`` without pickle: string/bytes arrays become their UTF-8/raw bytes
    (``KEY#bytes``, uint8) and end offsets (``KEY#ends``, shape = the array's shape)."""
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind in "OUS":
            items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in value.ravel()]
            out[f"{key}#bytes"] = np.frombuffer(b"".join(items), dtype=np.uint8)
            out[f"{key}#ends"] = np.cumsum([len(v) for v in items], dtype=np.int64).reshape(
                value.shape)
        else:
            out[key] = value
    return out


def unpack(data: Any) -> dict[str, np.ndarray]:
    """The inverse of :func:`pack` (strings come back as ``bytes`` objects)."""
    out: dict[str, np.ndarray] = {}
    for key in data.files:
        if key.endswith("#ends"):
            base = key[: -len("#ends")]
            raw, ends = data[f"{base}#bytes"].tobytes(), data[key]
            starts = np.concatenate([[0], ends.ravel()[:-1]]).astype(np.int64)
            items = np.empty(ends.size, dtype=object)  # bytes objects, never numpy's "S" type
            items[:] = [raw[a:b] for a, b in zip(starts, ends.ravel())]
            out[base] = items.reshape(ends.shape)
        elif not key.endswith("#bytes"):
            out[key] = data[key]
    return out


def main(argv: list[str]) -> int:
    path, requests_path, outputs_path = argv
    with np.load(requests_path, allow_pickle=False) as data:
        requests = unpack(data)
    try:
        answers = check(path, requests)
    except CheckFailed as err:
        print(str(err), file=sys.stderr)
        return 1
    np.savez(outputs_path, **pack(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
