"""Step 6 of a run: ``model.fit`` under a ``tf.distribute`` strategy, one stage after another.

The strategy is chosen once (``training.strategy``); the model is built and every stage compiled
inside its scope; ``data.batch_size`` is the global batch, split over the replicas. Each stage
sets ``trainable``, recompiles with a fresh optimizer and continues the epoch counter
(``initial_epoch``), so the progress bar, ``history.csv`` and TensorBoard form one curve.

Callbacks (all writing into the run folder): progress bar, EarlyStopping with best-weight restore
(per stage, when ``early_stopping.patience`` > 0), best-weights checkpoint across stages (written
to a temporary file and renamed), a NaN guard that names the stage/epoch/step, a CSV log with the
stage of every epoch, and TensorBoard. With ``training.checkpoint_every_epoch`` (the default) the
best-weights checkpoint is part of the per-epoch checkpoints of kerasft/training/checkpoints.py,
from which an
interrupted run resumes at its stage and epoch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kerasft.config import Config, ConfigError, StageConfig
from kerasft.errors import KerasftError, expected
from kerasft.io import atomic_path
from kerasft.models.weights import load_model_weights, save_model_weights

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
    """Picks the tf.distribute strategy named by ``training.strategy`` (``auto`` detects) and
    checks ``data.batch_size`` against its replicas (kerasft.distributed.check_global_batch)."""
    from kerasft.distributed import check_global_batch

    info = _create_strategy(cfg, env)
    check_global_batch(cfg.data.batch_size, info.replicas, info.kind)
    return info


def _create_strategy(cfg: Config, env: Mapping[str, str] | None = None) -> StrategyInfo:
    import tensorflow as tf

    from kerasft.config import check_strategy_options
    from kerasft.distributed import select_strategy_kind, tpu_address

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
        from kerasft.distribute_compat import make_multi_worker_strategy, parse_tf_config

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
    from kerasft.distributed import check_tpu_reachable

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

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.first_step = _iterations(self.model.optimizer)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            row = {"stage": self.stage, "epoch": epoch + 1}  # 1-based, as Keras's progress bar
            after = logs.pop("learning_rate", None)  # the rate *after* the epoch's last step
            lr = _epoch_lr(self.model.optimizer, getattr(self, "first_step", None))
            if lr is None:
                lr = after if after is not None else _current_lr(self.model.optimizer)
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
                with atomic_path(self.path) as tmp:
                    save_model_weights(self.target or self.model, tmp)

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

    class EpochTensorBoard(keras.callbacks.TensorBoard):
        """TensorBoard with epoch-level logs. Keras 3.15's callback calls ``tf.summary.scalar``
        for every batch's logs even with ``update_freq="epoch"``: nothing is written (no writer
        is active), but the calls cost about 1.5 ms per step (bench/overhead.py, tiny CNN)."""

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            super().on_train_batch_end(batch, logs if self.update_freq != "epoch" else None)

    _Lazy.classes = {"StageCSVLogger": StageCSVLogger, "BestWeights": BestWeights,
                     "NaNGuard": NaNGuard, "EpochTensorBoard": EpochTensorBoard}
    return _Lazy.classes


def _iterations(optimizer: Any) -> int | None:
    try:
        return int(optimizer.iterations.numpy())
    except (AttributeError, TypeError, ValueError):
        return None


def _epoch_lr(optimizer: Any, first_step: int | None) -> float | None:
    """The mean learning rate of the epoch's steps (``first_step`` up to the optimizer's
    iteration count now): what the epoch trained with, where Keras logs the rate after its last
    step (0.0 at the end of a one-epoch cosine stage). None when it cannot be computed."""
    import keras
    import numpy as np

    last = _iterations(optimizer)
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    schedule = getattr(inner, "_learning_rate", None)
    if first_step is None or last is None:
        return None
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return _current_lr(inner)  # a constant rate
    if last <= first_step:
        return None
    steps = np.arange(first_step, last, dtype="float32")
    try:
        values = keras.ops.convert_to_numpy(schedule(keras.ops.convert_to_tensor(steps)))
    except Exception:  # a schedule that only takes a scalar step
        values = np.array([float(keras.ops.convert_to_numpy(schedule(step))) for step in steps])
    values = np.broadcast_to(np.asarray(values, dtype="float64"), steps.shape)
    return float(values.mean())


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
    from kerasft.training.stages import (
        make_loss,
        make_metrics,
        make_optimizer,
        weight_decay_excluded,
    )

    lr_scale = float(replicas) if cfg.training.lr_scaling == "linear" else 1.0
    optimizer = make_optimizer(stage, steps_per_epoch, lr_scale,
                               cfg.training.gradient_accumulation_steps)
    if stage.weight_decay and stage.weight_decay_exclude:
        optimizer.exclude_from_weight_decay(
            var_list=weight_decay_excluded(model, stage.weight_decay_exclude))
    model.compile(
        optimizer=optimizer,
        loss=make_loss(cfg.head.activation, num_classes, stage.label_smoothing),
        # Weighted: identical without sample weights; tpu/multi_worker evaluation batches are
        # padded with weight-0 rows (kerasft.distributed.pad_to_full_batches).
        weighted_metrics=make_metrics(cfg.head.activation, cfg.head.threshold),
        jit_compile=cfg.training.jit_compile,
        steps_per_execution=execution_steps(cfg.training.steps_per_execution, steps_per_epoch),
    )


def execution_steps(configured: int, steps_per_epoch: int) -> int:
    """The largest divisor of `steps_per_epoch` that is at most `configured`.

    Keras runs whole executions of ``steps_per_execution`` steps; with ``steps_per_epoch`` on a
    repeated dataset an epoch of 6 steps at 4 per execution would run 8 steps (keras 3.15
    ``EpochIterator``), so epochs would overrun into the next epoch's batches.
    """
    limit = max(1, min(int(configured), int(steps_per_epoch)))
    return max(d for d in range(1, limit + 1) if steps_per_epoch % d == 0)


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
    cached_features: Callable[..., dict[str, Any]] | None = None,
    checkpoint: Any = None,
) -> list[StageResult]:
    """Runs every stage of `cfg` in order; returns what each stage did.

    A ``head`` stage trains `head` alone on the backbone features from `cached_features` when
    given (computed on first use and reused by every head-only epoch and stage, and computed
    again, ``cached_features(refresh=True)``, after a stage that trained the backbone: a resumed
    run, which computes them afresh, then trains on the same features); other stages
    train `model` end to end on `train_ds`: a dataset, or a function of the first epoch returning
    an endless epoch-keyed pipeline (``data.pipeline.make_pipeline(start_epoch=...)``), read for
    `steps_per_epoch` batches per epoch. With `checkpoint` (a :class:`kerasft.training.checkpoints.
    Checkpointer`) every epoch and every stage end is checkpointed, and a resumed checkpointer
    continues at its committed stage and epoch (see kerasft/training/checkpoints.py).
    """
    import keras

    from kerasft.training.stages import apply_trainable, count_params

    classes = _callbacks()
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    best_path = run_dir / "checkpoints" / "best.weights.h5"
    history_csv = run_dir / "history.csv"
    best_state: dict[str, Any] = {}
    nan_state: dict[str, Any] = {}
    monitor = cfg.training.monitor if val_ds is not None else "loss"
    # Multi-worker: average batch-norm statistics over replicas before validation and before
    # anything saves or keeps weights (Keras 3 keeps one copy per replica; see distribute_compat).
    bn_sync = None
    if strategy_info.kind == "multi_worker":
        from kerasft.distribute_compat import batch_norm_sync_callback

        bn_sync = batch_norm_sync_callback()
    epoch = 0
    results = []
    features_stale = False  # a stage trained the backbone since the features were computed
    ckpt = checkpoint
    if ckpt is not None:  # per-epoch checkpoints; continue where the run state says
        epoch = ckpt.state.epoch
        results = [StageResult(**r) for r in ckpt.state.stages_done]
        if ckpt.state.best is not None:
            best_state.update(best=ckpt.state.best, epoch=ckpt.state.best_epoch)
        if ckpt.resumed:
            log(ckpt.describe([s.name for s in cfg.stages]))
            with strategy_info.strategy.scope():
                ckpt.restore_model(model)
    for i, stage in enumerate(cfg.stages):
        if ckpt is not None and i < ckpt.state.stage:
            continue  # finished before the interruption
        first = ckpt.state.stage_first_epoch if ckpt is not None else epoch
        remaining = 0 if ckpt is not None and ckpt.state.stopped else first + stage.epochs - epoch
        use_cache = stage.trainable == "head" and cached_features is not None and head is not None
        fit_model = head if use_cache else model
        with strategy_info.strategy.scope():
            unfrozen = apply_trainable(backbone, stage, key=f"stages[{i}].trainable")
            compile_stage(fit_model, stage, cfg, steps_per_epoch, num_classes,
                          strategy_info.replicas)
            if ckpt is not None:
                ckpt.restore_optimizer(fit_model)
        trainable = count_params(model.trainable_weights)
        log(f"stage {i + 1}/{len(cfg.stages)} '{stage.name}': trainable={stage.trainable}"
            f"{' (head on cached features)' if use_cache else ''}, "
            f"{len(unfrozen['unfrozen_layers'])} backbone layers unfrozen, "
            f"batch_norm={unfrozen['batch_norm']}, "
            f"{trainable:,} trainable parameters, epochs {first + 1}-{first + stage.epochs}"
            f"{f' (resuming at epoch {epoch + 1})' if epoch > first and remaining else ''}, "
            f"{stage.optimizer} lr={stage.learning_rate:g} ({stage.schedule})")
        callbacks = [
            classes["NaNGuard"](stage.name, nan_state),
            classes["StageCSVLogger"](history_csv, stage.name),
        ]
        if bn_sync is not None:
            callbacks.insert(0, bn_sync)
        if ckpt is None and (val_ds is not None or monitor == "loss"):
            callbacks.append(classes["BestWeights"](best_path, monitor, best_state,
                                                    target=model))
        es = stage.early_stopping
        es_callback = None
        if es.patience > 0:
            es_monitor = es.monitor if val_ds is not None else es.monitor.removeprefix("val_")
            es_kwargs: dict[str, Any] = {
                "monitor": es_monitor, "patience": es.patience, "min_delta": es.min_delta,
                "restore_best_weights": True, "verbose": 1}
            if ckpt is None:
                es_callback = keras.callbacks.EarlyStopping(**es_kwargs)
            else:
                from kerasft.training.checkpoints import callbacks as resume_callbacks

                es_callback = resume_callbacks()["ResumableEarlyStopping"](
                    resume_state=ckpt.state.early_stopping,
                    best_weights=ckpt.early_stopping_weights(model, fit_model), **es_kwargs)
            callbacks.append(es_callback)
        if cfg.training.tensorboard:
            callbacks.append(classes["EpochTensorBoard"](log_dir=str(run_dir / "tensorboard")))
        if ckpt is not None:  # last: it records the CSV length and the early-stopping counters
            from kerasft.training.checkpoints import callbacks as resume_callbacks
            from kerasft.training.checkpoints import pause_requested

            resume_classes = resume_callbacks()
            callbacks.append(resume_classes["EpochCheckpoint"](
                ckpt, model, stage=i, stage_first_epoch=first, monitor=monitor,
                nan_state=nan_state, early_stopping=es_callback))
            if pause_requested():
                callbacks.append(resume_classes["Pause"]())
        history = None
        if remaining > 0:
            if use_cache:
                features = cached_features(refresh=features_stale)
                features_stale = False
                fit_data: dict[str, Any] = {
                    "x": _feature_batches(features, cfg, epoch),
                    "steps_per_epoch": math.ceil(len(features["y"]) / cfg.data.batch_size),
                    "validation_data": features.get("val"), "shuffle": False,
                }
            elif callable(train_ds):  # epoch-keyed, endless pipeline (see epoch_batches)
                fit_data = {"x": train_ds(epoch), "steps_per_epoch": steps_per_epoch,
                            "validation_data": val_ds, "shuffle": False}
            else:
                fit_data = {"x": train_ds, "validation_data": val_ds,
                            "shuffle": False}  # the tf.data pipeline shuffles (seeded)
            history = fit_model.fit(
                **fit_data,
                epochs=first + stage.epochs,
                initial_epoch=epoch,
                callbacks=callbacks,
                verbose=_verbose(cfg.training.verbose),
            )
        elif ckpt is not None and (ckpt.state.early_stopping or {}).get("weights"):
            # Interrupted between the stage's last epoch and its end: restore as EarlyStopping.
            load_model_weights(model, ckpt.dir / ckpt.state.early_stopping["weights"])
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
        if ckpt is not None:
            ran = ckpt.state.epoch - first
            last_logs = dict(ckpt.state.last_logs)
        else:
            assert history is not None
            ran = len(history.epoch)
            last_logs = {k: float(v[-1]) for k, v in history.history.items() if v}
        result = StageResult(
            name=stage.name, epochs_run=ran, first_epoch=first + 1, last_epoch=first + ran,
            trainable_params=trainable, unfrozen_layers=len(unfrozen["unfrozen_layers"]),
            stopped_early=ran < stage.epochs, final_logs=last_logs,
        )
        results.append(result)
        if stage.trainable != "head":
            features_stale = True
        epoch = first + ran
        if ckpt is not None:
            ckpt.commit_stage_end(model, stage=i, result=asdict(result),
                                  weights_changed=es_callback is not None)
    if ckpt is not None and ckpt.state.best is not None:
        best_state.update(best=ckpt.state.best, epoch=ckpt.state.best_epoch)
    if cfg.training.restore_best and best_path.exists():
        load_model_weights(model, best_path)
        log(f"restored the best weights ({monitor}={best_state.get('best'):.4f} at epoch "
            f"{best_state.get('epoch', 0) + 1}) from {best_path}")
    if ckpt is not None and ckpt.write_seconds:
        log(f"checkpoints: {ckpt.write_seconds:.1f} s writing per-epoch checkpoints "
            f"(commit {ckpt.state.commit})")
    return results


def _feature_batches(features: dict[str, Any], cfg: Config, start_epoch: int) -> Any:
    """Endless, epoch-keyed batches of cached head features (see data.pipeline.epoch_batches)."""
    import tensorflow as tf

    from kerasft.data.pipeline import epoch_batches

    ds = tf.data.Dataset.from_tensor_slices((features["x"], features["y"]))
    return epoch_batches(ds, start_epoch=start_epoch, seed=cfg.seed, buffer=len(features["y"]),
                         batch_size=cfg.data.batch_size)
