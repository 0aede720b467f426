"""Multi-worker training (``tf.distribute.MultiWorkerMirroredStrategy``) with Keras 3 ``fit``.

The bug
-------
Keras 3 ``Model.fit``/``evaluate`` fail under ``MultiWorkerMirroredStrategy`` (MWMS) as soon as
there is more than one worker: https://github.com/keras-team/keras/issues/20585 (also
tensorflow/tensorflow#72388). Both failures are calls of ``tf.distribute.Strategy.reduce`` with
arguments outside that method's contract, in ``keras/src/backend/tensorflow/trainer.py``:

1. ``TensorFlowTrainer._maybe_symbolic_build`` reduces the whole first batch, a *nested*
   ``(x, y)`` structure of ``PerReplica`` values, with ``strategy.reduce("MEAN", batch,
   axis=None)``. ``Strategy.reduce`` takes one value (its source says "TODO: support `value`
   being a nest"); single-worker code paths happen to return a nest unchanged, the multi-worker
   collective path converts it to a tensor and raises ``ValueError: Attempt to convert a value
   (PerReplica:{...}) with an unsupported type``. Every ``fit``/``evaluate`` of a model built
   under ``strategy.scope()`` hits this before the first step.
2. ``reduce_per_replica`` reduces each logged metric, a *scalar*, with
   ``strategy.reduce("MEAN", v, axis=0)`` whenever MWMS runs in multi-worker mode. A scalar has
   no axis 0: ``ValueError: Invalid reduction dimension 0 for input with 0 dimensions``.

The workaround
--------------
:func:`make_multi_worker_strategy` returns an instance of a subclass of
``tf.distribute.MultiWorkerMirroredStrategy`` that overrides the public ``reduce`` method only for
those two out-of-contract inputs: a nested structure is reduced leaf by leaf, and ``axis`` is
ignored for a rank-0 value (the mean of scalars over replicas, which is what Keras computes on one
worker). Every other call goes unchanged to ``MultiWorkerMirroredStrategy.reduce``. No Keras or
TensorFlow code is patched, so nothing changes for other strategies or other users of MWMS, and
the override stays correct if Keras starts calling ``reduce`` properly (then it is never taken).
``tests/test_multi_worker_compat.py`` checks that plain MWMS still fails with one of the errors
above, so the suite says when the workaround has become unnecessary.

Not covered: ``compile(steps_per_execution=N)`` with N > 1 still fails with two or more workers
(``InvalidArgumentError: You must feed a value for placeholder tensor 'while/.../Placeholder'``,
from the gradient all-reduce inside Keras's ``tf.while_loop``/``tf.cond``; related:
keras-team/keras#19246). Keep ``steps_per_execution=1`` for multi-worker runs.

Batch normalization
-------------------
Keras 3 creates ``BatchNormalization`` moving statistics as mirrored variables with aggregation
``"none"`` (tf.keras used ``ON_READ``/``MEAN``), so each replica updates its own copy from its own
batch and workers end with different moving statistics (trainable weights stay identical). The
chief then saves statistics seen on its shard only. :func:`average_batch_norm_statistics` sets
every replica's statistics to their mean over replicas; since the moving averages are linear in
the batch moments this equals tf.keras's mean-on-read values. :func:`batch_norm_sync_callback`
does that before every evaluation and at each epoch end (put it before ``ModelCheckpoint``).
``BatchNormalization(synchronized=True)`` is the alternative: global batch moments at every step
(one all-reduce per layer and step).

TF_CONFIG helpers
-----------------
:func:`parse_tf_config`, :func:`is_multi_worker_tf_config` and :func:`is_chief` follow
https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras: the chief task (else
worker 0) is the one whose saves are kept (kerasft/training/run_folder.py and
kerasft/export/target.py give the other workers temporary folders).

Only the strategy helpers import TensorFlow (lazily); the TF_CONFIG helpers do not.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from kerasft.errors import ConfigError, expected

__all__ = [
    "BATCH_NORM_STATISTIC_NAMES",
    "ISSUE_URL",
    "average_batch_norm_statistics",
    "batch_norm_sync_callback",
    "is_chief",
    "is_multi_worker_tf_config",
    "make_multi_worker_strategy",
    "parse_tf_config",
]

ISSUE_URL = "https://github.com/keras-team/keras/issues/20585"

#: Names ``keras.layers.BatchNormalization`` gives its non-trainable statistics.
BATCH_NORM_STATISTIC_NAMES = (
    "moving_mean",
    "moving_variance",
    "moving_stddev",
    "renorm_mean",
    "renorm_stddev",
)

_TASK_TYPES = ("chief", "worker", "ps", "evaluator")

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- TF_CONFIG


def parse_tf_config(text: str) -> dict[str, Any]:
    """Parses and validates a ``TF_CONFIG`` value.

    Requires a JSON object with ``cluster`` (job name to non-empty list of ``"host:port"``
    strings; jobs among chief, worker, ps, evaluator; at most one chief; a worker or chief job) and
    ``task`` (``type`` one of the jobs, ``index`` an int in range; an evaluator may be outside the
    cluster, as in TensorFlow). Returns the decoded object; raises :class:`ConfigError` with a
    one-line message otherwise.
    """

    def fail(what: str) -> ConfigError:
        return ConfigError(expected(what, "TF_CONFIG", text))

    if not isinstance(text, str) or not text.strip():
        raise fail("TF_CONFIG to be a non-empty JSON object")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise fail(f"TF_CONFIG to be valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(config, dict):
        raise fail("TF_CONFIG to be a JSON object")

    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise fail('TF_CONFIG "cluster" to be an object mapping job names to address lists')
    for job, addresses in cluster.items():
        if job not in _TASK_TYPES:
            raise fail(f"TF_CONFIG cluster jobs to be among {', '.join(_TASK_TYPES)}, not {job!r}")
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(_is_address(a) for a in addresses)
        ):
            raise fail(f'TF_CONFIG cluster["{job}"] to be a non-empty list of "host:port" strings')
    if "worker" not in cluster and "chief" not in cluster:
        raise fail('TF_CONFIG cluster to have a "worker" list')
    if len(cluster.get("chief", [])) > 1:
        raise fail('TF_CONFIG cluster["chief"] to have exactly one address')

    task = config.get("task")
    if not isinstance(task, dict):
        raise fail('TF_CONFIG "task" to be an object with "type" and "index"')
    task_type = task.get("type")
    if task_type not in _TASK_TYPES or (task_type not in cluster and task_type != "evaluator"):
        jobs = sorted(set(cluster) | {"evaluator"})
        raise fail(f'TF_CONFIG task "type" to be one of {", ".join(jobs)}')
    index = task.get("index")
    size = len(cluster.get(task_type, [None]))
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        raise fail(f'TF_CONFIG task "index" to be an int in [0, {size}) for type {task_type!r}')
    return config


def is_multi_worker_tf_config(env: Mapping[str, str] | None = None) -> bool:
    """True when ``env`` (default ``os.environ``) has a ``TF_CONFIG`` naming more than one
    training task (chief plus workers). An unset or blank ``TF_CONFIG`` gives False; a malformed one
    raises :class:`ConfigError`."""
    text = (os.environ if env is None else env).get("TF_CONFIG", "")
    if not text.strip():
        return False
    cluster = parse_tf_config(text)["cluster"]
    return len(cluster.get("chief", [])) + len(cluster.get("worker", [])) > 1


def is_chief(tf_config: Mapping[str, Any] | None) -> bool:
    """Whether this task saves the real checkpoints and exports: the ``chief`` task, or worker 0
    when the cluster has no chief. ``None`` (no TF_CONFIG: a single process) is the chief."""
    if tf_config is None:
        return True
    task = tf_config.get("task") or {}
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type == "chief":
        return True
    has_chief = "chief" in (tf_config.get("cluster") or {})
    return task_type == "worker" and index == 0 and not has_chief


def _is_address(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    host, sep, port = value.rpartition(":")
    return bool(host) and bool(sep) and port.isdigit()


# --------------------------------------------------------------------------- strategy


def make_multi_worker_strategy(
    cluster_resolver: Any = None, communication_options: Any = None
) -> Any:
    """Returns a ``tf.distribute.MultiWorkerMirroredStrategy`` that Keras 3 ``fit``,
    ``evaluate`` and ``predict`` work with (keras-team/keras#20585).

    The object is an instance of a subclass whose only change is ``reduce``: a nested structure is
    reduced leaf by leaf and ``axis`` is ignored for rank-0 values (see the module docstring). Use
    it exactly like the TensorFlow class: create it first thing in the program, build and compile
    the model under ``strategy.scope()``. ``TF_CONFIG`` is validated with :func:`parse_tf_config`
    before TensorFlow reads it. Arguments are those of ``MultiWorkerMirroredStrategy``.
    """
    text = os.environ.get("TF_CONFIG", "")
    if text.strip() and cluster_resolver is None:
        parse_tf_config(text)
    strategy = _compat_strategy_class()(
        cluster_resolver=cluster_resolver, communication_options=communication_options
    )
    logger.info(
        "MultiWorkerMirroredStrategy with %d replicas; Strategy.reduce accepts the nested and "
        "scalar values Keras passes (workaround for %s).",
        strategy.num_replicas_in_sync,
        ISSUE_URL,
    )
    return strategy


@functools.cache
def _compat_strategy_class() -> type:
    import tensorflow as tf

    def local_rank(strategy: Any, value: Any) -> int | None:
        if isinstance(value, tf.distribute.DistributedValues):
            value = strategy.experimental_local_results(value)[0]
        shape = getattr(value, "shape", None)
        if shape is None:
            return 0 if isinstance(value, (int, float)) else None
        return tf.TensorShape(shape).rank

    class KerasCompatMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """``MultiWorkerMirroredStrategy`` whose ``reduce`` accepts what Keras 3 passes it.

        See :mod:`kerasft.training.multi_worker`; created by :func:`make_multi_worker_strategy`.
        """

        def reduce(self, reduce_op: Any, value: Any, axis: Any) -> Any:
            if tf.nest.is_nested(value):
                # keras#20585: TensorFlowTrainer._maybe_symbolic_build passes the whole
                # (x, y) batch.
                return tf.nest.map_structure(
                    lambda v: None if v is None else self.reduce(reduce_op, v, axis), value
                )
            if axis is not None and local_rank(self, value) == 0:
                # keras#20585: reduce_per_replica passes scalar metrics with axis=0.
                axis = None
            return super().reduce(reduce_op, value, axis)

    return KerasCompatMultiWorkerMirroredStrategy


def average_batch_norm_statistics(model: Any, strategy: Any = None) -> int:
    """Sets each replica's batch-normalization statistics to their mean over all replicas.

    Acts on the model's non-trainable float variables named as in
    :data:`BATCH_NORM_STATISTIC_NAMES` (so batch normalization nested in any layer is included).
    Must be called on every worker at the same point (it runs one all-reduce), in cross-replica
    context (outside ``strategy.run``). Returns how many variables were averaged (0 when the
    strategy has one replica or the model has no such variables).
    """
    count, average = _batch_norm_averager(model, strategy)
    if average is not None:
        average()
    return count


def _batch_norm_averager(model: Any, strategy: Any = None) -> tuple[int, Any]:
    """(number of statistics, a tf.function averaging them over replicas, or None)."""
    import tensorflow as tf

    strategy = strategy or model.distribute_strategy
    variables = [
        v
        for v in model.non_trainable_variables
        if v.name in BATCH_NORM_STATISTIC_NAMES and "float" in str(v.dtype)
    ]
    if not variables or strategy.num_replicas_in_sync == 1:
        return 0, None

    def replica_fn() -> None:
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables]
        )
        for variable, mean in zip(variables, means, strict=True):
            variable.assign(mean)

    return len(variables), tf.function(lambda: strategy.run(replica_fn))


def batch_norm_sync_callback() -> Any:
    """A ``keras.callbacks.Callback`` calling :func:`average_batch_norm_statistics` before every
    evaluation (``on_test_begin``) and at each epoch end. List it before ``ModelCheckpoint`` so
    that the saved statistics are the averaged ones."""
    return _batch_norm_sync_callback_class()()


@functools.cache
def _batch_norm_sync_callback_class() -> type:
    import keras

    class BatchNormStatisticsSync(keras.callbacks.Callback):
        """Averages batch-normalization statistics over replicas; see
        :func:`kerasft.training.multi_worker.average_batch_norm_statistics`."""

        def __init__(self) -> None:
            super().__init__()
            self._averager: tuple[Any, Any] | None = None  # (model, tf.function), traced once

        def _average(self) -> None:
            if self._averager is None or self._averager[0] is not self.model:
                self._averager = (self.model, _batch_norm_averager(self.model)[1])
            if self._averager[1] is not None:
                self._averager[1]()

        def on_test_begin(self, logs: Any = None) -> None:
            self._average()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self._average()

    return BatchNormStatisticsSync
