"""Stage invariants on a tiny CNN with BatchNormalization (and on ResNet50 once)."""

from __future__ import annotations

import numpy as np
import pytest

from kerasft.backbones import unfreeze_units
from kerasft.config import ConfigError, StageConfig, load_config
from kerasft.stages import apply_trainable, make_optimizer, make_schedule


def _finetuner(stages, **kw):
    from kerasft.api import build_finetuner

    cfg = {"name": "t", "backbone": {"name": "tiny_cnn", "weights": "none"},
           "head": {"dropout": 0.0}, "data": {"source": "arrays", "batch_size": 8},
           "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
           "export": {"enabled": False}, "stages": stages}
    cfg.update(kw)
    return build_finetuner(cfg, log=lambda line: None)


def _snapshot(layer_list):
    return {w.path: np.array(w.numpy()) for layer in layer_list for w in layer.weights}


def _changed_layers(network, before):
    """Names of the layers whose weights differ from the snapshot `before` (name → weights)."""
    return {
        name for name, weights in before.items()
        if any(not np.array_equal(v, _snapshot([network.get_layer(name)])[k])
               for k, v in weights.items())
    }


@pytest.mark.parametrize("cache_features", ["on", "off"])
def test_head_stage_keeps_backbone_bit_identical(image_arrays, tmp_path, cache_features):
    x, y = image_arrays
    ft = _finetuner([{"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 0.05}],
                    training={"strategy": "default", "tensorboard": False, "verbose": "silent",
                              "cache_features": cache_features})
    ft.build(sorted(set(y)))
    before = _snapshot([ft.backbone.network])
    head_before = ft.head.get_layer("head_predictions").get_weights()[0].copy()
    ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    after = _snapshot([ft.backbone.network])
    assert before.keys() == after.keys()
    for key in before:  # kernels, BN gamma/beta and moving statistics alike
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert not np.allclose(head_before, ft.head.get_layer("head_predictions").get_weights()[0])


def test_top_n_changes_only_top_layers_and_bn_stats_stay(image_arrays, tmp_path):
    x, y = image_arrays
    ft = _finetuner([{"name": "top", "trainable": {"top_n": 1}, "epochs": 2,
                      "learning_rate": 0.05}])
    ft.build(sorted(set(y)))
    network = ft.backbone.network
    before = {layer.name: _snapshot([layer]) for layer in network.layers}
    ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    # units are conv1, bn1, conv2, bn2: top_n=1 is bn2, which stays frozen (train_bn false).
    assert _changed_layers(network, before) == set()
    ft2 = _finetuner([{"name": "top", "trainable": {"top_n": 2}, "epochs": 2,
                       "learning_rate": 0.05}])
    ft2.build(sorted(set(y)))
    network = ft2.backbone.network
    before = {layer.name: _snapshot([layer]) for layer in network.layers}
    ft2.fit(x, y, output_dir=tmp_path, evaluate=False)
    # bn2's gamma/beta and moving statistics untouched
    assert _changed_layers(network, before) == {"conv2"}


def test_train_bn_unfreezes_gamma_beta_but_not_statistics(image_arrays, tmp_path):
    x, y = image_arrays
    ft = _finetuner([{"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.05,
                      "train_bn": True}])
    ft.build(sorted(set(y)))
    bn = ft.backbone.network.get_layer("bn2")
    stats = [bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()]
    gamma = bn.gamma.numpy().copy()
    ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    np.testing.assert_array_equal(stats[0], bn.moving_mean.numpy())
    np.testing.assert_array_equal(stats[1], bn.moving_variance.numpy())
    assert not np.array_equal(gamma, bn.gamma.numpy())


def test_stage_change_recompiles_and_epochs_continue(image_arrays, tmp_path):
    import csv

    x, y = image_arrays
    ft = _finetuner([
        {"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 0.01},
        {"name": "all", "trainable": "all", "epochs": 2, "learning_rate": 0.001,
         "optimizer": "sgd"},
    ])
    summary = ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    assert [s["trainable_params"] > 0 for s in summary["stages"]] == [True, True]
    assert summary["stages"][1]["trainable_params"] > summary["stages"][0]["trainable_params"]
    import keras

    assert isinstance(ft.model.optimizer, keras.optimizers.SGD)  # recompiled for stage 2
    with open(ft.run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [
        ("head", 1), ("head", 2), ("all", 3), ("all", 4)]


def test_top_n_larger_than_backbone_and_unknown_layer(image_arrays):
    ft = _finetuner([{"name": "a", "trainable": "head"}])
    ft.build(["a", "b"])
    with pytest.raises(ConfigError, match=r"at most 4 \(the layers with weights in tiny_cnn\)"
                                          r".*top_n=9"):
        apply_trainable(ft.backbone, StageConfig(trainable={"top_n": 9}))
    with pytest.raises(ConfigError, match=r"from_layer=.conv3. Close matches: conv2, conv1"):
        apply_trainable(ft.backbone, StageConfig(trainable={"from_layer": "conv3"}))
    info = apply_trainable(ft.backbone, StageConfig(trainable={"from_layer": "conv2"}))
    assert info["unfrozen_layers"] == ["conv2"]


def test_resnet50_top_n_counts_layers_with_weights():
    from kerasft.api import build_finetuner

    ft = build_finetuner({"backbone": {"name": "resnet50", "weights": "none",
                                       "input_shape": [32, 32, 3]},
                          "training": {"strategy": "default"}}, log=lambda s: None)
    ft.build(["a", "b"])
    units = unfreeze_units(ft.backbone.network)
    info = apply_trainable(ft.backbone, StageConfig(trainable={"top_n": 3}))
    # The top three units of ResNet50 are conv5_block3_3_conv, conv5_block3_3_bn and ...
    expected = [u.name for u in units[-3:] if "bn" not in u.name]
    assert info["unfrozen_layers"] == expected
    frozen_bn = [u for u in units[-3:] if "bn" in u.name]
    assert frozen_bn and all(not layer.trainable for layer in frozen_bn)


def test_schedules_warm_up_and_decay():
    stage = StageConfig(learning_rate=1.0, epochs=1, schedule="cosine", warmup_steps=10)
    sched = make_schedule(stage, steps_per_epoch=110)
    values = [float(sched(s)) for s in (0, 9, 10, 60, 110)]
    assert values[0] == pytest.approx(0.1) and values[1] == pytest.approx(1.0)
    assert values[2] == pytest.approx(1.0) and values[3] == pytest.approx(0.5, abs=1e-3)
    assert values[4] == pytest.approx(0.0, abs=1e-6)
    linear = make_schedule(StageConfig(learning_rate=2.0, schedule="linear"), 100)
    assert float(linear(50)) == pytest.approx(1.0)
    assert make_schedule(StageConfig(learning_rate=0.5), 10) == 0.5


def test_optimizer_choice_and_weight_decay():
    import keras

    opt = make_optimizer(StageConfig(optimizer="adamw", weight_decay=0.01), 10)
    assert isinstance(opt, keras.optimizers.AdamW) and opt.weight_decay == pytest.approx(0.01)
    opt = make_optimizer(StageConfig(optimizer="sgd", clipnorm=1.0), 10)
    assert isinstance(opt, keras.optimizers.SGD) and opt.clipnorm == 1.0


def test_config_stage_validation_combinations():
    with pytest.raises(ConfigError, match="warmup_steps or warmup_ratio, not both"):
        load_config({"stages": [{"name": "a", "warmup_steps": 2, "warmup_ratio": 0.1}]})
    with pytest.raises(ConfigError, match=r"unique stage names.*stages\[1\].name='a'"):
        load_config({"stages": [{"name": "a"}, {"name": "a"}]})
