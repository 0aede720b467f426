"""Step 4 of a run: the new head on the backbone's pooled features.

pooled features → optional hidden Dense layers (ReLU) → Dropout → the output layer of the head's
task (:data:`TASK_OUTPUTS`): Dense(num_classes) with softmax (classification: one label per
example), with sigmoid (multi_label), or linear Dense(num_targets) (regression). With
``head.target_scaling: standard`` the regression layer predicts standardised targets and a fixed
``Rescaling`` layer (``* std + mean`` of the training split) maps them back, so the model, its
metrics, ``predict`` and the export all speak the targets' own units. L2 regularisation is
optional. The output layers are float32 even under mixed precision, so probabilities and
values stay exact. ``token_classification``: :func:`build_token_head`, one Dense over every
token state of the backbone's ``sequence_output``.
"""

from __future__ import annotations

import re
from typing import Any

from kerasft.config import HeadConfig, head_task

HEAD_LAYER_PREFIX = "head_"

#: The output layer's activation per ``head.task``.
TASK_OUTPUTS = {"classification": "softmax", "multi_label": "sigmoid", "regression": "linear"}


def build_head(features: Any, num_classes: int, cfg: HeadConfig,
               target_stats: tuple[float, float] | None = None) -> Any:
    """Returns the output tensor of a new head on `features`: probabilities, or (regression)
    ``[batch, num_classes]`` values, rescaled by `target_stats` ``(mean, std)`` when given."""
    import keras

    task = head_task(cfg) or "classification"
    regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    x = features
    for i, units in enumerate(cfg.hidden_units):
        x = keras.layers.Dense(
            units, activation="relu", kernel_regularizer=regularizer,
            name=f"{HEAD_LAYER_PREFIX}dense_{i}",
        )(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name=f"{HEAD_LAYER_PREFIX}dropout")(x)
    out = keras.layers.Dense(
        num_classes, activation=TASK_OUTPUTS[task], kernel_regularizer=regularizer,
        dtype="float32", name=f"{HEAD_LAYER_PREFIX}predictions",
    )(x)
    if task == "regression" and target_stats is not None:
        mean, std = target_stats
        out = keras.layers.Rescaling(std, offset=mean, dtype="float32",
                                     name=f"{HEAD_LAYER_PREFIX}target_scaling")(out)
    return out


def build_head_model(feature_dim: int, num_classes: int, cfg: HeadConfig,
                     target_stats: tuple[float, float] | None = None) -> Any:
    """The head as its own Keras model (features → probabilities or values).

    The classifier calls it on the backbone's features; a stage with a frozen backbone can also
    train it alone on features computed once (``training.cache_features``).
    """
    import keras

    features = keras.Input(shape=(feature_dim,), name="features")
    return keras.Model(features, build_head(features, num_classes, cfg, target_stats),
                       name="head")


def build_token_head(sequence: Any, num_tags: int, cfg: HeadConfig) -> Any:
    """Tag probabilities ``[batch, tokens, num_tags]``: Dropout, then one softmax Dense applied
    to each token state (Keras's Dense maps the last axis, so it is shared over positions)."""
    import keras

    regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    x = sequence
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name=f"{HEAD_LAYER_PREFIX}dropout")(x)
    return keras.layers.Dense(num_tags, activation="softmax", kernel_regularizer=regularizer,
                              dtype="float32", name=f"{HEAD_LAYER_PREFIX}tags")(x)


def keras_model_name(name: str) -> str:
    """The Keras model's name for config ``name``: TensorFlow's root scope names allow fewer
    characters than a run name (no "+", no spaces), and ``fit`` fails on them."""
    return "kerasft_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)
