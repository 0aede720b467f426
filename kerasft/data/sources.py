"""Step 2 of a run, reading: the config's ``data`` section becomes train / validation / test.

:func:`load_data` reads each given part (train, and validation / test when given) from
``data.source`` and hands the parts to :func:`kerasft.data.splits.finish`, which builds the
vocabulary, the splits and the report:

* ``csv`` (text): the ``csv`` module with ``data.encoding`` and ``data.delimiter``; columns
  ``data.text_column`` / ``data.label_column``. Rows with an empty text or label are skipped and
  counted by reason (``data.strict: true`` makes the first one an error); duplicate texts are
  counted and kept. Line numbers are those a text editor shows (the header is line 1). Large
  files (``data.stream``) are read by :mod:`kerasft.data.stream` with the same row checks.
* ``jsonl``, ``parquet``, ``text_folder``: read by :mod:`kerasft.data.formats`; their rows go
  through the same :class:`~kerasft.data.formats.TextRows` checks as CSV rows.
* ``image_folder``: one subfolder per class; ``.jpg .jpeg .png .gif .bmp`` files (any case) are
  decoded once, in parallel, to find unreadable ones (skipped and counted); other files are
  ignored. The split's dataset decodes lazily from the file paths.
* ``tfds``: read by :func:`kerasft.data.datasets.read_tfds`.

Python callers pass arrays (:mod:`kerasft.data.arrays`) or ``tf.data`` datasets
(:mod:`kerasft.data.datasets`) instead.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from kerasft.config import DataConfig, label_columns
from kerasft.data.datasets import read_tfds
from kerasft.data.formats import (
    TextRows,
    file_encoding,
    find_column,
    find_text_columns,
    read_class_folders,
    read_jsonl,
    read_parquet,
    read_text_folder,
    table_file,
    undecodable,
)
from kerasft.data.splits import (
    DEFAULT_VALIDATION_SPLIT,
    DataSplits,
    Part,
    finish,
    skip,
    sort_labels,
)
from kerasft.data.stream import LineSpans, StreamRows, wants_stream
from kerasft.data.targets import looks_like_regression
from kerasft.errors import DataError, expected

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
FILE_SOURCES = "csv, jsonl, parquet, text_folder, image_folder"

_logger = logging.getLogger(__name__)


def load_data(
    cfg: DataConfig,
    *,
    seed: int,
    multi_label: bool = False,
    regression: bool | None = False,
    log: Callable[[str], None] | None = None,
) -> DataSplits:
    """Reads ``cfg.source`` into train / validation / test splits (see the module docstring).

    `regression`: float targets (CSV only); None decides from the CSV's labels
    (:func:`kerasft.data.splits.looks_like_regression`), other sources stay classification.

    `log` receives progress lines for slow steps (reading a large tfds label column); it defaults
    to this module's `logging` logger.
    """
    log = log or _logger.info
    train = cfg.train or ("train" if cfg.source == "tfds" else None)  # tfds: the 'train' split
    given = {"train": train, "validation": cfg.validation, "test": cfg.test}
    given = {name: value for name, value in given.items() if value}
    if "train" not in given:
        raise DataError(expected("a path for the training data", "data.train", cfg.train))
    report: dict[str, Any] = {"source": cfg.source}
    class_names: list[str] | None = None
    if cfg.source == "csv":
        task = "text"
        paths = [table_file(v, n, "csv", "CSV") for n, v in given.items()]
        streamed = None
        if wants_stream(cfg, paths, multi_label, regression):
            streamed = _stream_csv(given, cfg, regression, report)
        if streamed is not None:
            class_names, parts = streamed
            regression = False
        else:
            parts = {n: _read_csv(v, n, cfg, multi_label, report) for n, v in given.items()}
    elif cfg.source == "jsonl":
        task = "text"
        parts = {n: read_jsonl(v, n, cfg, multi_label, report) for n, v in given.items()}
    elif cfg.source == "parquet":
        task = "text"
        parts = {n: read_parquet(v, n, cfg, multi_label, report) for n, v in given.items()}
    elif cfg.source in ("image_folder", "text_folder"):
        if multi_label:  # one class folder per example
            raise DataError(expected(f"head.activation: softmax for data.source: {cfg.source} "
                                     "(one class folder, one label per example)",
                                     "head.activation", "sigmoid"))
        task = "image" if cfg.source == "image_folder" else "text"
        parts = {n: _read_image_folder(v, n, report) if task == "image"
                 else read_text_folder(v, n, cfg, report) for n, v in given.items()}
    elif cfg.source == "tfds":
        task, class_names, parts = read_tfds(cfg, given, multi_label, report, log)
    elif cfg.source == "arrays":
        raise DataError(expected(f"one of {FILE_SOURCES} or tfds (arrays come from "
                                 "kerasft.data.arrays.from_arrays in Python)", "data.source",
                                 cfg.source))
    else:
        raise DataError(expected(f"one of {FILE_SOURCES}, tfds", "data.source", cfg.source))

    if cfg.source != "csv":
        if regression:
            raise DataError(expected("data.source csv for regression targets", "data.source",
                                     cfg.source))
        regression = False
    validation_split = cfg.validation_split
    if validation_split is None and not cfg.validation:
        validation_split = DEFAULT_VALIDATION_SPLIT
    if regression and not isinstance(cfg.label_column, str):
        class_names = list(cfg.label_column)  # the targets' names: the export's value columns
    return finish(
        task=task,
        parts=parts,
        class_names=class_names,
        multi_label=multi_label,
        seed=seed,
        validation_split=None if cfg.validation else validation_split,
        test_split=None if cfg.test else cfg.test_split,
        max_examples=cfg.max_examples,
        report=report,
        regression=regression,
    )


# ---------------------------------------------------------------------------------------------
# CSV.


def _read_csv(spec: str, name: str, cfg: DataConfig, multi_label: bool,
              report: dict[str, Any]) -> Part:
    path = table_file(spec, name, "csv", "CSV")
    rows = TextRows(path, cfg, multi_label)
    _csv_rows(path, cfg, rows)
    return rows.part(spec, name, report)


def _stream_csv(given: dict[str, str], cfg: DataConfig, regression: bool | None,
                report: dict[str, Any]) -> tuple[list[str], dict[str, Part]] | None:
    """The CSV parts read by :mod:`kerasft.data.stream` (offsets and hashes, no texts), with
    the training labels' vocabulary; None when the labels turn out to be regression targets
    (``data.stream: auto`` then reads the files in memory)."""
    rows = {}
    for name, spec in given.items():
        path = table_file(spec, name, "csv", "CSV")
        rows[name] = StreamRows(path, cfg, {})
        _csv_rows(path, cfg, rows[name])
    labels = list(rows["train"].names)
    if regression is None and looks_like_regression(labels):
        if cfg.stream is True:
            raise DataError(expected("data.stream: false or auto for float targets (regression "
                                     "is not streamed)", "data.stream", True))
        return None
    class_names = sort_labels(set(labels))
    return class_names, {name: r.part(given[name], name, report, class_names)
                         for name, r in rows.items()}


def _csv_rows(path: str, cfg: DataConfig, rows: TextRows) -> None:
    """Feeds the data rows of the CSV at `path` to `rows`; a :class:`StreamRows` also gets each
    record's byte span."""
    encoding = file_encoding(cfg)
    delimiter = {"\\t": "\t", "tab": "\t"}.get(cfg.delimiter, cfg.delimiter)
    if len(delimiter) != 1:
        raise DataError(expected("a single character (or 'tab')", "data.delimiter",
                                 cfg.delimiter))
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))
    spans = None
    reader = None
    try:
        with (open(path, "rb") if isinstance(rows, StreamRows)
              else open(path, newline="", encoding=encoding)) as f:
            if isinstance(rows, StreamRows):
                spans = LineSpans(f, encoding)
                f = spans
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise DataError(expected("a header row and at least one data row", "rows", 0,
                                         where=path))
            text_at = find_text_columns(header, cfg, path)
            label_at = tuple(find_column(header, name, "data.label_column", path)
                             for name in label_columns(cfg))
            fields = max(*text_at, *label_at) + 1
            for _ in range(cfg.skip_rows):  # e.g. the type and flag rows of Orange's .tab files
                next(reader, None)
            last_line = reader.line_num
            if spans is not None:
                rows.reading.update(encoding=encoding, delimiter=delimiter, text_at=text_at)
                start = spans.pos
            for row in reader:
                line, last_line = last_line + 1, reader.line_num
                if spans is not None:  # csv.reader reads no further than the record's end
                    rows.span, start = (start, spans.pos), spans.pos
                if not row:  # a blank line
                    continue
                short = len(row) < fields
                texts = None if short else tuple(row[i] for i in text_at)
                rows.add(line, texts[0] if texts and len(texts) == 1 else texts,
                         None if short else row[label_at[0]] if len(label_at) == 1
                         else tuple(row[i] for i in label_at),  # a multi-target regression
                         missing=(f"at least {fields} fields", "fields", len(row)))
    except UnicodeDecodeError as e:
        raise undecodable(path, encoding, cfg, e) from None
    except csv.Error as e:
        line = reader.line_num if reader is not None else 1
        raise DataError(expected("valid CSV", "error", str(e), where=f"{path}:{line}")) from None

    if rows.rows == 0:
        raise DataError(expected("a header row and at least one data row", "rows", 0,
                                 where=path))


