"""Step 8 of a run: a SavedModel in TensorFlow Serving's layout.

``<export.dir>/<name>/<version>/`` holds ``saved_model.pb``, ``variables/`` and
``assets.extra/`` (the resolved ``config.yaml``, ``labels.txt``, ``metrics.json``, the warmup
requests ``tf_serving_warmup_requests`` and, from :meth:`FineTuner.export`, the model card
``README.md``). Before the rename, every op of the graph is checked against what TF Serving's
standard build links (:func:`kerasft.export.op_check.check_serving_ops`). The
``serving_default`` signature takes raw inputs and does the preprocessing inside the graph:

- text models: ``text``, a 1-D ``tf.string`` batch (tokenised by KerasHub's tokenizer in-graph;
  loading needs the tensorflow-text ops: TF Serving links them, Python clients
  ``import tensorflow_text`` first); sentence-pair models (``data.text_column: [a, b]``) take
  two such batches, ``text_a`` and ``text_b`` (:data:`kerasft.config.PAIR_INPUTS`, whatever the
  columns were called), packed in the graph by the family's own preprocessor;
- image models: ``image``, ``float32 [batch, height, width, 3]`` pixels 0..255 of any size
  (resized in the graph); plus ``serving_bytes`` taking ``image_bytes``, a 1-D ``tf.string`` of
  encoded JPEG/PNG/GIF/BMP.

Every signature returns ``probabilities`` (float32 ``[batch, num_classes]``), ``class_ids`` and
``labels``, readable without kerasft: single-label, ``class_ids`` int64 ``[batch]`` (argmax) and
``labels`` string ``[batch]``; multi-label, ``class_ids`` multi-hot int64 ``[batch, num_classes]``
(probability ``> head.threshold``) and ``labels`` the predicted labels joined by
``data.label_separator`` (see :class:`OutputSpec`). A regression export returns ``value`` only:
float32 ``[batch]`` (one target) or ``[batch, k]``, in the targets' own units (a head trained
with target scaling undoes it in the graph). Not ``predictions``: that is the key of TF
Serving's own REST answer.

The version is written under a temporary name (TF Serving ignores folders whose names are not
integers), checked in a fresh Python process the way TF Serving loads it (session-based loader,
warmup replay, every signature, then the object loader: :mod:`kerasft.export.check`), compared
with the in-memory model, and only then renamed into place; an existing version is never
overwritten. Weights are stored once: the SavedModel tracks a small ``tf.Module`` holding the
model's underlying ``tf.Variable`` objects, not the Keras model object.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.config import PAIR_INPUTS
from kerasft.errors import ExportError, expected
from kerasft.export.check import TOLERANCE  # one tolerance: loader vs loader, export vs model
from kerasft.export.op_check import check_serving_ops, text_ops
from kerasft.export.warmup import as_bytes, png_pixels, pngs, write_warmup
from kerasft.io import publish_dir

# export.precision: bfloat16 against the same mixed_bfloat16 model in memory (eager Keras): the
# graph may round in another order at 8 bits of mantissa. Loader vs loader keeps TOLERANCE.
BF16_TOLERANCE = 0.01
SIGNATURE_OUTPUTS = ("probabilities", "class_ids", "labels")
REGRESSION_OUTPUTS = ("value",)


def signature_outputs(task: str) -> tuple[str, ...]:
    """The outputs every signature of an export for `task` returns."""
    return REGRESSION_OUTPUTS if task == "regression" else SIGNATURE_OUTPUTS


def next_version(model_dir: str | os.PathLike) -> int:
    """The next integer version under `model_dir` (1 when there is none)."""
    model_dir = Path(model_dir)
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if model_dir.is_dir() else []
    return max(versions, default=0) + 1


@dataclass(frozen=True)
class OutputSpec:
    """How probabilities become the answer a client reads.

    Single-label: ``class_ids`` int64 ``[batch]`` (argmax), ``labels`` string ``[batch]``.
    Multi-label: a class is predicted when its probability is ``> threshold`` (the comparison
    :func:`kerasft.evaluation.metrics.classification_report` uses); ``class_ids`` is multi-hot int64
    ``[batch, num_classes]`` and ``labels`` the predicted labels joined by `separator` (the
    training CSV's own format; an empty string when none passes).
    Regression (`task`): ``value`` float32, ``[batch]`` for one target, else ``[batch, k]``.
    """

    class_names: tuple[str, ...]
    multi_label: bool = False
    threshold: float = 0.5
    separator: str = "|"
    task: str = "classification"

    @property
    def main_output(self) -> str:
        """The output compared with the in-memory model."""
        return signature_outputs(self.task)[0]


def _serving_module(model: Any, backbone: Any, spec: OutputSpec) -> Any:
    import tensorflow as tf

    from kerasft.data.pipeline import resize_images

    class ServingModule(tf.Module):
        """What the SavedModel tracks: the variables, the tokenizer, the label vocabulary."""

        def __init__(self) -> None:
            super().__init__(name="kerasft_serving")
            # The underlying tf.Variables, not Keras's wrappers: a tracked wrapper saves a second
            # handle that the session-based loader (TF Serving's) never restores
            # (keras-team/keras#19274). Not the Keras model either: that stores weights twice.
            self.model_variables = [getattr(v, "value", v) for v in model.variables]
            if backbone.preprocessor is not None:
                self.preprocessor = backbone.preprocessor
            self.label_vocab = tf.constant(list(spec.class_names), dtype=tf.string)

        def outputs(self, probabilities: Any) -> dict[str, Any]:
            probabilities = tf.cast(probabilities, tf.float32)
            if spec.task == "regression":
                return {"value": _squeeze_one_target(probabilities)}
            if spec.multi_label:
                chosen = probabilities > spec.threshold
                names = tf.broadcast_to(self.label_vocab, tf.shape(probabilities))
                labels = tf.strings.reduce_join(tf.ragged.boolean_mask(names, chosen),
                                                axis=-1, separator=spec.separator)
                return {"probabilities": probabilities,
                        "class_ids": tf.cast(chosen, tf.int64), "labels": labels}
            class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {"probabilities": probabilities, "class_ids": class_ids,
                    "labels": tf.gather(self.label_vocab, class_ids)}

    module = ServingModule()
    signatures: dict[str, Any] = {}
    if backbone.task == "text" and getattr(backbone, "segments", 1) == 2:
        first, second = PAIR_INPUTS

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=first),
                                      tf.TensorSpec([None], tf.string, name=second)])
        def serve_pair(text_a: Any, text_b: Any) -> dict[str, Any]:
            pairs = tf.stack([text_a, text_b], axis=1)
            return module.outputs(model(backbone.preprocess(pairs), training=False))

        module.serve_pair = serve_pair
        signatures["serving_default"] = serve_pair
    elif backbone.task == "text":

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve_text(text: Any) -> dict[str, Any]:
            return module.outputs(model(backbone.preprocess(text), training=False))

        module.serve_text = serve_text
        signatures["serving_default"] = serve_text
    else:
        height, width = backbone.image_size

        def from_pixels(images: Any) -> Any:
            images = resize_images(images, (height, width))
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
                return resize_images(image, (height, width))

            images = tf.map_fn(decode, image_bytes,
                               fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
            return from_pixels(images)

        module.serve_image = serve_image
        module.serve_bytes = serve_bytes
        signatures["serving_default"] = serve_image
        signatures["serving_bytes"] = serve_bytes
    return module, signatures


def _squeeze_one_target(values: Any) -> Any:
    """``[batch, 1]`` -> ``[batch]`` (one target); ``[batch, k]`` unchanged."""
    import tensorflow as tf

    return tf.squeeze(values, axis=-1) if values.shape[-1] == 1 else values


@dataclass
class CheckResult:
    """What the fresh-process check ran and what the export answered."""

    checks: list[str] = field(default_factory=list)
    answers: dict[str, np.ndarray] = field(default_factory=dict)  # "<signature>/<output>"
    max_diff: float = 0.0
    requests: dict[str, np.ndarray] = field(default_factory=dict)  # "<signature>/<input>"


def sample_requests(backbone: Any, sample_inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The check's requests, keyed ``<signature>/<input>``: the raw samples on
    ``serving_default`` and, for images, the same images PNG-encoded on ``serving_bytes``."""
    if backbone.task == "text" and getattr(backbone, "segments", 1) == 2:
        pairs = np.asarray(sample_inputs, dtype=object)
        return {f"serving_default/{name}": as_bytes(pairs[:, i])
                for i, name in enumerate(PAIR_INPUTS)}
    if backbone.task == "text":
        return {"serving_default/text": as_bytes(sample_inputs)}
    images = np.asarray(sample_inputs, dtype=np.float32)
    return {"serving_default/image": images, "serving_bytes/image_bytes": pngs(images)}



def verify_in_fresh_process(path: str | os.PathLike, requests: dict[str, np.ndarray],
                            timeout: float = 300.0,
                            where: str | os.PathLike | None = None,
                            outputs: tuple[str, ...] = SIGNATURE_OUTPUTS) -> CheckResult:
    """Runs :mod:`kerasft.export.check` on `path` in a new Python process: the session-based
    loader (TF Serving's), the warmup replay, `requests` on every signature, and the object
    loader; returns the session's answers. A failure raises ExportError with its one line."""
    from kerasft.export.check import CHECKS, pack, unpack

    with tempfile.TemporaryDirectory(prefix="kerasft-verify-") as tmp:
        requests_path = os.path.join(tmp, "requests.npz")
        outputs_path = os.path.join(tmp, "outputs.npz")
        np.savez(requests_path, **pack(requests))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(
            [sys.executable, "-m", "kerasft.export.check", str(path), requests_path,
             outputs_path],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ExportError(f"{where or path}: the export check failed (nothing was "
                              f"written): {tail}")
        with np.load(outputs_path, allow_pickle=False) as out:
            answers = unpack(out)
    for signature in {k.split("/")[0] for k in requests}:
        missing = [k for k in outputs if f"{signature}/{k}" not in answers]
        if missing:
            raise ExportError(expected(f"outputs {', '.join(outputs)}",
                                       f"{signature} outputs",
                                       sorted(k for k in answers if k.startswith(signature))))
    return CheckResult(checks=list(CHECKS), answers=answers, requests=requests)


def compare_with_model(path: str | os.PathLike, result: CheckResult,
                       reference: dict[str, np.ndarray], output: str = "probabilities",
                       tolerance: float = TOLERANCE) -> float:
    """Max |difference| between the export's `output` (``probabilities``, or ``value`` for
    regression) and the in-memory model's, per signature in `reference`; raises above
    `tolerance` (relative to the values' scale for regression targets above 1)."""
    worst = 0.0
    for signature, expected_probabilities in reference.items():
        got = result.answers[f"{signature}/{output}"]
        if got.shape != expected_probabilities.shape:
            expected_probabilities = expected_probabilities.reshape(got.shape)
        scale = max(1.0, float(np.max(np.abs(expected_probabilities), initial=0.0)))
        diff = float(np.max(np.abs(got - expected_probabilities), initial=0.0)) / scale
        if not diff <= tolerance:
            raise ExportError(
                f"{path} (not written): expected the export ({signature}, session loader) to "
                f"match the in-memory model within {tolerance}. Received: max_abs_diff="
                f"{diff:.3g}")
        worst = max(worst, diff)
    return worst


def reference_probabilities(model: Any, backbone: Any, raw_inputs: np.ndarray) -> np.ndarray:
    """What the in-memory Keras model predicts for raw serving inputs."""
    import tensorflow as tf

    from kerasft.data.pipeline import resize_images

    if backbone.task == "text":
        x = backbone.preprocess(tf.constant(raw_inputs))
    else:
        images = resize_images(raw_inputs, backbone.image_size)
        x = backbone.preprocess(images)
    return np.asarray(model(x, training=False), dtype=np.float32)



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
    after_write: Callable[[Path, CheckResult | None], None] | None = None,
    log: Callable[[str], None] = print,
    check_ops: bool = True,
    warmup: bool = True,
    outputs: OutputSpec | None = None,
    tolerance: float = TOLERANCE,
) -> Path:
    """Writes ``<base_dir>/<name>/<version>/`` atomically and returns its path.

    `sample_inputs` are raw serving inputs (strings or images) for the warmup requests and the
    check; `extra_files` go to ``assets.extra/``; `outputs` says how probabilities become
    ``class_ids``/``labels`` (single-label by default). With `check_ops`, an op TF Serving cannot
    run fails the export (:func:`kerasft.export.op_check.check_serving_ops`); with `warmup`,
    ``assets.extra/tf_serving_warmup_requests`` is written
    (:func:`kerasft.export.warmup.write_warmup`); with `verify`
    (and samples), a fresh process loads the export with TF Serving's session-based loader,
    replays the warmup file, answers the samples on every signature, and agrees with the object
    loader (:mod:`kerasft.export.check`), and the answers must match `model` within
    `tolerance` (:data:`TOLERANCE`; an int8 model has its own, kerasft.export.quantize).
    `after_write(folder, check)` then adds more files (e.g. a model card
    quoting the checked answers) before the version is renamed into place. Any failure leaves
    no version folder.
    """
    import tensorflow as tf

    spec = outputs or OutputSpec(tuple(class_names))
    regression = spec.task == "regression"
    model_dir, version, final = new_version_dir(base_dir, name, version)
    from kerasft.models.lora import lora_layers, merge_lora

    if lora_layers(model):  # the export is a plain model: kernels with the adapters folded in
        log(f"export: merged the LoRA adapters of {merge_lora(model)} layers into their kernels")
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        module, signatures = _serving_module(model, backbone, spec)
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extras = tmp / "assets.extra"
        extras.mkdir(exist_ok=True)
        # Regression has no labels: the output is `value` (targets.json holds any scaling).
        files = {**({} if regression else {"labels.txt": "\n".join(class_names) + "\n"}),
                 **(extra_files or {})}
        write_extras(extras, files)
        if check_ops:
            check_and_log_ops(tmp, backbone, log)
        if warmup:
            count = write_warmup(tmp, name, backbone, sample_inputs)
            log(f"warmup: {count} requests in assets.extra/tf_serving_warmup_requests")
        result = None
        if verify and sample_inputs is not None and len(sample_inputs):
            requests = sample_requests(backbone, sample_inputs)
            result = verify_in_fresh_process(tmp, requests, where=final,
                                             outputs=signature_outputs(spec.task))
            reference = {"serving_default": reference_probabilities(model, backbone,
                                                                    sample_inputs)}
            if "serving_bytes/image_bytes" in requests:  # what the PNGs decode to
                reference["serving_bytes"] = reference_probabilities(
                    model, backbone, png_pixels(sample_inputs))
            result.max_diff = compare_with_model(final, result, reference, spec.main_output,
                                                 tolerance)
            result.checks.append(f"answers match the in-memory Keras model (max |difference| "
                                 f"{result.max_diff:.1e} on {len(sample_inputs)} examples)")
            log(f"export checked in a fresh process: session loader, warmup replay, "
                f"{len(signatures)} signature(s), object loader; max |difference| to the "
                f"in-memory model = {result.max_diff:.2e} on {len(sample_inputs)} examples")
        if after_write is not None:
            after_write(tmp, result)
        if final.exists():
            raise ExportError(expected("a version that does not exist yet", "export.version",
                                       version))
        publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log_exported(final, log)
    return final


def new_version_dir(base_dir: str | os.PathLike, name: str,
                    version: int | str) -> tuple[Path, int, Path]:
    """``(<base_dir>/<name>, version, <base_dir>/<name>/<version>)`` for a new export: the model
    folder created and writable, ``auto`` resolved to the next free version, which must not
    exist (versions are never overwritten)."""
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
    return model_dir, version, final


def write_extras(extras: Path, files: dict[str, str | bytes]) -> None:
    """Writes `files` (name -> text or bytes) into an export's ``assets.extra`` folder."""
    for filename, content in files.items():
        if isinstance(content, bytes):
            (extras / filename).write_bytes(content)
        else:
            (extras / filename).write_text(content, encoding="utf-8")


def check_and_log_ops(export_dir: Path, backbone: Any, log: Callable[[str], None]) -> None:
    """The op check of an export not yet published (raises on an op TF Serving lacks)."""
    ops = check_serving_ops(export_dir, tokenizer_kind=backbone.info.get("tokenizer"))
    needs = text_ops(ops)
    log(f"op check: {len(ops)} op types, all run by TF Serving's standard build"
        + (f" (tensorflow-text ops: {', '.join(needs)})" if needs else ""))


def log_exported(final: Path, log: Callable[[str], None]) -> None:
    size = sum(p.stat().st_size for p in (final / "variables").glob("*"))
    log(f"exported {final} (variables: {size / 1e6:.1f} MB)")
