"""Step 2 of a run, reading: JSON Lines, Parquet and text folders, and what the readers share.

Every tabular text source (``csv`` in :mod:`kerasft.data.sources`, ``jsonl``, ``parquet``) feeds
its rows to a :class:`TextRows`, which applies the same checks (empty text or label skipped and
counted, ``data.strict``), parses labels the same way and makes the :class:`~kerasft.data.splits.
Part` that :func:`kerasft.data.splits.finish` splits: all of them split, cap and report alike.

* ``jsonl``: one JSON object per line (blank lines are skipped), read with ``data.encoding``;
  ``data.text_column`` / ``data.label_column`` name the keys. The first object must have both
  keys; a later object without one is skipped as "missing keys". Texts are strings; labels are
  strings or integers (``0`` is the label "0", as in a CSV), and for multi-label also a JSON list.
  ``null`` counts as empty. A line that is not a JSON object is an error naming ``file:line``.
* ``parquet``: pyarrow reads only the two columns, one row group at a time
  (``ParquetFile.iter_batches``), without pandas. The text column holds strings; the label column
  strings or integers, or (multi-label) lists of them. Row numbers start at 1.
* ``text_folder``: ``keras.utils.text_dataset_from_directory``'s layout: the class names are the
  sorted subfolder names (hidden ones excluded), every ``.txt`` file (any case) below a class
  folder, at any depth, is one text of that class; files directly in the root are ignored, as
  Keras ignores them. Keras's function is not used because it returns batches without the texts
  (kerasft needs them for its stratified splits, the duplicate report and the train/test overlap)
  and decodes nothing (``data.encoding`` is honoured here). Unlike Keras, hidden files (``._x.txt``
  from macOS) are skipped, as ``image_folder`` skips them.

A file whose extension belongs to another source (``train.csv`` with ``data.source: jsonl``) is
refused naming the source it looks like; other extensions are read and their content decides.
"""

from __future__ import annotations

import codecs
import difflib
import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from kerasft.config import DataConfig, text_columns
from kerasft.data.splits import SHOWN, Part, duplicates, skip
from kerasft.errors import DataError, expected, one_line
from kerasft.io import resolve_pkg_path

#: File extensions that identify a tabular source (lower case).
EXTENSIONS = {
    "csv": (".csv", ".tsv"),
    "jsonl": (".jsonl", ".ndjson", ".json"),
    "parquet": (".parquet", ".pq"),
}
TEXT_FILE_EXTENSIONS = (".txt",)  # keras.utils.text_dataset_from_directory's formats
PARQUET_BATCH_ROWS = 65536  # rows per batch read from a row group


# ---------------------------------------------------------------------------------------------
# Shared by the readers.


def table_file(spec: str, name: str, source: str, what: str) -> str:
    """The path of `spec` (``data.<name>``) for a file source, after the existence and
    extension checks."""
    key = f"data.{name}"
    path = resolve_pkg_path(spec, key)
    if not os.path.isfile(path):
        raise DataError(expected(f"an existing {what} file", key, spec))
    lower = path.lower()
    for other, extensions in EXTENSIONS.items():
        if other != source and lower.endswith(extensions):
            raise DataError(expected(
                f"a {what} file for data.source: {source} ({' '.join(EXTENSIONS[source])}; this "
                f"one looks like data.source: {other})", key, spec))
    return path


def file_encoding(cfg: DataConfig) -> str:
    """The codec to open text files with: ``data.encoding``, utf-8 reading past a BOM."""
    try:
        codec = codecs.lookup(cfg.encoding).name
    except LookupError:
        raise DataError(expected("a Python codec name such as utf-8 or latin-1",
                                 "data.encoding", cfg.encoding)) from None
    return "utf-8-sig" if codec == "utf-8" else cfg.encoding


def undecodable(path: str, encoding: str, cfg: DataConfig, error: UnicodeDecodeError) -> DataError:
    """The one-line error for bytes of `path` that `encoding` cannot decode (names line:column)."""
    line, column = _undecodable_line(path, encoding)
    return DataError(expected(
        f"bytes that decode as {cfg.encoding} (set data.encoding, e.g. data.encoding: "
        "latin-1)", "byte", error.object[error.start:error.start + 1],
        where=f"{path}:{line}:{column}"))


