"""kerasft: fine-tune Keras applications and KerasHub BERT in stages, export for TF Serving."""

from __future__ import annotations

from typing import Any

from kerasft._version import __version__

__all__ = ["__version__", "build_finetuner"]


def build_finetuner(config: Any = None, **overrides: Any) -> Any:
    """Builds a :class:`kerasft.api.FineTuner` (imported lazily: TensorFlow loads on first use)."""
    from kerasft.api import build_finetuner as _build

    return _build(config, **overrides)
