"""Batches and sharding under a strategy: what multi-host strategies change in the input pipeline.

``data.batch_size`` is the *global* batch. Keras hands the dataset to
``strategy.experimental_distribute_dataset``, which splits every global batch into one piece per
replica of every worker. kerasft sets ``AutoShardPolicy.DATA`` for every source: each worker runs
the same seeded pipeline and keeps its pieces of each global batch. ``FILE`` sharding is not used
because kerasft's splits are lists of example indices over in-memory texts/arrays, over one image
file per example (``from_tensor_slices`` of paths, no reader dataset to shard) or over tfds
records filtered by index, which per-file sharding would break. The price: each worker reads and
preprocesses the whole split (once, with ``data.cache``). Training batches drop the remainder on
``multi_worker`` and ``tpu`` so every worker runs the same number of full steps; evaluation keeps
every example, padded to full global batches with weight-0 rows (:func:`distribute_pipeline`).
On one host with several replicas (mirrored) evaluation is padded the same way and each training
batch is cut to a multiple of the replicas, so no replica gets an unequal or empty piece.
"""

from __future__ import annotations

import math
from typing import Any

from kerasft.config import Config
from kerasft.errors import KerasftError, expected

#: Strategies whose training batches drop the remainder (static shapes / equal step counts).
DROP_REMAINDER_KINDS = ("tpu", "multi_worker")
#: Strategies whose input pipelines are sharded over several hosts.
SHARDED_KINDS = ("tpu", "multi_worker")
SHARDING_POLICY = "DATA"

_SHARDING_REASONS = {
    "csv": "texts are read into memory, there are no files to shard",
    "jsonl": "texts are read into memory, there are no files to shard",
    "parquet": "texts are read into memory, there are no files to shard",
    "text_folder": "texts are read into memory, there are no files to shard",
    "arrays": "in-memory arrays, there are no files to shard",
    "datasets": "user tf.data datasets, filtered by example index",
    "image_folder": "one image file per example, selected by index (no reader dataset to shard); "
                    "each worker decodes every image once (data.cache) and keeps its part",
    "tfds": "tfds records are selected by example index, which FILE sharding would break",
}


# --------------------------------------------------------------------------- batches


def drops_remainder(kind: str) -> bool:
    """Whether training batches drop the last partial batch under strategy `kind`."""
    return kind in DROP_REMAINDER_KINDS


def steps_per_epoch(size: int, global_batch: int, drop_remainder: bool,
                    replicas: int = 1) -> int:
    """Training steps per epoch; with `drop_remainder` at least one full global batch is needed.
    With several `replicas` (and no `drop_remainder`) the last partial batch is cut to a
    multiple of them (:func:`even_batches`), and dropped when that leaves nothing."""
    if drop_remainder:
        if size < global_batch:
            raise KerasftError(expected(
                f"at least one full global batch (data.batch_size={global_batch}) of training "
                "examples: tpu and multi_worker drop the last partial batch", "training examples",
                size))
        return size // global_batch
    full, rest = divmod(size, global_batch)
    if replicas > 1:
        rest -= rest % replicas
    return max(1, full + (1 if rest else 0))


def check_replica_examples(train_size: int, replicas: int) -> None:
    """Refuses fewer training examples than replicas (mirrored cuts each training batch to a
    multiple of the replicas, :func:`even_batches`: nothing would be left to train on).
    ``data.batch_size`` itself is checked with the strategy (training.strategy's
    ``check_global_batch``)."""
    if replicas > 1 and train_size < replicas:
        raise KerasftError(expected(
            f"at least one training example per replica ({replicas})", "training examples",
            train_size))


# --------------------------------------------------------------------------- sharding


def sharding_policy(kind: str) -> str | None:
    """The tf.data auto-shard policy kerasft sets for `kind` (None: one input pipeline)."""
    return SHARDING_POLICY if kind in SHARDED_KINDS else None


def sharding_reason(source: str) -> str:
    return _SHARDING_REASONS.get(source, "splits are selected by example index")


def distribution_notes(cfg: Config, kind: str, data: Any) -> list[str]:
    """Log lines on how `kind` changes the input pipeline of `data` (a DataSplits)."""
    notes = []
    policy = sharding_policy(kind)
    if policy:
        source = data.report.get("source", cfg.data.source)
        notes.append(f"data sharding: AutoShardPolicy.{policy} ({sharding_reason(source)})")
    if drops_remainder(kind):
        notes.append(f"{kind}: training batches drop the last partial batch "
                     f"({data.train.size % cfg.data.batch_size} examples per epoch)")
    if kind == "tpu" and data.task == "text" and cfg.data.bucket_by_length:
        notes.append("tpu: data.bucket_by_length is off: text batches keep the backbone's fixed "
                     "sequence length (static shapes)")
    return notes