# ---------------------------------------------------------------------------------------------
# Image folders.


def _decode_image(data: tf.Tensor) -> tf.Tensor:
    """An image file -> uint8 [h, w, 3] (grayscale and RGBA become RGB; first GIF frame)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def _read_image_folder(spec: str, name: str, report: dict[str, Any]) -> Part:
    root, classes, paths, labels, ignored = read_class_folders(
        spec, name, IMAGE_EXTENSIONS, example="cat/1.jpg, dog/2.jpg",
        files=(f"image files ({' '.join(IMAGE_EXTENSIONS)})", "images"))
    readable = _readable(paths)
    skipped: dict[str, dict[str, Any]] = {}
    for i in np.flatnonzero(~readable):
        skip(skipped, "unreadable image", os.path.relpath(paths[i], root))
    if not readable.any():
        raise DataError(expected("at least one readable image", "unreadable", len(paths),
                                 where=root))
    kept_paths = [p for p, ok in zip(paths, readable, strict=True) if ok]
    kept_labels = [lab for lab, ok in zip(labels, readable, strict=True) if ok]
    report.setdefault("files", {})[name] = spec
    report.setdefault("rows_read", {})[name] = len(paths)
    report.setdefault("skipped", {})[name] = skipped
    report.setdefault("ignored_files", {})[name] = ignored
    report.setdefault("empty_classes", {})[name] = sorted(set(classes) - set(kept_labels))

    def build(indices: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
        files = tf.constant([kept_paths[i] for i in indices], dtype=tf.string)
        ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(y)))
        return ds.map(lambda p, label: (_decode_image(tf.io.read_file(p)), label),
                      num_parallel_calls=tf.data.AUTOTUNE)

    return Part(name=name, where=spec, build=build, raw=kept_labels)


def _readable(paths: list[str]) -> np.ndarray:
    """Which files decode as images: one parallel tf.data pass; failures are dropped by index."""
    index = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(paths, dtype=tf.string)))

    def probe(i: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
        image = _decode_image(tf.io.read_file(path))
        with tf.control_dependencies([tf.debugging.assert_positive(tf.size(image))]):
            return tf.identity(i)

    ds = index.map(probe, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors().batch(1024)
    ok = np.zeros(len(paths), bool)
    for batch in ds.as_numpy_iterator():
        ok[batch] = True
    return ok
