"""The learning-rate finder: ``kerasft lr-find`` and ``learning_rate: auto``.

A sweep trains the stage's model for up to ``training.lr_find.steps`` batches (at most one pass
over the training batches: a repeated batch would lower the loss by memorisation, not by the
rate) while the learning rate grows exponentially from ``min_lr`` to ``max_lr``; it stops early
once the smoothed loss exceeds 4x its minimum or is not finite. Every model variable (weights,
BatchNorm statistics, dropout seed states) is copied before and restored after, and the sweep's
optimizer is thrown away, so the sweep leaves the run's training as if it had not happened.

The suggestion (as fastai's ``lr_find``; the loss is smoothed by a bias-corrected exponential
moving average, beta 0.98): ``steepest`` (default) is the rate where the smoothed loss falls
fastest against log(rate), among the points before its minimum, skipping the first tenth;
``minimum`` is the rate at the smoothed loss's minimum divided by 10. Both are written to the
CSV and the plot; the log says which one was used.

The swept rate is the stage's base rate: the rate the head gets, with ``layer_lr_decay`` and
``lr_multipliers`` applied below it as in training. The sweep runs without gradient
accumulation and with one step per execution (the loss of every batch is read).
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerasft.config import LRFindConfig, read_yaml
from kerasft.io import atomic_path, atomic_write

SMOOTHING = 0.98
DIVERGED = 4.0


@dataclass
class SweepResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    rule: str
    steepest: float | None
    minimum_over_10: float | None
    seconds: float
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        other = (f"minimum/10 {self.minimum_over_10:.3g}" if self.rule == "steepest"
                 else f"steepest descent {self.steepest:.3g}" if self.steepest else
                 "no steepest descent before the minimum")
        return (f"lr-find: suggested learning_rate {self.suggestion:.3g} ({self.rule}; "
                f"{other}); {len(self.lrs)} steps {self.lrs[0]:.2g}..{self.lrs[-1]:.2g}"
                f"{' (stopped: loss diverged)' if self.stopped_early else ''} in "
                f"{self.seconds:.1f} s")


def sweep_lrs(cfg: LRFindConfig, steps: int) -> list[float]:
    """The rate of each sweep step: ``min_lr`` to ``max_lr``, geometric."""
    ratio = cfg.max_lr / cfg.min_lr
    return [cfg.min_lr * ratio ** (i / max(steps - 1, 1)) for i in range(steps)]


def _schedule(cfg: LRFindConfig, steps: int) -> Any:
    import keras

    class ExponentialSweep(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            from keras import ops

            step = ops.minimum(ops.cast(step, "float32"), float(steps - 1))
            return cfg.min_lr * ops.power(cfg.max_lr / cfg.min_lr, step / max(steps - 1, 1))

        def get_config(self) -> dict[str, Any]:
            return {}

    return ExponentialSweep()


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average (fastai's)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def suggest(lrs: list[float], smoothed: list[float],
            rule: str = "steepest") -> tuple[float, float | None, float]:
    """``(suggestion, steepest, minimum / 10)`` for a sweep (see the module docstring); the
    steepest point falls back to minimum/10 when there is none before the minimum."""
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    low = min(finite, key=lambda i: smoothed[i])
    minimum_over_10 = lrs[low] / 10
    start = len(lrs) // 10
    steepest = None
    if low - start >= 2:
        slopes = [(smoothed[i + 1] - smoothed[i - 1])
                  / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
                  for i in range(start + 1, low)]
        best = min(range(len(slopes)), key=slopes.__getitem__)
        if slopes[best] < 0:
            steepest = lrs[start + 1 + best]
    if rule == "steepest" and steepest is not None:
        return steepest, steepest, minimum_over_10
    return minimum_over_10, steepest, minimum_over_10


def _recorder(losses: list[float], state: dict[str, Any]) -> Any:
    import keras

    class SweepRecorder(keras.callbacks.Callback):
        """Reads each batch's own loss: the loss tracker is reset before every batch (one step
        per execution), so ``logs['loss']`` is not the running mean of the epoch."""

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.model.reset_metrics()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            loss = float((logs or {}).get("loss", math.nan))
            losses.append(loss)
            smoothed = smooth(losses)[-1]
            state["best"] = min(state.get("best", math.inf), smoothed)
            if not math.isfinite(loss) or (len(losses) > 5 and smoothed > DIVERGED
                                           * state["best"]):
                state["stopped"] = True
                self.model.stop_training = True

    return SweepRecorder()


def run_sweep(model: Any, compile_fn: Any, x: Any, steps_available: int, cfg: LRFindConfig,
              strategy: Any, class_weight: dict[int, float] | None = None) -> SweepResult:
    """Sweeps the learning rate on `model` (compiled by ``compile_fn(schedule)`` inside
    `strategy`'s scope) over batches of `x`; restores every variable of `model` afterwards.
    The caller recompiles `model` before training it."""
    import numpy as np

    steps = min(cfg.steps, max(int(steps_available), 1))
    planned = sweep_lrs(cfg, steps)
    saved = [np.array(v.numpy()) for v in model.variables]
    losses: list[float] = []
    state: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        with strategy.scope():
            compile_fn(_schedule(cfg, steps))
        model.fit(x, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False,
                  class_weight=class_weight, callbacks=[_recorder(losses, state)])
    finally:
        with strategy.scope():
            for v, value in zip(model.variables, saved, strict=True):
                v.assign(value)
    seconds = time.perf_counter() - start
    if not losses or not any(math.isfinite(v) for v in losses):
        from kerasft.errors import KerasftError

        raise KerasftError(f"lr-find: expected a finite loss during the sweep. Received: "
                           f"loss={losses[:1] or None} at learning_rate {cfg.min_lr:g}")
    lrs = planned[:len(losses)]
    smoothed = smooth(losses)
    suggestion, steepest, minimum_over_10 = suggest(lrs, smoothed, cfg.suggestion)
    rule = cfg.suggestion if (cfg.suggestion == "minimum" or steepest is not None) \
        else "minimum"
    notes = []
    if steps < 20:
        notes.append(f"lr-find: only {steps} sweep steps: the suggestion is rough (more "
                     "steps need training.lr_find.steps, more data or a smaller batch size)")
    return SweepResult(lrs, losses, smoothed, suggestion, rule, steepest, minimum_over_10,
                       seconds, bool(state.get("stopped")), notes)


def write_sweep(result: SweepResult, folder: Path, stem: str = "lr_find") -> list[Path]:
    """``<stem>.csv`` (step, learning_rate, loss, smoothed_loss) and ``<stem>.png`` (when
    matplotlib is installed) in `folder`; returns the paths written."""
    folder = Path(folder)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
    for i, (lr, loss, sm) in enumerate(zip(result.lrs, result.losses, result.smoothed,
                                           strict=True)):
        writer.writerow([i + 1, f"{lr:.6g}", f"{loss:.6g}", f"{sm:.6g}"])
    atomic_write(folder / f"{stem}.csv", buf.getvalue())
    written = [folder / f"{stem}.csv"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result.lrs, result.losses, color="lightgrey", label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed loss")
    for value, label, style in ((result.steepest, "steepest", "--"),
                                (result.minimum_over_10, "minimum/10", ":")):
        if value:
            ax.axvline(value, linestyle=style, color="tab:red" if value == result.suggestion
                       else "grey", label=f"{label} {value:.2g}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    low = min(v for v in [*finite, *result.losses] if math.isfinite(v)) if finite else None
    if finite:  # the divergence at the end would flatten the useful part
        ax.set_ylim(low - 0.05 * abs(low), min(max(finite), 2.5 * finite[0]))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR sweep: suggestion {result.suggestion:.2g} ({result.rule})")
    ax.legend()
    fig.tight_layout()
    with atomic_path(folder / f"{stem}.png", durable=False) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    written.append(folder / f"{stem}.png")
    return written


def adopt_found_rates(cfg: Any, run_config: Path, log: Any = print) -> None:
    """Resuming: a stage with ``learning_rate: auto`` takes the value the run's sweep found and
    its config.yaml records, so ``--resume`` does not sweep again (a stage whose sweep had not
    run yet stays ``auto``)."""
    try:
        saved = read_yaml(run_config).get("stages") or []
    except Exception:  # resuming reports an unreadable config.yaml itself
        return
    for i, stage in enumerate(cfg.stages):
        if stage.learning_rate != "auto" or i >= len(saved) or not isinstance(saved[i], dict):
            continue
        value = saved[i].get("learning_rate")
        if saved[i].get("name") == stage.name and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            stage.learning_rate = float(value)
            log(f"stage {i + 1} '{stage.name}': learning_rate auto = {value:.3g} (found by the "
                "run's LR sweep)")
