"""Stage invariants on a tiny CNN with BatchNormalization (and on ResNet50 once)."""

from __future__ import annotations

import numpy as np
import pytest

from kerasft.config import ConfigError, StageConfig, load_config
from kerasft.models.layers import unfreeze_units
from kerasft.training.stages import apply_trainable, make_optimizer, make_schedule


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


@pytest.mark.slow
def test_top_n_changes_only_top_layers_and_bn_stats_stay(image_arrays, tmp_path):
    x, y = image_arrays
    ft = _finetuner([{"name": "top", "trainable": {"top_n": 1}, "epochs": 2,
                      "learning_rate": 0.05}])
    ft.build(sorted(set(y)))
    network = ft.backbone.network
    before = {layer.name: _snapshot([layer]) for layer in network.layers}
    summary = ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    # With BN frozen top_n counts conv1 and conv2 only: top_n=1 trains conv2, and bn2's
    # gamma/beta and moving statistics stay untouched.
    assert _changed_layers(network, before) == {"conv2"}
    assert summary["stages"][0]["unfrozen_layers"] == 1
    ft2 = _finetuner([{"name": "top", "trainable": {"top_n": 2}, "epochs": 2,
                       "learning_rate": 0.05}])
    ft2.build(sorted(set(y)))
    network = ft2.backbone.network
    before = {layer.name: _snapshot([layer]) for layer in network.layers}
    ft2.fit(x, y, output_dir=tmp_path, evaluate=False)
    assert _changed_layers(network, before) == {"conv1", "conv2"}


def test_top_n_counts_batch_norm_only_when_it_trains(image_arrays):
    from kerasft.training.stages import trainable_units

    ft = _finetuner([{"name": "a", "trainable": "head"}])
    ft.build(["a", "b"])
    assert [u.name for u in trainable_units(ft.backbone, bn_trains=False)] == ["conv1", "conv2"]
    assert [u.name for u in trainable_units(ft.backbone, bn_trains=True)] == [
        "conv1", "bn1", "conv2", "bn2"]
    info = apply_trainable(ft.backbone, StageConfig(trainable={"top_n": 1}, train_bn=True))
    assert info["unfrozen_layers"] == ["bn2"]
    info = apply_trainable(ft.backbone, StageConfig(trainable={"top_n": 1}), bn_trains=False)
    assert info["unfrozen_layers"] == ["conv2"]


def test_stage_that_unfreezes_nothing_is_an_error_naming_it(image_arrays):
    ft = _finetuner([{"name": "a", "trainable": "head"}])
    ft.build(["a", "b"])
    with pytest.raises(ConfigError, match=r"^stage 'bn_only': expected a stage that unfreezes at "
                                          r"least one backbone layer.*Received: "
                                          r"stages\[1\].trainable=\{'from_layer': 'bn2'\}$"):
        apply_trainable(ft.backbone, StageConfig(name="bn_only", trainable={"from_layer": "bn2"}),
                        key="stages[1].trainable")
    assert not ft.backbone.network.trainable


def test_bert_top_n_skips_unused_pooled_dense(tmp_path):
    from kerasft.config import BackboneConfig
    from kerasft.models.registry import build_backbone
    from tests.bert_fixtures import write_tiny_hf_bert_dir

    hf = write_tiny_hf_bert_dir(tmp_path / "hf", sentence_transformers=True)
    backbone = build_backbone(BackboneConfig(name="bert", preset=hf))  # mean pooling
    assert backbone.unused_layers == ["pooled_dense"]
    info = apply_trainable(backbone, StageConfig(trainable={"top_n": 1}))
    assert len(info["unfrozen_layers"]) == 1 and info["unfrozen_layers"] != ["pooled_dense"]
    assert not backbone.network.get_layer("pooled_dense").trainable


def _bn_state(layer):
    return {name: getattr(layer, name).numpy().copy()
            for name in ("moving_mean", "moving_variance", "gamma", "beta")}


