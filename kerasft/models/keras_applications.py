"""Every ``keras.applications`` model (``vgg16``, ``resnet50``, ``efficientnetb0``, ...) as a
backbone, built with ``include_top=False``: a data table and one builder.

:data:`KERAS_APPLICATION_ENTRIES` holds one :class:`~kerasft.models.backbone.BackboneEntry`
per table row; kerasft/models/registry.py registers them (this module does not import the
registry, which imports it).
"""

from __future__ import annotations

from typing import Any

from kerasft.config import (
    BACKBONE_WEIGHTS,
    PRETRAINED,
    WEIGHTS_ALIASES,
    BackboneConfig,
    ConfigError,
)
from kerasft.errors import KerasftError, expected
from kerasft.models.backbone import Backbone, BackboneEntry, check_weights_file
from kerasft.models.layers import call_in_inference_mode

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


def image_size(cfg: BackboneConfig, name: str, default: int, min_size: int) -> tuple[int, int]:
    """(height, width) from ``backbone.input_shape``, else `default`; a one-line error below
    `min_size`."""
    if cfg.input_shape is None:
        return default, default
    height, width, _ = cfg.input_shape
    if height < min_size or width < min_size:
        raise ConfigError(
            expected(f"an input size of at least {min_size}x{min_size} for {name}",
                     "backbone.input_shape", cfg.input_shape)
        )
    return int(height), int(width)


def _build_keras_application(cfg: BackboneConfig, pooling: str) -> Backbone:
    import importlib

    import keras

    module_name, fn_name, default, min_size = KERAS_APPLICATIONS[cfg.name.lower()]
    height, width = image_size(cfg, cfg.name, default, min_size)
    module = importlib.import_module(f"keras.applications.{module_name}")
    constructor = getattr(keras.applications, fn_name)
    weights_path = None if cfg.weights in BACKBONE_WEIGHTS else check_weights_file(cfg.weights)
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


# One registration per table row (kerasft/models/registry.py adds them to the registry).
KERAS_APPLICATION_ENTRIES: list[BackboneEntry] = [
    BackboneEntry(
        name=name,
        task="image",
        build=_build_keras_application,
        default_size=default,
        min_size=min_size,
        params=KERAS_APPLICATION_PARAMS.get(name),
        description=f"keras.applications.{fn_name}",
    )
    for name, (_, fn_name, default, min_size) in KERAS_APPLICATIONS.items()
]
