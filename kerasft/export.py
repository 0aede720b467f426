"""Step 8 of a run: a SavedModel in TensorFlow Serving's layout.

``<export.dir>/<name>/<version>/`` holds ``saved_model.pb``, ``variables/`` and
``assets.extra/`` (the resolved ``config.yaml``, ``labels.txt``, ``metrics.json``, the warmup
requests ``tf_serving_warmup_requests`` and, from :meth:`FineTuner.export`, the model card
``README.md``). Before the rename, every op of the graph is checked against what TF Serving's
standard build links (:func:`kerasft.serving.check_serving_ops`). The
``serving_default`` signature takes raw inputs and does the preprocessing inside the graph:

- text models: ``text``, a 1-D ``tf.string`` batch (tokenised by KerasHub's tokenizer in-graph;
  loading needs the tensorflow-text ops: TF Serving links them, Python clients
  ``import tensorflow_text`` first);
- image models: ``image``, ``float32 [batch, height, width, 3]`` pixels 0..255 of any size
  (resized in the graph); plus ``serving_bytes`` taking ``image_bytes``, a 1-D ``tf.string`` of
  encoded JPEG/PNG/GIF/BMP.

Every signature returns ``probabilities`` (float32 ``[batch, num_classes]``), ``class_ids``
(int64 ``[batch]``) and ``labels`` (string ``[batch]``), readable without kerasft.

The version is written under a temporary name (TF Serving ignores folders whose names are not
integers), reloaded in a fresh Python process and compared with the in-memory model, and only
then renamed into place; an existing version is never overwritten. Weights are stored once: the
SavedModel tracks a small ``tf.Module`` holding the model's variables, not the Keras model object.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.errors import ExportError, expected

SIGNATURE_OUTPUTS = ("probabilities", "class_ids", "labels")
TOLERANCE = 1e-5


def next_version(model_dir: str | os.PathLike) -> int:
    """The next integer version under `model_dir` (1 when there is none)."""
    model_dir = Path(model_dir)
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def _serving_module(model: Any, backbone: Any, class_names: list[str]) -> Any:
    import tensorflow as tf

    class ServingModule(tf.Module):
        """What the SavedModel tracks: the variables, the tokenizer, the label vocabulary."""

        def __init__(self) -> None:
            super().__init__(name="kerasft_serving")
            # Tracking a list of the variables (not the Keras model) stores each weight once.
            self.model_variables = [getattr(v, "value", v) for v in model.variables]
            if backbone.preprocessor is not None:
                self.preprocessor = backbone.preprocessor
            self.label_vocab = tf.constant(class_names, dtype=tf.string)

        def outputs(self, probabilities: Any) -> dict[str, Any]:
            probabilities = tf.cast(probabilities, tf.float32)
            class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {"probabilities": probabilities, "class_ids": class_ids,
                    "labels": tf.gather(self.label_vocab, class_ids)}

    module = ServingModule()
    signatures: dict[str, Any] = {}
    if backbone.task == "text":

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve_text(text: Any) -> dict[str, Any]:
            return module.outputs(model(backbone.preprocess(text), training=False))

        module.serve_text = serve_text
        signatures["serving_default"] = serve_text
    else:
        height, width = backbone.image_size

        def from_pixels(images: Any) -> Any:
            images = tf.image.resize(tf.cast(images, tf.float32), (height, width))
            return module.outputs(model(backbone.preprocess(images), training=False))

        @tf.function(input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
        def serve_image(image: Any) -> dict[str, Any]:
            return from_pixels(image)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(image_bytes: Any) -> dict[str, Any]:
            def decode(data: Any) -> Any:
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                image.set_shape([None, None, 3])
                return tf.image.resize(tf.cast(image, tf.float32), (height, width))

            images = tf.map_fn(decode, image_bytes,
                               fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
            return from_pixels(images)

        module.serve_image = serve_image
        module.serve_bytes = serve_bytes
        signatures["serving_default"] = serve_image
        signatures["serving_bytes"] = serve_bytes
    return module, signatures


_VERIFY_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
try:
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)
except ImportError:
    pass
path, inputs_path, outputs_path = sys.argv[1:4]
loaded = tf.saved_model.load(path)
fn = loaded.signatures["serving_default"]
inputs = np.load(inputs_path, allow_pickle=False)
name = list(fn.structured_input_signature[1])[0]
result = fn(**{name: tf.constant(inputs)})
np.savez(outputs_path, **{k: v.numpy() for k, v in result.items()})
"""


