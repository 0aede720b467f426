"""Step 2 of a run, reading ``tf.data`` sources: tfds datasets and the user's own datasets.

* ``tfds`` (:func:`read_tfds`, for ``data.source: tfds``): ``tfds.load`` of ``data.tfds_name``;
  splits such as ``train[:90%]`` (``train`` when ``data.train`` is not set); the label column is
  read once (images left undecoded) to build the labels array. A dataset that is not prepared in
  ``data.tfds_data_dir`` is downloaded by tfds, which needs internet.
* :func:`from_datasets`: user ``tf.data`` datasets of ``(x, y)`` pairs, for Python callers.

Labels (ids, strings, one-hot rows, id lists) are converted in-graph to int32 ids or multi-hot
rows; images to ``uint8`` RGB. The parts go to :func:`kerasft.data.splits.finish`.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from kerasft.config import DataConfig
from kerasft.data.splits import DataSplits, Part, check_integer_names, finish, known_names
from kerasft.errors import DataError, expected

_PROGRESS_EVERY_S = 10.0


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
    parts: dict[str, Part] = {}
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
            check_integer_names(names, where)
        ds = ds.map(_tf_label_converter(ds.element_spec[1], names, multi_label),
                    num_parallel_calls=tf.data.AUTOTUNE)
        parts[name] = _tf_part(name, where, ds, names, multi_label)
        report.setdefault("files", {})[name] = where
        report.setdefault("rows_read", {})[name] = len(parts[name].ids)
    return finish(
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
                f"class ids 0..{num - 1} ({known_names(class_names)}); -1 marks an unlabelled "
                "example", f"{name} label of example {bad[0]}", int(ids[bad[0]]), where=where))
    return ids


def _tf_part(name: str, where: str, ds: tf.data.Dataset, class_names: list[str],
             multi_label: bool) -> Part:
    """A part read from a converted ``(x, y)`` dataset: its labels are read once, here."""
    ids = _collect_labels(ds, name, where, class_names, multi_label, None, None)
    return Part(name=name, where=where, build=_tf_part_builder(ds, len(ids)), ids=ids)


def _check_string_labels(ds: tf.data.Dataset, name: str, where: str,
                         class_names: list[str]) -> None:
    """Names the first string label of a user dataset that is not in `class_names`."""
    known = set(class_names)
    labels = ds.map(lambda x, y: tf.reshape(y, [-1])).unbatch().batch(4096)
    for chunk in labels.as_numpy_iterator():
        for value in chunk:
            label = value.decode("utf-8")
            if label not in known:
                raise DataError(expected(f"labels from class_names ({known_names(class_names)})",
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


def read_tfds(cfg: DataConfig, given: dict[str, str], multi_label: bool,
               report: dict[str, Any], log: Callable[[str], None]
               ) -> tuple[str, list[str], dict[str, Part]]:
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

    parts: dict[str, Part] = {}
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
        parts[part_name] = Part(name=part_name, where=where, build=build, ids=ids)
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