def _stage_all(**kw):
    return {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.05, **kw}


def test_batch_norm_train_uses_batch_statistics_and_updates_moving_averages(image_arrays,
                                                                             tmp_path):
    x, y = image_arrays
    ft = _finetuner([_stage_all(batch_norm="train")])
    ft.build(sorted(set(y)))
    bn = ft.backbone.network.get_layer("bn2")
    before = _bn_state(bn)
    ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    after = _bn_state(bn)
    for name in before:  # moving averages updated by fit, gamma/beta trained
        assert not np.array_equal(before[name], after[name]), name
    # The call fit makes (training=True) normalises with the batch's moments; evaluate, predict
    # and the export (training=False) with the moving statistics.
    assert bn.trainable and ft.backbone.mode_layers[0].batch_statistics
    images = ft.backbone.preprocess(x[:16].astype("float32"))
    normalised = _bn_probe(ft.backbone.network)(images, training=True)
    # normalised with the batch's own mean: each channel's batch mean is exactly beta
    np.testing.assert_allclose(np.mean(normalised, axis=(0, 1, 2)), after["beta"], atol=1e-4)
    wrapper = ft.backbone.mode_layers[0]
    network = ft.backbone.network
    np.testing.assert_allclose(wrapper(images, training=True), network(images, training=True),
                               atol=1e-6)
    np.testing.assert_allclose(wrapper(images, training=False), network(images, training=False),
                               atol=1e-6)
    assert not np.allclose(wrapper(images, training=True), wrapper(images, training=False),
                           atol=1e-3)


def _bn_probe(network):
    """conv1..bn2 of the tiny CNN as a model (shares the layers, so it sees trained weights)."""
    import keras

    return keras.Model(network.input, network.get_layer("bn2").output)


def test_batch_norm_frozen_keeps_statistics_gamma_beta_and_inference_mode(image_arrays,
                                                                          tmp_path):
    x, y = image_arrays
    ft = _finetuner([_stage_all(batch_norm="frozen")])
    ft.build(sorted(set(y)))
    network = ft.backbone.network
    before = {name: _bn_state(network.get_layer(name)) for name in ("bn1", "bn2")}
    conv = network.get_layer("conv2").get_weights()[0].copy()
    ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    for name, state in before.items():
        for key, value in state.items():
            np.testing.assert_array_equal(value, getattr(network.get_layer(name), key).numpy(),
                                          err_msg=f"{name}.{key}")
    assert not np.array_equal(conv, network.get_layer("conv2").get_weights()[0])  # it trained
    images = ft.backbone.preprocess(x[:16].astype("float32"))
    wrapper = ft.backbone.mode_layers[0]
    np.testing.assert_allclose(wrapper(images, training=True), network(images, training=False),
                               atol=1e-6)


@pytest.mark.slow
def test_batch_norm_mode_changes_between_stages(image_arrays, tmp_path, monkeypatch):
    """Every stage recompiles, so the call mode traced into fit follows each stage's key."""
    import keras

    from kerasft.api import build_finetuner

    x, y = image_arrays
    lines = []
    stages = [_stage_all(name="a", batch_norm="train"), _stage_all(name="b", batch_norm="frozen"),
              _stage_all(name="c", batch_norm="train")]
    ft = build_finetuner({"name": "t", "backbone": {"name": "tiny_cnn", "weights": "none"},
                          "head": {"dropout": 0.0}, "data": {"source": "arrays", "batch_size": 8},
                          "training": {"strategy": "default", "tensorboard": False,
                                       "verbose": "silent", "restore_best": False},
                          "export": {"enabled": False}, "stages": stages}, log=lines.append)
    ft.build(sorted(set(y)))
    bn = ft.backbone.network.get_layer("bn2")
    states = []  # (before, after) of each stage's fit
    real_fit = keras.Model.fit

    def fit(self, *args, **kwargs):
        before = _bn_state(bn)
        history = real_fit(self, *args, **kwargs)
        states.append((before, _bn_state(bn)))
        return history

    monkeypatch.setattr(keras.Model, "fit", fit)
    ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    (a0, a1), (b0, b1), (c0, c1) = states
    assert not np.array_equal(a0["moving_mean"], a1["moving_mean"])
    for key in b0:
        np.testing.assert_array_equal(b0[key], b1[key], err_msg=key)
    assert not np.array_equal(c0["moving_mean"], c1["moving_mean"])
    modes = [line.split("batch_norm=")[1].split(",")[0] for line in lines if "batch_norm=" in line]
    assert modes == ["train", "frozen", "train"]