def verify_in_fresh_process(path: str | os.PathLike, inputs: np.ndarray,
                            expected_probabilities: np.ndarray,
                            timeout: float = 300.0) -> float:
    """Loads `path` in a new Python process, runs ``serving_default`` on `inputs`, and returns
    the max abs difference to `expected_probabilities` (raises if above the tolerance)."""
    with tempfile.TemporaryDirectory(prefix="kerasft-verify-") as tmp:
        inputs_path = os.path.join(tmp, "inputs.npy")
        outputs_path = os.path.join(tmp, "outputs.npz")
        np.save(inputs_path, inputs, allow_pickle=False)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(
            [sys.executable, "-c", _VERIFY_SCRIPT, str(path), inputs_path, outputs_path],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ExportError(f"{path}: expected the export to load in a fresh process. "
                              f"Received: {tail}")
        with np.load(outputs_path) as out:
            missing = [k for k in SIGNATURE_OUTPUTS if k not in out.files]
            if missing:
                raise ExportError(expected(f"outputs {', '.join(SIGNATURE_OUTPUTS)}",
                                           "serving_default outputs", sorted(out.files)))
            probabilities = out["probabilities"]
    diff = float(np.max(np.abs(probabilities - expected_probabilities)))
    if diff > TOLERANCE:
        raise ExportError(
            f"{path}: expected the reloaded export to match the in-memory model within "
            f"{TOLERANCE}. Received: max_abs_diff={diff:.3g}"
        )
    return diff


def reference_probabilities(model: Any, backbone: Any, raw_inputs: np.ndarray) -> np.ndarray:
    """What the in-memory Keras model predicts for raw serving inputs."""
    import tensorflow as tf

    if backbone.task == "text":
        x = backbone.preprocess(tf.constant(raw_inputs))
    else:
        images = tf.image.resize(tf.cast(raw_inputs, tf.float32), backbone.image_size)
        x = backbone.preprocess(images)
    return np.asarray(model(x, training=False), dtype=np.float32)


def warmup_requests(backbone: Any, sample_inputs: np.ndarray | None,
                    max_batch: int = 4) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Representative requests ``(signature, inputs)``: per signature, a batch of one and a batch
    of up to `max_batch` sample inputs (a neutral text or a grey image when there are none)."""
    import tensorflow as tf

    have = sample_inputs is not None and len(sample_inputs) > 0
    if backbone.task == "text":
        texts = list(sample_inputs[:max_batch]) if have else ["a short example text"]
        batch = np.array([t if isinstance(t, bytes) else str(t).encode("utf-8") for t in texts],
                         dtype=object)
        batches = [batch[:1]] + ([batch] if len(batch) > 1 else [])
        return [("serving_default", {"text": b}) for b in batches]
    if have:  # at the model's input size: a few photos at full size would weigh megabytes
        images = tf.image.resize(np.asarray(sample_inputs[:max_batch], dtype=np.float32),
                                 backbone.image_size).numpy()
    else:
        images = np.full((1, *backbone.image_size, 3), 127.0, dtype=np.float32)
    pngs = np.array([tf.io.encode_png(np.clip(np.round(im), 0, 255).astype(np.uint8)).numpy()
                     for im in images], dtype=object)
    sizes = [1] + ([len(images)] if len(images) > 1 else [])
    return ([("serving_default", {"image": images[:n]}) for n in sizes]
            + [("serving_bytes", {"image_bytes": pngs[:n]}) for n in sizes])


def write_warmup(export_dir: str | os.PathLike, model_name: str, backbone: Any,
                 sample_inputs: np.ndarray | None) -> int:
    """Writes ``assets.extra/tf_serving_warmup_requests`` with :func:`warmup_requests` (each
    built and checked against the signatures by :func:`kerasft.serving.write_warmup_requests`);
    returns the number of records."""
    import tensorflow as tf

    from kerasft import serving

    records = []
    target = None
    for signature, inputs in warmup_requests(backbone, sample_inputs):
        target = serving.write_warmup_requests(export_dir, signature, inputs,
                                               model_name=model_name)
        records += [r.SerializeToString() for r in serving.read_warmup_requests(target)]
    assert target is not None
    partial = target.with_name(f".{target.name}.partial")
    with tf.io.TFRecordWriter(str(partial)) as writer:  # one file holding every request
        for record in records:
            writer.write(record)
    os.replace(partial, target)
    return len(records)


def export_saved_model(
    model: Any,
    backbone: Any,
    class_names: list[str],
    base_dir: str | os.PathLike,
    name: str,
    version: int | str = "auto",
    sample_inputs: np.ndarray | None = None,
    extra_files: dict[str, str | bytes] | None = None,
    verify: bool = True,
    after_write: Callable[[Path], None] | None = None,
    log: Callable[[str], None] = print,
    check_ops: bool = True,
    warmup: bool = True,
) -> Path:
    """Writes ``<base_dir>/<name>/<version>/`` atomically and returns its path.

    `sample_inputs` are raw serving inputs (strings or images) used to check the export in a
    fresh process and for the warmup requests; `extra_files` go to ``assets.extra/``;
    `after_write` may add more files (e.g. a model card) before the version is renamed into place.
    With `check_ops`, an op TF Serving cannot run fails the export (:func:`kerasft.serving.
    check_serving_ops`); with `warmup`, ``assets.extra/tf_serving_warmup_requests`` is written
    (:func:`write_warmup`). Any failure leaves no version folder.
    """
    import tensorflow as tf

    model_dir = Path(base_dir) / name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(expected("a writable export folder", "export.dir", str(base_dir))
                          + f" ({e.strerror})") from None
    if not os.access(model_dir, os.W_OK):
        raise ExportError(expected("a writable export folder", "export.dir", str(model_dir)))
    version = next_version(model_dir) if version == "auto" else int(version)
    final = model_dir / str(version)
    if final.exists():
        raise ExportError(
            expected(f"a version that does not exist yet (next free: {next_version(model_dir)})",
                     "export.version", version) + f" ({final} exists; versions are never "
            "overwritten)"
        )
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        module, signatures = _serving_module(model, backbone, class_names)
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extras = tmp / "assets.extra"
        extras.mkdir(exist_ok=True)
        files = {"labels.txt": "\n".join(class_names) + "\n", **(extra_files or {})}
        for filename, content in files.items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(extras / filename, mode, **({} if mode == "wb" else
                                                   {"encoding": "utf-8"})) as f:
                f.write(content)
        if check_ops:
            from kerasft import serving

            ops = serving.check_serving_ops(tmp)
            log(f"op check: {len(ops)} op types, all run by TF Serving's standard build")
        if warmup:
            count = write_warmup(tmp, name, backbone, sample_inputs)
            log(f"warmup: {count} requests in assets.extra/tf_serving_warmup_requests")
        if after_write is not None:
            after_write(tmp)
        if verify and sample_inputs is not None and len(sample_inputs):
            reference = reference_probabilities(model, backbone, sample_inputs)
            diff = verify_in_fresh_process(tmp, sample_inputs, reference)
            log(f"export verified in a fresh process: max |difference| = {diff:.2e} "
                f"on {len(sample_inputs)} examples")
        if final.exists():
            raise ExportError(expected("a version that does not exist yet", "export.version",
                                       version))
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in (final / "variables").glob("*"))
    log(f"exported {final} (variables: {size / 1e6:.1f} MB)")
    return final


def read_export_info(path: str | os.PathLike) -> dict[str, Any]:
    """Labels and config of an export, from its ``assets.extra/`` folder."""
    extras = Path(path) / "assets.extra"
    info: dict[str, Any] = {}
    labels = extras / "labels.txt"
    if labels.is_file():
        info["labels"] = labels.read_text(encoding="utf-8").splitlines()
    metrics = extras / "metrics.json"
    if metrics.is_file():
        info["metrics"] = json.loads(metrics.read_text(encoding="utf-8"))
    return info
