"""Step 2 of a run: data.

The config's ``data`` section names where the examples are; this module turns them into three
unbatched ``tf.data`` splits plus the label vocabulary, and reports what it read:

1. **Read** each given part (train, and validation / test when given) from its source:

   * ``csv`` (text): the ``csv`` module with ``data.encoding`` and ``data.delimiter``; columns
     ``data.text_column`` / ``data.label_column``. Rows with an empty text or label are skipped and
     counted by reason (``data.strict: true`` makes the first one an error); duplicate texts are
     counted and kept. Line numbers are those a text editor shows (the header is line 1).
   * ``image_folder``: one subfolder per class; ``.jpg .jpeg .png .gif .bmp`` files (any case) are
     decoded once, in parallel, to find unreadable ones (skipped and counted); other files are
     ignored. The split's dataset decodes lazily from the file paths.
   * ``tfds``: ``tfds.load`` of ``data.tfds_name``; splits such as ``train[:90%]`` (``train``
     when ``data.train`` is not set); the label column is read once (images left undecoded) to
     build the labels array. A dataset that is not prepared in ``data.tfds_data_dir`` is
     downloaded by tfds, which needs internet.
   * ``from_arrays`` / ``from_datasets``: the same, for Python callers.

2. **Vocabulary**: the sorted labels of the training part (integer-like labels sort as numbers, so
   ``"2" < "10"``). ``tfds`` keeps the dataset's own ``ClassLabel`` order, ``from_datasets`` and
   ``from_arrays(class_names=...)`` the order given, so class ids match the source's ids.
   Validation / test labels must occur in the training part; labels must not be empty, '.' or
   '..', or contain line breaks (they are lines of labels.txt; '/' is fine: kerasft never makes a
   path of a label).

3. **Split**: without a test file, ``data.test_split`` takes a stratified, seeded test split of the
   training part first; without a validation file, ``data.validation_split`` (0.1 when neither is
   given) takes the validation split from the rest. Both fractions are of the whole training part.
   Each class keeps at least one training example.

4. **Cap**: ``data.max_examples`` caps each split after splitting with a stratified, seeded
   sample (class proportions kept); the kept examples stay in their original order.

:func:`make_pipeline` turns a split into the batched, preprocessed, prefetched dataset that
``model.fit`` reads; :func:`log_report` prints what was read, skipped and split.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from kerasft.config import DataConfig
from kerasft.errors import ConfigError, DataError, expected
from kerasft.io import resolve_pkg_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
#: Texts tokenized per call when make_pipeline tokenizes before the cache (vectorised).
TOKENIZE_CHUNK = 256
LENGTH_GROUP_BATCHES = 16  # training text batches are sorted by length within this many
DEFAULT_VALIDATION_SPLIT = 0.1
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
_SHOWN = 5  # row numbers / file names listed per reason in the report
_PROGRESS_EVERY_S = 10.0
_INT_LABEL = re.compile(r"-?\d+")
_EPOCH_GRAPH_SEED = 87654321  # see epoch_batches

_logger = logging.getLogger(__name__)


@dataclass
class Split:
    """One split: unbatched ``(x, y)`` elements and their labels in the same order.

    ``x`` is a scalar ``tf.string`` (text) or a ``uint8`` ``[h, w, 3]`` image of any size; ``y`` is
    an ``int32`` class id, or a ``float32`` multi-hot ``[num_classes]`` vector when multi-label.
    """

    dataset: tf.data.Dataset
    labels: np.ndarray
    size: int


@dataclass
class DataSplits:
    """What :func:`load_data` returns: the splits, the label vocabulary and a report."""

    task: str
    class_names: list[str]
    multi_label: bool
    train: Split
    validation: Split | None
    test: Split | None
    report: dict = field(default_factory=dict)


@dataclass
class _Part:
    """One file, folder or tfds split after reading.

    Exactly one of `raw` (label strings, or tuples of them when multi-label) and `ids` (label ids
    or multi-hot rows, for sources whose vocabulary is fixed) is set. `build(indices, y)` returns
    the ``(x, y)`` dataset of the examples at `indices` (ascending), whose labels are `y`.
    """

    name: str
    where: str
    build: Callable[[np.ndarray, np.ndarray], tf.data.Dataset]
    raw: list[Any] | None = None
    ids: np.ndarray | None = None
    texts: list[str] | None = None
    lines: list[int] | None = None


# ---------------------------------------------------------------------------------------------
# Public entry points.


def load_data(
    cfg: DataConfig,
    *,
    seed: int,
    multi_label: bool = False,
    log: Callable[[str], None] | None = None,
) -> DataSplits:
    """Reads ``cfg.source`` into train / validation / test splits (see the module docstring).

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
        parts = {n: _read_csv(v, n, cfg, multi_label, report) for n, v in given.items()}
    elif cfg.source == "image_folder":
        task = "image"
        parts = {n: _read_image_folder(v, n, report) for n, v in given.items()}
    elif cfg.source == "tfds":
        task, class_names, parts = _read_tfds(cfg, given, multi_label, report, log)
    elif cfg.source == "arrays":
        raise DataError(expected("csv, image_folder or tfds (arrays come from "
                                 "kerasft.data.from_arrays in Python)", "data.source", cfg.source))
    else:
        raise DataError(expected("one of csv, image_folder, tfds", "data.source", cfg.source))

    validation_split = cfg.validation_split
    if validation_split is None and not cfg.validation:
        validation_split = DEFAULT_VALIDATION_SPLIT
    return _finish(
        task=task,
        parts=parts,
        class_names=class_names,
        multi_label=multi_label,
        seed=seed,
        validation_split=None if cfg.validation else validation_split,
        test_split=None if cfg.test else cfg.test_split,
        max_examples=cfg.max_examples,
        report=report,
    )


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

    `x` is a sequence of strings (text) or images ``[n, h, w, 3]`` (``uint8``, or floats in
    0..255; ``[n, h, w]`` / ``[n, h, w, 1]`` grayscale and RGBA are converted to RGB). `y` holds
    labels as strings or ints (ints are class ids 0..K-1: they index `class_names` when it is
    given, else the class names are ``"0".."K-1"`` and every id must occur in `y_train`; other
    integers are refused, see :func:`integer_class_names`), or ``[n, C]`` one-hot /
    multi-hot rows; with `multi_label` a label may also be a list of labels or a string of labels
    joined by `label_separator` (``"a|b"``, ``data.label_separator``, as in CSV files).
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
    parts: dict[str, _Part] = {}
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
    return _finish(
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


def integer_values(y: Any) -> np.ndarray | None:
    """The labels as int64 when `y` is a 1-D array of whole numbers (NaN: a missing label)."""
    try:
        arr = np.asarray(y)
    except ValueError:  # ragged
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iuf" or arr.dtype == bool:
        return None
    if arr.dtype.kind == "f":
        arr = arr[~np.isnan(arr)]
        if not np.all(arr == np.round(arr)):
            return None
    return arr.astype(np.int64)


def integer_class_names(y: Any) -> list[str] | None:
    """Class names for integer labels without `class_names`: ``"0".."K-1"``, or None when `y`
    is not integers.

    Integer labels are class ids 0..K-1 (Keras's ``SparseCategoricalCrossentropy`` convention),
    in fit, evaluate, predict and the export alike. Any other set of integers (1..3, or ids with
    a gap) is refused rather than renumbered: renumbering would make ``evaluate(x, y)`` with the
    same integers score against other classes.
    """
    values = integer_values(y)
    if values is None or not len(values):
        return None
    present = np.unique(values)
    k = int(present.max()) + 1
    if present.min() < 0 or len(present) != k:
        shown = present.tolist()[:10]
        missing = sorted(set(range(max(k, 0))) - set(present.tolist()))[:5]
        raise DataError(expected(
            "integer labels that are class ids 0..K-1, every id present (Keras's convention; "
            "pass string labels, or FineTuner.build(class_names) first, to use other values)",
            "labels", shown, where="from_arrays train")
            + (f" (missing ids: {missing})" if missing and present.min() >= 0 else ""))
    return [str(i) for i in range(k)]


def check_integer_labels(y: Any, class_names: Sequence[str] | None, where: str) -> None:
    """Refuses integer labels for a model whose class names are other integers.

    Integer labels are class ids; a model trained on the string labels "1", "2", "3" has ids 0, 1,
    2, so the integer 1 would silently mean class "2". Such labels must be given as strings.
    """
    if class_names is not None and integer_values(y) is not None:
        _check_integer_names(class_names, where)


def _check_integer_names(class_names: Sequence[str], where: str) -> None:
    names = [str(c) for c in class_names]
    if all(_INT_LABEL.fullmatch(n) for n in names) and names != [str(i)
                                                               for i in range(len(names))]:
        raise DataError(expected(
            "labels as strings (y.astype(str)): integer labels are class ids 0.."
            f"{len(names) - 1}, and this model's class names are other integers", "class_names",
            names[:10], where=where))


def from_datasets(
    train: tf.data.Dataset,
    validation: tf.data.Dataset | None = None,
    test: tf.data.Dataset | None = None,
    *,
    class_names: Sequence[str],
    multi_label: bool = False,
) -> DataSplits:
    """Wraps user ``tf.data`` datasets of ``(x, y)`` pairs, batched or not.

    A dataset whose ``x`` has one more dimension than an example (``[b]`` strings, ``[b, h, w, c]``
    images) is unbatched. ``y`` may be int class ids, label strings (looked up in `class_names`),
    one-hot rows (argmax) or, with `multi_label`, multi-hot rows / lists of ids. Images are
    converted to ``uint8`` RGB (floats are taken as 0..255). Each dataset is iterated once to
    build its labels array, so it must be finite and should be deterministic.
    """
    names = [str(c) for c in class_names]
    report: dict[str, Any] = {"source": "datasets"}
    parts: dict[str, _Part] = {}
    task = None
    for name, ds in (("train", train), ("validation", validation), ("test", test)):
        if ds is None:
            continue
        ds, part_task = _normalise_user_dataset(ds, name)
        if task is not None and part_task != task:
            raise DataError(expected(f"{task} examples like the training dataset",
                                     f"{name} task", part_task, where="from_datasets"))
        task = part_task
        where = f"from_datasets {name}"
        if ds.element_spec[1].dtype == tf.string:
            _check_string_labels(ds, name, where, names)
        elif ds.element_spec[1].dtype.is_integer and ds.element_spec[1].shape.rank == 0 \
                and not multi_label:
            _check_integer_names(names, where)
        ds = ds.map(_tf_label_converter(ds.element_spec[1], names, multi_label),
                    num_parallel_calls=tf.data.AUTOTUNE)
        parts[name] = _tf_part(name, where, ds, names, multi_label)
        report.setdefault("files", {})[name] = where
        report.setdefault("rows_read", {})[name] = len(parts[name].ids)
    return _finish(
        task=task,
        parts=parts,
        class_names=names,
        multi_label=multi_label,
        seed=0,
        validation_split=None,
        test_split=None,
        max_examples=None,
        report=report,
    )


def make_pipeline(
    split: Split,
    *,
    batch_size: int,
    training: bool,
    seed: int | None,
    preprocess: Callable[[tf.Tensor], Any],
    image_size: tuple[int, int] | None = None,
    augmentation: dict | None = None,
    cache: bool = True,
    shuffle_buffer: int = 10000,
    drop_remainder: bool = False,
    num_classes: int | None = None,
    start_epoch: int | None = None,
    group_by_length: int | None = None,
    tokenize: Callable[[tf.Tensor], Any] | None = None,
) -> tf.data.Dataset:
    """Batches a split for ``model.fit`` / ``evaluate`` / ``predict``.

    Text: cache (raw strings) -> shuffle (training) -> batch -> ``preprocess(batch of strings)``
    -> prefetch. With `tokenize` (a fixed-length tokenizer of a batch of strings): tokenize (in
    chunks of ``TOKENIZE_CHUNK``, once) -> cache (token features) -> shuffle -> batch ->
    ``preprocess(batch of token features)`` (e.g. the padding trim) -> prefetch: epochs after the
    first reuse the token ids instead of tokenizing again. Image: resize to `image_size` -> cache
    -> shuffle (training) -> batch -> float32 0..255 -> augmentation (training) ->
    ``preprocess(batch)`` -> prefetch. Resized images are cached as ``uint8`` (rounded; a quarter
    of the memory of float32).

    Shuffling is seeded and reshuffles each epoch. With `start_epoch` (training only) the
    pipeline repeats forever from that epoch and epoch e's order depends only on (`seed`, e)
    (:func:`epoch_batches`): give ``model.fit`` ``steps_per_epoch``; a resumed run sees the same
    orders as an uninterrupted one. Evaluation pipelines (``training=False``) keep
    the split's order, so predictions line up with ``split.labels``; training pipelines are
    deterministic when `seed` is not None. With `num_classes`, multi-hot labels get the static
    shape ``[num_classes]`` (int labels stay sparse).

    With `group_by_length` (text, training, no `drop_remainder`), batches are cut from windows of
    ``LENGTH_GROUP_BATCHES`` shuffled batches sorted by token length, and each is trimmed to its
    longest sequence rounded up to `group_by_length` (:func:`length_grouped_batches`): a random
    batch of tweets nearly always holds one long text, so trimming alone saves little.
    """
    if batch_size <= 0:
        raise DataError(expected("a positive batch size", "batch_size", batch_size))
    ds = split.dataset
    if split.size and ds.cardinality() < 0:
        # Known sizes give Keras a total for progress bars and no "ran out of data" warning.
        ds = ds.apply(tf.data.experimental.assert_cardinality(split.size))
    x_spec, y_spec = ds.element_spec
    is_text = x_spec.dtype == tf.string
    deterministic = not training or seed is not None

    if num_classes is not None and y_spec.shape.rank == 1:
        def fix_label(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return x, tf.ensure_shape(tf.cast(y, tf.float32), [num_classes])

        ds = ds.map(fix_label)

    if not is_text:
        if image_size is not None:
            height, width = int(image_size[0]), int(image_size[1])
            same_size = tuple(x_spec.shape[-3:-1]) == (height, width)

            def resize(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                x = tf.cast(x, tf.float32)
                if not same_size:
                    x = tf.image.resize(x, (height, width))
                return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8), y

            # uint8 arrays already at the model's size: no per-example map at all.
            if not (same_size and x_spec.dtype == tf.uint8):
                ds = ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=deterministic)
        elif not x_spec.shape.is_fully_defined():
            raise DataError(expected("image_size (images of different sizes cannot be batched)",
                                     "image_size", None, where="make_pipeline"))

    if is_text and tokenize is not None:
        ds = ds.batch(TOKENIZE_CHUNK).map(
            lambda x, y: (tokenize(x), y), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True).unbatch()
        if split.size:
            ds = ds.apply(tf.data.experimental.assert_cardinality(split.size))
    if cache:
        ds = ds.cache()
    buffer = max(1, min(int(shuffle_buffer), split.size or int(shuffle_buffer)))
    grouped = bool(group_by_length and is_text and training and not drop_remainder
                   and LENGTH_GROUP_BATCHES > 1)
    window = batch_size * LENGTH_GROUP_BATCHES if grouped else batch_size
    if training and start_epoch is not None:
        ds = epoch_batches(ds, start_epoch=start_epoch, seed=seed, buffer=buffer,
                           batch_size=window, drop_remainder=drop_remainder)
    else:
        if training:
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(window, drop_remainder=drop_remainder)

    if is_text:
        def apply(x: tf.Tensor, y: tf.Tensor) -> tuple[Any, tf.Tensor]:
            return preprocess(x), y
    else:
        augment = build_augmentation(augmentation, seed) if training else None

        def apply(x: tf.Tensor, y: tf.Tensor) -> tuple[Any, tf.Tensor]:
            x = tf.cast(x, tf.float32)
            if augment is not None:
                x = augment(x)
            return preprocess(x), y

    ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if grouped:
        ds = ds.flat_map(lambda x, y: length_grouped_batches(
            x, y, batch_size=batch_size, multiple=int(group_by_length), seed=seed))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options)


