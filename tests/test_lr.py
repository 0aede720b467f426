"""Layer-wise learning rates (layer_lr_decay, lr_multipliers) and the LR finder."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from kerasft.config import ConfigError, StageConfig, load_config
from kerasft.training.lr_groups import STEM, backbone_blocks, stage_multipliers
from kerasft.training.stages import make_optimizer


def _two_dense():
    import keras

    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="slow"),
                             keras.layers.Dense(2, name="fast")], name="m")


def _first_step(model, stage, grads=None):
    """|w_after - w_before| per variable path after one optimizer step with fixed gradients."""
    import keras

    mults, _ = stage_multipliers(model, None, stage)
    opt = make_optimizer(stage, steps_per_epoch=1, multipliers=mults)
    before = {v.path: np.array(v.numpy()) for v in model.trainable_variables}
    rng = np.random.default_rng(0)
    grads = grads or [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32"))
                      for v in model.trainable_variables]
    opt.apply(grads, model.trainable_variables)
    return {v.path: np.abs(np.array(v.numpy()) - before[v.path])
            for v in model.trainable_variables}, grads


def test_sgd_update_sizes_follow_the_multipliers():
    model = _two_dense()
    stage = StageConfig(optimizer="sgd", momentum=0.0, learning_rate=0.1,
                        lr_multipliers={"/slow/": 0.1})
    delta, grads = _first_step(model, stage)
    plain = StageConfig(optimizer="sgd", momentum=0.0, learning_rate=0.1)
    reference, _ = _first_step(_two_dense(), plain, grads)  # same gradients, no multipliers
    for path in delta:
        ratio = delta[path] / reference[path]
        np.testing.assert_allclose(ratio, 0.1 if "/slow/" in path else 1.0, rtol=1e-4,
                                   err_msg=path)


def test_adam_first_step_is_lr_times_multiplier():
    # Adam's first update is lr * g / (|g| + eps) ~ lr: gradient scaling could not change it.
    model = _two_dense()
    stage = StageConfig(optimizer="adamw", learning_rate=1e-2, weight_decay=0.0,
                        lr_multipliers={"/slow/kernel": 0.1, "/slow/": 0.5})
    delta, _ = _first_step(model, stage)
    for path, d in delta.items():
        mult = 0.1 if path.endswith("slow/kernel") else 0.5 if "/slow/" in path else 1.0
        np.testing.assert_allclose(d, 1e-2 * mult, rtol=1e-3, err_msg=path)


def test_weight_decay_uses_the_variables_own_rate():
    import keras

    model = _two_dense()
    stage = StageConfig(optimizer="adamw", learning_rate=0.1, weight_decay=0.5,
                        lr_multipliers={"/slow/": 0.1})
    zeros = [keras.ops.zeros(v.shape) for v in model.trainable_variables]
    kernels = {v.path: np.array(v.numpy()) for v in model.trainable_variables}
    delta, _ = _first_step(model, stage, zeros)  # only the decay moves the weights
    for path in ("m/slow/kernel", "m/fast/kernel"):
        lr = 0.1 * (0.1 if "slow" in path else 1.0)
        np.testing.assert_allclose(delta[path], np.abs(kernels[path]) * 0.5 * lr, rtol=1e-4)


def _layers(*names):
    return [SimpleNamespace(name=n, weights=[SimpleNamespace(path=f"{n}/kernel")])
            for n in names]


def test_blocks_follow_layer_name_numbers_and_embeddings_are_lowest():
    bert = _layers("token_embedding", "segment_embedding", "embeddings_layer_norm",
                   "transformer_layer_0", "transformer_layer_1", "pooled_dense")
    assert [(n, [layer.name for layer in ls]) for n, ls in backbone_blocks(bert)] == [
        (STEM, ["token_embedding", "segment_embedding", "embeddings_layer_norm"]),
        ("transformer_layer_0", ["transformer_layer_0"]),
        ("transformer_layer_1", ["transformer_layer_1", "pooled_dense"])]
    resnet = _layers("conv1_conv", "conv1_bn", "conv2_block1_1_conv", "conv2_block3_3_bn",
                     "conv3_block1_0_conv", "conv5_block3_3_bn")
    assert [n for n, _ in backbone_blocks(resnet)] == ["conv1", "conv2", "conv3", "conv5"]
    backbone = SimpleNamespace(name="bert", network=SimpleNamespace(layers=bert))
    mults, summary = stage_multipliers(SimpleNamespace(weights=[]), backbone,
                                       StageConfig(layer_lr_decay=0.5))
    by_path = {v.path: mults[id(v)] for layer in bert for v in layer.weights}
    assert by_path["transformer_layer_1/kernel"] == by_path["pooled_dense/kernel"] == 0.5
    assert by_path["transformer_layer_0/kernel"] == 0.25
    assert by_path["token_embedding/kernel"] == by_path["embeddings_layer_norm/kernel"] == 0.125
    assert summary[0] == "head x1" and summary[-1] == f"{STEM} x0.125"


def test_lr_group_config_errors():
    base = {"name": "x", "backbone": {"name": "tiny_cnn"}}
    for stage, message in [
        ({"learning_rate": "fast"}, "expected a positive number or auto. Received: "
                                    "stages[0].learning_rate='fast'"),
        ({"layer_lr_decay": 1.5}, "expected a number in (0, 1]. Received: "
                                  "stages[0].layer_lr_decay=1.5"),
        ({"lr_multipliers": {"conv1": -1}}, "expected a multiplier >= 0. Received: "
                                            "stages[0].lr_multipliers['conv1']=-1"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config({**base, "stages": [stage]})
        assert str(err.value) == message
    with pytest.raises(ConfigError, match=r"lr_multipliers\['\('\]"):
        load_config({**base, "stages": [{"lr_multipliers": {"(": 2}}]})
    cfg = load_config({**base, "stages": [{"learning_rate": "auto"}]})
    assert cfg.stages[0].learning_rate == "auto"
    model = _two_dense()
    with pytest.raises(ConfigError, match=r"matching at least one variable path.*"
                                          r"stage.lr_multipliers\['conv9'\]"):
        stage_multipliers(model, None, StageConfig(lr_multipliers={"conv9": 2.0}))


def test_lr_find_suggestion_rules():
    from kerasft.training.lr_find import smooth, suggest

    lrs = list(np.geomspace(1e-6, 1, 60))
    x = np.log10(lrs)
    losses = list(2.0 - np.tanh(2 * (x + 3)) + np.where(x > -0.5, 30 * (x + 0.5) ** 2, 0))
    smoothed = smooth(losses, beta=0.0)  # beta 0: no smoothing, the curve itself
    suggestion, steepest, minimum_over_10 = suggest(lrs, smoothed, "steepest")
    assert suggestion == steepest and 10 ** -3.2 < steepest < 10 ** -2.8  # tanh's steepest
    low = int(np.argmin(smoothed))
    assert minimum_over_10 == pytest.approx(lrs[low] / 10)
    assert suggest(lrs, smoothed, "minimum")[0] == minimum_over_10


def _image_config(tmp_path: Path, stages: list, **training) -> dict:
    from tests.test_resume import _images

    return {
        "name": "lr", "seed": 3, "output_dir": str(tmp_path / "runs"),
        "backbone": {"name": "tiny_cnn", "weights": "none"}, "head": {"dropout": 0.0},
        "data": {"source": "image_folder", "train": str(_images(tmp_path / "images", 8)),
                 "validation_split": 0.25, "batch_size": 2},
        "stages": stages,
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "lr_find": {"steps": 8}, **training},
        "export": {"enabled": False},
    }


def test_cli_lr_find_keeps_the_weights_and_writes_the_sweep(tmp_path, monkeypatch):
    from kerasft.api import FineTuner
    from kerasft.cli import main

    seen = {}
    original = FineTuner.lr_find

    def spy(self, *args, **kwargs):  # the model before and after the sweep
        self._prepare_runtime()
        self.build(["cat", "dog", "owl"])
        seen["before"] = [np.array(w) for w in self.model.get_weights()]
        out = original(self, *args, **kwargs)
        seen["after"] = self.model.get_weights()
        return out

    monkeypatch.setattr(FineTuner, "lr_find", spy)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_image_config(tmp_path, [
        {"name": "head", "trainable": "head"},
        {"name": "all", "trainable": "all", "learning_rate": "auto", "layer_lr_decay": 0.5}])))
    result = CliRunner().invoke(main, ["lr-find", str(config), "--stage", "3"])
    assert result.exit_code == 2
    assert result.output == ("Error: expected a stage number from 1 to 2 (as the logs number "
                             "stages). Received: --stage=3\n")
    result = CliRunner().invoke(main, ["lr-find", str(config)])  # the stage with auto: 2
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("lr-lr-find-")
    assert "lr-find: stage 2 'all'" in result.output
    assert "multipliers: head x1, conv2 x0.5, conv1 x0.25" in result.output
    suggestion = float(result.output.split("suggested learning_rate: ")[1].split()[0])
    rows = (folder / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "step,learning_rate,loss,smoothed_loss" and 5 <= len(rows) - 1 <= 8
    lrs = [float(r.split(",")[1]) for r in rows[1:]]
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert lrs[0] <= suggestion <= 1.0
    assert (folder / "lr_find.png").stat().st_size > 0 and (folder / "config.yaml").is_file()
    for before, after in zip(seen["before"], seen["after"], strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.slow
def test_auto_learning_rate_is_recorded_and_resume_reuses_it(tmp_path, monkeypatch):
    from tests.test_resume import Interrupted, _finetuner, _interrupt_at

    cfg = _image_config(tmp_path, [{"name": "all", "trainable": "all", "epochs": 2,
                                    "optimizer": "adamw", "weight_decay": 0.01,
                                    "learning_rate": "auto", "layer_lr_decay": 0.8}])
    _interrupt_at(monkeypatch, "commit@1")  # the second epoch never commits
    with pytest.raises(Interrupted):
        _finetuner(cfg).fit(evaluate=False)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    found = yaml.safe_load((run_dir / "config.yaml").read_text())["stages"][0]["learning_rate"]
    assert isinstance(found, float) and 1e-7 <= found <= 1.0
    assert (run_dir / "lr_find_stage1.csv").is_file()
    sweep = (run_dir / "lr_find_stage1.csv").read_bytes()
    ft = _finetuner(cfg)  # the config still says auto
    ft.fit(resume=True, evaluate=False)
    assert ft.config.stages[0].learning_rate == found
    log = (run_dir / "train.log").read_text()
    assert log.count("lr-find: suggested") == 1  # no second sweep
    assert f"learning_rate auto = {found:.3g} (found by the run's LR sweep)" in log
    assert (run_dir / "lr_find_stage1.csv").read_bytes() == sweep
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["status"] == "finished" and state["epoch"] == 2
    # The per-variable optimizer's state came back: its step count covers both epochs.
    assert int(ft.model.optimizer.iterations.numpy()) == 2 * 9  # 18 training images, batch 2
    assert type(ft.model.optimizer).__name__ == "LayerwiseFusedAdamW"
