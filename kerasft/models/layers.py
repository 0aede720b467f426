"""The backbone layers stages work on: the inference-mode wrapper and the layers ``top_n`` counts.

An image backbone's network is called through ``InferenceModeCall`` (see
:func:`call_in_inference_mode`), so BatchNormalization keeps its moving statistics unless a stage
with ``batch_norm: train`` switches the wrapper (``set_batch_statistics`` in
kerasft/models/backbone.py finds the wrappers with :func:`mode_layers`). :func:`unfreeze_units`
lists the layers a stage can unfreeze.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _inference_mode_class() -> type:
    import keras

    @keras.saving.register_keras_serializable(package="kerasft")
    class InferenceModeCall(keras.layers.Layer):
        """Calls the wrapped network in inference mode, unless a stage asks for batch statistics.

        Keras 3 functional models replace an explicit ``training=False`` of a nested call with
        the outer ``training`` value, so ``network(x, training=False)`` alone does not keep
        BatchNormalization in inference mode during ``fit``. This layer does while
        ``batch_statistics`` is False (``batch_norm: frozen``). With ``batch_statistics`` True
        (``batch_norm: train``) it passes the outer ``training`` on: ``fit`` runs the network in
        training mode (trainable BN layers normalise with batch moments and update their moving
        statistics), while ``evaluate``, ``predict`` and the export, which call with
        ``training=False``, still run it in inference mode. The flag is read when Keras traces
        the train function, so it takes effect at the next ``compile`` (every stage compiles).
        """

        def __init__(self, network: Any, batch_statistics: bool = False, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.network = network
            self.batch_statistics = bool(batch_statistics)

        def call(self, inputs: Any, training: bool | None = None) -> Any:
            return self.network(inputs, training=bool(training) and self.batch_statistics)

        def compute_output_spec(self, inputs: Any, training: bool | None = None) -> Any:
            return self.network.compute_output_spec(inputs)

        def get_config(self) -> dict[str, Any]:
            # The wrapped network is the constructor argument (TensorBoard's graph, model JSON).
            return {**super().get_config(),
                    "network": keras.saving.serialize_keras_object(self.network),
                    "batch_statistics": self.batch_statistics}

        @classmethod
        def from_config(cls, config: dict[str, Any]) -> Any:
            config = dict(config)
            config["network"] = keras.saving.deserialize_keras_object(config["network"])
            return cls(**config)

    return InferenceModeCall


def call_in_inference_mode(network: Any, inputs: Any) -> Any:
    """``network(inputs)`` with BatchNormalization (and dropout) in inference mode, as in Keras's
    transfer-learning guide: moving statistics are never updated by fine-tuning. A stage with
    ``batch_norm: train`` switches the wrapping layer
    (see :func:`kerasft.models.backbone.set_batch_statistics`)."""
    return _inference_mode_class()(network, name=f"{network.name}_inference")(inputs)


def mode_layers(model: Any) -> list[Any]:
    """The InferenceModeCall layers among `model`'s own layers (one per image backbone; none
    for BERT, whose network is called directly)."""
    cls = _inference_mode_class()
    return [layer for layer in model.layers if isinstance(layer, cls)]


def unfreeze_units(network: Any) -> list[Any]:
    """The backbone's layers that own weights, bottom to top: what ``top_n`` counts."""
    units = []
    for layer in network.layers:
        if layer.weights:
            units.append(layer)
    return units