def length_order(split: Split, preprocess: Callable[[tf.Tensor], Any],
                 chunk: int = 1024) -> np.ndarray:
    """Indices that sort a text split by token length (stable; `preprocess` tokenizes)."""
    lengths = [
        tf.reduce_sum(tf.cast(preprocess(texts)["padding_mask"], tf.int32), axis=1).numpy()
        for texts, _ in split.dataset.batch(chunk)
    ]
    return np.argsort(np.concatenate(lengths) if lengths else np.zeros(0, int), kind="stable")


def reordered(split: Split, order: np.ndarray) -> Split:
    """`split` with its examples (and labels) in the order `order`."""
    xs, ys = [], []
    for x, y in split.dataset.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    x_arr, y_arr = np.asarray(xs, dtype=object), np.asarray(ys)
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(x_arr[order]), dtype=tf.string), y_arr[order]))
    return Split(dataset=dataset, labels=np.asarray(split.labels)[order], size=split.size)


def length_grouped_batches(x: dict[str, tf.Tensor], y: tf.Tensor, *, batch_size: int,
                           multiple: int, seed: int | None) -> tf.data.Dataset:
    """One window of tokenized texts -> its batches of similar lengths, in a shuffled order.

    The window is sorted by length (``padding_mask`` sums, stable) and cut into batches of
    `batch_size` (the last may be short), each trimmed to its longest sequence rounded up to
    `multiple`. The batch order is shuffled statelessly, seeded by `seed` and the window's
    tokens: the same window always gives the same batches, so seeded and resumed runs repeat.
    """
    from kerasft.models.keras_hub import trim_padding

    lengths = tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=1)
    order = tf.argsort(lengths, stable=True)
    x = {name: tf.gather(value, order) for name, value in x.items()}
    y = tf.gather(y, order)
    size = tf.shape(lengths)[0]
    count = (size + batch_size - 1) // batch_size
    key = tf.stack([tf.constant(seed or 0, tf.int64),
                    tf.reduce_sum(tf.cast(x["token_ids"], tf.int64))])
    batch_order = tf.random.experimental.stateless_shuffle(tf.range(count), seed=key)

    def take(i: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        start = i * batch_size
        end = tf.minimum(start + batch_size, size)
        return trim_padding({k: v[start:end] for k, v in x.items()}, multiple), y[start:end]

    return tf.data.Dataset.from_tensor_slices(batch_order).map(take)


def epoch_batches(ds: tf.data.Dataset, *, start_epoch: int, seed: int | None, buffer: int,
                  batch_size: int, drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of `ds` epoch after epoch, forever, from epoch `start_epoch` on.

    Epoch e is `ds` shuffled (buffer `buffer`) with a seed that depends only on (`seed`, e), then
    batched, so the batches of epoch e are the same whichever epoch an iterator starts at (unlike
    ``shuffle(reshuffle_each_iteration=True)``, whose orders depend on how often the dataset was
    iterated). Without `seed` every epoch is shuffled at random.
    """

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        epoch_seed = None
        if seed is not None:
            epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + epoch
            # A fixed seed for this function's graph: shuffle pairs it with the op seed, which
            # then alone decides the order (tf.random compares a tensor op seed with 0 when the
            # graph seed is 0, which fails for seed: 0).
            tf.compat.v1.get_default_graph().seed = _EPOCH_GRAPH_SEED
        shuffled = ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
        return shuffled.batch(batch_size, drop_remainder=drop_remainder)

    return tf.data.Dataset.counter(start_epoch).flat_map(one_epoch)


def build_augmentation(
    augmentation: dict | None, seed: int | None
) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """Keras preprocessing layers for ``data.augmentation``, applied to float 0..255 batches.

    Keys: ``flip`` ('horizontal', 'vertical', 'horizontal_and_vertical' or true), ``rotation``
    (fraction of a full turn), ``zoom``, ``translation`` (fractions of the size), ``contrast``,
    ``brightness`` (fractions of the 0..255 range). A number ``f`` means ``[-f, f]``; a pair
    ``[low, high]`` is passed on. false / null / 0 turns an entry off. Returns None when empty.
    """
    if not augmentation:
        return None
    import keras

    layers = []
    for i, (key, value) in enumerate(augmentation.items()):
        name = f"data.augmentation.{key}"
        layer_seed = None if seed is None else seed + i
        if value is None or value is False or (_is_number(value) and value == 0):
            continue
        if key == "flip":
            mode = "horizontal" if value is True else value
            if mode not in FLIP_MODES:
                raise ConfigError(expected("true or one of " + ", ".join(FLIP_MODES), name, value))
            layers.append(keras.layers.RandomFlip(mode, seed=layer_seed))
            continue
        factor = _factor(value, name)
        if key == "rotation":
            layers.append(keras.layers.RandomRotation(factor, seed=layer_seed))
        elif key == "zoom":
            layers.append(keras.layers.RandomZoom(factor, seed=layer_seed))
        elif key == "translation":
            layers.append(keras.layers.RandomTranslation(factor, factor, seed=layer_seed))
        elif key == "contrast":
            layers.append(keras.layers.RandomContrast(factor, seed=layer_seed))
        elif key == "brightness":
            layers.append(
                keras.layers.RandomBrightness(factor, value_range=(0.0, 255.0), seed=layer_seed)
            )
        else:
            raise ConfigError(expected("one of flip, rotation, zoom, translation, contrast, "
                                       "brightness", "data.augmentation", key))
    if not layers:
        return None

    def augment(x: tf.Tensor) -> tf.Tensor:
        for layer in layers:
            x = layer(x, training=True)
        return x

    return augment


def fingerprint(splits: DataSplits) -> dict[str, Any]:
    """What identifies a run's data: the labels and, per split, its size and a hash of its labels
    in order (a split re-drawn with another seed, fraction or file gives another hash)."""
    import hashlib

    out: dict[str, Any] = {"class_names": list(splits.class_names), "splits": {}}
    for name in ("train", "validation", "test"):
        split = getattr(splits, name)
        if split is not None:
            labels = np.ascontiguousarray(split.labels)
            out["splits"][name] = {"size": int(split.size),
                                   "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest()}
    return out


def log_report(splits: DataSplits, log: Callable[[str], None] = print) -> None:
    """Writes the data report as a few human-readable lines."""
    r = splits.report
    log(f"data: source={r.get('source')} task={splits.task} classes={len(splits.class_names)}"
        f"{' (multi-label)' if splits.multi_label else ''}")
    unit = {"csv": "rows", "image_folder": "image files"}.get(r.get("source"), "examples")
    for name, where in r.get("files", {}).items():
        line = f"data: {name}: {where}: {r.get('rows_read', {}).get(name, '?')} {unit} read"
        skipped = r.get("skipped", {}).get(name, {})
        if skipped:
            total = sum(s["count"] for s in skipped.values())
            reasons = "; ".join(
                f"{reason}: {s['count']} (e.g. {', '.join(str(v) for v in s['examples'])})"
                for reason, s in skipped.items()
            )
            line += f", {total} skipped ({reasons})"
        dup = r.get("duplicates", {}).get(name)
        if dup and dup["count"]:
            line += (f", {dup['count']} duplicate texts kept ({dup['conflicting']} with "
                     f"different labels; e.g. lines {', '.join(map(str, dup['examples']))})")
        ignored = r.get("ignored_files", {}).get(name)
        if ignored:
            line += f", {ignored['count']} non-image files ignored"
        log(line)
    for name, empty in r.get("empty_classes", {}).items():
        if empty:
            log(f"data: {name}: class folders without readable images: {', '.join(empty)}")
    for name, how in r.get("split", {}).items():
        log(f"data: {name} split: {how}")
    for name, count in r.get("overlap", {}).items():
        if count:
            log(f"data: {name}: {count} texts also appear in train")
    if r.get("max_examples"):
        log(f"data: max_examples={r['max_examples']} (stratified, seeded sample of each split)")
    sizes = r.get("sizes", {})
    log("data: sizes: " + ", ".join(f"{n} {s}" for n, s in sizes.items()))
    counts = r.get("class_counts", {})
    if counts:
        names = list(sizes)
        width = max(10, *(len(c) for c in splits.class_names[:50]))
        log("data: " + "class".ljust(width) + "".join(n.rjust(12) for n in names))
        for c in splits.class_names[:50]:
            log("data: " + c.ljust(width)
                + "".join(str(counts.get(n, {}).get(c, 0)).rjust(12) for n in names))
        if len(splits.class_names) > 50:
            log(f"data: ... and {len(splits.class_names) - 50} more classes")


# ---------------------------------------------------------------------------------------------
# Vocabulary, splitting and the report.


def _finish(
    *,
    task: str | None,
    parts: dict[str, _Part],
    class_names: list[str] | None,
    multi_label: bool,
    seed: int,
    validation_split: float | None,
    test_split: float | None,
    max_examples: int | None,
    report: dict[str, Any],
) -> DataSplits:
    train = parts["train"]
    if class_names is None:
        class_names = _vocabulary(train.raw or [], multi_label)
    _check_class_names(class_names, train.where)
    ids = {name: _label_ids(part, class_names, multi_label) for name, part in parts.items()}
    n = len(ids["train"])
    if n == 0:
        raise DataError(expected("at least one labelled example", "examples", 0,
                                 where=train.where))
    present = _present_classes(ids["train"], class_names, multi_label)
    if len(present) < 2:
        raise DataError(expected("at least 2 classes in the training data", "classes", present,
                                 where=train.where))

    keys = _strata(ids["train"], multi_label)
    selection: dict[str, tuple[str, np.ndarray]] = {}
    rest = np.arange(n)
    split_info: dict[str, str] = {}
    for name, fraction, step in (("test", test_split, 1), ("validation", validation_split, 2)):
        if name in parts:
            selection[name] = (name, np.arange(len(ids[name])))
            split_info[name] = f"from {parts[name].where}"
        elif fraction:
            count = max(1, int(round(fraction * n)))
            rng = np.random.default_rng([seed, step])
            take = _stratified_pick(keys[rest], count, rng, keep_one=True)
            if take.any():
                selection[name] = ("train", rest[take])
                rest = rest[~take]
                split_info[name] = (f"{fraction:.0%} of {train.where} "
                                    f"(stratified, seed {seed})")
            else:
                split_info[name] = f"none (too few examples for {fraction:.0%} of {train.where})"
    selection["train"] = ("train", rest)

    if max_examples:
        report["max_examples"] = max_examples
        for step, (name, (source, idx)) in enumerate(sorted(selection.items())):
            if len(idx) > max_examples:
                source_keys = keys if source == "train" else _strata(ids[source], multi_label)
                rng = np.random.default_rng([seed, 10 + step])
                keep = _stratified_pick(source_keys[idx], max_examples, rng, keep_one=False)
                selection[name] = (source, idx[keep])

    splits: dict[str, Split] = {}
    for name in ("train", "validation", "test"):
        if name not in selection:
            continue
        source, idx = selection[name]
        y = ids[source][idx]
        splits[name] = Split(dataset=parts[source].build(idx, y), labels=y, size=len(idx))

    report["task"] = task
    report["split"] = split_info
    report["sizes"] = {name: s.size for name, s in splits.items()}
    report["class_counts"] = {
        name: _class_counts(s.labels, class_names, multi_label) for name, s in splits.items()
    }
    if train.texts is not None:
        train_source, train_idx = selection["train"]
        train_texts = {parts[train_source].texts[i] for i in train_idx}
        report["overlap"] = {
            name: sum(parts[source].texts[i] in train_texts for i in idx)
            for name, (source, idx) in selection.items()
            if name != "train" and parts[source].texts is not None
        }
    return DataSplits(
        task=task or "text",
        class_names=list(class_names),
        multi_label=multi_label,
        train=splits["train"],
        validation=splits.get("validation"),
        test=splits.get("test"),
        report=report,
    )


def _sort_labels(labels: set[str]) -> list[str]:
    if labels and all(_INT_LABEL.fullmatch(x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _vocabulary(raw: list[Any], multi_label: bool) -> list[str]:
    if multi_label:
        return _sort_labels({label for labels in raw for label in labels})
    return _sort_labels(set(raw))


def _check_class_names(class_names: list[str], where: str) -> None:
    if len(set(class_names)) != len(class_names):
        dup = [c for c, k in Counter(class_names).items() if k > 1]
        raise DataError(expected("unique class names", "duplicates", dup, where=where))
    for name in class_names:
        # Labels become lines of labels.txt and strings in exports, never paths: 'Sci/Tech' is
        # fine. What would escape a folder if a label ever named one ('.', '..') is refused.
        if not name or name in (".", "..") or "\n" in name or "\r" in name:
            raise DataError(expected("labels that are not empty, '.' or '..' and have no line "
                                     "breaks", "label", name, where=where))


def _known(class_names: list[str]) -> str:
    shown = ", ".join(repr(c) for c in class_names[:20])
    return shown + (f", ... ({len(class_names)} in all)" if len(class_names) > 20 else "")


def _label_ids(part: _Part, class_names: list[str], multi_label: bool) -> np.ndarray:
    if part.ids is not None:
        return part.ids
    index = {c: i for i, c in enumerate(class_names)}
    raw = part.raw or []

    def lookup(label: str, row: int) -> int:
        try:
            return index[label]
        except KeyError:
            where = part.where
            if part.lines is not None:
                where = f"{where}:{part.lines[row]}"
            what = ("labels that occur in the training data" if part.name != "train"
                    else "labels from class_names")
            raise DataError(expected(f"{what} (known: {_known(class_names)})",
                                     f"{part.name} label", label, where=where)) from None

    if multi_label:
        out = np.zeros((len(raw), len(class_names)), np.float32)
        for row, labels in enumerate(raw):
            for label in labels:
                out[row, lookup(label, row)] = 1.0
        return out
    return np.array([lookup(label, row) for row, label in enumerate(raw)], np.int32)


def _present_classes(ids: np.ndarray, class_names: list[str], multi_label: bool) -> list[str]:
    if multi_label:
        return [class_names[i] for i in np.flatnonzero(ids.sum(axis=0) > 0)]
    return [class_names[i] for i in np.unique(ids)]


def _class_counts(ids: np.ndarray, class_names: list[str], multi_label: bool) -> dict[str, int]:
    if multi_label:
        sums = ids.sum(axis=0) if len(ids) else np.zeros(len(class_names))
        return {c: int(s) for c, s in zip(class_names, sums, strict=True)}
    counts = np.bincount(ids, minlength=len(class_names)) if len(ids) else [0] * len(class_names)
    return {c: int(k) for c, k in zip(class_names, counts, strict=True)}


def _strata(ids: np.ndarray, multi_label: bool) -> np.ndarray:
    """Stratification keys: the class id; for multi-label, the example's rarest class.

    (Sets of classes are mostly unique, so they would leave nothing to stratify; the rarest class
    keeps rare labels spread over the splits.) Examples without any label get -1.
    """
    if not multi_label:
        return ids
    if len(ids) == 0:
        return np.zeros(0, np.int64)
    rarity = np.where(ids > 0, ids.sum(axis=0)[np.newaxis, :], np.inf)
    return np.where(ids.max(axis=1) > 0, np.argmin(rarity, axis=1), -1)


def _stratified_pick(keys: np.ndarray, count: int, rng: np.random.Generator,
                     keep_one: bool) -> np.ndarray:
    """A boolean mask choosing `count` positions with the class proportions of `keys`.

    Each stratum gets ``floor(count * share)``; the remainder goes to the strata with the largest
    fractional parts (ties broken at random). With `keep_one`, every stratum keeps at least one
    unchosen member (so a class never leaves the training data entirely).
    """
    n = len(keys)
    mask = np.zeros(n, bool)
    count = min(count, n)
    if count <= 0:
        return mask
    _, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    cap = np.maximum(sizes - 1, 0) if keep_one else sizes
    exact = sizes * count / n
    alloc = np.minimum(np.floor(exact).astype(int), cap)
    short = count - int(alloc.sum())
    while short > 0 and (alloc < cap).any():
        order = np.lexsort((rng.random(len(sizes)), -(exact - alloc)))
        for g in order:
            if short == 0:
                break
            if alloc[g] < cap[g]:
                alloc[g] += 1
                short -= 1
    members = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for g, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        if alloc[g]:
            mask[rng.choice(members[start:start + size], alloc[g], replace=False)] = True
    return mask


def _skip(skipped: dict[str, dict[str, Any]], reason: str, example: Any) -> None:
    entry = skipped.setdefault(reason, {"count": 0, "examples": []})
    entry["count"] += 1
    if len(entry["examples"]) < _SHOWN:
        entry["examples"].append(example)


def _duplicates(texts: list[str], labels: list[Any], lines: list[int]) -> dict[str, Any]:
    seen: dict[str, set] = {}
    count, examples = 0, []
    for text, label, line in zip(texts, labels, lines, strict=True):
        if text in seen:
            count += 1
            if len(examples) < _SHOWN:
                examples.append(line)
            seen[text].add(label)
        else:
            seen[text] = {label}
    conflicting = sum(len(v) > 1 for v in seen.values())
    return {"count": count, "conflicting": conflicting, "examples": examples}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _factor(value: Any, key: str) -> float | tuple[float, float]:
    if _is_number(value) and value > 0:
        return float(value)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(_is_number(v) for v in value) and value[0] <= value[1]):
        return (float(value[0]), float(value[1]))
    raise ConfigError(expected("a positive number or a [low, high] pair", key, value))


# ---------------------------------------------------------------------------------------------
# CSV.


def _read_csv(spec: str, name: str, cfg: DataConfig, multi_label: bool,
              report: dict[str, Any]) -> _Part:
    key = f"data.{name}"
    path = resolve_pkg_path(spec, key)
    if not os.path.isfile(path):
        raise DataError(expected("an existing CSV file", key, spec))
    try:
        codec = codecs.lookup(cfg.encoding).name
    except LookupError:
        raise DataError(expected("a Python codec name such as utf-8 or latin-1",
                                 "data.encoding", cfg.encoding)) from None
    encoding = "utf-8-sig" if codec == "utf-8" else cfg.encoding
    delimiter = {"\\t": "\t", "tab": "\t"}.get(cfg.delimiter, cfg.delimiter)
    if len(delimiter) != 1:
        raise DataError(expected("a single character (or 'tab')", "data.delimiter",
                                 cfg.delimiter))
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))

    texts: list[str] = []
    labels: list[Any] = []
    lines: list[int] = []
    skipped: dict[str, dict[str, Any]] = {}
    rows = 0
    reader = None
    try:
        with open(path, newline="", encoding=encoding) as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise DataError(expected("a header row and at least one data row", "rows", 0,
                                         where=path))
            text_at = _column(header, cfg.text_column, "data.text_column", path)
            label_at = _column(header, cfg.label_column, "data.label_column", path)
            last_line = reader.line_num
            for row in reader:
                line, last_line = last_line + 1, reader.line_num
                if not row:  # a blank line
                    continue
                rows += 1
                text = row[text_at] if text_at < len(row) else None
                label_field = row[label_at] if label_at < len(row) else None
                if text is None or label_field is None:
                    reason, column = "missing fields", None
                elif not text.strip():
                    reason, column = "empty text", cfg.text_column
                else:
                    label = _parse_label(label_field, multi_label, cfg.label_separator)
                    if label:
                        texts.append(text)
                        labels.append(label)
                        lines.append(line)
                        continue
                    reason, column = "empty label", cfg.label_column
                if cfg.strict:
                    if column is None:
                        raise DataError(expected(
                            f"at least {max(text_at, label_at) + 1} fields (data.strict: true)",
                            "fields", len(row), where=f"{path}:{line}"))
                    raise DataError(expected(
                        f"a non-empty value in column {column!r} (data.strict: true)",
                        "value", row[text_at if column == cfg.text_column else label_at],
                        where=f"{path}:{line}"))
                _skip(skipped, reason, line)
    except UnicodeDecodeError as e:
        line, column = _undecodable_line(path, encoding)
        raise DataError(expected(
            f"bytes that decode as {cfg.encoding} (set data.encoding, e.g. data.encoding: "
            "latin-1)", "byte", e.object[e.start:e.start + 1], where=f"{path}:{line}:{column}",
        )) from None
    except csv.Error as e:
        line = reader.line_num if reader is not None else 1
        raise DataError(expected("valid CSV", "error", str(e), where=f"{path}:{line}")) from None

    if rows == 0:
        raise DataError(expected("a header row and at least one data row", "rows", 0,
                                 where=path))
    if not texts:
        raise DataError(expected("at least one row with both a text and a label", "skipped",
                                 {k: v["count"] for k, v in skipped.items()}, where=path))
    report.setdefault("files", {})[name] = spec
    report.setdefault("rows_read", {})[name] = rows
    report.setdefault("skipped", {})[name] = skipped
    report.setdefault("duplicates", {})[name] = _duplicates(texts, labels, lines)

    def build(indices: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
        x = tf.constant([texts[i] for i in indices], dtype=tf.string)
        return tf.data.Dataset.from_tensor_slices((x, tf.constant(y)))

    return _Part(name=name, where=spec, build=build, raw=labels, texts=texts, lines=lines)


def _column(header: list[str], column: str, key: str, path: str) -> int:
    stripped = [h.strip() for h in header]
    if column in header:
        return header.index(column)
    if column.strip() in stripped:
        return stripped.index(column.strip())
    close = difflib.get_close_matches(column, stripped, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise DataError(expected(f"a column named {column!r} (set {key}{hint})", "columns",
                             stripped, where=path))


def _parse_label(value: str, multi_label: bool, separator: str) -> Any:
    if not multi_label:
        return value.strip()
    parts = [p.strip() for p in value.split(separator)] if separator else [value.strip()]
    return tuple(dict.fromkeys(p for p in parts if p))


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


# ---------------------------------------------------------------------------------------------
# Image folders.


def _decode_image(data: tf.Tensor) -> tf.Tensor:
    """An image file -> uint8 [h, w, 3] (grayscale and RGBA become RGB; first GIF frame)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def _read_image_folder(spec: str, name: str, report: dict[str, Any]) -> _Part:
    key = f"data.{name}"
    root = resolve_pkg_path(spec, key)
    if not os.path.isdir(root):
        raise DataError(expected("an existing folder with one subfolder per class", key, spec))
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(expected("one subfolder per class (e.g. cat/1.jpg, dog/2.jpg)",
                                 "subfolders", 0, where=root))
    paths: list[str] = []
    labels: list[str] = []
    ignored: dict[str, Any] = {"count": 0, "examples": []}

    def ignore(rel: str) -> None:
        ignored["count"] += 1
        if len(ignored["examples"]) < _SHOWN:
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
                if os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS:
                    paths.append(full)
                    labels.append(label)
                else:
                    ignore(os.path.relpath(full, root))
    if not paths:
        raise DataError(expected(f"image files ({' '.join(IMAGE_EXTENSIONS)}) in the class "
                                 "subfolders", "images", 0, where=root))
    readable = _readable(paths)
    skipped: dict[str, dict[str, Any]] = {}
    for i in np.flatnonzero(~readable):
        _skip(skipped, "unreadable image", os.path.relpath(paths[i], root))
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

    return _Part(name=name, where=spec, build=build, raw=kept_labels)


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


# ---------------------------------------------------------------------------------------------
# tf.data sources: tfds and user datasets.


def _to_uint8_rgb(x: tf.Tensor) -> tf.Tensor:
    """An image of any dtype / 1, 3 or 4 channels -> uint8 [h, w, 3] (floats taken as 0..255)."""
    if x.dtype != tf.uint8:
        x = tf.cast(tf.clip_by_value(tf.round(tf.cast(x, tf.float32)), 0.0, 255.0), tf.uint8)
    channels = x.shape[-1]
    if channels == 1:
        x = tf.image.grayscale_to_rgb(x)
    elif channels == 3:
        pass
    elif channels is None or channels == 4:
        x = x[..., :3] if channels == 4 else tf.cond(
            tf.shape(x)[-1] == 1, lambda: tf.tile(x, [1, 1, 3]), lambda: x[..., :3])
    else:
        raise DataError(expected("images with 1, 3 or 4 channels", "channels", channels))
    x.set_shape(x.shape[:-1].concatenate([3]))
    return x


def _tf_label_converter(
    y_spec: tf.TensorSpec, class_names: list[str], multi_label: bool
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """An in-graph map from a source's y (ids, strings, one-hot, id lists) to int32 / multi-hot."""
    num = len(class_names)
    table = None
    if y_spec.dtype == tf.string:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(class_names),
                                                tf.range(num, dtype=tf.int64)), -1)
    rank = y_spec.shape.rank
    width = y_spec.shape[-1] if rank else None
    if rank not in (0, 1):
        raise DataError(expected("labels that are scalars or vectors", "label shape",
                                 str(y_spec.shape)))

    def to_ids(y: tf.Tensor) -> tf.Tensor:
        return table.lookup(y) if table is not None else y

    def convert(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if multi_label:
            if rank == 0:
                return x, tf.one_hot(to_ids(y), num, dtype=tf.float32)
            if width == num and table is None:
                return x, tf.cast(y, tf.float32)
            ids = to_ids(y)
            hot = tf.reduce_sum(tf.one_hot(ids, num, dtype=tf.float32), axis=0)
            return x, tf.ensure_shape(tf.minimum(hot, 1.0), [num])
        if rank == 1:
            if width != num or table is not None:
                raise DataError(expected(f"one-hot labels of length {num} (or multi_label=True)",
                                         "label shape", str(y_spec.shape)))
            return x, tf.cast(tf.argmax(y, output_type=tf.int64), tf.int32)
        return x, tf.cast(to_ids(y), tf.int32)

    return convert


def _collect_labels(ds: tf.data.Dataset, name: str, where: str, class_names: list[str],
                    multi_label: bool, total: int | None,
                    log: Callable[[str], None] | None) -> np.ndarray:
    """Iterates the converted label column once; checks ids (unknown strings come out as -1)."""
    labels = ds.map(lambda x, y: y, num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
    chunks, seen, last = [], 0, time.monotonic()
    if log is not None and total and total > 50000:
        log(f"data: reading the labels of {where} ({total} examples)...")
    for chunk in labels.as_numpy_iterator():
        chunks.append(chunk)
        seen += len(chunk)
        if log is not None and time.monotonic() - last > _PROGRESS_EVERY_S:
            last = time.monotonic()
            log(f"data: reading the labels of {where}: {seen}" + (f"/{total}" if total else ""))
    num = len(class_names)
    if not chunks:
        return np.zeros((0, num), np.float32) if multi_label else np.zeros(0, np.int32)
    ids = np.concatenate(chunks)
    if not multi_label:
        bad = np.flatnonzero((ids < 0) | (ids >= num))
        if len(bad):
            raise DataError(expected(
                f"class ids 0..{num - 1} ({_known(class_names)}); -1 marks an unlabelled "
                "example", f"{name} label of example {bad[0]}", int(ids[bad[0]]), where=where))
    return ids


def _tf_part(name: str, where: str, ds: tf.data.Dataset, class_names: list[str],
             multi_label: bool) -> _Part:
    """A part read from a converted ``(x, y)`` dataset: its labels are read once, here."""
    ids = _collect_labels(ds, name, where, class_names, multi_label, None, None)
    return _Part(name=name, where=where, build=_tf_part_builder(ds, len(ids)), ids=ids)


def _check_string_labels(ds: tf.data.Dataset, name: str, where: str,
                         class_names: list[str]) -> None:
    """Names the first string label of a user dataset that is not in `class_names`."""
    known = set(class_names)
    labels = ds.map(lambda x, y: tf.reshape(y, [-1])).unbatch().batch(4096)
    for chunk in labels.as_numpy_iterator():
        for value in chunk:
            label = value.decode("utf-8")
            if label not in known:
                raise DataError(expected(f"labels from class_names ({_known(class_names)})",
                                         f"{name} label", label, where=where))


def _normalise_user_dataset(ds: tf.data.Dataset, name: str) -> tuple[tf.data.Dataset, str]:
    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise DataError(expected("a dataset of (x, y) pairs", f"{name} element_spec", str(spec),
                                 where="from_datasets"))
    x_spec, y_spec = spec
    if not isinstance(x_spec, tf.TensorSpec) or x_spec.shape.rank is None:
        raise DataError(expected("x as a tensor of known rank", f"{name} x spec", str(x_spec),
                                 where="from_datasets"))
    rank = x_spec.shape.rank
    task = "text" if x_spec.dtype == tf.string else "image"
    if task == "text":
        batched = rank == 1
    else:  # [h, w] / [h, w, c] is one image; [b, h, w] (c not 1, 3, 4) / [b, h, w, c] a batch
        batched = rank == 4 or (rank == 3 and x_spec.shape[-1] not in (1, 3, 4))
    if batched:
        ds = ds.unbatch()
    elif rank not in ((0,) if task == "text" else (2, 3)):
        raise DataError(expected("x as strings [] / [batch] or images [h, w, c] / "
                                 "[batch, h, w, c]", f"{name} x shape", str(x_spec.shape),
                                 where="from_datasets"))
    if task == "image":
        if ds.element_spec[0].shape.rank == 2:
            ds = ds.map(lambda x, y: (x[..., tf.newaxis], y))
        ds = ds.map(lambda x, y: (_to_uint8_rgb(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds, task


def _read_tfds(cfg: DataConfig, given: dict[str, str], multi_label: bool,
               report: dict[str, Any], log: Callable[[str], None]
               ) -> tuple[str, list[str], dict[str, _Part]]:
    import tensorflow_datasets as tfds

    name = cfg.tfds_name
    if not name:
        raise DataError(expected("a tfds dataset name when data.source is tfds",
                                 "data.tfds_name", name))
    x_key, y_key = cfg.image_key, cfg.label_key
    as_supervised = not (x_key or y_key)

    def load(split: str, decoders: dict | None = None) -> tuple[tf.data.Dataset, Any]:
        try:
            return tfds.load(name, split=split, data_dir=cfg.tfds_data_dir,
                             as_supervised=as_supervised, with_info=True, shuffle_files=False,
                             decoders=decoders)
        except tfds.core.registered.DatasetNotFoundError:
            close = difflib.get_close_matches(name, tfds.list_builders(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(expected(f"a tfds dataset name (see `tfds.list_builders()`{hint})",
                                     "data.tfds_name", name)) from None
        except (ValueError, KeyError, AssertionError) as e:
            raise DataError(expected("a split of the dataset (e.g. train, train[:90%])",
                                     "split", split,
                                     where=f"tfds {name}") + f" ({str(e).splitlines()[0]})"
                            ) from None

    _, info = load(given["train"])
    if as_supervised:
        keys = info.supervised_keys
        if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str)
                                                                   for k in keys)):
            raise DataError(expected("a dataset with (input, label) supervised keys, or "
                                     "data.image_key and data.label_key", "supervised_keys",
                                     str(keys), where=f"tfds {name}"))
        x_key, y_key = keys
    else:
        keys = info.supervised_keys if isinstance(info.supervised_keys, tuple) else (None, None)
        x_key, y_key = x_key or keys[0], y_key or keys[1]
    features = info.features
    for key, value in (("data.image_key", x_key), ("data.label_key", y_key)):
        if value not in features:
            raise DataError(expected(f"a feature of {name} ({', '.join(features.keys())})",
                                     key, value))
    x_feature, y_feature = features[x_key], features[y_key]
    if isinstance(x_feature, tfds.features.Image):
        task = "image"
    elif isinstance(x_feature, tfds.features.Text) or x_feature.dtype == tf.string:
        task = "text"
    else:
        raise DataError(expected("an Image or Text input feature", x_key,
                                 type(x_feature).__name__, where=f"tfds {name}"))
    label_feature = getattr(y_feature, "feature", y_feature)
    names = getattr(label_feature, "names", None)
    class_names = [str(c) for c in names] if names else None

    def pairs(ds: tf.data.Dataset) -> tf.data.Dataset:
        if as_supervised:
            return ds
        return ds.map(lambda ex: (ex[x_key], ex[y_key]))

    # Images stay encoded until after the index filter, so a split taken out of train (or capped
    # by max_examples) decodes only its own examples; the label pass decodes none.
    skip = {x_key: tfds.decode.SkipDecoding()} if task == "image" else None
    raws = {part_name: pairs(load(split, skip)[0]) for part_name, split in given.items()}
    if class_names is None:  # an integer label without names: ids 0..max as names
        top = max((int(np.max(y, initial=-1)) for y in
                   raws["train"].map(lambda x, y: y).batch(4096).as_numpy_iterator()),
                  default=-1)
        class_names = [str(i) for i in range(top + 1)]

    parts: dict[str, _Part] = {}
    for part_name, split in given.items():
        raw = raws[part_name]
        convert = _tf_label_converter(raw.element_spec[1], class_names, multi_label)

        def decode(x: tf.Tensor, y: tf.Tensor, convert: Callable = convert
                   ) -> tuple[tf.Tensor, tf.Tensor]:
            if task == "image":
                x = _to_uint8_rgb(x_feature.decode_example(x))
            return convert(x, y)

        try:
            total = info.splits[split].num_examples
        except (KeyError, ValueError, TypeError):
            total = None
        where = f"tfds {name} {split}"
        ids = _collect_labels(raw.map(convert), part_name, where, class_names, multi_label,
                              total, log)
        build = _tf_part_builder(
            raw, len(ids), after=lambda d, f=decode: d.map(f, num_parallel_calls=tf.data.AUTOTUNE))
        parts[part_name] = _Part(name=part_name, where=where, build=build, ids=ids)
        report.setdefault("files", {})[part_name] = where
        report.setdefault("rows_read", {})[part_name] = len(ids)
    return task, class_names, parts


def _tf_part_builder(
    ds: tf.data.Dataset,
    size: int,
    after: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None,
) -> Callable[[np.ndarray, np.ndarray], tf.data.Dataset]:
    """Selects examples of a tf.data source by index with a boolean mask (order kept)."""

    def build(indices: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
        chosen = ds
        if len(indices) != size:
            mask = np.zeros(size, bool)
            mask[indices] = True
            mask_t = tf.constant(mask)
            chosen = (ds.enumerate()
                      .filter(lambda i, element: tf.gather(mask_t, i))
                      .map(lambda i, element: element))
        return after(chosen) if after is not None else chosen

    return build


# ---------------------------------------------------------------------------------------------
# Arrays.


def _array_part(name: str, x: Any, y: Any, class_names: list[str] | None, multi_label: bool,
                report: dict[str, Any], label_separator: str = "|") -> tuple[str, _Part]:
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
    x = np.asarray(x)
    n = len(x)
    if len(y_arr) != n:
        raise DataError(expected(f"as many labels as examples ({n})", f"len(y_{name})",
                                 len(y_arr), where="from_arrays"))
    raw = _raw_labels(y_arr, class_names, multi_label, where, label_separator)
    skipped: dict[str, dict[str, Any]] = {}
    if x.dtype.kind in "USO":
        texts = [t.decode("utf-8") if isinstance(t, bytes) else t for t in x]
        keep = []
        for i, (text, label) in enumerate(zip(texts, raw, strict=True)):
            if not isinstance(text, str) or not text.strip():
                _skip(skipped, "empty text", i)
            elif not label:
                _skip(skipped, "missing label", i)
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
                _skip(skipped, "missing label", i)
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
        report.setdefault("duplicates", {})[name] = _duplicates(texts, raw, keep)
    return task, _Part(name=name, where=where, build=build, raw=raw, texts=texts)


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
