"""Prediction with an exported SavedModel alone (what a TF Serving client sees).

Used by ``kerasft predict EXPORT_DIR``: loads ``serving_default`` (and ``serving_bytes`` for
image files) with plain TensorFlow, no kerasft model code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.config import PAIR_INPUTS
from kerasft.errors import ExportError, KerasftError, expected

# What serving_bytes decodes (tf.io.decode_image): JPEG, PNG, GIF, BMP, by their magic bytes.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def resolve_version_dir(export_dir: str | os.PathLike) -> tuple[Path, int | None]:
    """A version folder as given, or for a model folder its newest integer version that holds a
    SavedModel (what TF Serving loads by default); returns the folder and the version picked."""
    path = Path(export_dir)
    if (path / "saved_model.pb").is_file() or not path.is_dir():
        return path, None
    versions = [int(p.name) for p in path.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()]
    if not versions:
        return path, None
    return path / str(max(versions)), max(versions)


def read_image_files(files: list[str]) -> list[bytes]:
    """The files' bytes; a file that is missing or not a JPEG/PNG/GIF/BMP image is one error."""
    blobs = []
    for file in files:
        try:
            data = Path(file).read_bytes()
        except OSError as e:
            raise KerasftError(expected("a readable image file", "--image", file)
                               + f" ({e.strerror})") from None
        if not data.startswith(_IMAGE_MAGIC):
            raise KerasftError(expected("a JPEG, PNG, GIF or BMP image file", "--image", file)
                               + f" (starts with {data[:8]!r})")
        blobs.append(data)
    return blobs


def load_saved_model(export_dir: str | os.PathLike) -> Any:
    """Loads a SavedModel (registering tensorflow-text's ops first, which BERT exports need)."""
    import tensorflow as tf

    try:
        import tensorflow_text  # noqa: F401
    except ImportError:
        pass
    path = Path(export_dir)
    if not (path / "saved_model.pb").is_file():
        raise ExportError(expected("a SavedModel version folder (.../<name>/<version>/ with "
                                   "saved_model.pb) or a model folder holding one",
                                   "export_dir", str(path)))
    return tf.saved_model.load(str(path))


def shown_input(value: str | tuple[str, ...], limit: int = 60) -> str:
    """An input as a printed line shows it: a text, or a pair as ``a | b``, cut to `limit`."""
    text = value if isinstance(value, str) else " | ".join(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_signature(loaded: Any, inputs: list[Any], kind: str) -> dict[str, np.ndarray]:
    """Runs the right signature for texts, text pairs (``kind="pair"``, ``(a, b)`` tuples)
    or image file paths; returns numpy outputs."""
    import tensorflow as tf

    signatures = loaded.signatures
    if kind == "pair":
        fn = signatures["serving_default"]
        names = sorted(fn.structured_input_signature[1])
        if names != sorted(PAIR_INPUTS):
            raise KerasftError(expected(f"a sentence-pair model (inputs {', '.join(PAIR_INPUTS)})",
                                        "serving_default inputs", names))
        result = fn(**{name: tf.constant([pair[i] for pair in inputs])
                       for i, name in enumerate(PAIR_INPUTS)})
    elif kind == "text":
        fn = signatures["serving_default"]
        name = list(fn.structured_input_signature[1])[0]
        if name != "text":
            raise KerasftError(expected("a text model (input 'text')", "serving_default input",
                                        name))
        result = fn(text=tf.constant(inputs))
    else:
        blobs = read_image_files(inputs)
        if "serving_bytes" not in signatures:
            raise KerasftError(expected("an image model with a serving_bytes signature",
                                        "signatures", sorted(signatures)))
        try:
            result = signatures["serving_bytes"](image_bytes=tf.constant(blobs))
        except tf.errors.InvalidArgumentError as e:
            # A file with an image's magic bytes but a damaged body.
            message = " ".join(str(e.message).split())[:200]
            raise KerasftError(expected("decodable image files", "--image", ", ".join(inputs))
                               + f" ({message})") from None
    return {k: v.numpy() for k, v in result.items()}


def format_value(value: Any) -> str:
    """A regression answer (one target, or a row of targets) for a printed line."""
    values = np.asarray(value, dtype=float).reshape(-1)
    return ", ".join(f"{v:.4g}" for v in values)


def tagged_line(words: Any, tags: Any, types: Any, texts: Any) -> str:
    """One token-classification answer: ``word/TAG ...<TAB>TYPE: entity; ...`` (pads dropped)."""
    def text(v: Any) -> str:
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)

    tagged = " ".join(f"{text(w)}/{text(t)}" for w, t in zip(words, tags) if text(w))
    found = "; ".join(f"{text(k)}: {text(v)}" for k, v in zip(types, texts) if text(k))
    return f"{tagged}\t{found or '-'}"


def predict_with_saved_model(export_dir: str | os.PathLike, inputs: list[Any], kind: str = "text",
                             top: int = 3) -> list[str]:
    """Readable lines: the predicted label, its probability and the top-k, per input.

    `export_dir` is a version folder, or a model folder (its newest version is used)."""
    export_dir, _ = resolve_version_dir(export_dir)
    if kind == "image":
        read_image_files(inputs)  # before loading the model: a wrong file fails at once
    loaded = load_saved_model(export_dir)
    labels_file = Path(export_dir) / "assets.extra" / "labels.txt"
    out = run_signature(loaded, inputs, kind)
    if "value" in out:  # regression: `value<TAB>input`
        return [f"{format_value(v)}\t{shown_input(t)}" for t, v in zip(inputs, out["value"])]
    if "tags" in out:  # token classification: `word/TAG ...<TAB>TYPE: entity; ...`
        return [tagged_line(words, tags, types, texts) for words, tags, types, texts in zip(
            out["words"], out["tags"], out["entity_type"], out["entity_text"])]
    probabilities = out["probabilities"]
    names = (labels_file.read_text(encoding="utf-8").splitlines() if labels_file.is_file()
             else [str(i) for i in range(probabilities.shape[1])])
    lines = []
    for text, label, probs in zip(inputs, out["labels"], probabilities):
        order = np.argsort(-probs)[:top]
        best = ", ".join(f"{names[i]} {probs[i]:.3f}" for i in order)
        lines.append(f"{label.decode('utf-8')}\t[{best}]\t{shown_input(text)}")
    return lines