@pytest.mark.slow
def test_batch_norm_train_then_cached_head_stage(image_arrays, tmp_path, monkeypatch):
    """A head stage after a ``train`` stage trains on cached features and leaves every backbone
    weight, moving statistics included, as the ``train`` stage left it."""
    import keras

    x, y = image_arrays
    ft = _finetuner([_stage_all(batch_norm="train"),
                     {"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 0.05}],
                    training={"strategy": "default", "tensorboard": False, "verbose": "silent",
                              "cache_features": "on", "restore_best": False})
    ft.build(sorted(set(y)))
    network = ft.backbone.network
    after_train = {}
    real_fit = keras.Model.fit

    def fit(self, *args, **kwargs):
        if self is ft.head and not after_train:
            after_train.update(_snapshot([network]))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    assert after_train, "the head stage did not train on cached features"
    final = _snapshot([network])
    for key in after_train:
        np.testing.assert_array_equal(after_train[key], final[key], err_msg=key)
    assert not ft.backbone.mode_layers[0].batch_statistics  # the head stage ran frozen


def test_export_after_batch_norm_train_answers_inference_mode(image_arrays, tmp_path):
    import tensorflow as tf

    x, y = image_arrays
    ft = _finetuner([_stage_all(batch_norm="train")],
                    export={"enabled": True, "dir": str(tmp_path / "saved_models")})
    ft.fit(x, y, output_dir=tmp_path / "runs", evaluate=False)
    path = ft.export(verify=False)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    images = x[:8].astype("float32")
    served = serve(image=tf.constant(images))["probabilities"].numpy()
    inputs = ft.backbone.preprocess(images)
    np.testing.assert_allclose(served, ft.model(inputs, training=False), atol=1e-5)
    assert not np.allclose(served, ft.model(inputs, training=True), atol=1e-3)


def test_train_bn_true_trains_batch_norm_with_batch_statistics(image_arrays, tmp_path):
    """The older key: ``train_bn: true`` now means ``batch_norm: train`` (it used to train gamma
    and beta under frozen moving statistics, which left MobileNetV2 from random weights at
    chance)."""
    x, y = image_arrays
    ft = _finetuner([_stage_all(train_bn=True)])
    ft.build(sorted(set(y)))
    bn = ft.backbone.network.get_layer("bn2")
    before = _bn_state(bn)
    ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    assert not np.array_equal(before["moving_mean"], bn.moving_mean.numpy())
    assert not np.array_equal(before["moving_variance"], bn.moving_variance.numpy())
    assert ft.config.stages[0].batch_norm == "train" and ft.config.stages[0].train_bn is None


def test_batch_norm_key_alias_defaults_and_errors():
    def stages(weights="none", **stage):
        cfg = load_config({"backbone": {"name": "tiny_cnn", "weights": weights},
                           "stages": [{"name": "s", "trainable": "all", **stage}]})
        return cfg.stages[0]

    assert (stages(train_bn=True).batch_norm, stages(train_bn=True).train_bn) == ("train", None)
    assert stages(train_bn=False).batch_norm == "frozen"
    assert stages(weights="imagenet", train_bn=True).batch_norm == "train"
    assert stages(weights="imagenet").batch_norm == "frozen"  # pretrained: keep the statistics
    assert stages().batch_norm == "frozen"  # random weights too: docs/BENCHMARKS.md
    assert stages(trainable="head").batch_norm == "frozen"
    assert stages(trainable="head", train_bn=True).batch_norm == "frozen"  # never trained BN
    assert stages(trainable={"top_n": 1}, batch_norm="frozen").batch_norm == "frozen"
    with pytest.raises(ConfigError) as e:
        stages(batch_norm="train", train_bn=True)
    assert str(e.value) == ("stages[0]: expected batch_norm or its alias train_bn, not both. "
                            "Received: batch_norm='train', train_bn=True")
    with pytest.raises(ConfigError, match=r"one of frozen, train. "
                                          r"Received: stages\[0\].batch_norm='fozen'"):
        stages(batch_norm="fozen")
    with pytest.raises(ConfigError, match=r"expected frozen for a head stage .*"
                                          r"stages\[0\].batch_norm='train'"):
        stages(trainable="head", batch_norm="train")
    # The resolved config names one key, and loads again as it was written.
    cfg = load_config({"backbone": {"name": "tiny_cnn", "weights": "none"},
                       "stages": [{"name": "s", "trainable": "all", "train_bn": False}]})
    again = load_config(cfg.to_dict())
    assert again.stages[0].batch_norm == "frozen" and again.stages[0].train_bn is None


def test_run_folders_saved_with_train_bn_resume_without_differences():
    from kerasft.config import upgrade_saved_config
    from kerasft.training.checkpoints import config_differences

    cfg = load_config({"backbone": {"name": "resnet50"},
                       "stages": [{"name": "head", "trainable": "head"},
                                  {"name": "all", "trainable": "all"}]})
    saved = cfg.to_dict()  # as a run folder written before batch_norm existed
    for stage in saved["stages"]:
        del stage["batch_norm"]
        stage["train_bn"] = False
    assert config_differences(upgrade_saved_config(saved), cfg.to_dict()) == []
    saved["stages"][1]["train_bn"] = True
    assert config_differences(upgrade_saved_config(saved), cfg.to_dict()) == [
        "stages[1].batch_norm='frozen' (run: 'train')"]


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
    with pytest.raises(ConfigError, match=r"at most 2 \(the layers of tiny_cnn that can train, "
                                          r"BatchNorm frozen\).*top_n=9"):
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
    # top_n=3 trains three conv layers: the BN layers between them are not counted
    expected = [u.name for u in units if "bn" not in u.name][-3:]
    assert info["unfrozen_layers"] == expected
    assert all(name.endswith("_conv") for name in expected)
    frozen_bn = [u for u in units[-6:] if "bn" in u.name]
    assert frozen_bn and all(not layer.trainable for layer in frozen_bn)
    assert apply_trainable(ft.backbone, StageConfig(trainable={"top_n": 1}))[
        "unfrozen_layers"] == ["conv5_block3_3_conv"]


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


def _decay_only(ft, stage_dict, steps=3):
    """Compiles ft.model for the stage as fit does, then applies `steps` zero gradients: only
    weight decay can move a variable. Returns {path: (before, after)} of trainable variables."""
    from kerasft.training.loop import compile_stage

    stage = load_config({"stages": [stage_dict]}).stages[0]
    apply_trainable(ft.backbone, stage)
    compile_stage(ft.model, stage, ft.config, steps_per_epoch=10, num_classes=2)
    variables = ft.model.trainable_variables
    before = {v.path: np.array(v.numpy()) for v in variables}
    for _ in range(steps):
        ft.model.optimizer.apply([np.zeros(v.shape, "float32") for v in variables], variables)
    return {v.path: (before[v.path], v.numpy()) for v in variables}


def _moved(pair):
    return not np.array_equal(*pair)


def test_adamw_leaves_biases_and_batch_norm_scales_alone(image_arrays):
    ft = _finetuner([{"name": "a", "trainable": "head"}])
    ft.build(["a", "b"])
    moved = _decay_only(ft, {"name": "all", "trainable": "all", "train_bn": True,
                             "optimizer": "adamw", "weight_decay": 0.5, "learning_rate": 0.1})
    for path, pair in moved.items():
        if path.endswith(("/bias", "/gamma", "/beta")):
            assert not _moved(pair), path  # no gradient, excluded: must not move
        elif path.endswith("/kernel"):
            np.testing.assert_allclose(pair[1], pair[0] * (1 - 0.05) ** 3, rtol=1e-5,
                                       err_msg=path)
    assert any(p.endswith("bn2/gamma") for p in moved)  # BN did train in this stage
    # An empty list decays every variable, as Keras's AdamW alone does.
    ft.model.optimizer = None
    moved = _decay_only(ft, {"name": "all", "trainable": "all", "train_bn": True,
                             "optimizer": "adamw", "weight_decay": 0.5, "learning_rate": 0.1,
                             "weight_decay_exclude": []})
    assert _moved(next(pair for p, pair in moved.items() if p.endswith("bn2/gamma")))


def test_adamw_leaves_bert_layer_norms_and_biases_alone_and_embeddings_configurable(tmp_path):
    from kerasft.api import build_finetuner
    from tests.bert_fixtures import write_tiny_bert_preset

    preset = write_tiny_bert_preset(tmp_path / "kh")
    stage = {"name": "all", "trainable": "all", "optimizer": "adamw", "weight_decay": 0.5,
             "learning_rate": 0.1}
    for exclude, embeddings_move in ((None, True), (["bias", "normalization", "embeddings"],
                                                    False)):
        ft = build_finetuner({"backbone": {"name": "bert", "preset": preset,
                                           "sequence_length": 16},
                              "training": {"strategy": "default"}}, log=lambda s: None)
        ft.build(["a", "b"])
        moved = _decay_only(ft, {**stage, **({"weight_decay_exclude": exclude}
                                             if exclude else {})})
        norms = {p: v for p, v in moved.items() if "norm" in p}
        biases = {p: v for p, v in moved.items() if p.endswith("/bias")}
        embeddings = {p: v for p, v in moved.items() if p.endswith("/embeddings")}
        assert norms and biases and embeddings
        assert not any(_moved(v) for v in {**norms, **biases}.values())
        assert all(_moved(v) == embeddings_move for v in embeddings.values()), exclude
        assert any(_moved(v) for p, v in moved.items() if p.endswith("/kernel"))


def test_stage_compile_builds_the_optimizer_and_trains_as_keras_builds_it(image_arrays):
    """compile_stage builds the optimizer eagerly (Keras would build it inside the first
    step's trace); a fit from it ends with the weights of Keras's own lazy build."""
    import keras

    from kerasft.training.loop import compile_stage
    from kerasft.training.stages import make_loss, make_optimizer, weight_decay_excluded

    x, y = image_arrays
    ft = _finetuner([{"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 1e-3,
                      "optimizer": "adamw", "weight_decay": 0.01}])
    ft.build(["cat", "dog", "owl"])
    model, stage = ft.model, ft.config.stages[0]
    start = [w.numpy().copy() for w in model.weights]
    x = (x / 127.5 - 1.0).astype("float32")
    y = np.searchsorted(["cat", "dog", "owl"], y)

    compile_stage(model, stage, ft.config, steps_per_epoch=8, num_classes=3)
    assert model.optimizer.built
    slots = [v for v in model.optimizer.variables if v.path.endswith(("momentum", "velocity"))]
    assert len(slots) == 2 * len(model.trainable_variables)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    eager = [w.numpy() for w in model.weights]

    for w, v in zip(model.weights, start, strict=True):
        w.assign(v)
    lazy = make_optimizer(stage, 8)
    lazy.exclude_from_weight_decay(var_list=weight_decay_excluded(model,
                                                                  stage.weight_decay_exclude))
    model.compile(optimizer=lazy, loss=make_loss(ft.config.head, 3, 0.0))
    assert not lazy.built
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    for a, b in zip(eager, model.weights, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)
