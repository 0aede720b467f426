"""Step 3 of a run: the pretrained backbone, from one registry.

Each backbone is plain data (a :class:`~kerasft.models.backbone.BackboneEntry`: name, task,
default input size, how to build it) plus one registration, as in KerasHub's presets and timm's
model registry; every entry is built through the same keywords. Importing this module registers
the built-in entries:

- kerasft/models/keras_applications.py: every ``keras.applications`` model.
- kerasft/models/keras_hub.py: every KerasHub text family with a text-classifier task
  (``bert``, ``distil_bert``, ``roberta``, ... one data table, one builder) and ``auto``.
- kerasft/models/keras_hub_images.py: ``hub_vit``, ``hub_resnet``, ... (KerasHub image families).

To add a backbone, write a builder ``(BackboneConfig, pooling) -> Backbone`` (an image network is
called through :func:`kerasft.models.layers.call_in_inference_mode`) and pass its entry to
:func:`register_backbone`; tests/tiny_backbone.py is a small example.
"""

from __future__ import annotations

from typing import Any

from kerasft.config import BACKBONE_WEIGHTS, BackboneConfig, ConfigError
from kerasft.errors import expected
from kerasft.models.backbone import Backbone, BackboneEntry, check_weights_file
from kerasft.models.keras_applications import KERAS_APPLICATION_ENTRIES
from kerasft.models.keras_hub import KERAS_HUB_ENTRIES
from kerasft.models.keras_hub_images import KERAS_HUB_IMAGE_ENTRIES

_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> None:
    """Adds `entry` to the registry (a later entry of the same name replaces it)."""
    _REGISTRY[entry.name] = entry


for _entry in (*KERAS_APPLICATION_ENTRIES, *KERAS_HUB_ENTRIES, *KERAS_HUB_IMAGE_ENTRIES):
    register_backbone(_entry)


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> BackboneEntry:
    """Returns the registry entry; an unknown name lists the valid ones."""
    key = name.lower()
    if key not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(key, backbone_names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            expected(f"a registered backbone ({', '.join(backbone_names())})", "backbone.name",
                     name) + hint
        )
    return _REGISTRY[key]


def build_backbone(cfg: BackboneConfig, pooling: str = "auto", segments: int = 1) -> Backbone:
    """Builds the backbone named by ``cfg.name`` with pooled features (`pooling`); `segments` 2
    builds a text backbone for sentence pairs (``data.text_column: [a, b]``)."""
    entry = get_entry(cfg.name)
    if segments != 1 and entry.task != "text":
        raise ConfigError(expected("a text backbone for a pair of text columns",
                                   "backbone.name", cfg.name))
    if cfg.weights not in BACKBONE_WEIGHTS:
        check_weights_file(cfg.weights)  # for every entry, before it builds anything
    if cfg.num_layers is not None and entry.task != "text":
        raise ConfigError(expected("a text (KerasHub transformer) backbone with "
                                   "backbone.num_layers", "backbone.name", cfg.name))
    if segments != 1:  # only text builders take it
        return entry.build(cfg, pooling, segments=segments)
    return entry.build(cfg, pooling)


def list_backbones() -> list[dict[str, Any]]:
    """Rows for ``kerasft backbones``: name, task, default input size, parameters, source."""
    rows = []
    for name in backbone_names():
        entry = _REGISTRY[name]
        rows.append({
            "name": name,
            "task": entry.task,
            "input": f"{entry.default_size}x{entry.default_size}" if entry.default_size
            else "sequence",
            "parameters": entry.params,
            "source": entry.description,
        })
    return rows
