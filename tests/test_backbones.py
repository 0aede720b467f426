"""Registry: one factory per name, the same keywords for every backbone, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from kerasft.config import BackboneConfig, ConfigError
from kerasft.errors import KerasftError
from kerasft.models.registry import build_backbone, get_entry, list_backbones


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        get_entry("resnet5O")
    message = str(info.value)
    assert "Received: backbone.name='resnet5O'" in message
    assert "vgg16" in message and "resnet50" in message and "bert" in message
    assert "Did you mean 'resnet50'" in message


def test_every_keras_application_is_registered():
    import keras

    names = {row["name"] for row in list_backbones()}
    constructors = {n.lower() for n in dir(keras.applications) if n[0].isupper()}
    assert constructors <= names
    vgg = next(r for r in list_backbones() if r["name"] == "vgg16")
    assert vgg["input"] == "224x224" and vgg["parameters"] == 14_714_688


@pytest.mark.parametrize("name, channels", [("vgg16", 512), ("resnet50", 2048),
                                            ("efficientnetb0", 1280),
                                            ("mobilenetv3small", 576)])
def test_keras_applications_build_with_the_same_keywords(name, channels):
    import keras

    backbone = build_backbone(BackboneConfig(name=name, weights="none", input_shape=[32, 32, 3]))
    assert backbone.task == "image" and backbone.image_size == (32, 32)
    model = keras.Model(backbone.inputs, backbone.features)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    features = model(backbone.preprocess(images))
    assert features.shape == (2, channels)


def test_input_below_minimum_is_an_error():
    with pytest.raises(ConfigError, match=r"at least 75x75 for inceptionv3.*"
                                          r"backbone.input_shape=\[32, 32, 3\]"):
        build_backbone(BackboneConfig(name="inceptionv3", weights="none",
                                      input_shape=[32, 32, 3]))


def test_missing_weights_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="expected an existing .weights.h5 file"):
        build_backbone(BackboneConfig(name="vgg16", weights=str(tmp_path / "x.weights.h5"),
                                      input_shape=[32, 32, 3]))


def test_weights_file_is_loaded(tmp_path):
    cfg = BackboneConfig(name="vgg16", weights="none", input_shape=[32, 32, 3])
    first = build_backbone(cfg)
    path = tmp_path / "vgg.weights.h5"
    first.network.save_weights(path)
    second = build_backbone(BackboneConfig(name="vgg16", weights=str(path),
                                           input_shape=[32, 32, 3]))
    for a, b in zip(first.network.weights, second.network.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_imagenet_download_failure_is_one_line(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/w.h5: None -- no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.vgg16.file_utils.get_file", offline)
    with pytest.raises(KerasftError, match=r"needs internet access.*Received: error=URL fetch"):
        build_backbone(BackboneConfig(name="vgg16", weights="imagenet", input_shape=[32, 32, 3]))


def test_image_model_config_round_trips(image_arrays):
    """The inference-mode wrapper of image backbones serializes (TensorBoard's graph and
    ``model.to_json`` need it): rebuilt from JSON with the same weights, the same outputs."""
    import warnings

    import keras

    from kerasft.api import build_finetuner

    ft = build_finetuner({"backbone": {"name": "tiny_cnn", "weights": "none"}},
                         log=lambda s: None)
    ft.build(["cat", "dog", "owl"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = ft.model.to_json()
    rebuilt = keras.models.model_from_json(text)
    rebuilt.set_weights(ft.model.get_weights())
    x = image_arrays[0][:4].astype("float32")
    np.testing.assert_allclose(rebuilt.predict_on_batch(x), ft.model.predict_on_batch(x),
                               atol=1e-6)