def distribute_pipeline(ds: Any, kind: str, *, size: int, global_batch: int,
                        training: bool, replicas: int = 1) -> Any:
    """Prepares a batched ``(x, y)`` pipeline of `size` examples for strategy `kind`.

    Multi-host kinds (multi_worker, tpu) get ``AutoShardPolicy.DATA``. Their evaluation
    pipelines (``training=False``) are padded to full global batches: with a short last batch
    ``experimental_distribute_dataset`` hands some replicas an *empty* batch, which Conv2D +
    BatchNormalization graphs reject ("Incompatible shapes: [4] vs. [0,16,16,3]"), and TPUs need
    static shapes anyway. The padding repeats the batch's first example; elements become
    ``(x, y, sample_weight)`` with weight 0 for padding and ``padded_size / size`` for real
    examples, which keeps ``val_loss`` (Keras divides by the padded batch length) and weighted
    metrics exact. ``predict`` ignores y and weights: keep its first `size` rows. Training
    pipelines drop the remainder (:func:`drops_remainder`) and get a static batch dimension
    (KerasHub's tokenizer loses it).

    One host with several `replicas` (mirrored): Keras's first-batch reduction (see
    training.strategy's ``check_global_batch``) and empty pieces (above) break on any batch
    that does not split evenly, such as the short last one. Evaluation pipelines are padded the
    same way; training batches are cut to a multiple of `replicas` (:func:`even_batches`: at
    most ``replicas - 1`` examples of the last partial batch sit out an epoch, other ones each
    epoch, while trimmed, length-grouped text batches keep working). One replica: unchanged.
    """
    import tensorflow as tf

    if sharding_policy(kind) is None:
        if replicas <= 1:
            return ds
        if not training:
            return pad_to_full_batches(ds, size, global_batch)
        finite = int(ds.cardinality()) >= 0
        ds = even_batches(ds, replicas)
        if finite:  # else Keras warns "Your input ran out of data" after the first epoch
            ds = ds.apply(tf.data.experimental.assert_cardinality(
                steps_per_epoch(size, global_batch, False, replicas)))
        return ds

    if training:  # full batches (drop_remainder): make the batch dimension static too
        def static(*element: Any) -> Any:
            return tf.nest.map_structure(
                lambda t: tf.ensure_shape(t, [global_batch, *t.shape[1:]]), element)

        ds = ds.map(static)
    else:
        ds = pad_to_full_batches(ds, size, global_batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def even_batches(ds: Any, replicas: int) -> Any:
    """Batches cut to a multiple of `replicas` rows; batches left empty are dropped (see
    :func:`distribute_pipeline`; :func:`steps_per_epoch` counts what remains)."""
    import tensorflow as tf

    def rows(element: Any) -> Any:
        return tf.shape(tf.nest.flatten(element[1])[0])[0]

    def cut(*element: Any) -> Any:
        keep = rows(element) // replicas * replicas
        return tf.nest.map_structure(lambda t: t[:keep], element)

    return ds.map(cut).filter(lambda *element: rows(element) > 0)


def pad_to_full_batches(ds: Any, size: int, global_batch: int) -> Any:
    """``(x, y)`` or ``(x, y, w)`` batches -> ``(x, y, w)`` batches of exactly `global_batch`
    rows (see :func:`distribute_pipeline`); given weights (the tagger's per-token masks) are
    scaled like the implicit ones of 1."""
    import tensorflow as tf

    padded = max(1, math.ceil(size / global_batch)) * global_batch
    weight = padded / max(size, 1)

    def pad(x: Any, y: Any, w: Any = None) -> tuple[Any, Any, Any]:
        count = tf.shape(y)[0]
        missing = global_batch - count

        def fill(t: Any) -> Any:
            t = tf.concat([t, tf.repeat(t[:1], missing, axis=0)], axis=0)
            return tf.ensure_shape(t, [global_batch, *t.shape[1:]])

        w = tf.ones([count], tf.float32) if w is None else tf.cast(w, tf.float32)
        zeros = tf.zeros(tf.concat([[missing], tf.shape(w)[1:]], axis=0), tf.float32)
        w = tf.concat([w * weight, zeros], axis=0)
        return (tf.nest.map_structure(fill, x), fill(y),
                tf.ensure_shape(w, [global_batch, *w.shape[1:]]))

    return ds.map(pad)
