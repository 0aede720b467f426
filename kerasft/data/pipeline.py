"""Step 2 of a run, batching: a split becomes the dataset that ``model.fit`` reads.

:func:`make_pipeline` batches, preprocesses and prefetches a :class:`~kerasft.data.splits.Split`;
:func:`epoch_batches` gives resumable per-epoch shuffles; :func:`length_grouped_batches` and
:func:`trim_padding` cut text batches to the length they need (:func:`token_lengths`);
:func:`length_order` and :func:`reordered` sort a text split by length for prediction;
:func:`build_augmentation` makes the image augmentation of ``data.augmentation`` and
:func:`build_mixing` its MixUp / CutMix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from kerasft.config import parse_mixing, parse_rand_augment
from kerasft.data.splits import Split
from kerasft.errors import ConfigError, DataError, expected

#: Texts tokenized per call when make_pipeline tokenizes before the cache (vectorised).
TOKENIZE_CHUNK = 256
LENGTH_GROUP_BATCHES = 16  # training text batches are sorted by length within this many
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
_EPOCH_GRAPH_SEED = 87654321  # see epoch_batches


def resize_images(images: Any, size: Sequence[int]) -> tf.Tensor:
    """kerasft's one image resize (bilinear, float32 out, rounded to whole 0..255 values):
    training pipelines, exports, TFLite and predictions all go through it, so a served image is
    resized as the training images were. The rounding is the training cache's (uint8): without
    it a served image of another size would get slightly different answers from the ones the
    metrics were computed on."""
    resized = tf.image.resize(tf.cast(images, tf.float32), (int(size[0]), int(size[1])))
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


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
    mix_classes: int | None = None,
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
    shape ``[num_classes]`` (int labels stay sparse). With `mix_classes` (training images with
    ``mixup`` / ``cutmix`` in `augmentation`) the batch's class ids become one-hot rows of
    `mix_classes`, then examples and labels are mixed (:func:`build_mixing`): the labels are
    soft, each row sums to 1.

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
                x = resize_images(x, (height, width)) if not same_size else tf.cast(x, tf.float32)
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
        mix = build_mixing(augmentation, seed) if training and mix_classes else None

        def apply(x: tf.Tensor, y: tf.Tensor) -> tuple[Any, tf.Tensor]:
            x = tf.cast(x, tf.float32)
            if augment is not None:
                x = augment(x)
            if mix is not None:
                x, y = mix(x, tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), mix_classes))
            return preprocess(x), y

    ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if grouped:
        ds = ds.flat_map(lambda x, y: length_grouped_batches(
            x, y, batch_size=batch_size, multiple=int(group_by_length), seed=seed))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    if is_text:
        # No autotuning model thread: deleting an iterator waits for that thread's sleep, which
        # grows to a minute on long runs (the pause after each fit and predict). After the token
        # cache a text batch is a gather and a slice: there is nothing for it to tune.
        options.autotune.enabled = False
    return ds.with_options(options)


def token_lengths(features: dict[str, Any]) -> tf.Tensor:
    """Each sequence's length: the ``padding_mask`` sums. Features without a ``padding_mask``
    (a backbone that mixes every position, padding included, such as FNet) are full length:
    they are never trimmed."""
    if "padding_mask" not in features:
        shape = tf.shape(features["token_ids"])
        return tf.fill([shape[0]], shape[1])
    return tf.reduce_sum(tf.cast(features["padding_mask"], tf.int32), axis=1)


def length_order(split: Split, preprocess: Callable[[tf.Tensor], Any],
                 chunk: int = 1024) -> np.ndarray:
    """Indices that sort a text split by token length (stable; `preprocess` tokenizes)."""
    lengths = [
        token_lengths(preprocess(texts)).numpy() for texts, _ in split.dataset.batch(chunk)
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
    lengths = token_lengths(x)
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


def trim_padding(features: dict[str, Any], multiple: int = 8) -> dict[str, Any]:
    """Cuts a batch of token features to its longest sequence, rounded up to `multiple`.

    Padding positions are masked everywhere in the KerasHub text backbones that take a
    ``padding_mask`` (or mask the padding id themselves) and in the poolings, so the outputs are
    the same as with full padding; a short-text batch costs a fraction of the compute. Rounding
    to a few lengths keeps the number of traced graphs small. Every feature is cut the same
    way, whatever the padding id is; features without a ``padding_mask`` are left as they are
    (:func:`token_lengths`).
    """
    full = tf.shape(features["token_ids"])[1]
    longest = tf.reduce_max(token_lengths(features))
    target = tf.minimum((longest + multiple - 1) // multiple * multiple, full)
    target = tf.maximum(target, 1)
    return {name: value[:, :target] for name, value in features.items()}


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
    ``brightness`` (fractions of the 0..255 range), ``rand_augment`` (``{num_ops, factor}``,
    keras.layers.RandAugment on the 0..255 range). A number ``f`` means ``[-f, f]``; a pair
    ``[low, high]`` is passed on. false / null / 0 turns an entry off. ``mixup`` / ``cutmix``
    are left to :func:`build_mixing` (they need the labels). Returns None when empty.
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
        if key in ("mixup", "cutmix"):
            continue
        if key == "rand_augment":
            options = parse_rand_augment(value, name)
            layers.append(keras.layers.RandAugment(value_range=(0, 255), seed=layer_seed,
                                                   **options))
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
                                       "brightness, rand_augment, mixup, cutmix",
                                       "data.augmentation", key))
    if not layers:
        return None

    def augment(x: tf.Tensor) -> tf.Tensor:
        for layer in layers:
            x = layer(x, training=True)
        return x

    return augment


def build_mixing(
    augmentation: dict | None, seed: int | None
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]] | None:
    """keras.layers.MixUp (``mixup: {alpha}``) or CutMix (``cutmix: {alpha}``, Keras's
    ``factor``) for ``data.augmentation``: ``(images, one-hot labels) -> (mixed images, soft
    labels)``, each example mixed with another of its batch. None when neither is on."""
    import keras

    for i, (key, value) in enumerate((augmentation or {}).items()):
        if key not in ("mixup", "cutmix"):
            continue
        alpha = parse_mixing(key, value, f"data.augmentation.{key}")
        if alpha is None:
            continue
        layer_seed = None if seed is None else seed + i
        layer = (keras.layers.MixUp(alpha=alpha, seed=layer_seed) if key == "mixup"
                 else keras.layers.CutMix(factor=alpha, seed=layer_seed))

        def mix(x: tf.Tensor, y: tf.Tensor, layer: Any = layer) -> tuple[tf.Tensor, tf.Tensor]:
            out = layer({"images": x, "labels": tf.cast(y, tf.float32)}, training=True)
            return out["images"], out["labels"]

        return mix
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _factor(value: Any, key: str) -> float | tuple[float, float]:
    if _is_number(value) and value > 0:
        return float(value)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(_is_number(v) for v in value) and value[0] <= value[1]):
        return (float(value[0]), float(value[1]))
    raise ConfigError(expected("a positive number or a [low, high] pair", key, value))
