"""TFLite exports, plain or quantised, with their size and quality measured against the float model.

``kerasft export RUN_DIR --format tflite --quantize none|float16|dynamic|int8`` writes, into
``<export.dir>/<name>/tflite/`` (TF Serving ignores folders whose names are not integers):

- ``<name>_<quantize>.tflite``;
- ``tflite_report.json``: one entry per quantisation (file size; accuracy and macro-F1 of the
  TFLite model and of the float reference on the test split, else validation, and their deltas;
  top-1 agreement; largest probability difference);
- ``labels.txt``; for text models also ``vocab.txt`` and ``tokenizer_config.json``.

What the graph holds:

- **image models**: the whole raw-pixel path, resize + the backbone's preprocessing + the model.
  Input ``image``: float32 ``[batch, height, width, 3]``, pixels 0..255 at a fixed size (the
  backbone's input size unless ``input_size`` says otherwise; other sizes are resized in the
  graph with TFLite's RESIZE_BILINEAR). Output ``probabilities``.
- **text models** (``bert`` only; other KerasHub families are a one-line error): the tokenizer
  stays *outside*. KerasHub's BERT tokenizer runs TensorFlow Text
  ops (FastWordpieceTokenizeWithOffsets, RegexSplitWithOffsets, CaseFoldUTF8, ...) that are not
  TFLite builtins; TFLite can only run them with the Flex delegate plus tensorflow-text's own
  TFLite kernels, which a mobile app does not link by default. So the TFLite model takes
  ``token_ids``, ``segment_ids`` and ``padding_mask`` (int32 ``[batch, sequence_length]``) and
  the vocabulary and tokenizer settings are written next to it; :func:`tokenize` rebuilds the
  same tokenizer from those files (any WordPiece implementation with the same vocabulary,
  lower-casing and ``[CLS] text [SEP]`` + padding gives the same ids).

Quantisations (TFLite converter settings):

- ``none``: float32 weights and compute;
- ``float16``: float16 weights (half the size), float32 compute;
- ``dynamic``: int8 weights, activations quantised on the fly (about a quarter of the size);
- ``int8``: int8 weights and activations calibrated on up to ``calibration_examples`` training
  examples (the representative dataset), builtin int8 kernels only; inputs and outputs stay
  float32 (int32 token ids for text), so callers feed the same data as for the float model. If
  the converter cannot quantise every op, the export fails unless ``allow_float_fallback``.

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.errors import ExportError, KerasftError, expected
from kerasft.io import atomic_write

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
TEXT_INPUTS = ("token_ids", "segment_ids", "padding_mask")
REPORT_FILENAME = "tflite_report.json"
VOCAB_FILENAME = "vocab.txt"
TOKENIZER_FILENAME = "tokenizer_config.json"
LABELS_FILENAME = "labels.txt"


# ---------------------------------------------------------------------------------------------
# The graph that is converted.


def serving_function(model: Any, backbone: Any,
                     input_size: tuple[int, int] | None = None) -> Any:
    """The ``tf.function`` TFLite runs: raw pixels -> probabilities (images) or token
    features -> probabilities (text); ``{"probabilities": float32 [batch, num_classes]}``."""
    import tensorflow as tf

    from kerasft.data.pipeline import resize_images

    if backbone.task == "text":
        length = int(backbone.sequence_length)
        specs = [tf.TensorSpec([None, length], tf.int32, name=k) for k in TEXT_INPUTS]

        @tf.function(input_signature=specs)
        def serve(token_ids: Any, segment_ids: Any, padding_mask: Any) -> dict[str, Any]:
            x = {"token_ids": token_ids, "segment_ids": segment_ids,
                 "padding_mask": padding_mask}
            return {"probabilities": tf.cast(model(x, training=False), tf.float32)}

    else:
        size = tuple(backbone.image_size)
        height, width = tuple(input_size or size)

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32,
                                                    name="image")])
        def serve(image: Any) -> dict[str, Any]:
            if (height, width) != size:
                image = resize_images(image, size)
            x = backbone.preprocess(image)
            return {"probabilities": tf.cast(model(x, training=False), tf.float32)}

    return serve


def _frozen(serve: Any) -> Any:
    """`serve` with its variables folded into constants.

    Converted as is, Keras 3 variables stay resource variables in the flatbuffer (VAR_HANDLE /
    READ_VARIABLE ops that the interpreter never initialises: NaN outputs), so the weights are
    frozen first and the frozen graph is wrapped again to keep named inputs and outputs.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    specs = serve.input_signature
    if len(specs) == 1:

        @tf.function(input_signature=specs)
        def frozen_image(image: Any) -> dict[str, Any]:
            return {"probabilities": frozen(image)[0]}

        return frozen_image

    @tf.function(input_signature=specs)
    def frozen_text(token_ids: Any, segment_ids: Any, padding_mask: Any) -> dict[str, Any]:
        return {"probabilities": frozen(token_ids, segment_ids, padding_mask)[0]}

    return frozen_text