def _undecodable_line(path: str, encoding: str) -> tuple[int, int]:
    """The 1-based line and column of the first byte `encoding` cannot decode."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as e:
                return number, e.start + 1
    return 0, 0


def find_column(names: list[str], column: str, key: str, where: str,
                kind: str = "column") -> int:
    """The index of `column` among `names` (surrounding spaces ignored); else a one-line error
    listing the names, with a did-you-mean."""
    stripped = [str(h).strip() for h in names]
    if column in names:
        return names.index(column)
    if column.strip() in stripped:
        return stripped.index(column.strip())
    close = difflib.get_close_matches(column, stripped, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise DataError(expected(f"a {kind} named {column!r} (set {key}{hint})", f"{kind}s",
                             stripped, where=where))


def find_text_columns(names: list[str], cfg: DataConfig, where: str,
                      kind: str = "column") -> list[int]:
    """The indices of ``data.text_column``'s one or two columns among `names`."""
    return [find_column(names, column, "data.text_column", where, kind)
            for column in text_columns(cfg)]


def parse_label(value: Any, multi_label: bool, separator: str) -> Any:
    """A label field -> the label (single-label) or a tuple of labels (multi-label: a string
    split at `separator`, or a list). Empty results mean "no label"."""
    if isinstance(value, list):
        return tuple(dict.fromkeys(p for p in (str(v).strip() for v in value) if p))
    if not multi_label:
        return value.strip()
    parts = [p.strip() for p in value.split(separator)] if separator else [value.strip()]
    return tuple(dict.fromkeys(p for p in parts if p))


