"""Step 2 of a run, reading a large CSV without holding its texts (``data.stream``).

``data.stream: auto`` (the default) streams CSV files whose parts together exceed
:data:`STREAM_AUTO_BYTES`; ``true`` streams any CSV, ``false`` never streams. Smaller files take
the in-memory path of :mod:`kerasft.data.sources`, whose token cache makes epochs after the
first cheap.

Streaming reads each file once, with the same ``csv`` parsing and row checks as the in-memory
path (:class:`StreamRows` is a :class:`~kerasft.data.formats.TextRows`), and keeps per kept row
only numbers: the byte span of its record, a 64-bit BLAKE2b hash of its text, its label id and
its line. :func:`kerasft.data.splits.finish` then splits those label arrays exactly as it splits
in-memory data, so both paths choose the same rows for the same seed; the duplicate report and
the train/validation overlap compare hashes. A split's dataset re-reads its rows from the file
by byte span on every pass (:func:`span_dataset`), in file order; the pipeline tokenizes them
batch by batch (no ``cache``: no whole-corpus token cache) and training shuffles within
``data.shuffle_buffer`` rows, so a file sorted by label should be shuffled once beforehand.

Only single-label classification streams: ``head.task: regression`` and multi-label heads need
the per-row label values (``data.stream: auto`` reads those files in memory; ``true`` is an
error). The file must be in an encoding where a newline is the byte ``\\n`` (UTF-8, Latin-1,
...), not UTF-16.
"""

from __future__ import annotations

import csv
import hashlib
import os
from array import array
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from kerasft.config import DataConfig
from kerasft.data.formats import TextRows
from kerasft.data.splits import SHOWN, Part, known_names
from kerasft.errors import DataError, expected

#: ``data.stream: auto`` streams CSV parts larger than this in all (bytes).
STREAM_AUTO_BYTES = 256 * 2**20
_CHUNK = 4096  # rows converted to Python numbers at a time when reading spans


def text_hash(text: str | tuple[str, ...]) -> int:
    """A stable 64-bit hash of a text, or of a sentence pair's two texts (Python's ``hash``
    changes with each process)."""
    if isinstance(text, tuple):  # a unit separator: ("a b", "c") and ("a", "b c") differ
        text = "\x1f".join(text)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def wants_stream(cfg: DataConfig, paths: list[str], multi_label: bool,
                 regression: bool | None) -> bool:
    """Whether the CSV `paths` are streamed under ``data.stream`` (see the module docstring)."""
    if cfg.stream is False:
        return False
    if cfg.stream == "auto" and sum(os.path.getsize(p) for p in paths) <= STREAM_AUTO_BYTES:
        return False
    why = ("head.activation: sigmoid (multi-label)" if multi_label
           else "head.task: regression" if regression else None)
    if why is None and not _line_compatible(cfg.encoding):
        why = f"data.encoding: {cfg.encoding}"
    if why is None:
        return True
    if cfg.stream is True:
        raise DataError(expected(f"data.stream: false or auto with {why} (only single-label "
                                 "classification CSVs in an ASCII-compatible encoding stream)",
                                 "data.stream", True))
    return False


def _line_compatible(encoding: str) -> bool:
    try:
        return "\n,\"".encode(encoding) == b"\n,\""
    except (LookupError, UnicodeError):
        return True  # file_encoding names a bad codec later, with its own message


class LineSpans:
    """The decoded lines of a binary file for ``csv.reader``, counting the bytes read (`pos`)."""

    def __init__(self, f: Any, encoding: str):
        self.f, self.pos = f, 0
        self.encoding = "utf-8" if encoding == "utf-8-sig" else encoding
        self.first = encoding  # utf-8-sig drops a byte-order mark on the first line only

    def __iter__(self) -> Iterator[str]:
        raw = self.f.readline()
        self.pos += len(raw)
        if raw:
            yield raw.decode(self.first)
        encoding = self.encoding
        for raw in self.f:
            self.pos += len(raw)
            yield raw.decode(encoding)