def convert(serve: Any, quantize: str,
            representative: Callable[[], Iterator[dict[str, np.ndarray]]] | None = None,
            allow_float_fallback: bool = False) -> tuple[bytes, str]:
    """Converts `serve` with the settings of `quantize`; returns ``(flatbuffer, ops note)``."""
    import tensorflow as tf

    if quantize not in QUANTIZATIONS:
        raise KerasftError(expected(f"one of {', '.join(QUANTIZATIONS)}", "quantize", quantize))

    frozen_serve = _frozen(serve)

    def converter(ops: list[Any]) -> Any:
        conv = tf.lite.TFLiteConverter.from_concrete_functions(
            [frozen_serve.get_concrete_function()], tf.Module())
        conv.target_spec.supported_ops = ops
        if quantize != "none":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            conv.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            if representative is None:
                raise KerasftError(expected("a representative dataset for int8",
                                            "representative", None))
            conv.representative_dataset = representative
        return conv

    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if quantize != "int8":
        return bytes(converter([builtins]).convert()), "TFLite builtins"
    with _no_interpreter_warning():  # calibration runs the interpreter
        try:
            return (bytes(converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]).convert()),
                    "int8 builtins only")
        except Exception as err:  # noqa: BLE001 - the converter raises several error types
            if not allow_float_fallback:
                first = " ".join(str(err).split())[:300]
                raise ExportError(
                    expected("every op quantisable to int8 (or allow_float_fallback / "
                             "--allow-float-fallback)", "error", first, "tflite int8")
                ) from None
        return (bytes(converter([tf.lite.OpsSet.TFLITE_BUILTINS_INT8, builtins]).convert()),
                "int8 where possible, float fallback")


# ---------------------------------------------------------------------------------------------
# Data: calibration, evaluation, tokenisation.


def _batches(split: Any, backbone: Any, input_size: tuple[int, int] | None,
             batch_size: int = 32, limit: int | None = None) -> Iterator[tuple[Any, np.ndarray]]:
    """``(raw inputs, labels)`` batches of a data split, streamed: texts as a list of str,
    images as float32 resized to the TFLite input size."""
    from kerasft.data.pipeline import resize_images

    ds = split.dataset if limit is None else split.dataset.take(limit)
    if backbone.task != "text":
        size = tuple(input_size or backbone.image_size)
        ds = ds.map(lambda x, y: (resize_images(x, size), y))
    for x, y in ds.batch(batch_size):
        if backbone.task == "text":
            yield [t.decode("utf-8") for t in x.numpy()], y.numpy()
        else:
            yield x.numpy(), y.numpy()


