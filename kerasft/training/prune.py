"""Pruning stages: magnitude pruning of kernels on a sparsity schedule (``stages[].prune``).

TFMOT does not support Keras 3, so kerasft prunes with a callback: after every training step it
multiplies the kernels of the stage's trainable Dense, EinsumDense and convolution layers by
their masks, and every ``frequency`` steps from ``begin_step`` to ``end_step`` it recomputes
each mask so that the kernel's smallest-magnitude fraction ``sparsity(step)`` of weights is
zero. The zeros are in the weights themselves: checkpoints, the run's weights file and the
export hold them, nothing is stripped at export. A resumed stage recomputes its masks from the
restored (already zeroed) kernels at the schedule's step for the resumed epoch: the zeros are the
smallest magnitudes, so it finds the same masks and continues the same schedule.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def target_sparsity(step: int, prune: dict[str, Any], end_step: int) -> float:
    """The schedule's sparsity after `step` steps of the stage."""
    final = float(prune["sparsity"])
    begin = int(prune["begin_step"])
    if step < begin:
        return 0.0
    if prune["schedule"] == "constant":
        return final
    progress = min(1.0, (step - begin) / max(1, end_step - begin))
    return final * (1.0 - (1.0 - progress) ** 3)  # tfmot's PolynomialDecay, power 3


def last_update(step: int, prune: dict[str, Any], end_step: int) -> int:
    """The step of the last mask update at or before `step` (masks change only every
    ``frequency`` steps between ``begin_step`` and `end_step`)."""
    begin, frequency = int(prune["begin_step"]), int(prune["frequency"])
    if step < begin:
        return step
    if step >= end_step:
        return end_step
    return begin + (step - begin) // frequency * frequency


def prunable_kernels(model: Any) -> list[Any]:
    """The kernels (Keras variables) of `model`'s trainable Dense / EinsumDense / Conv layers."""
    import keras

    kinds = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv1D,
             keras.layers.Conv2D, keras.layers.Conv3D)
    trainable = {id(v) for v in model.trainable_weights}
    kernels: dict[int, Any] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, kinds):
            continue
        # `_kernel`: the variable itself where `kernel` is a property (LoRA, quantized layers)
        kernel = getattr(layer, "_kernel", None)
        if kernel is None:
            kernel = getattr(layer, "kernel", None)
        if kernel is not None and id(kernel) in trainable:
            kernels[id(kernel)] = kernel
    return list(kernels.values())


def magnitude_mask(values: np.ndarray, sparsity: float) -> np.ndarray:
    """1 where `values` keep their weight, 0 for the ``round(sparsity * size)`` smallest
    magnitudes (exactly that many, ties broken by position)."""
    flat = np.abs(values).ravel()
    k = int(round(sparsity * flat.size))
    mask = np.ones(flat.size, values.dtype)
    if k > 0:
        mask[np.argpartition(flat, k - 1)[:k]] = 0
    return mask.reshape(values.shape)


def sparsity_of(variables: list[Any]) -> tuple[int, int]:
    """(zero weights, weights) over `variables`."""
    zeros = total = 0
    for v in variables:
        values = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        zeros += int(np.count_nonzero(values == 0))
        total += int(values.size)
    return zeros, total


def pruning_callback_class() -> type:
    import keras

    class MagnitudePruning(keras.callbacks.Callback):
        """Keeps the kernels of `model` at the stage's scheduled sparsity (see module doc).

        `first_epoch`: the stage's first epoch, from which steps are counted (``fit`` may start
        later, on resume); ``state`` receives the kernels and the sparsity reached."""

        def __init__(self, target: Any, prune: dict[str, Any], first_epoch: int,
                     state: dict[str, Any]) -> None:
            super().__init__()
            self.target = target
            self.prune = prune
            self.first_epoch = first_epoch
            self.state = state
            self.kernels = prunable_kernels(target)
            self.masks: list[np.ndarray] = []
            self.epoch = first_epoch
            self.end_step = 1

        def _step(self, batch: int) -> int:
            return (self.epoch - self.first_epoch) * int(self.params.get("steps") or 1) + batch

        def _update(self, step: int) -> None:
            sparsity = target_sparsity(step, self.prune, self.end_step)
            self.masks = [magnitude_mask(k.numpy(), sparsity) for k in self.kernels]
            self.state["sparsity_target"] = sparsity

        def apply(self) -> None:
            for kernel, mask in zip(self.kernels, self.masks):
                kernel.assign(kernel.numpy() * mask)

        def on_train_begin(self, logs: Any = None) -> None:
            steps = int(self.params.get("steps") or 1)
            epochs = int(self.params.get("epochs") or self.first_epoch + 1) - self.first_epoch
            self.end_step = int(self.prune["end_step"] or steps * epochs)
            self.state["kernels"] = self.kernels

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch
            if not self.masks:  # the stage's first step, or the first after a resume
                self._update(last_update(self._step(0), self.prune, self.end_step))
                self.apply()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            step = self._step(batch + 1)
            begin = int(self.prune["begin_step"])
            if begin <= step <= self.end_step and (
                    (step - begin) % int(self.prune["frequency"]) == 0 or step == self.end_step):
                self._update(step)
            self.apply()

        def on_train_end(self, logs: Any = None) -> None:
            self.state["masks"] = self.masks

    return MagnitudePruning


def describe(stage_name: str, state: dict[str, Any]) -> str:
    """The log line at a prune stage's end: kernels and the sparsity they reached."""
    zeros, total = sparsity_of(state.get("kernels", []))
    return (f"stage '{stage_name}': pruned {len(state.get('kernels', []))} kernels to sparsity "
            f"{zeros / max(total, 1):.3f} ({zeros:,} of {total:,} kernel weights zero; "
            f"schedule target {state.get('sparsity_target', 0.0):.3f})")


def reapply(state: dict[str, Any]) -> None:
    """Multiplies the kernels by the last masks again (after restoring best weights from an
    epoch before the schedule's end, the export still has the stage's sparsity)."""
    for kernel, mask in zip(state.get("kernels", []), state.get("masks", [])):
        kernel.assign(kernel.numpy() * mask)