class StreamRows(TextRows):
    """The rows of a streamed CSV: the same checks as :class:`TextRows`, but each kept row is
    stored as numbers (its byte `span`, set by the reader before each row, a text hash, a label
    id and its line)."""

    def __init__(self, path: str, cfg: DataConfig, reading: dict[str, Any]):
        super().__init__(path, cfg, multi_label=False)
        self.reading = reading  # encoding, delimiter, text_at: what span_dataset needs
        self.span = (0, 0)
        self.starts, self.ends, self.line_nos = array("q"), array("q"), array("q")
        self.hashes, self.ids = array("Q"), array("i")
        self.names: dict[str, int] = {}  # label -> id in order of first appearance

    def keep(self, line: Any, text: str | tuple[str, ...], label: Any) -> None:
        self.starts.append(self.span[0])
        self.ends.append(self.span[1])
        self.line_nos.append(line)
        self.hashes.append(text_hash(text))
        self.ids.append(self.names.setdefault(label, len(self.names)))

    def part(self, spec: str, name: str, report: dict[str, Any],
             class_names: list[str] | None = None) -> Part:
        """The Part of the rows kept, with label ids for `class_names` (the training part's
        vocabulary); records what was read, skipped and repeated in `report`."""
        if not self.ids:
            raise DataError(expected("at least one row with both a text and a label", "skipped",
                                     {k: v["count"] for k, v in self.skipped.items()},
                                     where=self.path))
        index = {c: i for i, c in enumerate(class_names or [])}
        local = np.array([index.get(label, -1) for label in self.names], np.int32)
        ids = local[np.frombuffer(self.ids, np.int32)]
        lines = np.frombuffer(self.line_nos, np.int64)
        if (ids < 0).any():
            row = int(np.flatnonzero(ids < 0)[0])
            label = list(self.names)[int(np.frombuffer(self.ids, np.int32)[row])]
            raise DataError(expected(f"labels that occur in the training data (known: "
                                     f"{known_names(class_names or [])})", f"{name} label",
                                     label, where=f"{spec}:{lines[row]}"))
        hashes = np.frombuffer(self.hashes, np.uint64)
        report.setdefault("files", {})[name] = spec
        report.setdefault("rows_read", {})[name] = self.rows
        report.setdefault("skipped", {})[name] = self.skipped
        report.setdefault("duplicates", {})[name] = hash_duplicates(hashes, ids, lines)
        report.setdefault("streamed", []).append(name)
        starts = np.frombuffer(self.starts, np.int64)
        ends = np.frombuffer(self.ends, np.int64)
        path, reading = self.path, self.reading

        def build(indices: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
            return span_dataset(path, starts[indices], ends[indices], y, **reading)

        return Part(name=name, where=spec, build=build, ids=ids, hashes=hashes, streamed=True)


def hash_duplicates(hashes: np.ndarray, ids: np.ndarray, lines: np.ndarray) -> dict[str, Any]:
    """:func:`kerasft.data.splits.duplicates` from text hashes: how many rows repeat an earlier
    text, how many texts have different labels, the first lines of repeats."""
    if not len(hashes):
        return {"count": 0, "conflicting": 0, "examples": []}
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    repeat = np.ones(len(hashes), bool)
    repeat[first] = False
    order = np.lexsort((ids, inverse))  # by text, then label: distinct (text, label) pairs
    text, label = inverse[order], ids[order]
    pair = np.concatenate([[True], (text[1:] != text[:-1]) | (label[1:] != label[:-1])])
    conflicting = int((np.bincount(text[pair], minlength=len(first)) > 1).sum())
    shown = np.flatnonzero(repeat)[:SHOWN]
    return {"count": int(repeat.sum()), "conflicting": conflicting,
            "examples": [int(v) for v in lines[shown]]}


def span_dataset(path: str, starts: np.ndarray, ends: np.ndarray, y: np.ndarray, *,
                 encoding: str, delimiter: str, text_at: tuple[int, ...]) -> tf.data.Dataset:
    """``(text, label)`` elements read from `path` record by record (byte spans, ascending);
    the text is a ``[2]`` string tensor when `text_at` names a sentence pair's two columns.

    ``from_generator`` rather than ``TextLineDataset`` / ``CsvDataset``: a quoted CSV field may
    hold line breaks, and the rows must be parsed exactly as the scan parsed them (``csv``
    module, ``data.encoding``), or a text could differ from the one that was hashed.
    """
    codec = "utf-8" if encoding == "utf-8-sig" else encoding
    y_spec = tf.TensorSpec([], tf.as_dtype(y.dtype))

    def rows() -> Iterator[tuple[str, Any]]:
        with open(path, "rb") as f:
            for at in range(0, len(starts), _CHUNK):
                chunk = zip(starts[at:at + _CHUNK].tolist(), ends[at:at + _CHUNK].tolist(),
                            y[at:at + _CHUNK].tolist(), strict=True)
                for start, end, label in chunk:
                    f.seek(start)  # within the read buffer: no system call
                    record = f.read(end - start).decode(codec)
                    row = next(csv.reader(record.splitlines(True), delimiter=delimiter))
                    yield (row[text_at[0]] if single else [row[i] for i in text_at]), label

    single = len(text_at) == 1
    ds = tf.data.Dataset.from_generator(
        rows, output_signature=(tf.TensorSpec([] if single else [len(text_at)], tf.string),
                                y_spec))
    return ds.apply(tf.data.experimental.assert_cardinality(len(starts)))

