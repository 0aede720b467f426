"""Step 6 of a run: ``model.fit`` under a ``tf.distribute`` strategy, one stage after another.

The strategy is chosen once (kerasft/training/strategy.py); the model is built and every stage
compiled inside its scope; ``data.batch_size`` is the global batch, split over the replicas. Each
stage sets ``trainable``, recompiles with a fresh optimizer and continues the epoch counter
(``initial_epoch``), so the progress bar, ``history.csv`` and TensorBoard form one curve.
A stage with ``lora`` enables its adapters after setting ``trainable`` and merges them into the
kernels when it ends (kerasft/models/lora.py), so the next stage compiles a plain model.
A stage with ``ema`` trains with Keras's ``use_ema``: its weight averages are what is validated,
kept as the best weights, checkpointed and left in the model at the stage's end, and the next
stage starts from them (``EMAWeights``; a resumed stage gets its raw weights back).

Callbacks (all writing into the run folder; kerasft/training/callbacks.py): progress bar,
EarlyStopping with best-weight restore (per stage, when ``early_stopping.patience`` > 0),
best-weights checkpoint across stages (written to a temporary file and renamed), a NaN guard that
names the stage/epoch/step, a CSV log with the stage of every epoch, and TensorBoard. With
``training.checkpoint_every_epoch`` (the default) the best-weights checkpoint is part of the
per-epoch checkpoints of kerasft/training/checkpoints.py, from which an interrupted run resumes at
its stage and epoch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kerasft.config import Config, StageConfig, mixes_labels
from kerasft.errors import KerasftError, expected
from kerasft.models.weights import load_model_weights
from kerasft.training.callbacks import callback_classes
from kerasft.training.strategy import StrategyInfo

Log = Callable[[str], None]


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
                  num_classes: int, replicas: int = 1,
                  multipliers: dict[int, float] | None = None, sweep: Any = None) -> None:
    """Compiles `model` for `stage` (call inside the strategy scope): `multipliers` are the
    per-variable LR factors (kerasft/training/lr_groups.py); `sweep` (the LR finder's schedule)
    replaces the stage's learning rate, without gradient accumulation, one step per
    execution."""
    from kerasft.training.stages import (
        make_loss,
        make_metrics,
        make_optimizer,
        weight_decay_excluded,
    )

    lr_scale = float(replicas) if cfg.training.lr_scaling == "linear" else 1.0
    optimizer = make_optimizer(stage, steps_per_epoch, lr_scale,
                               None if sweep is not None
                               else cfg.training.gradient_accumulation_steps,
                               multipliers=multipliers, learning_rate=sweep)
    if stage.weight_decay and stage.weight_decay_exclude:
        optimizer.exclude_from_weight_decay(
            var_list=weight_decay_excluded(model, stage.weight_decay_exclude))
    soft = mixes_labels(cfg.data.augmentation)  # mixup / cutmix training labels
    if stage.distill is not None:
        from kerasft.training.distill import distill_loss, distill_metrics

        loss = distill_loss(stage.distill["temperature"], stage.distill["alpha"], num_classes,
                            stage.label_smoothing)
        metrics = distill_metrics(num_classes)
    else:
        loss = make_loss(cfg.head, num_classes, stage.label_smoothing, soft_labels=soft)
        metrics = make_metrics(cfg.head, num_classes, soft_labels=soft)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        # Weighted: identical without sample weights; tpu/multi_worker evaluation batches are
        # padded with weight-0 rows (kerasft.training.distribution.pad_to_full_batches).
        weighted_metrics=metrics,
        jit_compile=cfg.training.jit_compile,
        steps_per_execution=1 if sweep is not None
        else execution_steps(cfg.training.steps_per_execution, steps_per_epoch),
    )
    # Without a strategy attached to the model Keras builds the optimizer inside the first
    # train step's trace, where creating each slot variable costs far more than eagerly.
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


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
    class_weight: dict[int, float] | None = None,
    distill_data: Callable[[int, StageConfig], Any] | None = None,
    extra_callbacks: Sequence[Any] = (),
) -> list[StageResult]:
    """Runs every stage of `cfg` in order; returns what each stage did.

    A ``head`` stage trains `head` alone on the backbone features from `cached_features` when
    given (computed on first use and reused by every head-only epoch and stage, and computed
    again, ``cached_features(refresh=True)``, after a stage that trained the backbone: a resumed
    run, which computes them afresh, then trains on the same features); other stages
    train `model` end to end on `train_ds`: a dataset, or a function of the first epoch returning
    an endless epoch-keyed pipeline (``make_pipeline(start_epoch=...)``), read for
    `steps_per_epoch` batches per epoch. With `checkpoint` (a :class:`kerasft.training.checkpoints.
    Checkpointer`) every epoch and every stage end is checkpointed, and a resumed checkpointer
    continues at its committed stage and epoch (see kerasft/training/checkpoints.py).
    `class_weight` (class id -> weight, ``data.class_weight``) goes to every stage's ``fit``, on
    cached features too: Keras turns it into per-example weights of the training loss (and of
    the weighted training metrics); validation is not weighted.
    A ``distill`` stage trains on ``distill_data(i, stage)`` instead of `train_ds` (the same
    epoch-keyed pipeline with the teacher's probabilities packed into the labels,
    kerasft/training/distill.py); a ``prune`` stage adds the magnitude-pruning callback
    (kerasft/training/prune.py).
    the weighted training metrics); validation is not weighted. `extra_callbacks` join every
    stage's callbacks, after the run's own (kerasft tune's pruning callback).
    """
    from kerasft.training.lr_groups import stage_multipliers
    from kerasft.training.stages import apply_trainable, count_params

    classes = callback_classes()
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    best_path = run_dir / "checkpoints" / "best.weights.h5"
    best_state: dict[str, Any] = {}
    nan_state: dict[str, Any] = {}
    monitor = cfg.training.monitor if val_ds is not None else "loss"
    # Multi-worker: average batch-norm statistics over replicas before validation and before
    # anything saves or keeps weights (Keras 3 keeps one copy per replica; see multi_worker.py).
    bn_sync = None
    if strategy_info.kind == "multi_worker":
        from kerasft.training.multi_worker import batch_norm_sync_callback

        bn_sync = batch_norm_sync_callback()
    ckpt = checkpoint
    epoch, results = _start(ckpt, model, cfg, strategy_info, best_state, log)
    features_stale = False  # a stage trained the backbone since the features were computed
    pruned: dict[str, Any] = {}  # the last prune stage's kernels and masks
    for i, stage in enumerate(cfg.stages):
        if ckpt is not None and i < ckpt.state.stage:
            continue  # finished before the interruption
        first = ckpt.state.stage_first_epoch if ckpt is not None else epoch
        remaining = 0 if ckpt is not None and ckpt.state.stopped else first + stage.epochs - epoch
        use_cache = stage.trainable == "head" and cached_features is not None and head is not None \
            and stage.distill is None
        fit_model = head if use_cache else model
        with strategy_info.strategy.scope():
            unfrozen = apply_trainable(backbone, stage, key=f"stages[{i}].trainable")
            lora = unfrozen.get("lora")
            if lora is not None:
                _start_lora(ckpt, model, backbone, unfrozen, i)
            multipliers, lr_summary = stage_multipliers(model, backbone, stage, f"stages[{i}]")
        stage_train = train_ds
        if stage.distill is not None:
            if distill_data is None:
                raise KerasftError(expected("a teacher's predictions (FineTuner.fit) for a "
                                            "distill stage", f"stages[{i}].distill",
                                            stage.distill))
            stage_train = distill_data(i, stage)  # epoch-keyed, teacher answers in the labels
        fit_data = _fit_data(use_cache, cached_features, features_stale, cfg, epoch, stage_train,
                             val_ds, steps_per_epoch, strategy_info) if remaining > 0 else None
        if stage.learning_rate == "auto":
            _resolve_auto(fit_model, stage, i, cfg, fit_data, steps_per_epoch, num_classes,
                          strategy_info, multipliers, class_weight, run_dir, log)
        with strategy_info.strategy.scope():
            compile_stage(fit_model, stage, cfg, steps_per_epoch, num_classes,
                          strategy_info.replicas, multipliers)
            restored = ckpt is not None and ckpt.restore_optimizer(fit_model)
            ema = classes["EMAWeights"]() if stage.ema else None
            if ema is not None and restored:  # saved at an epoch's end: averages in the model
                ema.swap(fit_model)
        trainable = count_params(model.trainable_weights)
        if lora is not None:
            layers = f"LoRA rank {lora['rank']} alpha {lora['alpha']:g} on " \
                f"{len(unfrozen['lora_targets'])} layers in " \
                f"{len(unfrozen['unfrozen_layers'])} backbone layers (the rest frozen)"
        else:
            layers = f"{len(unfrozen['unfrozen_layers'])} backbone layers unfrozen"
        log(f"stage {i + 1}/{len(cfg.stages)} '{stage.name}': trainable={stage.trainable}"
            f"{' (head on cached features)' if use_cache else ''}, {layers}, "
            f"batch_norm={unfrozen['batch_norm']}, "
            f"{trainable:,} trainable parameters, epochs {first + 1}-{first + stage.epochs}"
            f"{f' (resuming at epoch {epoch + 1})' if epoch > first and remaining else ''}, "
            f"{stage.optimizer} lr={stage.learning_rate:g} ({stage.schedule})"
            + (f", weight EMA momentum {stage.ema['momentum']:g}" if stage.ema else ""))
        if lr_summary:
            log(f"stage '{stage.name}': learning-rate multipliers: {', '.join(lr_summary)}")
        es_callback = _early_stopping(stage, val_ds is not None, ckpt, model, fit_model)
        callbacks = [c for c in (
            ema,  # first: the callbacks below see the averaged weights at an epoch's end
            bn_sync,
            classes["NaNGuard"](stage.name, nan_state),
            classes["StageCSVLogger"](run_dir / "history.csv", stage.name),
            # Without per-epoch checkpoints (which keep the best epoch themselves); before
            # EarlyStopping, which may restore an older epoch's weights at the epoch's end.
            classes["BestWeights"](best_path, monitor, best_state, target=model)
            if ckpt is None else None,
            es_callback,
            classes["EMAStop"](ema) if ema is not None else None,
            classes["EpochTensorBoard"](log_dir=str(run_dir / "tensorboard"))
            if cfg.training.tensorboard else None,
        ) if c is not None]
        prune_state: dict[str, Any] = {}
        if stage.prune is not None:  # before the checkpoint: it saves the masked kernels
            from kerasft.training.prune import pruning_callback_class

            callbacks.append(pruning_callback_class()(fit_model, stage.prune, first, prune_state))
        callbacks += list(extra_callbacks)
        if ckpt is not None:  # last: it records the CSV length and the early-stopping counters
            callbacks += _checkpoint_callbacks(ckpt, model, i, first, monitor, nan_state,
                                               es_callback)
        history = None
        if remaining > 0:
            if use_cache:
                features_stale = False
            history = fit_model.fit(
                **fit_data,
                epochs=first + stage.epochs,
                initial_epoch=epoch,
                callbacks=callbacks,
                class_weight=class_weight,
                verbose=_verbose(cfg.training.verbose),
            )
        elif ckpt is not None and (ckpt.state.early_stopping or {}).get("weights"):
            # Interrupted between the stage's last epoch and its end: restore as EarlyStopping.
            ckpt.load_weights_file(model, ckpt.state.early_stopping["weights"])
        if nan_state:
            raise _diverged(nan_state["nan"], cfg, best_path)
        if stage.prune is not None and prune_state.get("masks"):
            from kerasft.training.prune import describe, reapply

            reapply(prune_state)  # EarlyStopping may have restored an earlier epoch
            pruned = prune_state
            log(describe(stage.name, prune_state))
        if lora is not None:  # later stages, weights files and the export see plain layers
            from kerasft.models.lora import merge_lora

            with strategy_info.strategy.scope():
                merged = merge_lora(model)
            log(f"stage '{stage.name}': merged the LoRA adapters of {merged} layers into "
                "their kernels")
        ran, last_logs = _stage_outcome(ckpt, history, first)
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
                                  weights_changed=es_callback is not None or lora is not None)
    if ckpt is not None and ckpt.state.best is not None:
        best_state.update(best=ckpt.state.best, epoch=ckpt.state.best_epoch)
    if cfg.training.restore_best and best_path.exists():
        load_model_weights(model, best_path)
        log(f"restored the best weights ({monitor}={best_state.get('best'):.4f} at epoch "
            f"{best_state.get('epoch', 0) + 1}) from {best_path}")
        if pruned:
            from kerasft.training.prune import reapply

            reapply(pruned)
            log("re-applied the last prune stage's masks to the restored weights")
    if ckpt is not None and ckpt.write_seconds:
        log(f"checkpoints: {ckpt.write_seconds:.1f} s writing per-epoch checkpoints "
            f"(commit {ckpt.state.commit})")
    return results


# ---------------------------------------------------------------------------------------------
# Pieces of run_stages: data, LR sweep, resume bookkeeping, early stopping, divergence.


def _fit_data(use_cache: bool, cached_features: Any, features_stale: bool, cfg: Config,
              epoch: int, train_ds: Any, val_ds: Any, steps_per_epoch: int,
              strategy_info: StrategyInfo) -> dict[str, Any]:
    """``fit``'s data arguments for a stage starting at `epoch`."""
    if use_cache:
        from kerasft.training.distribution import distribute_pipeline, sharding_policy
        from kerasft.training.distribution import steps_per_epoch as count_steps

        features = cached_features(refresh=features_stale)
        size, batch, replicas = len(features["y"]), cfg.data.batch_size, strategy_info.replicas
        x, val = _feature_batches(features, cfg, epoch), features.get("val")
        kind = strategy_info.kind
        if replicas > 1 and sharding_policy(kind) is None:
            # mirrored: the same even pieces as the input pipelines
            import tensorflow as tf

            x = distribute_pipeline(x, kind, size=size, global_batch=batch, training=True,
                                    replicas=replicas)
            if val is not None:
                val = distribute_pipeline(tf.data.Dataset.from_tensor_slices(val).batch(batch),
                                          kind, size=len(val[1]), global_batch=batch,
                                          training=False, replicas=replicas)
        return {"x": x, "steps_per_epoch": count_steps(size, batch, False, replicas),
                "validation_data": val, "shuffle": False}
    if callable(train_ds):  # epoch-keyed, endless (data.pipeline.epoch_batches)
        return {"x": train_ds(epoch), "steps_per_epoch": steps_per_epoch,
                "validation_data": val_ds, "shuffle": False}
    return {"x": train_ds, "validation_data": val_ds,
            "shuffle": False}  # the tf.data pipeline shuffles (seeded)


def _resolve_auto(fit_model: Any, stage: StageConfig, i: int, cfg: Config,
                  fit_data: dict[str, Any] | None, steps_per_epoch: int, num_classes: int,
                  strategy_info: StrategyInfo, multipliers: dict[int, float],
                  class_weight: dict[int, float] | None, run_dir: Path, log: Log) -> None:
    """``learning_rate: auto``: sweeps (kerasft/training/lr_find.py) from the stage's starting
    weights, sets the stage's rate to the suggestion and records it in the run's config.yaml
    (which ``--resume`` reads back)."""
    from kerasft.config import save_config
    from kerasft.training.lr_find import run_sweep, write_sweep

    if fit_data is None:  # nothing left to train: no sweep needed, any rate compiles
        stage.learning_rate = cfg.training.lr_find.min_lr
        return
    lr_scale = float(strategy_info.replicas) if cfg.training.lr_scaling == "linear" else 1.0
    result = run_sweep(
        fit_model,
        lambda schedule: compile_stage(fit_model, stage, cfg, steps_per_epoch, num_classes,
                                       strategy_info.replicas, multipliers, sweep=schedule),
        fit_data["x"], fit_data.get("steps_per_epoch", steps_per_epoch), cfg.training.lr_find,
        strategy_info.strategy, class_weight)
    written = write_sweep(result, run_dir, f"lr_find_stage{i + 1}")
    for note in result.notes:
        log(note)
    log(f"stage {i + 1} '{stage.name}': {result.line()}; "
        f"plot and CSV: {', '.join(str(p) for p in written)}")
    # The sweep ran at the rate training uses; training.lr_scaling multiplies the config's.
    stage.learning_rate = float(f"{result.suggestion / lr_scale:.3g}")
    save_config(cfg, run_dir / "config.yaml")
    log(f"stage {i + 1} '{stage.name}': learning_rate auto = {stage.learning_rate:g} "
        "(recorded in config.yaml)")


def _start(ckpt: Any, model: Any, cfg: Config, strategy_info: StrategyInfo,
           best_state: dict[str, Any], log: Log) -> tuple[int, list[StageResult]]:
    """The epoch to continue at and the stages already done: ``(0, [])`` without per-epoch
    checkpoints; otherwise what the run state says (a resumed run gets its committed weights
    and its best-so-far value in `best_state`)."""
    if ckpt is None:
        return 0, []
    if ckpt.state.best is not None:
        best_state.update(best=ckpt.state.best, epoch=ckpt.state.best_epoch)
    if ckpt.resumed:
        log(ckpt.describe([s.name for s in cfg.stages]))
        with strategy_info.strategy.scope():
            ckpt.restore_model(model)
    return ckpt.state.epoch, [StageResult(**r) for r in ckpt.state.stages_done]


def _start_lora(ckpt: Any, model: Any, backbone: Any, unfrozen: dict[str, Any],
                stage: int) -> None:
    """Enables the stage's LoRA adapters (call inside the strategy scope). With per-epoch
    checkpoints the stage's starting weights are committed first when no checkpoint holds them
    (the stage's epochs checkpoint only what trains), and a resumed stage gets its adapters and
    head back."""
    from kerasft.models.lora import enable_lora

    if ckpt is not None and ckpt.state.weights is None:
        ckpt.commit_base(model, stage)
    enable_lora(backbone.network, unfrozen["lora_targets"], unfrozen["lora"])
    if ckpt is not None:
        ckpt.restore_lora(model)


def _stage_outcome(ckpt: Any, history: Any, first: int) -> tuple[int, dict[str, float]]:
    """(epochs the stage ran, its last logs): from the run state with per-epoch checkpoints
    (which also counts the epochs run before an interruption), else from ``fit``'s history."""
    if ckpt is not None:
        return ckpt.state.epoch - first, dict(ckpt.state.last_logs)
    assert history is not None
    return len(history.epoch), {k: float(v[-1]) for k, v in history.history.items() if v}


def _early_stopping(stage: StageConfig, validates: bool, ckpt: Any, model: Any,
                    fit_model: Any) -> Any:
    """The stage's EarlyStopping callback (None without ``early_stopping.patience``); with
    per-epoch checkpoints one whose counters and best weights continue from the run state."""
    es = stage.early_stopping
    if es.patience <= 0:
        return None
    kwargs: dict[str, Any] = {
        "monitor": es.monitor if validates else es.monitor.removeprefix("val_"),
        "patience": es.patience, "min_delta": es.min_delta, "restore_best_weights": True,
        "verbose": 1}
    if ckpt is None:
        import keras

        return keras.callbacks.EarlyStopping(**kwargs)
    from kerasft.training.checkpoints import callbacks as resume_callbacks

    return resume_callbacks()["ResumableEarlyStopping"](
        resume_state=ckpt.state.early_stopping,
        best_weights=ckpt.early_stopping_weights(model, fit_model), **kwargs)


def _checkpoint_callbacks(ckpt: Any, model: Any, stage: int, first: int, monitor: str,
                          nan_state: dict[str, Any], es_callback: Any) -> list[Any]:
    """The per-epoch checkpoint callback and, when it is set, the ``epoch`` test hook."""
    from kerasft.training.checkpoints import callbacks as resume_callbacks
    from kerasft.training.checkpoints import pause_requested

    classes = resume_callbacks()
    callbacks = [classes["EpochCheckpoint"](
        ckpt, model, stage=stage, stage_first_epoch=first, monitor=monitor,
        nan_state=nan_state, early_stopping=es_callback)]
    if pause_requested():
        callbacks.append(classes["Pause"]())
    return callbacks


def _diverged(where: dict[str, Any], cfg: Config, best_path: Path) -> KerasftError:
    """The one-line error for a NaN/Inf loss (`where`: what NaNGuard recorded)."""
    return KerasftError(
        f"training diverged: expected a finite loss. Received: loss={where['loss']} at "
        f"stage '{where['stage']}', epoch {where['epoch']}, step {where['step']}. "
        "Try a lower learning rate for this stage"
        + (" or training.mixed_precision: none" if cfg.training.mixed_precision != "none"
           else "")
        + (f"; the best weights so far are in {best_path}" if best_path.exists() else "")
    )


def _feature_batches(features: dict[str, Any], cfg: Config, start_epoch: int) -> Any:
    """Endless, epoch-keyed batches of cached head features (see data.pipeline.epoch_batches)."""
    import tensorflow as tf

    from kerasft.data.pipeline import epoch_batches

    ds = tf.data.Dataset.from_tensor_slices((features["x"], features["y"]))
    return epoch_batches(ds, start_epoch=start_epoch, seed=cfg.seed, buffer=len(features["y"]),
                         batch_size=cfg.data.batch_size)
