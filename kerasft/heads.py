"""Step 4 of a run: the new head on the backbone's pooled features.

pooled features → optional hidden Dense layers (ReLU) → Dropout → Dense(num_classes) with softmax
(one label per example) or sigmoid (multi-label). L2 regularisation is optional. The output layer
is float32 even under mixed precision, so probabilities stay exact.
"""

from __future__ import annotations

from typing import Any

from kerasft.config import HeadConfig

HEAD_LAYER_PREFIX = "head_"


def build_head(features: Any, num_classes: int, cfg: HeadConfig) -> Any:
    """Returns the probabilities tensor of a new head on `features`."""
    import keras

    regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    x = features
    for i, units in enumerate(cfg.hidden_units):
        x = keras.layers.Dense(
            units, activation="relu", kernel_regularizer=regularizer,
            name=f"{HEAD_LAYER_PREFIX}dense_{i}",
        )(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name=f"{HEAD_LAYER_PREFIX}dropout")(x)
    return keras.layers.Dense(
        num_classes, activation=cfg.activation, kernel_regularizer=regularizer,
        dtype="float32", name=f"{HEAD_LAYER_PREFIX}predictions",
    )(x)


def head_layers(model: Any) -> list[Any]:
    """The classifier's head layers (always trainable)."""
    return [layer for layer in model.layers if layer.name.startswith(HEAD_LAYER_PREFIX)]
