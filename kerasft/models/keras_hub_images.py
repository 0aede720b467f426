"""KerasHub image backbones (``hub_vit``, ``hub_deit``, ``hub_dinov2``, ``hub_swin``,
``hub_resnet``, ``hub_efficientnet``, ``hub_mobilenet_v3``): a family table and one builder.

Each family loads from a KerasHub preset name, a local KerasHub preset directory, ``pkg://``, or
(for the families KerasHub 0.32 converts from Hugging Face: ViT, DeiT, DINOv2, Swin) a Hugging
Face-format directory. The preprocessing and the input size come from the preset: its
``ImageConverter`` (``image_converter.json``: image size, scale and offset) or, for a Hugging
Face directory, its ``preprocessor_config.json`` (mean, std, rescale factor, size), so neither
the data pipeline nor the export hard-codes them. The pooled features are what the family's
KerasHub ``*ImageClassifier`` pools: the class token for ViT and DeiT (and DINOv2, which has no
classifier in KerasHub), the mean of the tokens for Swin, global average pooling for the CNNs.
The network is called through :func:`~kerasft.models.layers.call_in_inference_mode`, so the
BatchNorm of ResNet, EfficientNet and MobileNetV3 follows a stage's ``batch_norm`` as
``keras.applications`` networks do.

:data:`KERAS_HUB_IMAGE_ENTRIES` is what kerasft/models/registry.py registers (this module does
not import the registry, which imports it). :func:`image_family_of_preset` names the family of
a preset; :func:`resolve_auto_image` turns ``backbone.name: auto`` with an image preset into it.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerasft.config import BACKBONE_WEIGHTS, BackboneConfig, ConfigError
from kerasft.errors import KerasftError, expected
from kerasft.io import resolve_pkg_path
from kerasft.models.backbone import Backbone, BackboneEntry, check_weights_file
from kerasft.models.layers import call_in_inference_mode


@dataclass(frozen=True)
class HubImageFamily:
    """One KerasHub image family: its backbone class and what its classifier pools."""

    name: str  # registry name
    backbone_class: str  # attribute of keras_hub.models
    pooling: str  # "cls" (class token), "tokens" (mean of tokens) or "avg" (2-D global average)
    hf_model_types: tuple[str, ...] = ()  # Hugging Face model_type values KerasHub converts
    resizable: bool = True  # backbone.input_shape may differ from the preset's image size
    min_size: int | None = 32
    description: str = ""


HUB_IMAGE_FAMILIES: dict[str, HubImageFamily] = {f.name: f for f in (
    HubImageFamily("hub_vit", "ViTBackbone", "cls", ("vit",), resizable=False, min_size=None,
                   description="KerasHub ViTBackbone (class token)"),
    HubImageFamily("hub_deit", "DeiTBackbone", "cls", ("deit",), resizable=False, min_size=None,
                   description="KerasHub DeiTBackbone (class token)"),
    HubImageFamily("hub_dinov2", "DINOV2Backbone", "cls", ("dinov2", "dinov2_with_registers"),
                   min_size=None, description="KerasHub DINOV2Backbone (class token)"),
    HubImageFamily("hub_swin", "SwinTransformerBackbone", "tokens", ("swin",), resizable=False,
                   min_size=None, description="KerasHub SwinTransformerBackbone (token mean)"),
    HubImageFamily("hub_resnet", "ResNetBackbone", "avg",
                   description="KerasHub ResNetBackbone: ResNet, v2, vd (global average)"),
    HubImageFamily("hub_efficientnet", "EfficientNetBackbone", "avg",
                   description="KerasHub EfficientNetBackbone (global average)"),
    HubImageFamily("hub_mobilenet_v3", "MobileNetBackbone", "avg",
                   description="KerasHub MobileNetBackbone, MobileNetV3 (global average)"),
)}
# What `kerasft backbones` shows as the input size: the presets' usual size (each preset's own
# ImageConverter decides at build time).
TYPICAL_SIZE = 224
HF_PREPROCESSOR_FILE = "preprocessor_config.json"


def _is_path(preset: str) -> bool:
    path = resolve_pkg_path(preset, "backbone.preset")
    return preset.startswith("pkg://") or os.path.isabs(path) or os.path.exists(path) or (
        os.sep in preset or preset.startswith("."))


def _read_config(root: Path) -> dict[str, Any]:
    config_file = root / "config.json"
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config_file}: expected valid JSON. Received: {e}") from None


def _family_of_config(config: dict[str, Any]) -> str | None:
    if "model_type" in config:
        return next((f.name for f in HUB_IMAGE_FAMILIES.values()
                     if config["model_type"] in f.hf_model_types), None)
    class_name = str(config.get("class_name", ""))
    return next((f.name for f in HUB_IMAGE_FAMILIES.values() if f.backbone_class == class_name),
                None)


def image_family_of_preset(path: str) -> str | None:
    """The ``hub_`` family of a preset (directory, ``pkg://`` or KerasHub preset name), read
    from its ``config.json`` (``class_name`` or Hugging Face ``model_type``); None when it is
    not a KerasHub image preset (a text preset, a missing directory, an unknown name)."""
    if _is_path(path):
        root = Path(resolve_pkg_path(path, "backbone.preset"))
        if not (root / "config.json").is_file():
            return None
        return _family_of_config(_read_config(root))
    import keras_hub

    return next((f.name for f in HUB_IMAGE_FAMILIES.values()
                 if path in getattr(keras_hub.models, f.backbone_class).presets), None)


def resolve_auto_image(cfg: BackboneConfig) -> bool:
    """``backbone.name: auto`` with an image preset: sets ``cfg.name`` to its family and returns
    True; leaves anything else as it is (False)."""
    if cfg.name.lower() != "auto" or not cfg.preset:
        return False
    family = image_family_of_preset(cfg.preset)
    if family is None:
        return False
    cfg.name = family
    return True


def describe_image_preset(preset: str, family: HubImageFamily,
                          weights: str = "pretrained") -> dict[str, Any]:
    """Checks that `preset` is a preset of `family` without loading it.

    Returns ``{"kind": "kerashub_dir" | "hf_dir" | "kerashub_name", "path": ...}``; a preset of
    another family, a directory missing a file or an unknown name is a one-line error.
    """
    if _is_path(preset):
        root = Path(resolve_pkg_path(preset, "backbone.preset"))
        if not root.is_dir():
            raise ConfigError(expected("an existing preset directory", "backbone.preset", preset))
        if not (root / "config.json").is_file():
            raise ConfigError(expected("a KerasHub preset or Hugging Face directory with "
                                       "config.json", "backbone.preset", preset))
        config = _read_config(root)
        found = _family_of_config(config)
        hf = "model_type" in config
        if found != family.name:
            what = (f"model_type {config['model_type']!r}" if hf
                    else f"class_name {config.get('class_name')!r}")
            hint = f" (that is backbone.name: {found})" if found else ""
            raise ConfigError(
                expected(f"a preset of {family.name} ({family.backbone_class}"
                         + (f", Hugging Face model_type {'/'.join(family.hf_model_types)}"
                            if family.hf_model_types else "") + ")",
                         "backbone.preset", preset) + f", whose config.json has {what}{hint}"
            )
        # The weights files are needed only when the preset's weights load.
        if hf:
            needed = [(HF_PREPROCESSOR_FILE,)]
            weight_files = ("model.safetensors", "model.safetensors.index.json")
        else:
            needed = [("image_converter.json",)]
            weight_files = ("model.weights.h5", "model.weights.json")
        if weights in BACKBONE_WEIGHTS and weights != "none":
            needed.append(weight_files)
        missing = [names[0] for names in needed if not any((root / f).is_file() for f in names)]
        if missing:
            kind = "Hugging Face" if hf else "KerasHub"
            raise ConfigError(expected(f"a {kind} {family.name} directory with "
                                       f"{', '.join(missing)}",
                                       "backbone.preset", preset))
        return {"kind": "hf_dir" if hf else "kerashub_dir", "path": str(root)}
    import keras_hub

    names = sorted(getattr(keras_hub.models, family.backbone_class).presets)
    if preset not in names:
        other = image_family_of_preset(preset)
        hint = f" ('{preset}' is a preset of {other})" if other else ""
        raise ConfigError(
            expected(f"a KerasHub {family.backbone_class} preset name ({', '.join(names)}) or a "
                     "directory", "backbone.preset", preset) + hint
        )
    return {"kind": "kerashub_name", "path": preset}


def _hf_converter_config(root: Path) -> dict[str, Any]:
    """image_size, scale, offset from a Hugging Face ``preprocessor_config.json`` (the formula
    of KerasHub's Swin converter, which the ViT, DeiT and DINOv2 converters lack)."""
    where = root / HF_PREPROCESSOR_FILE
    try:
        config = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: expected valid JSON. Received: {e}") from None
    rescale = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0
    if config.get("do_normalize", True):
        mean = config.get("image_mean", [0.5, 0.5, 0.5])
        std = config.get("image_std", [0.5, 0.5, 0.5])
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    size = config.get("crop_size") if config.get("do_center_crop") else config.get("size")
    if isinstance(size, dict):
        size = (size.get("height"), size.get("width")) if "height" in size else (
            size.get("shortest_edge"), size.get("shortest_edge"))
    elif size is not None:
        size = (int(size), int(size))
    return {"image_size": tuple(size) if size and None not in size else None,
            "scale": [rescale / s for s in std],
            "offset": [-m / s for m, s in zip(mean, std)]}


def _converter_config(source: dict[str, Any], preset: str) -> dict[str, Any]:
    if source["kind"] == "hf_dir":
        return _hf_converter_config(Path(source["path"]))
    import keras_hub

    converter = keras_hub.layers.ImageConverter.from_preset(source["path"])
    if converter is None:
        raise ConfigError(expected("a preset with an ImageConverter (its preprocessing)",
                                   "backbone.preset", preset))
    return {"image_size": converter.image_size, "scale": converter.scale,
            "offset": converter.offset}


def _load_network(family: HubImageFamily, source: dict[str, Any], cfg: BackboneConfig,
                  **kwargs: Any) -> Any:
    import keras
    import keras_hub

    cls = getattr(keras_hub.models, family.backbone_class)
    # A .weights.h5 file (loaded after) or none: the preset's architecture, random weights.
    load_weights = cfg.weights in BACKBONE_WEIGHTS and cfg.weights != "none"
    try:
        # The global policy (kerasft's training.mixed_precision), as keras.applications gets it,
        # rather than the dtype the preset was saved with.
        return cls.from_preset(source["path"], load_weights=load_weights,
                               dtype=keras.config.dtype_policy().name, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KerasftError(
            f"backbone.preset: expected a loadable {family.backbone_class} preset. Received: "
            f"{cfg.preset} ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from e
    except Exception as e:  # noqa: BLE001 - network errors of preset downloads are one line.
        if source["kind"] == "kerashub_name":
            raise KerasftError(
                f"backbone.preset: expected to download the KerasHub preset '{cfg.preset}', which "
                "needs internet access (or give a local preset directory). "
                f"Received: error={str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        raise


@functools.cache
def class_token_class() -> type:
    """The ``ClassToken`` Keras layer class: the first token of a (batch, tokens, dim) output,
    as ``ViTImageClassifier(pooling="token")`` takes it (defined on first use: keeps Keras out
    of ``import kerasft.models.keras_hub_images``)."""
    import keras

    @keras.saving.register_keras_serializable(package="kerasft")
    class ClassToken(keras.layers.Layer):
        def call(self, sequence: Any) -> Any:
            return sequence[:, 0]

        def compute_output_shape(self, input_shape: Any) -> Any:
            return (input_shape[0], input_shape[-1])

    return ClassToken


def _pool(family: HubImageFamily, x: Any, pooling: str) -> tuple[Any, str]:
    import keras

    token_family = family.pooling in ("cls", "tokens")
    choices = {"cls": ("auto", "cls", "avg", "mean"), "tokens": ("auto", "avg", "mean", "max"),
               "avg": ("auto", "avg", "mean", "max")}[family.pooling]
    if pooling not in choices:
        raise ConfigError(expected(f"{', '.join(choices)} for {family.name}", "head.pooling",
                                   pooling))
    kind = family.pooling if pooling == "auto" else pooling
    if kind == "cls":
        return class_token_class()(name="cls_pool")(x), "cls"
    if kind == "max":
        layer = keras.layers.GlobalMaxPooling1D if token_family else keras.layers.GlobalMaxPooling2D
        return layer(name="max_pool")(x), "max"
    layer = (keras.layers.GlobalAveragePooling1D if token_family
             else keras.layers.GlobalAveragePooling2D)
    return layer(name="avg_pool")(x), "avg"


def _build_hub_image(cfg: BackboneConfig, pooling: str) -> Backbone:
    family = HUB_IMAGE_FAMILIES[cfg.name.lower()]
    if not cfg.preset:
        raise ConfigError(expected(f"a preset (name, directory or pkg://) for {family.name}",
                                   "backbone.preset", cfg.preset))
    source = describe_image_preset(cfg.preset, family, cfg.weights)
    weights_path = None if cfg.weights in BACKBONE_WEIGHTS else check_weights_file(cfg.weights)
    import keras
    import numpy as np
    import tensorflow as tf

    converter = _converter_config(source, cfg.preset)
    kwargs: dict[str, Any] = {}
    if cfg.input_shape is not None and family.name == "hub_dinov2":
        # DINOv2 interpolates its position embeddings to the image shape it is built with.
        kwargs["image_shape"] = tuple(int(v) for v in cfg.input_shape)
    network = _load_network(family, source, cfg, **kwargs)
    if weights_path:
        try:
            network.load_weights(weights_path)
        except ValueError as e:
            raise KerasftError(f"backbone.weights: expected weights saved from this "
                               f"{family.backbone_class} preset. Received: {weights_path} "
                               f"({str(e).splitlines()[0]})") from e
    network_input = keras.tree.flatten(network.input)[0]
    fixed = tuple(network_input.shape[1:3])
    if None not in fixed:
        size = (int(fixed[0]), int(fixed[1]))
        if cfg.input_shape is not None and tuple(cfg.input_shape[:2]) != size:
            raise ConfigError(expected(f"the preset's input size [{size[0]}, {size[1]}, 3] for "
                                       f"{family.name} (its position embeddings are fixed)",
                                       "backbone.input_shape", cfg.input_shape))
    elif cfg.input_shape is not None:
        from kerasft.models.keras_applications import image_size

        size = image_size(cfg, family.name, TYPICAL_SIZE, family.min_size or 1)
    else:
        size = tuple(int(v) for v in (converter["image_size"] or (TYPICAL_SIZE, TYPICAL_SIZE)))

    inputs = keras.Input(shape=(*size, 3), name="image")
    # DINOv2's functional input is a dict ({"images": ...}): call it with that structure.
    x = call_in_inference_mode(
        network, {"images": inputs} if isinstance(network.input, dict) else inputs)
    features, pooled = _pool(family, x, pooling)
    scale, offset = converter["scale"], converter["offset"]
    scale = None if scale is None else tf.constant(np.asarray(scale, "float32"))
    offset = None if offset is None else tf.constant(np.asarray(offset, "float32"))

    def preprocess(images: Any) -> Any:
        # ImageConverter's arithmetic on pixels already at `size` (the pipeline resized them).
        x = tf.cast(images, tf.float32)
        if scale is not None:
            x = x * scale
        if offset is not None:
            x = x + offset
        return x

    return Backbone(
        name=family.name,
        task="image",
        network=network,
        inputs=inputs,
        features=features,
        preprocess=preprocess,
        image_size=size,
        info={"architecture": family.backbone_class, "preset": cfg.preset,
              "preset_kind": source["kind"], "weights": cfg.weights,
              "input_size": list(size), "pooling": pooled,
              "scale": None if scale is None else np.asarray(scale).tolist(),
              "offset": None if offset is None else np.asarray(offset).tolist(),
              "parameters": int(network.count_params())},
    )


KERAS_HUB_IMAGE_ENTRIES: list[BackboneEntry] = [
    BackboneEntry(
        name=family.name,
        task="image",
        build=_build_hub_image,
        default_size=TYPICAL_SIZE,
        min_size=family.min_size,
        description=f"{family.description}; size and preprocessing from the preset",
    )
    for family in HUB_IMAGE_FAMILIES.values()
]
