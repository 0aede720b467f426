"""The Keras callbacks of a stage's ``fit``, and which way a monitored metric improves.

:func:`callback_classes` builds the classes on first use, so importing this module needs no Keras:
``StageCSVLogger`` (``history.csv``, one row per epoch across every stage), ``BestWeights`` (the
best-weights checkpoint across stages, without per-epoch checkpoints), ``NaNGuard`` (stops at the
first NaN/Inf loss and records where), ``EpochTensorBoard`` and, for a stage with ``ema``,
``EMAWeights`` / ``EMAStop`` (the optimizer's weight averages are what is validated, kept as
best, checkpointed and left in the model). The per-epoch checkpoint callbacks
live with the checkpoints (:func:`kerasft.training.checkpoints.callbacks`).
:func:`higher_is_better` is the one place that decides whether a larger value of a monitored
metric is better, for ``BestWeights`` and for the checkpoints' best-so-far value alike.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import time
from pathlib import Path
from typing import Any

from kerasft.io import atomic_path
from kerasft.models.weights import save_model_weights

#: Substrings of a metric's name that mean larger is better (``val_accuracy``, ``auc``, ...).
HIGHER_IS_BETTER = ("acc", "auc", "f1", "precision", "recall")


def higher_is_better(monitor: str) -> bool:
    """Whether a larger value of the logged metric `monitor` (``val_accuracy``, ``auc``, ...) is
    better; otherwise (``loss``, ``val_loss``) a smaller one is."""
    return any(k in monitor for k in HIGHER_IS_BETTER)


@functools.cache
def callback_classes() -> dict[str, type]:
    """``StageCSVLogger``, ``BestWeights``, ``NaNGuard``, ``EpochTensorBoard``, ``EMAWeights`` and
    ``EMAStop`` (see the module docstring)."""
    import keras
    import numpy as np

    Callback = keras.callbacks.Callback

    class StageCSVLogger(Callback):
        """Appends one row per epoch: stage, epoch, learning rate, then every logged metric.

        Not ``keras.callbacks.CSVLogger``: that one logs one ``fit``, where history.csv spans
        every stage (a stage column, headers merged), records the epoch's mean learning rate and
        fsyncs every row (a resume truncates the file to its committed length).
        """

        def __init__(self, path: Path, stage: str) -> None:
            super().__init__()
            self.path = Path(path)
            self.stage = stage

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.first_step = _iterations(self.model.optimizer)
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            row = {"stage": self.stage, "epoch": epoch + 1}  # 1-based, as Keras's progress bar
            after = logs.pop("learning_rate", None)  # the rate *after* the epoch's last step
            lr = _epoch_lr(self.model.optimizer, getattr(self, "first_step", None))
            if lr is None:
                lr = after if after is not None else _current_lr(self.model.optimizer)
            row["learning_rate"] = lr
            # Wall seconds of the epoch, its validation included (kerasft compare sums them).
            started = getattr(self, "started", None)
            row["epoch_seconds"] = ("" if started is None
                                    else round(time.perf_counter() - started, 3))
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
        """Saves weights when `monitor` improves, across all stages (temporary file + rename).

        Not ``keras.callbacks.ModelCheckpoint(save_best_only=True)``: that one saves the model
        being fit, which is the head alone in a stage on cached features, and not atomically.
        """

        def __init__(self, path: Path, monitor: str, state: dict, target: Any = None) -> None:
            super().__init__()
            self.path = Path(path)
            self.monitor = monitor
            self.state = state  # shared across stages: {"best": float, "epoch": int}
            self.target = target  # the whole classifier, when fit runs on the head alone
            self.mode_max = higher_is_better(monitor)

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
        """Stops training at the first NaN/Inf loss and records where it happened.

        Not ``keras.callbacks.TerminateOnNaN``: that one stops without saying where, and kerasft's
        error names the stage, epoch and step.
        """

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
        is active), but the calls cost time at every step (bench/overhead.py measures it)."""

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            super().on_train_batch_end(batch, logs if self.update_freq != "epoch" else None)

    class EMAWeights(keras.callbacks.SwapEMAWeights):
        """A stage with ``ema``: the optimizer's averages are in the model for validation and
        from each epoch's end to the next epoch's start (``swap_on_epoch``), so callbacks after
        this one (first in the list) keep, checkpoint and restore the averaged weights; the raw
        weights go on training. Keras's fit then leaves the averages in the model."""

        def __init__(self) -> None:
            super().__init__(swap_on_epoch=True)

        def swap(self, model: Any) -> None:
            """Exchanges `model`'s weights and its optimizer's averages (a resumed stage's
            checkpoint holds them swapped, as saved at an epoch's end)."""
            self.set_model(model)
            self._swap_variables()

    class EMAStop(Callback):
        """After early stopping: an epoch that ends a stage before its last epoch leaves the raw
        weights in the averages' place, and Keras's fit would then write them back into the
        model (``finalize_variable_values``); copy the averages there as SwapEMAWeights does at
        the last epoch. Comes after EarlyStopping, which sets ``stop_training``."""

        def __init__(self, ema: Any) -> None:
            super().__init__()
            self.ema = ema

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if (self.model.stop_training and self.ema._ema_weights_in_model
                    and epoch != self.params["epochs"] - 1):
                self.ema._finalize_ema_values()

    return dict(StageCSVLogger=StageCSVLogger, BestWeights=BestWeights, NaNGuard=NaNGuard,
                EpochTensorBoard=EpochTensorBoard, EMAWeights=EMAWeights, EMAStop=EMAStop)


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
