"""What a backbone is: its registry entry, the built :class:`Backbone`, and what every builder
shares (the ``.weights.h5`` check, the switch of its BatchNorm call mode).

An entry is plain data (name, task, default input size, how to build it), as in KerasHub's
presets; the built :class:`Backbone` carries its own data config (input size or sequence
length, and the preprocessing function), so the data pipeline and the export never hard-code a
backbone (the pattern of timm's ``pretrained_cfg``). The builders
(kerasft/models/keras_applications.py, kerasft/models/keras_hub.py) import this module and the
registry (kerasft/models/registry.py) imports them, so nothing here imports the registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kerasft.config import ConfigError
from kerasft.errors import expected
from kerasft.io import resolve_pkg_path
from kerasft.models.layers import mode_layers


@dataclass(frozen=True)
class BackboneEntry:
    """What the registry knows about a backbone before building it."""

    name: str
    task: str  # "image" | "text"
    build: Callable[..., Backbone]  # (cfg, pooling[, segments=2 for text pairs])
    default_size: int | None = None
    min_size: int | None = None
    params: int | None = None  # parameters without the classification top, at default size
    description: str = ""


@dataclass
class Backbone:
    """A built backbone: the Keras network, its inputs and pooled features, and its data config.

    Attributes:
        name: registry name.
        task: "image" or "text".
        network: the pretrained Keras model (a ``keras.applications`` model or KerasHub's
            text backbone such as ``BertBackbone``); stages freeze and unfreeze its layers.
        inputs: Keras inputs of the classifier (one tensor for images, a dict for text).
        features: pooled feature tensor the head is built on.
        preprocess: batch function raw inputs → model inputs, used by tf.data and by the export
            (float32 images 0..255 at ``image_size`` for images, a 1-D string tensor for text).
        image_size: (height, width) images are resized to, for images.
        sequence_length: token sequence length, for text.
        segments: texts per example, for text: 1, or 2 for sentence pairs (``preprocess`` then
            takes ``[batch, 2]`` strings and the export's ``serving_default`` two inputs,
            :data:`kerasft.config.PAIR_INPUTS`).
        unused_layers: layers of `network` whose output the features do not use (e.g. BERT's
            pooler under mean pooling); stages never unfreeze them.
        sequence: the per-token states ``[batch, tokens, hidden]`` of a text backbone (what a
            token-classification head is built on).
        info: plain facts for the log, the model card and ``kerasft backbones``.
    """

    name: str
    task: str
    network: Any
    inputs: Any
    features: Any
    preprocess: Callable[[Any], Any]
    image_size: tuple[int, int] | None = None
    sequence_length: int | None = None
    segments: int = 1
    preprocessor: Any = None
    unused_layers: list[str] = field(default_factory=list)
    sequence: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    _mode_layers: list[Any] | None = field(default=None, init=False, repr=False)

    @property
    def mode_layers(self) -> list[Any]:
        """The layers that decide the network's call mode (``InferenceModeCall``); found from
        the graph, so a registered builder only has to use
        :func:`kerasft.models.layers.call_in_inference_mode`."""
        if self._mode_layers is None:
            import keras

            self._mode_layers = mode_layers(keras.Model(self.inputs, self.features))
        return self._mode_layers


def set_batch_statistics(backbone: Backbone, enabled: bool) -> None:
    """Runs `backbone`'s network in training mode during ``fit`` (`enabled`) or always in
    inference mode; takes effect at the next ``compile``."""
    for layer in backbone.mode_layers:
        layer.batch_statistics = enabled


def check_weights_file(path: str) -> str:
    """The local path of a ``backbone.weights`` file (``pkg://`` resolved); a one-line error if
    it does not exist."""
    path = resolve_pkg_path(path, "backbone.weights")
    if not os.path.isfile(path):
        raise ConfigError(expected("an existing .weights.h5 file", "backbone.weights", path))
    return path
