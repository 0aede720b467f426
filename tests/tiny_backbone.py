"""A 2-conv backbone with BatchNormalization, registered like any keras.applications entry.

It keeps the stage tests fast while exercising the same registry, freezing and BN code paths as
ResNet50 (which a slower test also covers).
"""

from __future__ import annotations

from typing import Any

from kerasft.config import BackboneConfig
from kerasft.models.backbone import Backbone, BackboneEntry
from kerasft.models.layers import call_in_inference_mode
from kerasft.models.registry import register_backbone


def _build_tiny_cnn(cfg: BackboneConfig, pooling: str) -> Backbone:
    import keras

    size = tuple(cfg.input_shape[:2]) if cfg.input_shape else (16, 16)
    inp = keras.Input(shape=(*size, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Activation("relu", name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.Activation("relu", name="relu2")(x)
    network = keras.Model(inp, x, name="tiny_cnn")
    if cfg.weights not in ("none", "pretrained", "imagenet"):
        network.load_weights(cfg.weights)
    inputs = keras.Input(shape=(*size, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(
        call_in_inference_mode(network, inputs))

    def preprocess(images: Any) -> Any:
        return images / 127.5 - 1.0

    return Backbone(name="tiny_cnn", task="image", network=network, inputs=inputs,
                    features=features, preprocess=preprocess, image_size=size,
                    info={"architecture": "tiny_cnn", "pooling": "avg",
                          "parameters": int(network.count_params())})


def register_tiny_cnn() -> None:
    register_backbone(BackboneEntry(name="tiny_cnn", task="image", build=_build_tiny_cnn,
                                    default_size=16, min_size=8,
                                    description="test backbone (2 conv + BN)"))
