"""Step 3 of a run: the pretrained backbone, from one registry.

A registry entry is plain data (name, task, default input size, how to build it) plus one
``register_backbone`` call, as in KerasHub's presets. Every entry is built through the same
keywords, and the built :class:`Backbone` carries its own data config (input size or sequence
length, and the preprocessing function), so the data pipeline and the export never hard-code a
backbone (the pattern of timm's ``pretrained_cfg``).

- Keras applications: every ``keras.applications`` model (``vgg16``, ``resnet50``,
  ``efficientnetb0``, ...), built with ``include_top=False``.
- ``bert``: KerasHub's ``BertBackbone`` from a KerasHub preset name, a local KerasHub preset
  directory, a Hugging Face-format directory, or ``pkg://<package>/<path>``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerasft.config import (
    BACKBONE_WEIGHTS,
    PRETRAINED,
    WEIGHTS_ALIASES,
    BackboneConfig,
    ConfigError,
)
from kerasft.errors import KerasftError, expected
from kerasft.io import resolve_pkg_path


@dataclass(frozen=True)
class BackboneEntry:
    """What the registry knows about a backbone before building it."""

    name: str
    task: str  # "image" | "text"
    build: Callable[[BackboneConfig, str], Backbone]
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
            ``BertBackbone``); stages freeze and unfreeze its layers.
        inputs: Keras inputs of the classifier (one tensor for images, a dict for text).
        features: pooled feature tensor the head is built on.
        preprocess: batch function raw inputs → model inputs, used by tf.data and by the export
            (float32 images 0..255 at ``image_size`` for images, a 1-D string tensor for text).
        image_size: (height, width) images are resized to, for images.
        sequence_length: token sequence length, for text.
        unused_layers: layers of `network` whose output the features do not use (e.g. BERT's
            pooler under mean pooling); stages never unfreeze them.
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
    preprocessor: Any = None
    unused_layers: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    _mode_layers: list[Any] | None = field(default=None, init=False, repr=False)

    @property
    def mode_layers(self) -> list[Any]:
        """The layers that decide the network's call mode (``InferenceModeCall``); found from
        the graph, so a registered builder only has to use :func:`call_in_inference_mode`."""
        if self._mode_layers is None:
            import keras

            self._mode_layers = mode_layers(keras.Model(self.inputs, self.features))
        return self._mode_layers


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> None:
    """Adds `entry` to the registry (a later entry of the same name replaces it)."""
    _REGISTRY[entry.name] = entry


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


def build_backbone(cfg: BackboneConfig, pooling: str = "auto") -> Backbone:
    """Builds the backbone named by ``cfg.name`` with pooled features (`pooling`)."""
    entry = get_entry(cfg.name)
    if cfg.weights not in BACKBONE_WEIGHTS:
        _check_weights_file(cfg.weights)  # for every entry, before it builds anything
    return entry.build(cfg, pooling)


# ---------------------------------------------------------------------------------------------
# Keras applications: plain data, one registration each.

# registry name: (keras.applications module, constructor, default size, min size)
KERAS_APPLICATIONS: dict[str, tuple[str, str, int, int]] = {
    "vgg16": ("vgg16", "VGG16", 224, 32),
    "vgg19": ("vgg19", "VGG19", 224, 32),
    "resnet50": ("resnet50", "ResNet50", 224, 32),
    "resnet101": ("resnet", "ResNet101", 224, 32),
    "resnet152": ("resnet", "ResNet152", 224, 32),
    "resnet50v2": ("resnet_v2", "ResNet50V2", 224, 32),
    "resnet101v2": ("resnet_v2", "ResNet101V2", 224, 32),
    "resnet152v2": ("resnet_v2", "ResNet152V2", 224, 32),
    "densenet121": ("densenet", "DenseNet121", 224, 32),
    "densenet169": ("densenet", "DenseNet169", 224, 32),
    "densenet201": ("densenet", "DenseNet201", 224, 32),
    "mobilenet": ("mobilenet", "MobileNet", 224, 32),
    "mobilenetv2": ("mobilenet_v2", "MobileNetV2", 224, 32),
    "mobilenetv3small": ("mobilenet_v3", "MobileNetV3Small", 224, 32),
    "mobilenetv3large": ("mobilenet_v3", "MobileNetV3Large", 224, 32),
    "efficientnetb0": ("efficientnet", "EfficientNetB0", 224, 32),
    "efficientnetb1": ("efficientnet", "EfficientNetB1", 240, 32),
    "efficientnetb2": ("efficientnet", "EfficientNetB2", 260, 32),
    "efficientnetb3": ("efficientnet", "EfficientNetB3", 300, 32),
    "efficientnetb4": ("efficientnet", "EfficientNetB4", 380, 32),
    "efficientnetb5": ("efficientnet", "EfficientNetB5", 456, 32),
    "efficientnetb6": ("efficientnet", "EfficientNetB6", 528, 32),
    "efficientnetb7": ("efficientnet", "EfficientNetB7", 600, 32),
    "efficientnetv2b0": ("efficientnet_v2", "EfficientNetV2B0", 224, 32),
    "efficientnetv2b1": ("efficientnet_v2", "EfficientNetV2B1", 240, 32),
    "efficientnetv2b2": ("efficientnet_v2", "EfficientNetV2B2", 260, 32),
    "efficientnetv2b3": ("efficientnet_v2", "EfficientNetV2B3", 300, 32),
    "efficientnetv2s": ("efficientnet_v2", "EfficientNetV2S", 384, 32),
    "efficientnetv2m": ("efficientnet_v2", "EfficientNetV2M", 480, 32),
    "efficientnetv2l": ("efficientnet_v2", "EfficientNetV2L", 480, 32),
    "convnexttiny": ("convnext", "ConvNeXtTiny", 224, 32),
    "convnextsmall": ("convnext", "ConvNeXtSmall", 224, 32),
    "convnextbase": ("convnext", "ConvNeXtBase", 224, 32),
    "convnextlarge": ("convnext", "ConvNeXtLarge", 224, 32),
    "convnextxlarge": ("convnext", "ConvNeXtXLarge", 224, 32),
    "inceptionv3": ("inception_v3", "InceptionV3", 299, 75),
    "inceptionresnetv2": ("inception_resnet_v2", "InceptionResNetV2", 299, 75),
    "xception": ("xception", "Xception", 299, 71),
    "nasnetmobile": ("nasnet", "NASNetMobile", 224, 32),
    "nasnetlarge": ("nasnet", "NASNetLarge", 331, 32),
}

# Parameters of each network without its top, at the default size (measured by building each
# with weights=None; shown by `kerasft backbones`).
KERAS_APPLICATION_PARAMS: dict[str, int] = {
    "convnextbase": 87566464,
    "convnextlarge": 196230336,
    "convnextsmall": 49454688,
    "convnexttiny": 27820128,
    "convnextxlarge": 348147968,
    "densenet121": 7037504,
    "densenet169": 12642880,
    "densenet201": 18321984,
    "efficientnetb0": 4049571,
    "efficientnetb1": 6575239,
    "efficientnetb2": 7768569,
    "efficientnetb3": 10783535,
    "efficientnetb4": 17673823,
    "efficientnetb5": 28513527,
    "efficientnetb6": 40960143,
    "efficientnetb7": 64097687,
    "efficientnetv2b0": 5919312,
    "efficientnetv2b1": 6931124,
    "efficientnetv2b2": 8769374,
    "efficientnetv2b3": 12930622,
    "efficientnetv2l": 117746848,
    "efficientnetv2m": 53150388,
    "efficientnetv2s": 20331360,
    "inceptionresnetv2": 54336736,
    "inceptionv3": 21802784,
    "mobilenet": 3228864,
    "mobilenetv2": 2257984,
    "mobilenetv3large": 2996352,
    "mobilenetv3small": 939120,
    "nasnetlarge": 84916818,
    "nasnetmobile": 4269716,
    "resnet101": 42658176,
    "resnet101v2": 42626560,
    "resnet152": 58370944,
    "resnet152v2": 58331648,
    "resnet50": 23587712,
    "resnet50v2": 23564800,
    "vgg16": 14714688,
    "vgg19": 20024384,
    "xception": 20861480,
}


def _image_size(cfg: BackboneConfig, name: str, default: int, min_size: int) -> tuple[int, int]:
    if cfg.input_shape is None:
        return default, default
    height, width, _ = cfg.input_shape
    if height < min_size or width < min_size:
        raise ConfigError(
            expected(f"an input size of at least {min_size}x{min_size} for {name}",
                     "backbone.input_shape", cfg.input_shape)
        )
    return int(height), int(width)


def _check_weights_file(path: str) -> str:
    path = resolve_pkg_path(path, "backbone.weights")
    if not os.path.isfile(path):
        raise ConfigError(expected("an existing .weights.h5 file", "backbone.weights", path))
    return path


def _build_keras_application(cfg: BackboneConfig, pooling: str) -> Backbone:
    import importlib

    import keras

    module_name, fn_name, default, min_size = KERAS_APPLICATIONS[cfg.name.lower()]
    height, width = _image_size(cfg, cfg.name, default, min_size)
    module = importlib.import_module(f"keras.applications.{module_name}")
    constructor = getattr(keras.applications, fn_name)
    weights_path = None if cfg.weights in BACKBONE_WEIGHTS else _check_weights_file(cfg.weights)
    weights = "imagenet" if cfg.weights in (PRETRAINED, *WEIGHTS_ALIASES) else None
    try:
        network = constructor(include_top=False, weights=weights, input_shape=(height, width, 3))
    except Exception as e:  # noqa: BLE001 - the download error is re-raised as one line.
        if weights == "imagenet" and ("URL fetch failure" in str(e) or "http" in str(e).lower()):
            raise KerasftError(
                f"backbone.weights: expected to download the ImageNet weights of {fn_name}, which "
                "needs internet access (or set backbone.weights to none or a .weights.h5 file). "
                f"Received: error={str(e).splitlines()[0]}"
            ) from e
        raise
    if weights_path:
        try:
            network.load_weights(weights_path)
        except ValueError as e:
            raise KerasftError(
                f"backbone.weights: expected weights saved from {fn_name} at "
                f"{height}x{width}. Received: {weights_path} ({str(e).splitlines()[0]})"
            ) from e
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = call_in_inference_mode(network, inputs)
    if pooling == "max":
        features = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    elif pooling in ("auto", "avg", "mean"):
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    else:
        raise ConfigError(expected("auto, avg or max for an image backbone", "head.pooling",
                                   pooling))
    preprocess_input = module.preprocess_input

    def preprocess(images: Any) -> Any:
        return preprocess_input(images)

    return Backbone(
        name=cfg.name.lower(),
        task="image",
        network=network,
        inputs=inputs,
        features=features,
        preprocess=preprocess,
        image_size=(height, width),
        info={"architecture": fn_name, "weights": cfg.weights, "input_size": [height, width],
              "pooling": "max" if pooling == "max" else "avg",
              "parameters": int(network.count_params())},
    )


for _name, (_module, _fn, _default, _min) in KERAS_APPLICATIONS.items():
    register_backbone(
        BackboneEntry(
            name=_name,
            task="image",
            build=_build_keras_application,
            default_size=_default,
            min_size=_min,
            description=f"keras.applications.{_fn}",
        )
    )


# ---------------------------------------------------------------------------------------------
# BERT from KerasHub.

SENTENCE_TRANSFORMERS_FILES = ("sentence_bert_config.json", "modules.json")
KERASHUB_PRESET_FILES = ("config.json", "tokenizer.json")
HF_BERT_FILES = ("config.json", "vocab.txt")


def describe_preset(preset: str) -> dict[str, Any]:
    """Classifies a BERT preset without loading it.

    Returns ``{"kind": "kerashub_dir" | "hf_dir" | "kerashub_name", "path": ...,
    "sentence_transformers": bool}``; raises a one-line error for a directory that is neither.
    """
    path = resolve_pkg_path(preset, "backbone.preset")
    if preset.startswith("pkg://") or os.path.isabs(path) or os.path.exists(path) or (
        os.sep in preset or preset.startswith(".")
    ):
        root = Path(path)
        if not root.is_dir():
            raise ConfigError(expected("an existing preset directory", "backbone.preset", preset))
        config_file = root / "config.json"
        if not config_file.is_file():
            raise ConfigError(
                expected("a KerasHub preset or Hugging Face directory with config.json",
                         "backbone.preset", preset)
            )
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{config_file}: expected valid JSON. Received: {e}") from None
        sentence = any((root / f).is_file() for f in SENTENCE_TRANSFORMERS_FILES)
        if "model_type" in config:
            if config["model_type"] != "bert":
                raise ConfigError(
                    expected("a Hugging Face BERT checkpoint (model_type: bert)",
                             f"{config_file} model_type", config["model_type"])
                )
            missing = [f for f in HF_BERT_FILES if not (root / f).is_file()]
            weights = [f for f in ("model.safetensors", "model.safetensors.index.json")
                       if (root / f).is_file()]
            if not weights:
                missing.append("model.safetensors")
            if missing:
                raise ConfigError(
                    expected(f"a Hugging Face BERT directory with {', '.join(missing)}",
                             "backbone.preset", preset)
                )
            return {"kind": "hf_dir", "path": str(root), "sentence_transformers": sentence}
        missing = [f for f in KERASHUB_PRESET_FILES if not (root / f).is_file()]
        if missing:
            raise ConfigError(
                expected(f"a KerasHub preset directory with {', '.join(missing)}",
                         "backbone.preset", preset)
            )
        class_name = str(config.get("class_name", ""))
        if class_name and "Bert" not in class_name:
            raise ConfigError(
                expected("a KerasHub BERT preset (class_name BertBackbone)",
                         f"{config_file} class_name", class_name)
            )
        return {"kind": "kerashub_dir", "path": str(root), "sentence_transformers": sentence}
    import keras_hub

    names = sorted(keras_hub.models.BertBackbone.presets)
    if preset not in names:
        raise ConfigError(
            expected(f"a KerasHub BERT preset name ({', '.join(names)}) or a directory",
                     "backbone.preset", preset)
        )
    return {"kind": "kerashub_name", "path": preset, "sentence_transformers": False}


@functools.lru_cache(maxsize=1)
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
    ``batch_norm: train`` switches the wrapping layer (see :func:`set_batch_statistics`)."""
    return _inference_mode_class()(network, name=f"{network.name}_inference")(inputs)