class TextRows:
    """The (text, label) rows of one file: checks, skip counts and the resulting Part."""

    def __init__(self, path: str, cfg: DataConfig, multi_label: bool, kind: str = "column"):
        self.path, self.cfg, self.multi_label, self.kind = path, cfg, multi_label, kind
        self.texts: list[Any] = []  # strings, or (text_a, text_b) tuples for pairs
        self.labels: list[Any] = []
        self.lines: list[Any] = []
        self.skipped: dict[str, dict[str, Any]] = {}
        self.rows = 0

    def add(self, line: Any, text: str | tuple[str | None, ...] | None, label: Any,
            missing: tuple[str, str, Any] | None = None) -> None:
        """One row at `line`. `text` is a string, or a tuple of the pair's two texts
        (``data.text_column: [a, b]``). `text` / `label` None (or None in the tuple): the field
        is absent (`missing` = what the strict error then says: expected, key, received); "" /
        None values inside a present field are passed as "" (empty)."""
        self.rows += 1
        where = (os.path.join(self.path, line) if self.kind == "file"
                 else f"{self.path}:{line}")
        if text is None or label is None or (isinstance(text, tuple) and None in text):
            if self.cfg.strict:
                what, key, value = missing or ("both fields", "fields", None)
                raise DataError(expected(f"{what} (data.strict: true)", key, value, where=where))
            skip(self.skipped, "missing fields" if self.kind == "column" else "missing keys", line)
            return
        column = None
        segments = text if isinstance(text, tuple) else (text,)
        empty = [i for i, segment in enumerate(segments) if not segment.strip()]
        if empty:
            column, value = text_columns(self.cfg)[empty[0]], segments[empty[0]]
        elif isinstance(label, tuple):  # a multi-target regression: one value per column
            blank = [i for i, v in enumerate(label) if not v.strip()]
            if not blank:
                self.keep(line, text, tuple(v.strip() for v in label))
                return
            column, value = self.cfg.label_column[blank[0]], label[blank[0]]
        else:
            parsed = parse_label(label, self.multi_label, self.cfg.label_separator)
            if parsed:
                self.keep(line, text, parsed)
                return
            column, value = self.cfg.label_column, label
        if self.cfg.strict:
            what = ("a non-empty text" if self.kind == "file"
                    else f"a non-empty value in {self.kind} {column!r}")
            raise DataError(expected(f"{what} (data.strict: true)", "value", value, where=where))
        skip(self.skipped, "empty text" if column in text_columns(self.cfg) else "empty label",
             line)

    def keep(self, line: Any, text: str, label: Any) -> None:
        """Stores a row that passed the checks (:class:`kerasft.data.stream.StreamRows` keeps a
        hash and a byte span instead of the text)."""
        self.texts.append(text)
        self.labels.append(label)
        self.lines.append(line)

    def part(self, spec: str, name: str, report: dict[str, Any]) -> Part:
        """The Part of the rows kept; records what was read, skipped and repeated in `report`."""
        if not self.texts:
            raise DataError(expected("at least one row with both a text and a label", "skipped",
                                     {k: v["count"] for k, v in self.skipped.items()},
                                     where=self.path))
        report.setdefault("files", {})[name] = spec
        report.setdefault("rows_read", {})[name] = self.rows
        report.setdefault("skipped", {})[name] = self.skipped
        report.setdefault("duplicates", {})[name] = duplicates(self.texts, self.labels,
                                                               self.lines)
        texts = self.texts

        def build(indices: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
            # A pair is one [2] string example: the pipeline and the token cache stay as they
            # are, and the backbone's preprocess splits the two columns.
            x = tf.constant([texts[i] for i in indices], dtype=tf.string)
            return tf.data.Dataset.from_tensor_slices((x, tf.constant(y)))

        return Part(name=name, where=spec, build=build, raw=self.labels, texts=texts,
                    lines=self.lines)


def class_folders(root: str, extensions: tuple[str, ...]) -> tuple[
        list[str], list[str], list[str], dict[str, Any]]:
    """A folder with one subfolder per class -> (class names, files, their labels, ignored).

    Class names are the sorted subfolder names without hidden ones; files with `extensions` (any
    case) at any depth below a class folder belong to it (sorted by path); hidden files and
    folders are skipped; other files, and files directly in `root`, are ignored and counted.
    """
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    paths: list[str] = []
    labels: list[str] = []
    ignored: dict[str, Any] = {"count": 0, "examples": []}

    def ignore(rel: str) -> None:
        ignored["count"] += 1
        if len(ignored["examples"]) < SHOWN:
            ignored["examples"].append(rel)

    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_file() and not entry.name.startswith("."):
            ignore(entry.name)
    for label in classes:
        for folder, subfolders, files in os.walk(os.path.join(root, label)):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for file in sorted(files):
                if file.startswith("."):
                    continue
                full = os.path.join(folder, file)
                if os.path.splitext(file)[1].lower() in extensions:
                    paths.append(full)
                    labels.append(label)
                else:
                    ignore(os.path.relpath(full, root))
    return classes, paths, labels, ignored


# ---------------------------------------------------------------------------------------------
# JSON Lines.


def read_jsonl(spec: str, name: str, cfg: DataConfig, multi_label: bool,
               report: dict[str, Any]) -> Part:
    path = table_file(spec, name, "jsonl", "JSON Lines")
    encoding = file_encoding(cfg)
    rows = TextRows(path, cfg, multi_label, kind="key")
    keys: tuple[list[str], str] | None = None
    try:
        with open(path, encoding=encoding) as f:
            for number, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                where = f"{path}:{number}"
                obj = _json_object(raw, where)
                if keys is None:  # the first object names the keys, as a CSV header does
                    names = list(obj)
                    keys = ([names[i] for i in find_text_columns(names, cfg, where, "key")],
                            names[find_column(names, cfg.label_column, "data.label_column",
                                              where, "key")])
                text_keys, label_key = keys
                texts = tuple(_json_text(obj.get(k, None), k in obj, k, where)
                              for k in text_keys)
                label = _json_label(obj.get(label_key, None), label_key in obj, label_key,
                                    multi_label, where)
                wanted = " and ".join(repr(k) for k in (*text_keys, label_key))
                rows.add(number, texts if len(texts) > 1 else texts[0], label,
                         missing=(f"keys {wanted}", "keys", list(obj)))
    except UnicodeDecodeError as e:
        raise undecodable(path, encoding, cfg, e) from None
    if rows.rows == 0:
        raise DataError(expected("at least one JSON object line", "lines", 0, where=path))
    return rows.part(spec, name, report)


def _json_object(raw: str, where: str) -> dict[str, Any]:
    raw = raw.rstrip("\r\n")  # so a decoding error's column is the line's
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(expected(f"one JSON object per line (JSON Lines; {e.msg} at column "
                                 f"{e.colno})", "line", one_line(raw, 80), where=where)) from None
    if not isinstance(obj, dict):
        raise DataError(expected("a JSON object ({...}) per line", type(obj).__name__,
                                 one_line(raw, 80), where=where))
    return obj


def _json_text(value: Any, present: bool, key: str, where: str) -> str | None:
    if not present:
        return None
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(expected(f"a string (or null) in key {key!r} (data.text_column)", key,
                                 value, where=where))
    return value


def _json_label(value: Any, present: bool, key: str, multi_label: bool,
                where: str) -> str | list[str] | None:
    if not present:
        return None
    if value is None:
        return ""
    if isinstance(value, list):
        if not multi_label:
            raise DataError(expected(
                f"one label (a string or integer) in key {key!r}; a list is multi-label "
                "(head.activation: sigmoid)", key, value, where=where))
        if all(_scalar_label(v) for v in value):
            return [str(v) for v in value]
    elif _scalar_label(value):
        return str(value)
    raise DataError(expected(
        f"a string or integer label{', or a list of them,' if multi_label else ''} in key "
        f"{key!r} (data.label_column)", key, value, where=where))


def _scalar_label(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


# ---------------------------------------------------------------------------------------------
# Parquet.


def read_parquet(spec: str, name: str, cfg: DataConfig, multi_label: bool,
                 report: dict[str, Any]) -> Part:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = table_file(spec, name, "parquet", "Parquet")
    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(expected("a Parquet file", "error", one_line(e, 120), where=path)) from None
    schema = table.schema_arrow
    names = list(schema.names)
    text_keys = [names[i] for i in find_text_columns(names, cfg, path)]
    label_key = names[find_column(names, cfg.label_column, "data.label_column", path)]
    for text_key in text_keys:
        _check_parquet_types(schema, text_key, label_key, multi_label, path)
    if table.metadata.num_rows == 0:
        raise DataError(expected("at least one row", "rows", 0, where=path))
    rows = TextRows(path, cfg, multi_label)
    number = 0
    try:
        # One batch of one row group at a time, only the text and label columns (no pandas).
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS,
                                        columns=[*text_keys, label_key]):
            columns = [batch.column(k).to_pylist() for k in text_keys]
            labels = batch.column(label_key).to_pylist()
            for *segments, label in zip(*columns, labels, strict=True):
                number += 1
                if isinstance(label, list):
                    label = [str(v) for v in label if v is not None]
                elif label is not None:
                    label = str(label)
                texts = tuple("" if t is None else t for t in segments)
                rows.add(number, texts if len(texts) > 1 else texts[0],
                         "" if label is None else label)
    except pa.ArrowException as e:
        raise DataError(expected("a readable Parquet file", "error", one_line(e, 120),
                                 where=f"{path}:{number + 1}")) from None
    return rows.part(spec, name, report)


def _check_parquet_types(schema: Any, text_key: str, label_key: str, multi_label: bool,
                         path: str) -> None:
    import pyarrow as pa

    def base(tp: Any) -> Any:
        return tp.value_type if pa.types.is_dictionary(tp) else tp

    def is_text(tp: Any) -> bool:
        tp = base(tp)
        return pa.types.is_string(tp) or pa.types.is_large_string(tp) or (
            hasattr(pa.types, "is_string_view") and pa.types.is_string_view(tp))

    def is_scalar_label(tp: Any) -> bool:
        return is_text(tp) or pa.types.is_integer(base(tp))

    text_type = schema.field(text_key).type
    if not is_text(text_type):
        raise DataError(expected(f"a string column {text_key!r} (data.text_column)", "type",
                                 str(text_type), where=path))
    label_type = schema.field(label_key).type
    listed = pa.types.is_list(label_type) or pa.types.is_large_list(label_type)
    if listed and not multi_label:
        raise DataError(expected(
            f"one label per row in column {label_key!r}; a list column is multi-label "
            "(head.activation: sigmoid)", "type", str(label_type), where=path))
    if not (is_scalar_label(label_type.value_type) if listed else is_scalar_label(label_type)):
        raise DataError(expected(
            f"a string or integer column {label_key!r}"
            f"{' (or a list of them)' if multi_label else ''} (data.label_column)",
            "type", str(label_type), where=path))


# ---------------------------------------------------------------------------------------------
# Text folders.


def read_class_folders(spec: str, name: str, extensions: tuple[str, ...], *, example: str,
                       files: tuple[str, str]) -> tuple[str, list[str], list[str], list[str],
                                                        list[str]]:
    """The folder ``data.<name>`` names, read by :func:`class_folders`: ``(root, classes,
    paths, labels, ignored)``; one-line errors for a missing folder, no class subfolders (`example`
    shows a layout) or no files (`files`: what they are, and the noun for the count)."""
    key = f"data.{name}"
    root = resolve_pkg_path(spec, key)
    if not os.path.isdir(root):
        raise DataError(expected("an existing folder with one subfolder per class", key, spec))
    classes, paths, labels, ignored = class_folders(root, extensions)
    if not classes:
        raise DataError(expected(f"one subfolder per class (e.g. {example})", "subfolders", 0,
                                 where=root))
    if not paths:
        raise DataError(expected(f"{files[0]} in the class subfolders", files[1], 0, where=root))
    return root, classes, paths, labels, ignored


def read_text_folder(spec: str, name: str, cfg: DataConfig, report: dict[str, Any]) -> Part:
    root, classes, paths, labels, ignored = read_class_folders(
        spec, name, TEXT_FILE_EXTENSIONS, example="neg/1.txt, pos/2.txt",
        files=(".txt files", "text files"))
    encoding = file_encoding(cfg)
    rows = TextRows(root, cfg, multi_label=False, kind="file")
    for path, label in zip(paths, labels, strict=True):
        try:
            with open(path, encoding=encoding) as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise undecodable(path, encoding, cfg, e) from None
        rows.add(os.path.relpath(path, root), text, label)
    part = rows.part(spec, name, report)
    report.setdefault("ignored_files", {})[name] = ignored
    report.setdefault("empty_classes", {})[name] = sorted(set(classes) - set(rows.labels))
    return part

