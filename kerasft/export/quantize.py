"""``export.quantize: int8`` for the SavedModel: Keras's post-training weight quantization.

``model.quantize("int8")`` (Keras 3.15) replaces the float kernel of every ``Dense``,
``EinsumDense`` and ``Embedding`` (``ReversibleEmbedding`` included) by an int8 kernel and a
float32 scale per output channel (abs-max), and switches the layer's dtype policy to
``int8_from_float32``: at call time Dense/EinsumDense quantize their inputs per row (abs-max,
dynamic, no calibration) and multiply in integers; the rest of the graph stays float32. Other
layers have no ``quantize`` method and stay float: in a keras.applications CNN that is every
convolution, so only the head's Dense kernel is quantized. kerasft quantizes a float32 copy of
the trained model (rebuilt by :meth:`kerasft.api.FineTuner._serving_model`), never the run's own
model. The serving graph uses ops TF Serving's standard build links (the export's op check runs
as for any export).
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasft.errors import ExportError, expected

# The export of an int8 model against the same model in memory (eager Keras): the graph's
# float rounding differs by ~1e-7 before each dynamic activation quantization, which moves some
# values to the next int8 step; measured 5.6e-3 on MiniLM (6 layers), 3e-8 on a 2-layer BERT.
# Float exports keep kerasft.export.check.TOLERANCE (1e-5).
INT8_TOLERANCE = 0.05
# Below this share of the weights in int8 the export is barely smaller (a CNN): say so.
FEW_QUANTIZED = 0.5
# Keras warns once per layer without a quantize method (Dropout, Conv2D, LayerNormalization...):
# expected for most layers; QuantizeReport.lines() says in one line what was quantized.
_NO_QUANTIZE = r".*does not have a `quantize` method"


@dataclass
class QuantizeReport:
    """What ``int8`` changed: weights (element counts) before, in int8 after, per layer type."""

    mode: str
    total_weights: int
    int8_weights: int
    layers: dict[str, int] = field(default_factory=dict)  # layer class -> quantized count
    max_diff: float | None = None  # vs the float32 model on the export's sample inputs
    examples: int = 0

    @property
    def fraction(self) -> float:
        return self.int8_weights / self.total_weights if self.total_weights else 0.0

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.layers.items())) or "no layer"
        out = [f"quantize int8: {self.fraction:.1%} of the weights in int8 ({kinds}; "
               f"{self.int8_weights:,} of {self.total_weights:,} values)"]
        if self.fraction < FEW_QUANTIZED:
            out.append(f"warning: int8 quantized only {self.fraction:.1%} of the weights: Keras "
                       "quantizes Dense, EinsumDense and Embedding layers, not convolutions, so "
                       "this export is barely smaller; for a CNN use --format tflite "
                       "--quantize int8")
        if self.max_diff is not None:
            out.append(f"quantize int8: max |difference| to the float32 model = "
                       f"{self.max_diff:.2e} on {self.examples} examples")
        return out

    def card_rows(self) -> list[list[Any]]:
        rows: list[list[Any]] = [
            ["quantize", self.mode],
            ["int8 weights", f"{self.fraction:.1%} ({self.int8_weights:,} of "
                             f"{self.total_weights:,} values)"],
            ["int8 layers", ", ".join(f"{n} {k}" for k, n in sorted(self.layers.items()))],
        ]
        if self.max_diff is not None:
            rows.append(["max abs difference to float32",
                         f"{self.max_diff:.2e} on {self.examples} examples"])
        return rows


@contextlib.contextmanager
def _one_gc_collect() -> Iterator[None]:
    """Keras's ``Layer.__delattr__`` runs a full ``gc.collect()`` for every float kernel that
    quantize replaces (keras/src/layers/layer.py): about 0.5 s each in a process holding a
    trained model, 8 s for a 2-layer BERT. One collection at the end frees the same buffers."""
    collect = gc.collect
    gc.collect = lambda *args, **kwargs: 0
    try:
        yield
    finally:
        gc.collect = collect
        gc.collect()


def _size(variable: Any) -> int:
    return int(np.prod(variable.shape)) if variable.shape else 1


def quantize_int8(model: Any) -> QuantizeReport:
    """Quantizes `model` (built, float32) in place with ``model.quantize("int8")``."""
    if not getattr(model, "built", False):
        raise ExportError(expected("a built model to quantize", "model", type(model).__name__))
    total = sum(_size(v) for v in model.weights)
    with warnings.catch_warnings(), _one_gc_collect():
        warnings.filterwarnings("ignore", message=_NO_QUANTIZE)
        model.quantize("int8")
    layers: dict[str, int] = {}
    for layer in model._flatten_layers():
        policy = getattr(layer, "dtype_policy", None)
        if getattr(policy, "quantization_mode", None) == "int8" and \
                len(list(layer._flatten_layers())) == 1:
            name = type(layer).__name__
            layers[name] = layers.get(name, 0) + 1
    int8 = sum(_size(v) for v in model.weights if str(v.dtype) == "int8")
    return QuantizeReport("int8", total, int8, layers)
