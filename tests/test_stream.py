"""Streamed CSV data (``data.stream``, kerasft/data/stream.py): the same splits, labels and
report as the in-memory path, rows read from disk by byte span (no texts held), one tiny fit."""

from __future__ import annotations

import csv
import random
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kerasft.config import DataConfig, load_config
from kerasft.data import stream
from kerasft.data.sources import load_data
from kerasft.data.splits import fingerprint
from kerasft.errors import ConfigError, DataError


def _write(path: Path, rows: list, header=("text", "label"), encoding="utf-8") -> str:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _rows(n: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = [(f"row {i} is {rng.choice('abcdefgh')} text", rng.choice(["neg", "neu", "pos"]))
            for i in range(n)]
    rows[7] = ('a "quoted", multi-line\ntext, row 7', "pos")  # a record over two lines
    rows[50] = ("", "neg")  # empty text: skipped and counted
    rows += [rows[3], rows[4], (rows[5][0], "neg" if rows[5][1] != "neg" else "pos")]
    return rows


def _texts(split) -> list[str]:
    return [x.decode() for x, _ in split.dataset.as_numpy_iterator()]


def _load(path: str, stream_mode, regression=False):
    cfg = DataConfig(source="csv", train=path, test_split=0.2, validation_split=0.1,
                     stream=stream_mode)
    return load_data(cfg, seed=5, regression=regression)


def test_streamed_splits_labels_and_report_match_the_in_memory_path(tmp_path):
    rows = _rows()
    path = _write(tmp_path / "train.csv", rows)
    memory, streamed, again = _load(path, False), _load(path, True), _load(path, True)
    assert streamed.train.streamed and not memory.train.streamed
    assert streamed.report["streamed"] == ["train"] and "streamed" not in memory.report
    # The same rows in every split, in the same order, as the in-memory path and the next run.
    assert fingerprint(streamed) == fingerprint(memory) == fingerprint(again)
    parts = {}
    for name in ("train", "validation", "test"):
        split = getattr(streamed, name)
        texts, labels = zip(*((x.decode(), y) for x, y in split.dataset.as_numpy_iterator()))
        assert list(texts) == _texts(getattr(memory, name))
        assert list(labels) == list(split.labels)  # rows and labels line up
        parts[name] = list(texts)
    assert 'a "quoted", multi-line\ntext, row 7' in sum(parts.values(), [])
    # Disjoint splits: each text of a row that is not repeated in the file is in one split once.
    repeated = {rows[3][0], rows[4][0], rows[5][0]}
    once = {name: [t for t in texts if t not in repeated] for name, texts in parts.items()}
    assert sum(len(v) for v in once.values()) == len(set().union(*once.values())) == 296
    # Label counts: every kept row once, as in the file.
    kept = Counter(label for text, label in rows if text)
    counts = streamed.report["class_counts"]
    assert {c: sum(counts[n][c] for n in counts) for c in kept} == dict(kept)
    for key in ("rows_read", "skipped", "duplicates", "overlap", "class_counts", "sizes"):
        assert streamed.report[key] == memory.report[key], key
    assert streamed.report["duplicates"]["train"] == {
        "count": 3, "conflicting": 1, "examples": [303, 304, 305]}
    assert streamed.report["skipped"]["train"]["empty text"]["examples"] == [53]


def test_streamed_sentence_pairs_match_the_in_memory_path(tmp_path):
    rng = random.Random(1)
    rows = [(f"premise {i}", f"hypothesis {rng.choice('abc')}", rng.choice(["yes", "no"]))
            for i in range(120)]
    rows.append(("premise 1", rows[1][1], rows[1][2]))  # the same pair again: a duplicate
    rows.append(("premise 2 x", rows[2][1], rows[2][2]))  # a new pair
    path = _write(tmp_path / "pairs.csv", rows, header=("premise", "hypothesis", "label"))

    def load(mode):
        cfg = DataConfig(source="csv", train=path, test_split=0.2, validation_split=0.1,
                         stream=mode, text_column=["premise", "hypothesis"])
        return load_data(cfg, seed=5)

    memory, streamed = load(False), load(True)
    assert streamed.train.streamed and fingerprint(streamed) == fingerprint(memory)
    for name in ("train", "validation", "test"):
        got = [[t.decode() for t in x] for x, _ in
               getattr(streamed, name).dataset.as_numpy_iterator()]
        want = [[t.decode() for t in x] for x, _ in
                getattr(memory, name).dataset.as_numpy_iterator()]
        assert got == want and all(len(pair) == 2 for pair in got)
    assert streamed.report["duplicates"] == memory.report["duplicates"]
    assert streamed.report["duplicates"]["train"]["count"] == 1


def test_streamed_rows_come_from_disk_and_no_texts_are_held(tmp_path):
    rows = [(f"text number {i} " + "x" * 2000, "ab"[i % 2]) for i in range(3000)]
    path = _write(tmp_path / "big.csv", rows)
    size = Path(path).stat().st_size
    tracemalloc.start()
    try:
        data = _load(path, True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Per row a few numbers, not its text (the in-memory path holds every text: > size).
    assert peak < size / 4, (peak, size)
    first = _texts(data.test)[0]
    # Rewritten in place (same byte lengths): a streamed split reads what the file holds now.
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw.replace(b"x" * 2000, b"y" * 2000))
    assert _texts(data.test)[0] == first.replace("x" * 2000, "y" * 2000)


def test_stream_auto_threshold_and_what_cannot_stream(tmp_path, monkeypatch):
    path = _write(tmp_path / "t.csv", _rows(60))
    assert not _load(path, "auto").train.streamed  # a small file: in memory
    monkeypatch.setattr(stream, "STREAM_AUTO_BYTES", 100)
    assert _load(path, "auto").train.streamed
    # Multi-label and float targets need per-row label values: auto reads them in memory.
    floats = _write(tmp_path / "f.csv", [(f"t {i}", f"{i / 3:.2f}") for i in range(30)])
    assert _load(floats, "auto", regression=None).regression
    with pytest.raises(DataError, match=r"expected data.stream: false or auto for float "
                                        r"targets .*Received: data.stream=True"):
        _load(floats, True, regression=None)
    with pytest.raises(DataError, match=r"with head.activation: sigmoid \(multi-label\)"):
        load_data(DataConfig(train=path, stream=True), seed=0, multi_label=True)
    # A validation file with a label the training file lacks: named with its line.
    val = _write(tmp_path / "v.csv", [("a", "neg"), ("b", "other")])
    with pytest.raises(DataError, match=r"v.csv:3: expected labels that occur in the training "
                                        r"data \(known: 'neg', 'neu', 'pos'\). Received: "
                                        r"validation label='other'"):
        load_data(DataConfig(train=path, validation=val, stream=True), seed=0)
    base = {"backbone": {"name": "bert"}, "data": {"train": path}}
    with pytest.raises(ConfigError, match=r"expected auto, true or false. Received: "
                                          r"data.stream='always'"):
        load_config(base, ["data.stream=always"])
    with pytest.raises(ConfigError, match=r"data.source csv for data.stream: true"):
        load_config(base, ["data.stream=true", "data.source=jsonl"])
    assert load_config(base).data.stream == "auto"


@pytest.mark.slow
def test_streamed_csv_trains(tmp_path):
    from kerasft.api import build_finetuner
    from tests.bert_fixtures import write_tiny_bert_preset

    rows = [(f"good film {i}", "pos") for i in range(24)] + [(f"bad film {i}", "neg")
                                                             for i in range(24)]
    path = _write(tmp_path / "train.csv", rows)
    preset = write_tiny_bert_preset(tmp_path / "kh")
    ft = build_finetuner({
        "name": "streamed", "seed": 1,
        "backbone": {"name": "bert", "preset": preset, "sequence_length": 16},
        "data": {"train": path, "stream": True, "validation_split": 0.25, "batch_size": 32},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.01}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "mixed_precision": "none"},
        "output_dir": str(tmp_path / "runs"),
    }, log=lambda s: None)
    summary = ft.fit()
    assert ft.data.train.streamed and ft.data.train.size == 36
    logs = summary["stages"][0]["final_logs"]
    assert {"loss", "val_loss"} <= set(logs) and np.isfinite(logs["loss"])
