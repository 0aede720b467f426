"""JSON Lines, Parquet and text-folder sources, and data.class_weight (kerasft/data/formats.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kerasft.config import DataConfig, load_config
from kerasft.data.class_weights import class_weights
from kerasft.data.sources import load_data
from kerasft.errors import ConfigError, DataError
from tests.bert_fixtures import write_tiny_bert_preset
from tests.test_text import BAD, GOOD


def _jsonl(path: Path, rows: list, encoding: str = "utf-8") -> str:
    with open(path, "w", encoding=encoding) as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return str(path)


def _texts(split) -> list[str]:
    return [x.decode() for x, _ in split.dataset.as_numpy_iterator()]


# ---------------------------------------------------------------------------------------------
# JSON Lines.


def test_jsonl_keys_labels_and_skips(tmp_path: Path) -> None:
    rows = ([{"review": f"good {i}", "stars": 5, "id": i} for i in range(6)]
            + [{"review": f"bad {i}", "stars": "1"} for i in range(4)]
            + ["", {"review": None, "stars": 5}, {"review": "no label"},
               {"review": "good 0", "stars": 1}])
    path = _jsonl(tmp_path / "train.jsonl", rows)
    cfg = DataConfig(source="jsonl", train=path, text_column="review", label_column="stars",
                     validation_split=None)
    data = load_data(cfg, seed=0)
    assert data.class_names == ["1", "5"]  # integers are labels, as CSV's "5" is
    assert data.train.size + data.validation.size == 11
    report = data.report
    assert report["rows_read"]["train"] == 13  # the blank line is not a row
    assert {k: v["examples"] for k, v in report["skipped"]["train"].items()} == {
        "empty text": [12], "missing keys": [13]}
    assert report["duplicates"]["train"] == {"count": 1, "conflicting": 1, "examples": [14]}

    with pytest.raises(DataError, match=r"train.jsonl:12: expected a non-empty value in key "
                                        r"'review' \(data.strict: true\). Received: value=''"):
        load_data(DataConfig(**{**cfg.__dict__, "strict": True, "train": path}), seed=0)

    # Multi-label: a JSON list, or a string split at data.label_separator.
    path = _jsonl(tmp_path / "t.jsonl", [
        {"text": "a", "label": ["x", "y", "x"]}, {"text": "b", "label": "y|z"},
        {"text": "c", "label": [3]}, {"text": "d", "label": []}])
    data = load_data(DataConfig(source="jsonl", train=path, validation_split=None), seed=0,
                     multi_label=True)
    assert data.class_names == ["3", "x", "y", "z"]
    np.testing.assert_array_equal(data.train.labels, [[0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0]])
    assert data.report["skipped"]["train"]["empty label"]["examples"] == [4]


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    for line, match in [
        ('{"text": "a", "label": "x"', r"t.jsonl:2: expected one JSON object per line \(JSON "
                                       r"Lines; Expecting ',' delimiter at column 27\)"),
        ('["a", "x"]', r"t.jsonl:2: expected a JSON object \(\{...\}\) per line. Received: "
                       r"list="),
        ('{"text": 5, "label": "x"}', r"t.jsonl:2: expected a string \(or null\) in key 'text' "
                                      r"\(data.text_column\). Received: text=5"),
        ('{"text": "a", "label": ["x"]}', r"t.jsonl:2: expected one label .* a list is "
                                          r"multi-label"),
        ('{"text": "a", "label": 1.5}', r"t.jsonl:2: expected a string or integer label in key"),
    ]:
        path = _jsonl(tmp_path / "t.jsonl", ['{"text": "ok", "label": "x"}', line])
        with pytest.raises(DataError, match=match):
            load_data(DataConfig(source="jsonl", train=path), seed=0)

    path = _jsonl(tmp_path / "t.jsonl", [{"txt": "a", "label": "x"}])
    with pytest.raises(DataError, match=r"t.jsonl:1: expected a key named 'text' \(set "
                                        r"data.text_column; did you mean 'txt'\?\). "
                                        r"Received: keys=\['txt', 'label'\]"):
        load_data(DataConfig(source="jsonl", train=path), seed=0)
    empty = _jsonl(tmp_path / "e.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"e.jsonl: expected at least one JSON object line. "
                                        r"Received: lines=0"):
        load_data(DataConfig(source="jsonl", train=empty), seed=0)
    latin = _jsonl(tmp_path / "l.jsonl", [{"text": "café", "label": "x"}], encoding="latin-1")
    with pytest.raises(DataError, match=r"l.jsonl:1:14: expected bytes that decode as utf-8"):
        load_data(DataConfig(source="jsonl", train=latin), seed=0)


# ---------------------------------------------------------------------------------------------
# Parquet.


def test_parquet_reads_two_columns_by_row_group(tmp_path: Path, monkeypatch) -> None:
    n = 25
    table = pa.table({
        "id": pa.array(range(n)),
        "body": pa.array([f"text {i}" for i in range(n - 1)] + [None]),
        "tag": pa.array([("pos", "neg", "neu")[i % 3] for i in range(n)]).dictionary_encode(),
        "blob": pa.array([b"\x00" * 10] * n),
    })
    path = tmp_path / "train.parquet"
    pq.write_table(table, path, row_group_size=10)
    calls = []
    iter_batches = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in iter_batches(self, *args, **kwargs):
            calls.append((kwargs.get("columns"), batch.num_rows))
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    data = load_data(DataConfig(source="parquet", train=str(path), text_column="body",
                                label_column="tag", validation_split=None), seed=0)
    assert [c for c, _ in calls] == [["body", "tag"]] * 3  # two columns, one row group at a time
    assert [rows for _, rows in calls] == [10, 10, 5]
    assert data.class_names == ["neg", "neu", "pos"]
    assert data.train.size + data.validation.size == n - 1
    assert data.report["skipped"]["train"]["empty text"]["examples"] == [25]  # rows from 1

    path = tmp_path / "t.pq"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [["x", "y"], ["y"], []]}), path)
    data = load_data(DataConfig(source="parquet", train=str(path), validation_split=None),
                     seed=0, multi_label=True)
    assert data.class_names == ["x", "y"] and data.train.size == 2
    with pytest.raises(DataError, match=r"t.pq: expected one label per row in column 'label'; a "
                                        r"list column is multi-label"):
        load_data(DataConfig(source="parquet", train=str(path)), seed=0)
    ints = tmp_path / "i.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c", "d"], "label": [2, 10, 2, 10]}), ints)
    data = load_data(DataConfig(source="parquet", train=str(ints), validation_split=None), seed=0)
    assert data.class_names == ["2", "10"]  # integer-like labels sort as numbers, as in CSV


def test_unusable_parquet_extension_mismatch_and_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    for table, match in [
        ({"text": [1, 2], "label": ["a", "b"]}, r"t.parquet: expected a string column 'text' "
                                                r"\(data.text_column\). Received: type='int64'"),
        ({"text": ["a", "b"], "label": [1.5, 2.5]}, r"expected a string or integer column "
                                                    r"'label'"),
        ({"txt": ["a", "b"], "label": ["a", "b"]}, r"expected a column named 'text' \(set "
                                                   r"data.text_column; did you mean 'txt'\?\)"),
        ({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())},
         r"expected at least one row. Received: rows=0"),
    ]:
        pq.write_table(pa.table(table), path)
        with pytest.raises(DataError, match=match):
            load_data(DataConfig(source="parquet", train=str(path)), seed=0)

    fake = tmp_path / "t.parquet"
    fake.write_text("text,label\na,b\n")
    with pytest.raises(DataError, match=r"t.parquet: expected a Parquet file. Received: error="):
        load_data(DataConfig(source="parquet", train=str(fake)), seed=0)
    with pytest.raises(DataError, match=r"expected a CSV file for data.source: csv \(.csv .tsv; "
                                        r"this one looks like data.source: parquet\)"):
        load_data(DataConfig(source="csv", train=str(fake)), seed=0)
    (tmp_path / "t.csv").write_text("text,label\na,b\n")
    with pytest.raises(DataError, match=r"looks like data.source: csv\). Received: data.train="):
        load_data(DataConfig(source="jsonl", train=str(tmp_path / "t.csv")), seed=0)


# ---------------------------------------------------------------------------------------------
# Text folders.


def test_text_folder_has_keras_text_dataset_from_directory_semantics(tmp_path: Path) -> None:
    import keras

    root = tmp_path / "texts"
    for label, words in (("pos", GOOD[:5]), ("neg", BAD[:4]), ("neu", ["so so", "fine"])):
        (root / label / "deeper").mkdir(parents=True)
        for i, text in enumerate(words[:-1]):
            (root / label / f"{i}.txt").write_text(text, encoding="utf-8")
        (root / label / "deeper" / "last.TXT").write_text(words[-1], encoding="utf-8")
        (root / label / "notes.md").write_text("not a text")
    (root / "README.txt").write_text("in the root: ignored")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("hidden class folder")

    ds = keras.utils.text_dataset_from_directory(str(root), batch_size=None, shuffle=False)
    theirs = sorted((ds.class_names[int(y)], x.decode()) for x, y in ds.as_numpy_iterator())
    data = load_data(DataConfig(source="text_folder", train=str(root), validation_split=None),
                     seed=0)
    assert data.class_names == ds.class_names == ["neg", "neu", "pos"]
    ours = sorted((data.class_names[i], text) for split in (data.train, data.validation)
                  for i, text in zip(split.labels, _texts(split), strict=True))
    assert ours == theirs
    assert data.report["ignored_files"]["train"]["count"] == 4  # README.txt and 3 notes.md
    assert data.task == "text"


def test_text_folder_encoding_empty_files_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        (root / label / "1.txt").write_bytes(f"caf\xe9 {label}".encode("latin-1"))
        (root / label / "2.txt").write_text(f"plain {label}")
    (root / "b" / "3.txt").write_text("  \n")
    with pytest.raises(DataError, match=r"a/1.txt:1:4: expected bytes that decode as utf-8"):
        load_data(DataConfig(source="text_folder", train=str(root)), seed=0)
    data = load_data(DataConfig(source="text_folder", train=str(root), encoding="latin-1",
                                validation_split=None), seed=0)
    assert "café a" in _texts(data.train) + _texts(data.validation)
    assert data.report["skipped"]["train"]["empty text"]["examples"] == ["b/3.txt"]
    with pytest.raises(DataError, match=r"t/b/3.txt: expected a non-empty text \(data.strict"):
        load_data(DataConfig(source="text_folder", train=str(root), encoding="latin-1",
                             strict=True), seed=0)
    with pytest.raises(DataError, match=r"expected .txt files in the class subfolders"):
        (tmp_path / "e" / "x").mkdir(parents=True)
        load_data(DataConfig(source="text_folder", train=str(tmp_path / "e")), seed=0)
    with pytest.raises(DataError, match=r"^expected head.activation: softmax for data.source: "
                                        r"text_folder \(one class folder, one label per"):
        load_data(DataConfig(source="text_folder", train=str(root)), seed=0, multi_label=True)


# ---------------------------------------------------------------------------------------------
# Every table source splits as CSV does.


def test_jsonl_parquet_and_text_folder_split_exactly_as_csv(tmp_path: Path) -> None:
    rows = [(f"{t} {i}", "pos") for i, t in enumerate(GOOD * 2)] + [
        (f"{t} {i}", "neg") for i, t in enumerate(BAD)]
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    _jsonl(tmp_path / "t.jsonl", [{"text": t, "label": y} for t, y in rows])
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}),
                   tmp_path / "t.parquet", row_group_size=7)
    for i, (t, y) in enumerate(rows):
        (tmp_path / "folder" / y).mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / y / f"{i:03d}.txt").write_text(t)
    got = {}
    for source, name in (("csv", "t.csv"), ("jsonl", "t.jsonl"), ("parquet", "t.parquet"),
                         ("text_folder", "folder")):
        data = load_data(DataConfig(source=source, train=str(tmp_path / name), test_split=0.2,
                                    max_examples=12), seed=3)
        got[source] = (data.class_names, data.report["class_counts"],
                       {s: sorted(_texts(getattr(data, s))) for s in ("train", "validation",
                                                                       "test")})
    assert got["jsonl"] == got["csv"] == got["parquet"]
    # Files are read in path order, not file order, so only the label handling can match:
    assert got["text_folder"][:2] == got["csv"][:2]


# ---------------------------------------------------------------------------------------------
# data.class_weight.


def test_balanced_class_weights_are_scikit_learns_and_config_errors() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 7 + [1] * 2 + [2] * 11)
    ours = class_weights("balanced", ["a", "b", "c"], y)
    theirs = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose([ours[i] for i in range(3)], theirs)
    assert class_weights({"b": 3, 2: 0.5}, ["0", "b", "2"], y) == {0: 1.0, 1: 3.0, 2: 0.5}
    assert class_weights(None, ["a", "b"], y) is None
    with pytest.raises(DataError, match=r"expected labels of the training data \(known: 'a', "
                                        r"'b'\). Received: data.class_weight label='c'"):
        class_weights({"c": 2.0}, ["a", "b"], y)

    for data, head, match in [
        ({"class_weight": "balanced"}, {"activation": "sigmoid"},
         r"^expected no class_weight with head.activation: sigmoid .*Received: "
         r"data.class_weight='balanced'$"),
        ({"class_weight": "balance"}, {}, r"^expected one of balanced. Received: "
                                          r"data.class_weight='balance'"),
        ({"class_weight": {"pos": -1}}, {}, r"^expected a positive number. Received: "
                                            r"data.class_weight.pos=-1$"),
        ({"class_weight": [1, 2]}, {}, r"^expected a string or a mapping or null. Received: "
                                       r"data.class_weight=\[1, 2\]$"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config({"data": data, "head": head})
    cfg = load_config({"data": {"class_weight": {"neg": 2, 1: 0.5}}})
    assert cfg.data.class_weight == {"neg": 2, 1: 0.5}


def _history_losses(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "history.csv", encoding="utf-8") as f:
        return {row["stage"]: float(row["loss"]) for row in csv.DictReader(f)}


def _weighted_and_plain_loss(probabilities: np.ndarray, y: np.ndarray,
                             weight: dict[int, float]) -> tuple[float, float]:
    """The class-weighted cross-entropy Keras should report (sum of w * ce over the batch size)
    and the unweighted one."""
    ce = -np.log(probabilities[np.arange(len(y)), y])
    w = np.array([weight.get(int(c), 1.0) for c in y])
    return float(np.mean(w * ce)), float(np.mean(ce))


def test_class_weight_weighs_the_head_loss_on_cached_features(tmp_path: Path) -> None:
    """From JSON Lines through the normal API: the loss Keras reports for a head stage trained on
    cached features is the class-weighted cross-entropy computed by hand."""
    from kerasft.api import build_finetuner

    train = [{"text": t, "label": "pos"} for t in GOOD] * 2 + [
        {"text": t, "label": "neg"} for t in BAD[:4]]
    valid = [{"text": t, "label": y} for t, y in ((GOOD[0], "pos"), (BAD[5], "neg"))]
    cfg = {
        "name": "weighted", "seed": 1,
        "backbone": {"name": "bert", "preset": write_tiny_bert_preset(tmp_path / "kh"),
                     "sequence_length": 16},
        "head": {"dropout": 0.0},
        "data": {"source": "jsonl", "train": _jsonl(tmp_path / "train.jsonl", train),
                 "validation": _jsonl(tmp_path / "val.jsonl", valid), "batch_size": 64,
                 "class_weight": {"neg": 5.0}, "bucket_by_length": False},
        # A learning rate too small to move the weights: the epoch sees the initial model.
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 1e-9}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "checkpoint_every_epoch": False},
        "output_dir": str(tmp_path / "runs"), "export": {"dir": str(tmp_path / "exports")},
    }
    lines: list[str] = []
    ft = build_finetuner(cfg, log=lines.append)
    ft.fit(evaluate=False)
    assert any("head on cached features" in line for line in lines)
    assert "data: class_weight (given; Keras class_weight in fit): neg 5, pos 1" in lines
    assert any(line.startswith("data: class") and line.endswith("weight") for line in lines)
    assert json.loads((ft.run_dir / "data.json").read_text())["class_weight"] == {
        "setting": {"neg": 5.0}, "weights": {"neg": 5.0, "pos": 1.0}}

    import tensorflow as tf

    y = np.array([ft.class_names.index(r["label"]) for r in train])
    texts = tf.constant([r["text"] for r in train])  # an eager call: no predict graph to trace
    probabilities = np.asarray(ft.model(ft.backbone.preprocess(texts), training=False))
    weighted, plain = _weighted_and_plain_loss(probabilities, y,
                                               {ft.class_names.index("neg"): 5.0})
    assert _history_losses(ft.run_dir)["head"] == pytest.approx(weighted, rel=1e-4)
    assert abs(weighted - plain) > 0.2 * plain


def test_class_weight_weighs_the_end_to_end_loss(image_arrays, tmp_path: Path) -> None:
    """Without the feature cache (the model trains end to end), arrays in: the same weighting."""
    from kerasft.api import build_finetuner

    x, names = image_arrays
    cfg = {"name": "weighted", "seed": 0, "backbone": {"name": "tiny_cnn", "weights": "none"},
           "head": {"dropout": 0.0},
           "data": {"source": "arrays", "batch_size": 64, "class_weight": {"owl": 4, "cat": 0.5}},
           "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 1e-9}],
           "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                        "cache_features": "off", "checkpoint_every_epoch": False}}
    ft = build_finetuner(cfg, log=lambda s: None)
    ft.fit(x[:40], names[:40], validation_data=(x[40:], names[40:]), output_dir=tmp_path,
           evaluate=False)
    y = np.array([ft.class_names.index(n) for n in names[:40]])
    weighted, plain = _weighted_and_plain_loss(
        ft.predict(x[:40]), y, {ft.class_names.index("owl"): 4.0,
                                ft.class_names.index("cat"): 0.5})
    assert _history_losses(ft.run_dir)["head"] == pytest.approx(weighted, rel=1e-4)
    assert abs(weighted - plain) > 0.2 * plain
