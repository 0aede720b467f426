"""Per-variable learning rates: ``layer_lr_decay`` and ``lr_multipliers`` of a stage.

One Keras optimizer per stage, whose ``update_step`` multiplies the learning rate it is given by
the variable's multiplier (and applies decoupled weight decay with that same rate). Why not
``keras.optimizers.MultiOptimizer`` (Keras 3.15): it has no ``learning_rate`` (history.csv's LR
column and warmup/decay schedules read it), refuses a LossScaleOptimizer inside it (mixed
float16 wraps the whole optimizer), splits ``clipnorm`` and gradient accumulation per group and
names its state per sub-optimizer (resume matches optimizer variables by path). Why not
gradient scaling: Adam's update is invariant to the scale of the gradient, so only a rate that
really differs per variable gives Adam/AdamW layer-wise rates.

Blocks for ``layer_lr_decay``: the backbone layers with weights (what ``kerasft backbones
--layers`` lists), bottom to top, grouped into runs of layers whose names share their first
number (``conv5_block1_1_conv`` .. ``conv5_block3_3_bn`` -> ``conv5``; ``block5_conv1`` ->
``block5``; ``transformer_layer_3``). A layer without a number joins the block below it; the
layers below the first numbered block (BERT's embeddings, EfficientNet's stem) form the lowest
group. With K numbered blocks the top block gets LR x decay, the next x decay^2, the lowest group
x decay^(K+1) (counted as ELECTRA / BEiT do); the head's variables get the stage's full LR.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from kerasft.config import ConfigError, StageConfig
from kerasft.errors import expected

_NUMBER = re.compile(r"^(\D*?)(\d+)")
STEM = "embeddings/stem"


def backbone_blocks(layers: list[Any]) -> list[tuple[str, list[Any]]]:
    """``(block name, layers)`` bottom to top for `layers` (bottom to top), the lowest group
    (layers below the first numbered block) first when there is one. A block is a run of
    layers whose names have the same first number (``conv1`` and ``bn1``; ``conv5_block1_*``
    .. ``conv5_block3_*``); it is named by its first layer's name up to that number."""
    blocks: list[tuple[str, list[Any]]] = []
    current: str | None = None
    for layer in layers:
        match = _NUMBER.match(layer.name)
        number = match.group(2) if match else None
        if not blocks or (number is not None and number != current):
            blocks.append((match.group(0) if match else STEM, [layer]))
            current = number
        else:
            blocks[-1][1].append(layer)
    return blocks


def stage_multipliers(model: Any, backbone: Any, stage: StageConfig,
                      key: str = "stage") -> tuple[dict[int, float], list[str]]:
    """``(id(variable) -> multiplier, summary)`` for `stage`: empty without ``layer_lr_decay``
    and ``lr_multipliers``. The summary names each block's factor (for the stage's log line)."""
    from kerasft.models.layers import unfreeze_units

    mults: dict[int, float] = {}
    summary: list[str] = []
    decay = stage.layer_lr_decay
    if decay is not None and decay != 1.0:
        blocks = backbone_blocks(unfreeze_units(backbone.network))
        numbered = [b for b in blocks if b[0] != STEM]
        if not numbered:
            raise ConfigError(expected(
                f"a backbone whose layer names number its blocks (conv5_, block5_, "
                f"transformer_layer_3; {backbone.name}'s do not)", f"{key}.layer_lr_decay",
                decay))
        depth = len(blocks)  # the lowest group: K + 1 with a stem, K without
        for name, layers in blocks:
            factor = decay ** depth
            for layer in layers:
                for v in layer.weights:
                    mults[id(v)] = factor
            summary.append(f"{name} x{factor:.3g}")
            depth -= 1
        summary = ["head x1", *reversed(summary)]
    patterns = stage.lr_multipliers or {}
    if patterns:
        compiled = [(p, re.compile(p), float(m)) for p, m in patterns.items()]
        matched = {p: 0 for p in patterns}
        for v in model.weights:
            for p, regex, m in compiled:
                if regex.search(v.path):
                    mults[id(v)] = mults.get(id(v), 1.0) * m
                    matched[p] += 1
                    break
        for p, count in matched.items():
            if not count:
                raise ConfigError(expected(
                    "a regular expression matching at least one variable path of the model "
                    "(e.g. conv1/kernel, transformer_layer_0/self_attention/query/kernel)",
                    f"{key}.lr_multipliers[{p!r}]", p))
        summary += [f"/{p}/ x{m:g} ({matched[p]} variables)" for p, _, m in compiled]
    return mults, summary


@functools.cache
def _mixin() -> type:
    class LayerwiseLR:
        """Scales the learning rate of each variable's update (and of its weight decay)."""

        def set_lr_multipliers(self, multipliers: dict[int, float]) -> None:
            self._kerasft_mults_by_id = dict(multipliers)

        def build(self, var_list: list[Any]) -> None:
            super().build(var_list)
            by_id = getattr(self, "_kerasft_mults_by_id", {})
            self._kerasft_mults = [float(by_id.get(id(v), 1.0)) for v in var_list]

        def _apply_weight_decay(self, variables: Any) -> None:
            return None  # applied in update_step, at the variable's own rate

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
            from keras import ops

            mult = self._kerasft_mults[self._get_variable_index(variable)]
            lr = ops.cast(learning_rate, variable.dtype)
            if mult != 1.0:
                lr = lr * ops.cast(mult, variable.dtype)
            if self.weight_decay is not None and self._use_weight_decay(variable):
                wd = ops.cast(self.weight_decay, variable.dtype)
                self.assign_sub(variable, variable * wd * lr)
            return super().update_step(gradient, variable, lr)

    return LayerwiseLR


@functools.cache
def layerwise_class(base: type) -> type:
    """`base` (a Keras optimizer class) with per-variable learning-rate multipliers."""
    import keras

    cls = type(f"Layerwise{base.__name__}", (_mixin(), base), {})
    return keras.saving.register_keras_serializable(package="kerasft")(cls)
