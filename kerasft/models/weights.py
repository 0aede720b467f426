"""Model weights files without the optimizer.

Keras's ``save_weights`` writes a compiled model's optimizer variables into the same ``.weights.h5``
(Adam's two moments triple a fine-tuned model's file). kerasft's weights files hold the model
only: ``model.weights.h5`` and ``checkpoints/best.weights.h5`` are what a user loads, and a
checkpoint's optimizer state is kept once, in its ``ckpt-<n>.state.npz``
(kerasft/training/checkpoints.py).
Loading skips the optimizer too, so these files load into a compiled model as well, and files
written by older versions (with an optimizer group) still load.
"""

from __future__ import annotations

import inspect
import os
from typing import Any


def _optimizer(model: Any) -> list[Any]:
    """The optimizers of the model and of its compiled sub-models (a head trained alone on
    cached features has its own)."""
    flatten = getattr(model, "_flatten_layers", None)
    layers = list(flatten(include_self=True, recursive=True)) if flatten else [model]
    found: dict[int, Any] = {}
    for layer in layers:
        optimizer = getattr(layer, "optimizer", None)
        if optimizer is not None:
            found[id(optimizer)] = optimizer
    return list(found.values())


def _saving_lib() -> Any:
    """Keras's weights-only functions with ``objects_to_skip`` (None if this Keras lacks them:
    the plain Model methods are used then)."""
    try:
        from keras.src.saving import saving_lib
    except ImportError:
        return None
    for name in ("save_weights_only", "load_weights_only"):
        fn = getattr(saving_lib, name, None)
        if fn is None or "objects_to_skip" not in inspect.signature(fn).parameters:
            return None
    return saving_lib


def save_model_weights(model: Any, path: str | os.PathLike) -> None:
    """Writes the model's weights (not its optimizer's) to a ``.weights.h5`` file."""
    _weights_only(model, path, "save")


def load_model_weights(model: Any, path: str | os.PathLike) -> None:
    """Loads a ``.weights.h5`` file into the model, leaving its optimizer as it is."""
    _weights_only(model, path, "load")


def _weights_only(model: Any, path: str | os.PathLike, verb: str) -> None:
    lib = _saving_lib()
    if lib is None:  # a Keras without objects_to_skip: the whole model's file
        getattr(model, f"{verb}_weights")(path)
        return
    getattr(lib, f"{verb}_weights_only")(model, str(path), objects_to_skip=_optimizer(model))