def mode_layers(model: Any) -> list[Any]:
    """The InferenceModeCall layers among `model`'s own layers (one per image backbone; none
    for BERT, whose network is called directly)."""
    cls = _inference_mode_class()
    return [layer for layer in model.layers if isinstance(layer, cls)]


def set_batch_statistics(backbone: Backbone, enabled: bool) -> None:
    """Runs `backbone`'s network in training mode during ``fit`` (`enabled`) or always in
    inference mode; takes effect at the next ``compile``."""
    for layer in backbone.mode_layers:
        layer.batch_statistics = enabled


@functools.lru_cache(maxsize=1)
def masked_mean_pooling_class() -> type:
    """The ``MaskedMeanPooling`` Keras layer class (defined on first use: keeps Keras out of
    ``import kerasft.models.backbones``)."""
    import keras

    @keras.saving.register_keras_serializable(package="kerasft")
    class MaskedMeanPooling(keras.layers.Layer):
        """Mean of token states over positions where ``padding_mask`` is 1."""

        def call(self, sequence: Any, padding_mask: Any) -> Any:
            from keras import ops

            mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence.dtype)
            total = ops.sum(sequence * mask, axis=1)
            count = ops.maximum(ops.sum(mask, axis=1), 1.0)
            return total / count

    return MaskedMeanPooling


