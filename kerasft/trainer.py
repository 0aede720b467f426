"""Step 6 of a run: ``model.fit`` under a ``tf.distribute`` strategy, one stage after another.

The strategy is chosen once (``training.strategy``); the model is built and every stage compiled
inside its scope; ``data.batch_size`` is the global batch, split over the replicas. Each stage
sets ``trainable``, recompiles with a fresh optimizer and continues the epoch counter
(``initial_epoch``), so the progress bar, ``history.csv`` and TensorBoard form one curve.

Callbacks (all writing into the run folder): progress bar, EarlyStopping with best-weight restore
(per stage, when ``early_stopping.patience`` > 0), best-weights checkpoint across stages (written
to a temporary file and renamed), a NaN guard that names the stage/epoch/step, a CSV log with the
stage of every epoch, and TensorBoard.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerasft.config import Config, ConfigError, StageConfig
from kerasft.errors import KerasftError, expected

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Strategy.


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


def _tpu_hinted(tpu: str | None, env: Mapping[str, str]) -> bool:
    return bool(tpu) or any(k in env for k in ("TPU_NAME", "COLAB_TPU_ADDR",
                                                "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS"))


def _tf_config_workers(env: Mapping[str, str]) -> int:
    raw = env.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError(expected("TF_CONFIG as JSON with a cluster and a task", "TF_CONFIG",
                                   raw[:80])) from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def resolve_strategy(cfg: Config, env: Mapping[str, str] | None = None) -> StrategyInfo:
    """Picks the tf.distribute strategy named by ``training.strategy`` (``auto`` detects)."""
    import tensorflow as tf

    env = os.environ if env is None else env
    kind = cfg.training.strategy
    if kind == "auto":
        if _tpu_hinted(cfg.training.tpu, env):
            kind = "tpu"
        elif _tf_config_workers(env) > 1:
            kind = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1 or cfg.training.devices:
            kind = "mirrored"
        else:
            kind = "default"
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
        from kerasft.distribute_compat import make_multi_worker_strategy, parse_tf_config

        tf_config = parse_tf_config(env.get("TF_CONFIG", ""))
        workers = sum(len(tf_config["cluster"].get(job, [])) for job in ("chief", "worker"))
        strategy = make_multi_worker_strategy()
        return StrategyInfo(strategy, "multi_worker", strategy.num_replicas_in_sync, workers)
    # TPU.
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=cfg.training.tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise KerasftError(
            expected("a reachable TPU (training.tpu: name, grpc:// address or 'local')",
                     "training.tpu", cfg.training.tpu) + f" ({str(e).splitlines()[0]})"
        ) from e
    strategy = tf.distribute.TPUStrategy(resolver)
    return StrategyInfo(strategy, "tpu", strategy.num_replicas_in_sync)


# ---------------------------------------------------------------------------------------------
# Callbacks.


class _Lazy:
    """Builds the callback classes on first use, so importing this module needs no Keras."""

    classes: dict[str, type] = {}


def _callbacks() -> dict[str, type]:
    if _Lazy.classes:
        return _Lazy.classes
    import keras
    import numpy as np

    Callback = keras.callbacks.Callback

    class StageCSVLogger(Callback):
        """Appends one row per epoch: stage, epoch, learning rate, then every logged metric."""

        def __init__(self, path: Path, stage: str) -> None:
            super().__init__()
            self.path = Path(path)
            self.stage = stage

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            row = {"stage": self.stage, "epoch": epoch}
            lr = logs.pop("learning_rate", None)
            if lr is None:
                lr = _current_lr(self.model.optimizer)
            row["learning_rate"] = lr
            row.update({k: float(v) for k, v in sorted(logs.items())})
            exists = self.path.exists() and self.path.stat().st_size > 0
            fields = list(row)
            if exists:
                with open(self.path, newline="", encoding="utf-8") as f:
                    header = next(csv.reader(f), None)
                if header:
                    fields = header + [k for k in row if k not in header]
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                if not exists:
                    writer.writeheader()
                writer.writerow(row)
                f.flush()
                os.fsync(f.fileno())

    class BestWeights(Callback):
        """Saves weights when `monitor` improves, across all stages (temporary file + rename)."""

        def __init__(self, path: Path, monitor: str, state: dict, target: Any = None) -> None:
            super().__init__()
            self.path = Path(path)
            self.monitor = monitor
            self.state = state  # shared across stages: {"best": float, "epoch": int}
            self.target = target  # the whole classifier, when fit runs on the head alone
            self.mode_max = any(k in monitor for k in ("acc", "auc", "f1", "precision",
                                                         "recall"))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = (logs or {}).get(self.monitor)
            if value is None or not math.isfinite(float(value)):
                return
            value = float(value)
            best = self.state.get("best")
            better = best is None or (value > best if self.mode_max else value < best)
            if better:
                self.state.update(best=value, epoch=epoch)
                tmp = self.path.with_name("best.tmp.weights.h5")
                (self.target or self.model).save_weights(tmp)
                os.replace(tmp, self.path)

    class NaNGuard(Callback):
        """Stops training at the first NaN/Inf loss and records where it happened."""

        def __init__(self, stage: str, state: dict) -> None:
            super().__init__()
            self.stage = stage
            self.state = state
            self.epoch = 0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(float(loss)):
                self.state["nan"] = {"stage": self.stage, "epoch": self.epoch + 1,
                                     "step": batch + 1, "loss": float(loss)}
                self.model.stop_training = True

    _Lazy.classes = {"StageCSVLogger": StageCSVLogger, "BestWeights": BestWeights,
                     "NaNGuard": NaNGuard}
    return _Lazy.classes


def _current_lr(optimizer: Any) -> float:
    try:
        lr = optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)
    except (AttributeError, TypeError, ValueError):
        return float("nan")


# ---------------------------------------------------------------------------------------------
# Running the stages.


@dataclass
class StageResult:
    name: str
    epochs_run: int
    first_epoch: int
    last_epoch: int
    trainable_params: int
    unfrozen_layers: int
    stopped_early: bool
    final_logs: dict[str, float]


def _verbose(setting: str) -> int | str:
    if setting == "bar":
        return 1
    if setting == "epoch":
        return 2
    if setting == "silent":
        return 0
    return 1 if sys.stdout.isatty() else 2


def compile_stage(model: Any, stage: StageConfig, cfg: Config, steps_per_epoch: int,
                  num_classes: int, replicas: int = 1) -> None:
    """Compiles `model` for `stage` (call inside the strategy scope)."""
    from kerasft.stages import make_loss, make_metrics, make_optimizer

    lr_scale = float(replicas) if cfg.training.lr_scaling == "linear" else 1.0
    model.compile(
        optimizer=make_optimizer(stage, steps_per_epoch, lr_scale,
                                 cfg.training.gradient_accumulation_steps),
        loss=make_loss(cfg.head.activation, num_classes, stage.label_smoothing),
        metrics=make_metrics(cfg.head.activation),
        jit_compile=cfg.training.jit_compile,
        steps_per_execution=cfg.training.steps_per_execution,
    )


def run_stages(
    model: Any,
    backbone: Any,
    cfg: Config,
    train_ds: Any,
    val_ds: Any,
    steps_per_epoch: int,
    run_dir: Path,
    strategy_info: StrategyInfo,
    num_classes: int,
    log: Log = print,
    head: Any = None,
    cached_features: Callable[[], dict[str, Any]] | None = None,
) -> list[StageResult]:
    """Runs every stage of `cfg` in order; returns what each stage did.

    A ``head`` stage trains `head` alone on the backbone features from `cached_features` when
    given (they are computed once and reused by every head-only epoch and stage); other stages
    train `model` end to end on `train_ds`.
    """
    import keras

    from kerasft.stages import apply_trainable, count_params

    classes = _callbacks()
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    best_path = run_dir / "checkpoints" / "best.weights.h5"
    history_csv = run_dir / "history.csv"
    best_state: dict[str, Any] = {}
    nan_state: dict[str, Any] = {}
    monitor = cfg.training.monitor if val_ds is not None else "loss"
    epoch = 0
    results = []
    for i, stage in enumerate(cfg.stages):
        use_cache = stage.trainable == "head" and cached_features is not None and head is not None
        fit_model = head if use_cache else model
        with strategy_info.strategy.scope():
            unfrozen = apply_trainable(backbone, stage, key=f"stages[{i}].trainable")
            compile_stage(fit_model, stage, cfg, steps_per_epoch, num_classes,
                          strategy_info.replicas)
        trainable = count_params(model.trainable_weights)
        log(f"stage {i + 1}/{len(cfg.stages)} '{stage.name}': trainable={stage.trainable}"
            f"{' (head on cached features)' if use_cache else ''}, "
            f"{len(unfrozen['unfrozen_layers'])} backbone layers unfrozen, "
            f"{trainable:,} trainable parameters, epochs {epoch + 1}-{epoch + stage.epochs}, "
            f"{stage.optimizer} lr={stage.learning_rate:g} ({stage.schedule})")
        callbacks = [
            classes["NaNGuard"](stage.name, nan_state),
            classes["StageCSVLogger"](history_csv, stage.name),
        ]
        if val_ds is not None or monitor == "loss":
            callbacks.append(classes["BestWeights"](best_path, monitor, best_state,
                                                    target=model))
        es = stage.early_stopping
        if es.patience > 0:
            es_monitor = es.monitor if val_ds is not None else es.monitor.removeprefix("val_")
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor=es_monitor, patience=es.patience, min_delta=es.min_delta,
                restore_best_weights=True, verbose=1,
            ))
        if cfg.training.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
        if use_cache:
            features = cached_features()
            fit_data: dict[str, Any] = {
                "x": features["x"], "y": features["y"], "shuffle": True,
                "batch_size": cfg.data.batch_size, "validation_data": features.get("val"),
            }
        else:
            fit_data = {"x": train_ds, "validation_data": val_ds,
                        "shuffle": False}  # the tf.data pipeline shuffles (seeded)
        history = fit_model.fit(
            **fit_data,
            epochs=epoch + stage.epochs,
            initial_epoch=epoch,
            callbacks=callbacks,
            verbose=_verbose(cfg.training.verbose),
        )
        if nan_state:
            where = nan_state["nan"]
            raise KerasftError(
                f"training diverged: expected a finite loss. Received: loss={where['loss']} at "
                f"stage '{where['stage']}', epoch {where['epoch']}, step {where['step']}. "
                "Try a lower learning rate for this stage"
                + (" or training.mixed_precision: none" if cfg.training.mixed_precision != "none"
                   else "")
                + (f"; the best weights so far are in {best_path}" if best_path.exists() else "")
            )
        ran = len(history.epoch)
        last_logs = {k: float(v[-1]) for k, v in history.history.items() if v}
        results.append(StageResult(
            name=stage.name, epochs_run=ran, first_epoch=epoch + 1, last_epoch=epoch + ran,
            trainable_params=trainable, unfrozen_layers=len(unfrozen["unfrozen_layers"]),
            stopped_early=ran < stage.epochs, final_logs=last_logs,
        ))
        epoch += ran
    if cfg.training.restore_best and best_path.exists():
        model.load_weights(best_path)
        log(f"restored the best weights ({monitor}={best_state.get('best'):.4f} at epoch "
            f"{best_state.get('epoch', 0) + 1}) from {best_path}")
    return results
