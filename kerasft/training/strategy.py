"""Choosing and creating the ``tf.distribute`` strategy, and this process's place in the cluster.

``training.strategy`` names the strategy; ``auto`` looks at ``training.tpu``, the TPU environment
variables, ``TF_CONFIG`` and the GPUs (:func:`select_strategy_kind`). :func:`resolve_strategy`
creates it once per process (multi_worker through
:func:`kerasft.training.multi_worker.make_multi_worker_strategy`) and checks ``data.batch_size``,
the *global* batch, against its replicas. :func:`placement` says which task this process is and
whether it is the chief; :func:`agree` is the one collective through which the workers agree on
run folder names, resumed state and export versions (kerasft/training/run_folder.py,
kerasft/export/target.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kerasft.config import Config, check_strategy_options
from kerasft.errors import ConfigError, KerasftError, expected
from kerasft.training.multi_worker import (
    is_chief,
    is_multi_worker_tf_config,
    make_multi_worker_strategy,
    parse_tf_config,
)

#: Environment variables that mean "a TPU is attached" for ``training.strategy: auto``.
TPU_ENV_HINTS = ("TPU_NAME", "COLAB_TPU_ADDR", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")


# --------------------------------------------------------------------------- choice


def select_strategy_kind(cfg: Config, env: Mapping[str, str],
                         count_gpus: Callable[[], int] = lambda: 0) -> str:
    """The strategy ``training.strategy`` asks for; ``auto``: tpu when ``training.tpu`` or a TPU
    environment variable is set, multi_worker when ``TF_CONFIG`` names several tasks, mirrored
    with ``training.devices`` or more than one GPU (`count_gpus` is only called then), else
    default. Creates nothing."""
    kind = cfg.training.strategy
    if kind != "auto":
        return kind
    if cfg.training.tpu or any(env.get(k) for k in TPU_ENV_HINTS):
        return "tpu"
    if is_multi_worker_tf_config(env):
        return "multi_worker"
    if cfg.training.devices or count_gpus() > 1:
        return "mirrored"
    return "default"


def tpu_address(cfg: Config, env: Mapping[str, str]) -> str | None:
    """What to give ``TPUClusterResolver(tpu=...)``: ``training.tpu`` (a TPU name, a
    ``grpc://host:port`` address or ``local`` on a Cloud TPU VM), else ``COLAB_TPU_ADDR`` or
    ``TPU_NAME``; None lets TensorFlow discover it (``KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS``, GCE
    metadata)."""
    if cfg.training.tpu:
        return cfg.training.tpu
    if env.get("COLAB_TPU_ADDR"):
        return "grpc://" + env["COLAB_TPU_ADDR"]
    return env.get("TPU_NAME") or None


def check_tpu_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """For a ``grpc://host:port`` TPU address, checks that the port accepts connections:
    ``tf.config.experimental_connect_to_cluster`` retries an unreachable address forever."""
    if not address or not address.startswith("grpc://"):
        return
    host, _, port = address[len("grpc://"):].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise KerasftError(expected("a reachable TPU (training.tpu: name, grpc://host:port "
                                    "or 'local')", "training.tpu", address)
                           + f" ({reason})") from None


def check_global_batch(batch: int, replicas: int, kind: str) -> None:
    """``data.batch_size`` is the global batch: at least one example per replica, and a multiple
    of the replicas. TPUs need static per-replica shapes; elsewhere Keras's ``fit`` and
    ``evaluate`` first reduce one batch across the replicas (``_maybe_symbolic_build`` in
    keras/src/backend/tensorflow/trainer.py), which fails ("Inputs to operation AddN ... must
    have the same size and shape") on unequal pieces."""
    if batch < replicas:
        raise ConfigError(expected(f"a global batch of at least one example per replica "
                                   f"({replicas} replicas under {kind})", "data.batch_size",
                                   batch))
    if batch % replicas:
        lower, upper = batch - batch % replicas, batch + replicas - batch % replicas
        raise ConfigError(expected(
            f"data.batch_size divisible by the {replicas} replicas under {kind} (each global "
            f"batch is split evenly across them; e.g. {lower} or {upper})", "data.batch_size",
            batch))


# --------------------------------------------------------------------------- creation


@dataclass
class StrategyInfo:
    strategy: Any
    kind: str
    replicas: int
    workers: int = 1

    def describe(self, global_batch: int) -> str:
        per_replica = global_batch // max(self.replicas, 1)
        return (f"strategy: {self.kind} ({type(self.strategy).__name__}), workers: {self.workers}, "
                f"replicas: {self.replicas}, global batch: {global_batch}, "
                f"per-replica batch: {per_replica}")


def resolve_strategy(cfg: Config, env: Mapping[str, str] | None = None) -> StrategyInfo:
    """Picks the tf.distribute strategy named by ``training.strategy`` (``auto`` detects) and
    checks ``data.batch_size`` against its replicas (:func:`check_global_batch`)."""
    info = _create_strategy(cfg, env)
    check_global_batch(cfg.data.batch_size, info.replicas, info.kind)
    return info


def _create_strategy(cfg: Config, env: Mapping[str, str] | None = None) -> StrategyInfo:
    import tensorflow as tf

    env = os.environ if env is None else env
    kind = select_strategy_kind(cfg, env, lambda: len(tf.config.list_logical_devices("GPU")))
    check_strategy_options(cfg, kind)
    if kind == "default":
        strategy = tf.distribute.get_strategy()
        return StrategyInfo(strategy, "default", strategy.num_replicas_in_sync)
    if kind == "mirrored":
        devices = cfg.training.devices
        cross_device_ops = None
        if devices and all("cpu" in d.lower() for d in devices):
            # Several MirroredStrategy objects in one process on CPU devices can collide on
            # collective instance keys ("Shape mismatch in the collective instance"); reducing
            # to one device avoids collectives. GPUs keep the default (NCCL all-reduce).
            cross_device_ops = tf.distribute.ReductionToOneDevice()
        strategy = tf.distribute.MirroredStrategy(devices=devices,
                                                  cross_device_ops=cross_device_ops)
        return StrategyInfo(strategy, "mirrored", strategy.num_replicas_in_sync)
    if kind == "multi_worker":
        tf_config = parse_tf_config(env.get("TF_CONFIG", ""))
        workers = sum(len(tf_config["cluster"].get(job, [])) for job in ("chief", "worker"))
        try:
            strategy = make_multi_worker_strategy()
        except RuntimeError as e:  # "Collective ops must be configured at program startup"
            raise KerasftError(expected("the multi_worker strategy to be created before any other "
                                        "TensorFlow op (build the FineTuner first)", "error",
                                        str(e).splitlines()[0])) from e
        return StrategyInfo(strategy, "multi_worker", strategy.num_replicas_in_sync, workers)
    # TPU.
    check_tpu_reachable(tpu_address(cfg, env))  # connect_to_cluster waits forever otherwise
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address(cfg, env))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise KerasftError(
            expected("a reachable TPU (training.tpu: name, grpc:// address or 'local')",
                     "training.tpu", cfg.training.tpu) + f" ({str(e).splitlines()[0]})"
        ) from e
    strategy = tf.distribute.TPUStrategy(resolver)
    return StrategyInfo(strategy, "tpu", strategy.num_replicas_in_sync)


# --------------------------------------------------------------------------- this task


@dataclass(frozen=True)
class Placement:
    """This process's place in the cluster."""

    kind: str
    workers: int = 1
    task_type: str | None = None
    task_index: int = 0
    is_chief: bool = True

    @property
    def task(self) -> str:
        return f"{self.task_type} {self.task_index}" if self.task_type else "single process"


def placement(kind: str, env: Mapping[str, str]) -> Placement:
    """Reads ``TF_CONFIG`` for multi_worker (required then); other kinds are one process."""
    if kind != "multi_worker":
        return Placement(kind)
    tf_config = parse_tf_config(env.get("TF_CONFIG", ""))
    cluster, task = tf_config["cluster"], tf_config["task"]
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return Placement(kind, workers, task["type"], task["index"], is_chief(tf_config))


def agree(strategy: Any, mine: list[float], chief: bool) -> tuple[list[float], list[list[float]]]:
    """Gathers one row of numbers from every worker (one collective); returns the chief's row and
    all rows. Every worker must call this at the same point."""
    import numpy as np
    import tensorflow as tf

    row = [1.0 if chief else 0.0, *mine]
    local = len(strategy.extended.worker_devices)

    def value(context: Any) -> Any:
        # Only the first local replica speaks for this worker.
        first = context.replica_id_in_sync_group % local == 0
        return tf.constant([row if first else [-1.0] * len(row)], tf.float64)

    values = strategy.experimental_distribute_values_from_function(value)
    rows = [r for r in np.asarray(strategy.gather(values, axis=0)).tolist() if r[0] >= 0]
    chiefs = [r for r in rows if r[0] == 1.0]
    if len(chiefs) != 1:
        raise KerasftError(expected("exactly one chief task in TF_CONFIG", "chief tasks",
                                    len(chiefs)))
    return chiefs[0][1:], [r[1:] for r in rows]