def _build_bert(cfg: BackboneConfig, pooling: str) -> Backbone:
    if not cfg.preset:
        raise ConfigError(expected("a preset (name, directory or pkg://) for bert",
                                   "backbone.preset", cfg.preset))
    source = describe_preset(cfg.preset)
    import keras
    import keras_hub
    import tensorflow as tf

    path = source["path"]
    load_weights = cfg.weights != "none"
    weights_path = None
    if cfg.weights not in BACKBONE_WEIGHTS:
        weights_path = _check_weights_file(cfg.weights)
        load_weights = False
    try:
        network = keras_hub.models.BertBackbone.from_preset(path, load_weights=load_weights)
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(path)
    except (OSError, ValueError, KeyError) as e:
        raise KerasftError(
            f"backbone.preset: expected a loadable BERT preset. Received: {cfg.preset} "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from e
    except Exception as e:  # noqa: BLE001 - network errors of preset downloads are one line.
        if source["kind"] == "kerashub_name":
            raise KerasftError(
                f"backbone.preset: expected to download the KerasHub preset '{cfg.preset}', which "
                "needs internet access (or give a local preset directory). "
                f"Received: error={str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        raise
    if weights_path:
        network.load_weights(weights_path)
    max_len = int(network.max_sequence_length)
    # KerasHub's preprocessor defaults to 512 when a preset does not say: never above the max.
    seq_len = int(cfg.sequence_length or min(preprocessor.sequence_length or 128, max_len))
    if seq_len > max_len:
        raise ConfigError(
            expected(f"a sequence length of at most {max_len} (the model's maximum)",
                     "backbone.sequence_length", seq_len)
        )
    preprocessor.sequence_length = seq_len
    if pooling == "auto":
        pooling = "mean" if source["sentence_transformers"] else "cls"
    if pooling not in ("cls", "mean"):
        raise ConfigError(expected("auto, cls or mean for bert", "head.pooling", pooling))

    inputs = {
        "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input(shape=(None,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
    }
    outputs = network(inputs)
    if pooling == "mean":
        features = masked_mean_pooling_class()(name="mean_pool")(
            outputs["sequence_output"], inputs["padding_mask"]
        )
    else:
        features = outputs["pooled_output"]

    def preprocess(texts: Any) -> dict[str, Any]:
        x = preprocessor(texts)
        return {k: tf.cast(v, tf.int32) for k, v in x.items()}

    return Backbone(
        name="bert",
        task="text",
        network=network,
        inputs=inputs,
        features=features,
        preprocess=preprocess,
        sequence_length=seq_len,
        preprocessor=preprocessor,
        unused_layers=["pooled_dense"] if pooling == "mean" else [],
        info={"architecture": "BertBackbone", "preset": cfg.preset, "preset_kind": source["kind"],
              "pooling": pooling, "sequence_length": seq_len, "max_sequence_length": max_len,
              "num_layers": int(network.num_layers), "hidden_dim": int(network.hidden_dim),
              "parameters": int(network.count_params())},
    )


register_backbone(
    BackboneEntry(
        name="bert",
        task="text",
        build=_build_bert,
        description="KerasHub BertBackbone (preset name, KerasHub or Hugging Face directory)",
    )
)


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
            "parameters": KERAS_APPLICATION_PARAMS.get(name),
            "source": entry.description,
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Layers that stages freeze and unfreeze.


def unfreeze_units(network: Any) -> list[Any]:
    """The backbone's layers that own weights, bottom to top: what ``top_n`` counts."""
    units = []
    for layer in network.layers:
        if layer.weights:
            units.append(layer)
    return units
