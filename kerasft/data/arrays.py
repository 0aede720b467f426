"""Step 2 of a run, reading in-memory arrays: :func:`from_arrays`, for Python callers.

Texts (sequences of strings) or images (``[n, h, w, c]`` arrays) with labels as strings, class
ids, one-hot / multi-hot rows or, multi-label, lists of labels; empty texts and missing labels
are skipped and counted. The parts go to :func:`kerasft.data.splits.finish`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from kerasft.data.splits import (
    DEFAULT_VALIDATION_SPLIT,
    DataSplits,
    Part,
    check_integer_labels,
    duplicates,
    finish,
    integer_class_names,
    skip,
)
from kerasft.errors import DataError, expected


def from_arrays(
    x_train: Any,
    y_train: Any,
    *,
    x_val: Any = None,
    y_val: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    class_names: Sequence[str] | None = None,
    validation_split: float | None = None,
    test_split: float | None = None,
    seed: int = 0,
    multi_label: bool = False,
    label_separator: str = "|",
) -> DataSplits:
    """Builds splits from in-memory arrays.

    `x` is a sequence of strings (text), of string pairs ``[n, 2]`` (a sentence-pair task: the
    backbone must be built for pairs, ``data.text_column: [a, b]``) or images ``[n, h, w, 3]``
    (``uint8``, or floats in 0..255; ``[n, h, w]`` / ``[n, h, w, 1]`` grayscale and RGBA are
    converted to RGB). `y` holds labels as strings or ints (ints are class ids 0..K-1: they index
    `class_names` when it is given, else the class names are ``"0".."K-1"`` and every id must occur
    in `y_train`; other integers are refused, see :func:`integer_class_names`), or ``[n, C]``
    one-hot / multi-hot rows; with `multi_label` a label may also be a list of labels or a string of
    labels joined by `label_separator` (``"a|b"``, ``data.label_separator``, as in CSV files).
    Without `x_val`, a stratified `validation_split` (default 0.1; 0 for none) of the training
    arrays becomes the validation split; `test_split` does the same for the test split. Texts that
    are empty and labels that are missing are skipped and counted in the report.
    """
    if (x_val is None) != (y_val is None):
        raise DataError(expected("x_val and y_val together", "y_val given",
                                 y_val is not None, where="from_arrays"))
    if (x_test is None) != (y_test is None):
        raise DataError(expected("x_test and y_test together", "y_test given",
                                 y_test is not None, where="from_arrays"))
    if x_val is not None and validation_split:
        raise DataError(expected("either x_val or validation_split, not both",
                                 "validation_split", validation_split, where="from_arrays"))
    if x_test is not None and test_split:
        raise DataError(expected("either x_test or test_split, not both", "test_split",
                                 test_split, where="from_arrays"))
    for key, value in (("validation_split", validation_split), ("test_split", test_split)):
        if value is not None and not 0.0 <= value < 1.0:
            raise DataError(expected("a fraction in [0, 1)", key, value, where="from_arrays"))
    names = [str(c) for c in class_names] if class_names is not None else None
    if not multi_label:
        for part_name, y in (("train", y_train), ("validation", y_val), ("test", y_test)):
            if y is not None:
                check_integer_labels(y, names, f"from_arrays {part_name}")
        if names is None:
            names = integer_class_names(y_train)
    report: dict[str, Any] = {"source": "arrays"}
    given = {"train": (x_train, y_train), "validation": (x_val, y_val), "test": (x_test, y_test)}
    parts: dict[str, Part] = {}
    task = None
    for name, (x, y) in given.items():
        if x is None:
            continue
        part_task, parts[name] = _array_part(name, x, y, names, multi_label, report,
                                             label_separator)
        if task is not None and part_task != task:
            raise DataError(expected(f"{task} examples like x_train", f"{name} task", part_task,
                                     where="from_arrays"))
        task = part_task
    if validation_split is None and x_val is None:
        validation_split = DEFAULT_VALIDATION_SPLIT
    return finish(
        task=task,
        parts=parts,
        class_names=names,
        multi_label=multi_label,
        seed=seed,
        validation_split=validation_split or None,
        test_split=test_split or None,
        max_examples=None,
        report=report,
    )


# ---------------------------------------------------------------------------------------------
# Arrays.


def _array_part(name: str, x: Any, y: Any, class_names: list[str] | None, multi_label: bool,
                report: dict[str, Any], label_separator: str = "|") -> tuple[str, Part]:
    where = f"from_arrays {name}"
    if isinstance(y, np.ndarray):
        y_arr = y
    elif multi_label and not _is_rectangular(y):
        y_arr = np.empty(len(y), dtype=object)
        y_arr[:] = list(y)
    else:
        y_arr = np.asarray(y)
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (str, bytes)):
        x = np.asarray(x, dtype=object)
    elif isinstance(x, (list, tuple)) and x and isinstance(x[0], (list, tuple)) \
            and x[0] and isinstance(x[0][0], (str, bytes)):
        x = np.asarray(x, dtype=object)  # sentence pairs: [n, 2]
    x = np.asarray(x)
    n = len(x)
    if len(y_arr) != n:
        raise DataError(expected(f"as many labels as examples ({n})", f"len(y_{name})",
                                 len(y_arr), where="from_arrays"))
    raw = _raw_labels(y_arr, class_names, multi_label, where, label_separator)
    skipped: dict[str, dict[str, Any]] = {}
    if x.dtype.kind in "USO":
        if x.ndim == 2 and x.shape[1] == 2:  # sentence pairs: (text_a, text_b) per example
            texts = [tuple(_decoded(t) for t in row) for row in x]
        elif x.ndim == 1:
            texts = [_decoded(t) for t in x]
        else:
            raise DataError(expected("texts [n] or text pairs [n, 2]", f"x_{name} shape",
                                     x.shape, where="from_arrays"))
        keep = []
        for i, (text, label) in enumerate(zip(texts, raw, strict=True)):
            segments = text if isinstance(text, tuple) else (text,)
            if not all(isinstance(t, str) and t.strip() for t in segments):
                skip(skipped, "empty text", i)
            elif not label:
                skip(skipped, "missing label", i)
            else:
                keep.append(i)
        texts = [texts[i] for i in keep]
        raw = [raw[i] for i in keep]

        def build(indices: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
            values = tf.constant([texts[i] for i in indices], dtype=tf.string)
            return tf.data.Dataset.from_tensor_slices((values, tf.constant(labels)))

        task = "text"
    else:
        images = _images_uint8(x, where)
        keep = [i for i, label in enumerate(raw) if label]
        for i in range(n):
            if not raw[i]:
                skip(skipped, "missing label", i)
        if len(keep) < n:
            images = images[keep]
            raw = [raw[i] for i in keep]
        texts = None

        def build(indices: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
            return tf.data.Dataset.from_tensor_slices((images[indices], labels))

        task = "image"
    report.setdefault("files", {})[name] = where
    report.setdefault("rows_read", {})[name] = n
    report.setdefault("skipped", {})[name] = skipped
    if texts is not None:
        report.setdefault("duplicates", {})[name] = duplicates(texts, raw, keep)
    return task, Part(name=name, where=where, build=build, raw=raw, texts=texts)


def _is_rectangular(y: Any) -> bool:
    try:
        return np.asarray(y).dtype != object
    except ValueError:
        return False


def _raw_labels(y: np.ndarray, class_names: list[str] | None, multi_label: bool,
                where: str, separator: str = "|") -> list[Any]:
    """Label strings (tuples of them when multi-label); '' / () for a missing label."""
    def name_of(value: Any) -> str:
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        if isinstance(value, (int, np.integer, float, np.floating)) and not isinstance(
                value, bool):
            if float(value) != int(value):
                raise DataError(expected("integer or string labels", "label", value, where=where))
            value = int(value)
            if class_names is not None:
                if not 0 <= value < len(class_names):
                    raise DataError(expected(f"class ids 0..{len(class_names) - 1}", "label",
                                             value, where=where))
                return class_names[value]
            return str(value)
        return str(value).strip()

    if y.ndim == 2 and y.dtype.kind in "biuf":
        width = y.shape[1]
        names = class_names if class_names is not None else [str(i) for i in range(width)]
        if len(names) != width:
            raise DataError(expected(f"{len(names)} columns (one per class name)", "y shape",
                                     y.shape, where=where))
        if multi_label:
            return [tuple(names[j] for j in np.flatnonzero(row > 0.5)) for row in y]
        return [names[int(j)] for j in np.argmax(y, axis=1)]
    if y.ndim == 2 and multi_label:
        y = _object_rows(y)
    if y.ndim != 1:
        raise DataError(expected("labels of shape [n] or [n, num_classes]", "y shape", y.shape,
                                 where=where))
    if not multi_label:
        return [name_of(v) for v in y]
    out = []
    for value in y:
        if isinstance(value, str):
            items = value.split(separator)
        elif isinstance(value, (list, tuple, set, np.ndarray)):
            items = list(value)
        else:
            items = [value]
        out.append(tuple(dict.fromkeys(n for n in (name_of(v) for v in items) if n)))
    return out


def _object_rows(y: np.ndarray) -> np.ndarray:
    rows = np.empty(len(y), dtype=object)
    rows[:] = [list(row) for row in y]
    return rows


def _images_uint8(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or x.dtype.kind not in "biuf":
        raise DataError(expected("strings or images [n, h, w, 3]", "x shape / dtype",
                                 f"{x.shape} {x.dtype}", where=where))
    if x.dtype.kind == "f":
        top = float(x.max()) if x.size else 0.0
        if 0.0 < top <= 1.0:
            raise DataError(expected("pixel values in 0..255 (multiply images in 0..1 by 255)",
                                     "max", top, where=where))
        x = np.clip(np.rint(x), 0, 255)
    x = x.astype(np.uint8, copy=False)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    return np.ascontiguousarray(x)


def _decoded(text: Any) -> Any:
    return text.decode("utf-8") if isinstance(text, bytes) else text