def _text_features(backbone: Any, texts: list[str]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    out = backbone.preprocess(tf.constant(texts))
    return {k: np.asarray(out[k], dtype=np.int32) for k in TEXT_INPUTS}


def representative_dataset(ft: Any, count: int = 100,
                           input_size: tuple[int, int] | None = None
                           ) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    """Calibration samples for int8: up to `count` training examples, one per step, as
    ``{input name: batch of one}`` (the converter's input order is not the signature's)."""
    if ft.data is None:
        raise KerasftError(expected("the training data for int8 calibration (fit() or "
                                    "load_data() first)", "data", None, "tflite int8"))
    rows = []
    for inputs, _ in _batches(ft.data.train, ft.backbone, input_size, batch_size=1, limit=count):
        if ft.backbone.task == "text":
            rows.append(_text_features(ft.backbone, inputs))
        else:
            rows.append({"image": inputs})

    def generate() -> Iterator[dict[str, np.ndarray]]:
        yield from rows

    return generate


def tokenize(texts: list[str], folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """TFLite text inputs for `texts` from the ``vocab.txt`` and ``tokenizer_config.json`` written
    next to a text ``.tflite`` (KerasHub's BERT tokenizer and preprocessor, rebuilt)."""
    import keras_hub
    import tensorflow as tf

    folder = Path(folder)
    config_file = folder / TOKENIZER_FILENAME
    if not config_file.is_file() or not (folder / VOCAB_FILENAME).is_file():
        raise KerasftError(expected(f"a TFLite text export folder with {VOCAB_FILENAME} and "
                                    f"{TOKENIZER_FILENAME}", "folder", str(folder), "tokenize"))
    config = json.loads(config_file.read_text(encoding="utf-8"))
    tokenizer = keras_hub.tokenizers.BertTokenizer(
        vocabulary=str(folder / VOCAB_FILENAME), **config["tokenizer"])
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=config["sequence_length"],
        truncate=config["truncate"])
    out = preprocessor(tf.constant(list(texts)))
    return {k: np.asarray(out[k], dtype=np.int32) for k in TEXT_INPUTS}


def _tokenizer_files(backbone: Any) -> dict[str, str]:
    preprocessor = backbone.preprocessor
    tokenizer = preprocessor.tokenizer
    keep = ("lowercase", "strip_accents", "split", "suffix_indicator", "oov_token")
    tok_config = {k: v for k, v in tokenizer.get_config().items() if k in keep}
    config = {
        "tokenizer_class": type(tokenizer).__name__,
        "tokenizer": tok_config,
        "vocabulary": VOCAB_FILENAME,
        "sequence_length": int(backbone.sequence_length),
        "truncate": preprocessor.truncate,
        "format": "[CLS] text [SEP], then [PAD] up to sequence_length",
        "inputs": list(TEXT_INPUTS),
        "cls_token_id": int(tokenizer.cls_token_id),
        "sep_token_id": int(tokenizer.sep_token_id),
        "pad_token_id": int(tokenizer.pad_token_id),
    }
    return {VOCAB_FILENAME: "\n".join(tokenizer.vocabulary) + "\n",
            TOKENIZER_FILENAME: json.dumps(config, indent=2) + "\n"}


# ---------------------------------------------------------------------------------------------
# Running a TFLite model.


@contextlib.contextmanager
def _no_interpreter_warning() -> Iterator[None]:
    """Hides ``tf.lite.Interpreter``'s deprecation warning (the same flatbuffers run in LiteRT's
    ``ai_edge_litert.interpreter.Interpreter``, its successor; int8 calibration uses it too)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        yield


def _interpreter(content: bytes) -> Any:
    import tensorflow as tf

    with _no_interpreter_warning():
        return tf.lite.Interpreter(model_content=content)


class TFLiteModel:
    """A kerasft ``.tflite`` (path or bytes) in ``tf.lite.Interpreter``; calling it on one batch
    (an image array ``[n, h, w, 3]``, or ``{"token_ids", "segment_ids", "padding_mask"}`` arrays
    ``[n, sequence_length]``) returns its probabilities."""

    def __init__(self, model: bytes | str | os.PathLike) -> None:
        content = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.runner = _interpreter(content).get_signature_runner()

    def details(self) -> dict[str, dict[str, Any]]:
        """``{"inputs"|"outputs": {name: {"dtype", "shape"}}}`` (-1: any size)."""
        def describe(items: dict[str, Any]) -> dict[str, Any]:
            return {k: {"dtype": np.dtype(v["dtype"]).name, "shape": v["shape_signature"].tolist()}
                    for k, v in items.items()}

        return {"inputs": describe(self.runner.get_input_details()),
                "outputs": describe(self.runner.get_output_details())}

    def __call__(self, inputs: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        if isinstance(inputs, np.ndarray):
            inputs = {"image": inputs}
        names = set(self.runner.get_input_details())
        if set(inputs) != names:
            raise KerasftError(expected(f"inputs {sorted(names)}", "inputs", sorted(inputs),
                                        "TFLiteModel"))
        return np.asarray(self.runner(**inputs)["probabilities"])


def run_tflite(model: bytes | str | os.PathLike, inputs: dict[str, np.ndarray] | np.ndarray,
               batch_size: int = 32) -> np.ndarray:
    """Probabilities of a kerasft ``.tflite`` for `inputs` (see :class:`TFLiteModel`), run in
    batches of `batch_size`."""
    lite = TFLiteModel(model)
    if isinstance(inputs, np.ndarray):
        inputs = {"image": inputs}
    count = len(next(iter(inputs.values())))
    outputs = [lite({k: v[s: s + batch_size] for k, v in inputs.items()})
               for s in range(0, count, batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------------------------------
# The export.


def _reference(ft: Any, serve: Any, saved_model: str | None
               ) -> tuple[Callable[[Any], np.ndarray], str]:
    """A function raw batch -> probabilities of the float model, and its description."""
    import tensorflow as tf

    text = ft.backbone.task == "text"
    if saved_model:
        from kerasft.export.loading import load_saved_model

        fn = load_saved_model(saved_model).signatures["serving_default"]

        def by_saved_model(raw: Any) -> np.ndarray:
            out = fn(text=tf.constant(raw)) if text else fn(image=tf.constant(raw))
            return out["probabilities"].numpy()

        return by_saved_model, f"SavedModel {saved_model} (serving_default)"

    def by_keras(raw: Any) -> np.ndarray:
        out = serve(**_text_features(ft.backbone, raw)) if text else serve(tf.constant(raw))
        return out["probabilities"].numpy()

    return by_keras, "float32 model (the computation of the SavedModel's serving_default)"


def export_tflite(
    ft: Any,
    out_dir: str | os.PathLike | None = None,
    quantize: str = "none",
    *,
    calibration_examples: int = 100,
    input_size: tuple[int, int] | None = None,
    saved_model: str | os.PathLike | None = None,
    allow_float_fallback: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Converts `ft`'s model to TFLite, measures it, writes the files; returns the report entry.

    `out_dir` defaults to ``<export.dir>/<name>/tflite``. The evaluation runs on the test split
    (else validation) of ``ft.data``, against `saved_model` (a SavedModel version folder) when
    given, else the float Keras model (what the SavedModel computes, within 1e-5).
    """
    if quantize not in QUANTIZATIONS:
        raise KerasftError(expected(f"one of {', '.join(QUANTIZATIONS)}", "quantize", quantize))
    if ft.config.head.task == "regression":  # its report and files are classification ones
        raise KerasftError(expected("a classification model (TFLite export of regression heads "
                                    "is not supported yet)", "head.task", "regression"))
    if isinstance(calibration_examples, bool) or not isinstance(calibration_examples, int) or \
            calibration_examples < 1:
        raise KerasftError(expected("an integer >= 1", "calibration_examples",
                                    calibration_examples))
    model = ft.model
    backbone = ft.backbone
    if backbone.task == "text" and backbone.name != "bert":
        # The tokenizer stays outside the .tflite and its files are BERT's (vocab.txt, the
        # [CLS]/[SEP] layout, three inputs); other families' tokenizers are not written yet.
        raise ExportError(expected("a bert backbone for a TFLite text export (the SavedModel "
                                   "export serves every KerasHub text family)", "backbone.name",
                                   backbone.name, "export --format tflite"))
    if input_size is not None:
        if backbone.task != "image":
            raise KerasftError(expected("input_size only for image models", "input_size",
                                        input_size))
        input_size = (int(input_size[0]), int(input_size[1]))
    out = Path(out_dir) if out_dir else Path(ft.config.export.dir) / ft.config.name / "tflite"
    if ft.data is None:
        ft.data = ft.load_data()
    split_name = "test" if ft.data.test is not None else "validation"
    split = getattr(ft.data, split_name)
    if split is None:
        raise KerasftError(expected("a test or validation split to measure the TFLite model on",
                                    "data", "train only", "tflite"))

    serve = serving_function(model, backbone, input_size)
    representative = (representative_dataset(ft, calibration_examples, input_size)
                      if quantize == "int8" else None)
    log(f"tflite: converting {ft.config.name} ({quantize})")
    flatbuffer, ops_note = convert(serve, quantize, representative, allow_float_fallback)

    reference_fn, reference_name = _reference(ft, serve, str(saved_model) if saved_model
                                              else None)
    lite = TFLiteModel(flatbuffer)
    parts: dict[str, list[np.ndarray]] = {"reference": [], "tflite": [], "labels": []}
    for raw, y in _batches(split, backbone, input_size):
        parts["reference"].append(reference_fn(raw))
        parts["tflite"].append(lite(_text_features(backbone, raw) if backbone.task == "text"
                                    else raw))
        parts["labels"].append(y)
    reference, probabilities, labels = (np.concatenate(parts[k]) for k in
                                        ("reference", "tflite", "labels"))

    from kerasft.evaluation.metrics import classification_report

    def scores(p: np.ndarray) -> dict[str, float]:
        r = classification_report(labels, p, ft.class_names, multi_label=ft.multi_label)
        return {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}

    ref_scores, lite_scores = scores(reference), scores(probabilities)
    filename = f"{ft.config.name}_{quantize}.tflite"
    params = sum(int(np.prod(w.shape)) for w in model.weights)
    entry: dict[str, Any] = {
        "file": filename,
        "quantize": quantize,
        "ops": ops_note,
        "size_bytes": len(flatbuffer),
        "float32_weights_bytes": params * 4,
        **lite.details(),
        "split": split_name,
        "examples": len(labels),
        "reference": reference_name,
        "accuracy": {"reference": ref_scores["accuracy"], "tflite": lite_scores["accuracy"],
                     "delta": lite_scores["accuracy"] - ref_scores["accuracy"]},
        "macro_f1": {"reference": ref_scores["macro_f1"], "tflite": lite_scores["macro_f1"],
                     "delta": lite_scores["macro_f1"] - ref_scores["macro_f1"]},
        "top1_agreement": float(np.mean(reference.argmax(-1) == probabilities.argmax(-1))),
        "max_abs_probability_diff": float(np.max(np.abs(reference - probabilities))),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if quantize == "int8":
        entry["calibration_examples"] = min(calibration_examples, ft.data.train.size)
    if input_size is not None:
        entry["input_size"] = list(input_size)

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(expected("a writable folder", "out_dir", str(out))
                          + f" ({e.strerror})") from None
    atomic_write(out / filename, flatbuffer)
    atomic_write(out / LABELS_FILENAME, "\n".join(ft.class_names) + "\n", durable=False)
    if backbone.task == "text":
        for name, text in _tokenizer_files(backbone).items():
            atomic_write(out / name, text, durable=False)
    report_path = out / REPORT_FILENAME
    report: dict[str, Any] = {}
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except ValueError:
            report = {}
    report[quantize] = entry
    atomic_write(report_path, json.dumps(report, indent=2) + "\n", durable=False)
    log(format_entry(entry))
    log(f"tflite: {out / filename} (report: {report_path})")
    entry["path"] = str(out / filename)
    return entry


def format_entry(entry: dict[str, Any]) -> str:
    """One line: size, accuracy and macro-F1 with deltas against the reference."""
    acc, f1 = entry["accuracy"], entry["macro_f1"]
    return (f"tflite {entry['quantize']}: {entry['size_bytes'] / 1e6:.3f} MB "
            f"({entry['size_bytes'] / max(entry['float32_weights_bytes'], 1):.0%} of the float32 "
            f"weights); {entry['split']} ({entry['examples']} examples): accuracy "
            f"{acc['tflite']:.4f} ({acc['delta']:+.4f}), macro-F1 {f1['tflite']:.4f} "
            f"({f1['delta']:+.4f}), top-1 agreement {entry['top1_agreement']:.1%}, "
            f"max |prob diff| {entry['max_abs_probability_diff']:.3g}")
