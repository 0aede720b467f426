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


def build_head_model(feature_dim: int, num_classes: int, cfg: HeadConfig) -> Any:
    """The head as its own Keras model (features → probabilities).

    The classifier calls it on the backbone's features; a stage with a frozen backbone can also
    train it alone on features computed once (``training.cache_features``).
    """
    import keras

    features = keras.Input(shape=(feature_dim,), name="features")
    return keras.Model(features, build_head(features, num_classes, cfg), name="head")
