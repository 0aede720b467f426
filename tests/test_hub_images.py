"""KerasHub image backbones (kerasft/models/keras_hub_images.py) from tiny random presets that the
tests write with KerasHub's own classes: train two stages, export, serve under the session
loader; preprocessing and input size from the preset; auto resolution; wrong-family errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kerasft.config import BackboneConfig, ConfigError
from tests.conftest import make_image_arrays
from tests.hub_presets import IMAGENET_MEAN as MEAN
from tests.hub_presets import IMAGENET_STD as STD
from tests.hub_presets import tiny_mobilenet_v3_preset, tiny_vit_preset
from tests.session_loader import SessionModel


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_presets")
    return {"hub_vit": tiny_vit_preset(root / "vit"),
            "hub_mobilenet_v3": tiny_mobilenet_v3_preset(root / "mobilenet_v3")}


def _bn_moments(network):
    import keras

    return [np.asarray(layer.moving_mean).copy() for layer in network._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.slow
@pytest.mark.parametrize("name, pooling", [("hub_vit", "cls"), ("hub_mobilenet_v3", "avg")])
def test_hub_family_trains_two_stages_and_serves_pixels_and_bytes(presets, name, pooling,
                                                                  tmp_path, monkeypatch):
    import keras
    import tensorflow as tf

    from kerasft.api import build_finetuner
    from kerasft.data.pipeline import resize_images

    bn = name == "hub_mobilenet_v3"
    ft = build_finetuner({
        "name": name, "backbone": {"name": name, "preset": str(presets[name])},
        "data": {"source": "arrays", "batch_size": 16},
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "restore_best": False, "checkpoint_every_epoch": False},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.05},
                   {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.01,
                    **({"batch_norm": "train"} if bn else {})}],
        "export": {"dir": str(tmp_path / "saved_models")},
    }, log=lambda s: None)
    x, y = (a[:30] for a in make_image_arrays())
    ft.build(sorted(set(y)))
    backbone = ft.backbone
    assert backbone.image_size == (16, 16) and backbone.info["pooling"] == pooling
    # The preset's ImageConverter is the preprocessing (per-channel mean/std for MobileNet).
    pixels = x[:4].astype("float32")
    converter_cls = (keras.saving.get_registered_object("keras_hub>ViTImageConverter") if not bn
                     else keras.saving.get_registered_object("keras_hub>MobileNetImageConverter"))
    converter = converter_cls.from_preset(str(presets[name]))
    np.testing.assert_allclose(backbone.preprocess(pixels), converter(pixels), atol=1e-5)

    # Moving statistics per stage: a head stage keeps them, batch_norm: train updates them.
    moments = []
    real_fit = keras.Model.fit

    def fit(self, *args, **kwargs):
        before = _bn_moments(backbone.network)
        history = real_fit(self, *args, **kwargs)
        moments.append((before, _bn_moments(backbone.network)))
        return history

    monkeypatch.setattr(keras.Model, "fit", fit)
    ft.fit(x, y, output_dir=tmp_path / "runs", evaluate=False)
    if bn:
        (head_before, head_after), (all_before, all_after) = moments
        assert all(np.array_equal(a, b) for a, b in zip(head_before, head_after))
        assert not all(np.array_equal(a, b) for a, b in zip(all_before, all_after))

    path = ft.export(verify=False)  # the session loader below is the check
    big = np.repeat(np.repeat(pixels, 2, axis=1), 3, axis=2)  # 32x48: the export resizes
    pngs = np.array([tf.io.encode_png(img).numpy() for img in x[:4]], dtype=object)
    with SessionModel(str(path)) as served:
        by_pixels = served.run("serving_default", image=big)
        by_bytes = served.run("serving_bytes", image_bytes=pngs)
    # Keras's answer, eagerly (tracing ft.predict twice would cost more than the rest).
    keras_big = ft.model(backbone.preprocess(resize_images(big, (16, 16))), training=False)
    keras_pixels = ft.model(backbone.preprocess(pixels), training=False)
    np.testing.assert_allclose(by_pixels["probabilities"], keras_big, atol=1e-5)
    np.testing.assert_allclose(by_bytes["probabilities"], keras_pixels, atol=1e-5)
    assert [s.decode() for s in by_bytes["labels"]] == [
        ft.class_names[i] for i in by_bytes["class_ids"]]


def test_auto_resolves_image_presets_to_their_family(presets, tmp_path):
    from kerasft.api import build_finetuner
    from kerasft.models.keras_hub_images import image_family_of_preset
    from kerasft.validate import validate_config

    assert image_family_of_preset(str(presets["hub_vit"])) == "hub_vit"
    assert image_family_of_preset(str(presets["hub_mobilenet_v3"])) == "hub_mobilenet_v3"
    assert image_family_of_preset(str(tmp_path)) is None  # no config.json: not an image preset
    hf = tmp_path / "hf_dinov2"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    assert image_family_of_preset(str(hf)) == "hub_dinov2"

    ft = build_finetuner({"backbone": {"name": "auto", "preset": str(presets["hub_vit"])}},
                         log=lambda s: None)
    assert ft.config.backbone.name == "hub_vit"
    lines = validate_config({
        "backbone": {"name": "auto", "preset": str(presets["hub_mobilenet_v3"])},
        "data": {"source": "image_folder", "train": str(_image_folder(tmp_path))},
        "output_dir": str(tmp_path / "runs"), "export": {"dir": str(tmp_path / "exports")},
    })
    assert any(line.startswith("backbone: hub_mobilenet_v3 from kerashub_dir") for line in lines)


def _image_folder(tmp_path):
    from tests.data_fixtures import solid, write_png

    root = tmp_path / "images"
    for label, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / label).mkdir(parents=True)
        for i in range(2):
            write_png(root / label / f"{i}.png", solid(color))
    return root


def test_preset_of_another_family_is_a_one_line_error(presets):
    from kerasft.models.registry import build_backbone

    with pytest.raises(ConfigError) as info:
        build_backbone(BackboneConfig(name="hub_resnet", preset=str(presets["hub_vit"])))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("expected a preset of hub_resnet (ResNetBackbone)")
    assert "class_name 'ViTBackbone' (that is backbone.name: hub_vit)" in message


def test_unknown_preset_name_lists_the_family_presets():
    from kerasft.models.registry import build_backbone

    with pytest.raises(ConfigError, match=r"expected a KerasHub MobileNetBackbone preset name "
                                          r"\(mobilenet_v3_large_100_imagenet, .*"
                                          r"Received: backbone.preset='mobilenet_v9'$"):
        build_backbone(BackboneConfig(name="hub_mobilenet_v3", preset="mobilenet_v9"))
    with pytest.raises(ConfigError, match=r"\('resnet_50_imagenet' is a preset of hub_resnet\)"):
        build_backbone(BackboneConfig(name="hub_vit", preset="resnet_50_imagenet"))


def test_fixed_size_family_refuses_another_input_shape(presets):
    from kerasft.models.registry import build_backbone

    with pytest.raises(ConfigError, match=r"the preset's input size \[16, 16, 3\] for hub_vit"):
        build_backbone(BackboneConfig(name="hub_vit", preset=str(presets["hub_vit"]),
                                      input_shape=[32, 32, 3]))


def test_backbones_lists_the_hub_families_with_their_input_size():
    from click.testing import CliRunner

    from kerasft.cli import main

    result = CliRunner().invoke(main, ["backbones"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    for name in ("hub_vit", "hub_deit", "hub_dinov2", "hub_swin", "hub_resnet",
                 "hub_efficientnet", "hub_mobilenet_v3"):
        assert rows[name].split()[1:3] == ["image", "224x224"], rows[name]
        assert "size and preprocessing from the preset" in rows[name]
    assert rows["mobilenet"].split()[1:3] == ["image", "224x224"]  # keras.applications' own


def test_hugging_face_preprocessor_config_gives_size_and_normalisation(tmp_path):
    """ViT, DeiT and DINOv2 Hugging Face directories carry their preprocessing in
    preprocessor_config.json (KerasHub's converters for them read none): mean/std, rescale
    factor and the center-crop size become the backbone's scale, offset and input size."""
    from kerasft.models.keras_hub_images import _hf_converter_config

    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
        "size": {"shortest_edge": 256}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(MEAN), "image_std": list(STD)}))
    config = _hf_converter_config(tmp_path)
    assert config["image_size"] == (224, 224)
    pixels = np.array([0.0, 127.0, 255.0])
    np.testing.assert_allclose(pixels * np.array(config["scale"]) + np.array(config["offset"]),
                               (pixels / 255 - MEAN) / STD, atol=1e-6)
