"""LoRA adapters on a KerasHub backbone: which layers get them, enabling them, merging them.

Keras 3's ``Dense`` / ``EinsumDense`` carry LoRA themselves (``enable_lora(rank, lora_alpha)``
adds ``lora_kernel_a`` / ``lora_kernel_b`` and freezes the kernel; the layer then computes with
``kernel + alpha / rank * a @ b``). KerasHub's ``Backbone.enable_lora(rank, target_layer_names)``
enables that on every layer of the given names, but takes no alpha and cannot limit the adapters
to the top N blocks (every block's projection has the same name), so kerasft enables the layers
itself, with the targets KerasHub picks by default (``backbone.default_lora_layer_names()``: the
attention query / value projections) and the freeze KerasHub applies (everything but the
adapters), plus the biases of the adapted layers, so only the adapters (and the head) train.

:func:`merge_lora` folds the adapters into the kernels and removes them: the layers are plain
again, so a later stage, a weights file and the export see an ordinary model of the original
size.
"""

from __future__ import annotations

from typing import Any

from kerasft.config import ConfigError
from kerasft.errors import expected

LORA_VARIABLES = ("lora_kernel_a", "lora_kernel_b")
_MAX_SHOWN = 8


def _adaptable(layer: Any) -> bool:
    """A Dense / EinsumDense layer (Keras's Embedding has LoRA too, with other variables, which
    merge_lora does not fold)."""
    import keras

    return isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) and bool(
        layer.weights)


def default_targets(network: Any) -> list[str]:
    """The layer names KerasHub gives adapters by default for `network`."""
    return list(network.default_lora_layer_names())


def adapter_units(backbone: Any, lora: dict[str, Any], key: str) -> list[tuple[Any, list[Any]]]:
    """The backbone layers that can hold adapters, bottom to top, each with its Dense /
    EinsumDense sublayers named in ``lora["layers"]`` (default: KerasHub's targets): for BERT,
    the transformer blocks with their ``query`` and ``value`` projections. This is what a LoRA
    stage's ``top_n`` counts (the layers that will train, as a stage without LoRA counts).

    One-line errors: an image backbone (keras.applications or KerasHub: LoRA is for the text
    families here) or a network that is not a KerasHub ``Backbone``, and names that no layer of
    the backbone has (F-Net has no query/value projections).
    """
    network = backbone.network
    if backbone.task != "text" or not hasattr(network, "default_lora_layer_names"):
        raise ConfigError(expected(
            f"a KerasHub text backbone for lora ({backbone.name} is an image backbone; remove "
            "lora from the stage)" if backbone.task != "text" else
            f"a KerasHub text backbone for lora ({backbone.name}'s network has no LoRA "
            "targets; remove lora from the stage)", key, backbone.name))
    names = lora.get("layers") or default_targets(network)
    present = sorted({layer.name for layer in network._flatten_layers(include_self=False)
                      if _adaptable(layer)})
    if not set(names) & set(present):
        shown = ", ".join(present[:_MAX_SHOWN]) + (", ..." if len(present) > _MAX_SHOWN else "")
        raise ConfigError(expected(
            f"layer names present in {backbone.name} (Dense/EinsumDense layers: {shown}); "
            f"set {key}.layers to some of them", f"{key}.layers", names))
    units = []
    for unit in network.layers:
        if unit.name in backbone.unused_layers:
            continue
        targets = [layer for layer in unit._flatten_layers(include_self=True)
                   if layer.name in names and _adaptable(layer)]
        if targets:
            units.append((unit, targets))
    return units


def lora_layers(model: Any) -> list[Any]:
    """The layers of `model` (recursively) that have LoRA enabled."""
    return [layer for layer in model._flatten_layers(include_self=True, recursive=True)
            if getattr(layer, "lora_enabled", False)]


def enable_lora(network: Any, targets: list[Any], lora: dict[str, Any]) -> None:
    """Freezes `network` and gives every layer of `targets` trainable adapters of
    ``lora["rank"]`` scaled by ``lora["alpha"] / rank`` (their kernels and biases stay frozen).
    Takes effect at the next ``compile``. Adapters left from a stage that never ended (a fit
    interrupted in this process) are merged first: Keras enables LoRA once per layer."""
    merge_lora(network)
    network.trainable = True
    for layer in network._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in targets:
        layer.trainable = True
        layer.enable_lora(int(lora["rank"]), lora_alpha=lora["alpha"])
        adapters = {id(getattr(layer, n)) for n in LORA_VARIABLES}
        for v in layer.weights:
            v.trainable = id(v) in adapters


def adapter_params(model: Any) -> int:
    """Number of adapter parameters in `model`."""
    import math

    return int(sum(math.prod(getattr(layer, n).shape) for layer in lora_layers(model)
                   for n in LORA_VARIABLES))


def merge_lora(model: Any) -> int:
    """Folds every LoRA adapter of `model` into its layer's kernel
    (``kernel += alpha / rank * a @ b``, in the kernel's dtype) and removes the adapters, so the
    layers compute and save as plain layers. Returns how many layers were merged."""
    from keras import ops

    layers = lora_layers(model)
    for layer in layers:
        kernel = layer._kernel
        delta = (layer.lora_alpha / layer.lora_rank) * ops.matmul(
            ops.cast(layer.lora_kernel_a, "float32"), ops.cast(layer.lora_kernel_b, "float32"))
        kernel.assign(ops.cast(ops.add(ops.cast(kernel, "float32"), delta), kernel.dtype))
        for name in LORA_VARIABLES:
            delattr(layer, name)  # Keras untracks a deleted variable attribute
        layer.lora_enabled = False
        layer.lora_rank = None
        layer.lora_alpha = None
        # enable_lora froze the kernel and bias under a trainable layer; Keras's `trainable`
        # setter skips a layer whose flag does not change, so later stages could never unfreeze
        # them: give the variables the layer's flag back.
        for v in layer.weights:
            v.trainable = layer.trainable
    return len(layers)
