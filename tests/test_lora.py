"""LoRA stages on a tiny BERT: config, trainable count, what changes, checkpoints, resume,
export."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from kerasft.config import ConfigError, load_config
from tests.bert_fixtures import write_tiny_bert_preset
from tests.session_loader import SessionModel
from tests.test_text import BAD, GOOD, write_csv

LORA = {"rank": 4, "alpha": 8}


def _stage_cfg(**stage):
    return {"backbone": {"name": "bert", "preset": "x", "weights": "none"},
            "stages": [{"name": "lora", "trainable": "all", **stage}]}


def test_lora_config_is_validated():
    cfg = load_config(_stage_cfg(lora=8))
    assert cfg.stages[0].lora == {"rank": 8, "alpha": 8, "layers": None}
    cfg = load_config(_stage_cfg(lora={"rank": 8, "alpha": 16, "layers": ["query"]}))
    assert cfg.stages[0].lora == {"rank": 8, "alpha": 16, "layers": ["query"]}
    for lora, message in [
        (0, r"^expected a positive integer\. Received: "
            r"stages\[0\]\.lora\.rank=0$"),
        ({"rank": 2.5}, r"expected a positive integer\. Received: stages\[0\]\.lora\.rank=2\.5"),
        ({"rank": 8, "alpha": -1}, r"expected a positive number\. Received: .*lora\.alpha=-1"),
        ({"rank": 8, "layers": []}, r"expected a non-empty list of layer names.*lora\.layers=\[\]"),
        ({"rank": 8, "layers": "query"}, r"expected a non-empty list.*lora\.layers='query'"),
        ({"rank": 8, "ranks": 2}, r"unknown key='stages\[0\]\.lora\.ranks'"),
        ("eight", r"expected a rank or a mapping.*stages\[0\]\.lora='eight'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(_stage_cfg(lora=lora))
    with pytest.raises(ConfigError, match=r"^expected all, \{top_n: N\}.* with lora.*"
                                          r"Received: stages\[0\]\.trainable='head'$"):
        load_config(_stage_cfg(lora=8, trainable="head"))


def test_lora_on_an_image_backbone_is_a_one_line_error():
    import tests.tiny_backbone  # noqa: F401 - registers tiny_cnn
    from kerasft.models.registry import build_backbone
    from kerasft.training.stages import check_stages

    cfg = load_config({"backbone": {"name": "tiny_cnn", "weights": "none"},
                       "stages": [{"name": "l", "trainable": "all", "lora": 4}]})
    with pytest.raises(ConfigError, match=r"^expected a KerasHub text backbone for lora "
                                          r".*Received: stages\[0\]\.lora='tiny_cnn'$") as e:
        check_stages(build_backbone(cfg.backbone), cfg)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# One tiny BERT run: a LoRA stage (top_n: 1, 2 epochs) interrupted in its second epoch and
# resumed. (One compile of a BERT train step costs seconds: what a later stage sees is checked
# without fitting it.)


def _config(tmp_path, preset, train):
    return {
        "name": "lora", "seed": 3, "output_dir": str(tmp_path / "runs"),
        "backbone": {"name": "bert", "preset": preset, "sequence_length": 16},
        "data": {"source": "csv", "train": train, "batch_size": 8},
        "stages": [
            {"name": "lora", "trainable": {"top_n": 1}, "lora": dict(LORA), "epochs": 2,
             "learning_rate": 0.01},
        ],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "monitor": "loss"},
        "export": {"dir": str(tmp_path / "saved_models"), "verify": False},
    }


def _backbone_weights(ft):
    return {v.path: np.array(v.numpy()) for v in ft.backbone.network.weights
            if "lora_" not in v.path}


def _head_weights(ft):
    names = {v.path for v in ft.backbone.network.weights}
    return {v.path: np.array(v.numpy()) for v in ft.model.weights if v.path not in names}


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import kerasft.training.checkpoints as resume
    from kerasft.api import build_finetuner

    tmp_path = tmp_path_factory.mktemp("lora")
    preset = write_tiny_bert_preset(tmp_path / "kh")
    rows = [(t, "pos") for t in GOOD] * 2 + [(t, "neg") for t in BAD] * 2
    cfg = _config(tmp_path, preset, write_csv(tmp_path / "train.csv", rows))
    seen = {"lines": []}

    def pause(point, epoch):
        if f"{point}@{epoch}" == "commit@1":  # the LoRA stage's 2nd epoch, never committed
            raise Interrupted

    def first_log(line):
        if line.startswith("stage 1/1"):
            seen["start"] = _backbone_weights(first)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resume, "pause_point", pause)
        first = build_finetuner(cfg, log=first_log)
        with pytest.raises(Interrupted):
            first.fit(evaluate=False)
    (run_dir,) = (tmp_path / "runs").iterdir()
    ckpt = run_dir / "checkpoints"
    state = json.loads((ckpt / "state.json").read_text())
    with np.load(ckpt / state["lora"], allow_pickle=False) as npz:
        committed = {str(p): npz[f"w_{i}"] for i, p in enumerate(npz["paths"])}
    files = {"state": state, "committed": committed,
             "lora_size": (ckpt / state["lora"]).stat().st_size,
             "weights_size": (ckpt / state["weights"]).stat().st_size}

    def log(line):
        seen["lines"].append(line)
        if line.startswith("stage 1/1"):  # adapters enabled and restored, stage compiled
            seen["before"] = (_backbone_weights(ft), _head_weights(ft))
            seen["resumed"] = {v.path: np.array(v.numpy()) for v in ft.model.trainable_variables}
            seen["iterations"] = int(ft.model.optimizer.iterations.numpy())
        if "merged the LoRA adapters" in line:
            seen["after"] = (_backbone_weights(ft), _head_weights(ft))

    ft = build_finetuner(cfg, log=log)
    summary = ft.fit(resume=True, evaluate=False)
    return {"ft": ft, "summary": summary, "seen": seen, "cfg": cfg, "files": files,
            "tmp": tmp_path,
            "steps": math.ceil(len(rows) / 8)}


@pytest.mark.slow
def test_lora_stage_trains_adapters_and_head_then_merges(trained):
    ft, seen = trained["ft"], trained["seen"]
    network = ft.backbone.network
    top = network.get_layer("transformer_layer_1")
    targets = [layer for layer in top._flatten_layers() if layer.name in ("query", "value")]
    assert len(targets) == 2
    adapters = sum(math.prod(t.kernel.shape[:-1]) * LORA["rank"]
                   + LORA["rank"] * t.kernel.shape[-1] for t in targets)
    head = sum(v.size for v in seen["before"][1].values())
    stage = trained["summary"]["stages"][0]
    assert stage["trainable_params"] == adapters + head
    line = next(s for s in seen["lines"] if s.startswith("stage 1/1"))
    assert "LoRA rank 4 alpha 8 on 2 layers in 1 backbone layers" in line
    assert f"{adapters + head:,} trainable parameters" in line

    (before, head_before), (after, head_after) = seen["before"], seen["after"]
    merged = {t.kernel.path for t in targets}
    assert before.keys() == after.keys() and merged <= set(before)
    for path in before:  # every backbone weight but the two adapted kernels is bit-identical
        if path in merged:
            assert not np.allclose(before[path], after[path]), path
        else:
            np.testing.assert_array_equal(before[path], after[path], err_msg=path)
    assert any(not np.allclose(head_before[k], head_after[k]) for k in head_before)

    # After the merge the model is plain again: no adapters, and a later `all` stage trains
    # every weight of it (the merged kernels included).
    assert not [v.path for v in ft.model.weights if "lora_" in v.path]
    from kerasft.config import StageConfig
    from kerasft.training.stages import apply_trainable, count_params

    apply_trainable(ft.backbone, StageConfig(name="all", trainable="all"))
    assert count_params(ft.model.trainable_weights) == count_params(ft.model.weights)
    assert {t.kernel.path for t in targets} <= {v.path for v in ft.model.trainable_weights}
    ft.backbone.network.trainable = False


@pytest.mark.slow
def test_lora_checkpoint_holds_only_what_trains_and_resume_restores_it(trained):
    files, seen = trained["files"], trained["seen"]
    state = files["state"]
    assert (state["stage"], state["epoch"], state["has_optimizer"]) == (0, 1, True)
    assert all("lora_kernel" in p or "head" in p for p in files["committed"]), files["committed"]
    assert files["lora_size"] * 4 < files["weights_size"]  # the base the stage started from
    # The resumed stage starts from the committed adapters and head, its optimizer one epoch in,
    # over the base weights the stage started from.
    assert seen["resumed"].keys() == files["committed"].keys()
    for path, value in files["committed"].items():
        np.testing.assert_array_equal(seen["resumed"][path], value, err_msg=path)
    assert seen["iterations"] == trained["steps"]
    for path, value in seen["before"][0].items():
        np.testing.assert_array_equal(value, seen["start"][path], err_msg=path)
    assert [s["epochs_run"] for s in trained["summary"]["stages"]] == [2]


@pytest.mark.slow
def test_layers_missing_from_the_backbone_are_a_one_line_error(trained):
    from kerasft.training.stages import check_stages

    cfg = load_config({**copy.deepcopy(trained["cfg"]), "stages": [
        {"name": "l", "trainable": "all", "lora": {"rank": 2, "layers": ["query_dense"]}}]})
    with pytest.raises(ConfigError, match=r"^expected layer names present in bert "
                                          r"\(Dense/EinsumDense layers: .*query.*Received: "
                                          r"stages\[0\]\.lora\.layers=\['query_dense'\]$"):
        check_stages(trained["ft"].backbone, cfg)


@pytest.mark.slow
def test_export_merges_adapters_into_a_plain_saved_model(trained):
    import tensorflow as tf

    from kerasft.export.saved_model import export_saved_model
    from kerasft.models.lora import enable_lora, lora_layers

    ft = trained["ft"]
    # Adapters left enabled (an API user's own): the export folds them in.
    layer = ft.backbone.network.get_layer("transformer_layer_0")
    targets = [x for x in layer._flatten_layers() if x.name == "value"]
    enable_lora(ft.backbone.network, targets, {"rank": 2, "alpha": 4})
    targets[0].lora_kernel_b.assign(np.full(targets[0].lora_kernel_b.shape, 0.3, "float32"))
    ft.model.predict_function = None  # traced before the adapters existed
    texts = ["a great movie", "terrible and awful", "", "i liked it"]
    expected = ft.predict(texts)
    path = export_saved_model(ft.model, ft.backbone, ft.class_names, trained["tmp"] / "exports",
                              "lora", verify=False, check_ops=False, warmup=False,
                              log=lambda s: None)
    assert not lora_layers(ft.model)  # merged in place
    names = [n for n, _ in tf.train.list_variables(str(path / "variables" / "variables"))]
    assert names and not [n for n in names if "lora" in n]
    params = sum(math.prod(v.shape) for v in ft.model.weights) * 4
    size = sum(p.stat().st_size for p in (path / "variables").iterdir())
    assert size < 1.5 * params + 50_000
    with SessionModel(str(path)) as served:
        out = served.run("serving_default", text=np.array(texts, dtype=object))
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)


def test_f_net_without_query_value_layers_names_the_fix(tmp_path):
    from kerasft.models.registry import build_backbone
    from kerasft.training.stages import check_stages
    from tests.hub_presets import write_tiny_hub_preset

    preset = write_tiny_hub_preset(tmp_path / "fnet", "f_net")
    cfg = load_config({"backbone": {"name": "f_net", "preset": preset},
                       "stages": [{"name": "l", "trainable": "all", "lora": 2}]})
    with pytest.raises(ConfigError, match=r"^expected layer names present in f_net \(Dense/"
                                          r"EinsumDense layers: .*intermediate_dense.*\); set "
                                          r"stages\[0\]\.lora\.layers to some of them\. "):
        check_stages(build_backbone(cfg.backbone), cfg)
    cfg = load_config({"backbone": {"name": "f_net", "preset": preset}, "stages": [
        {"name": "l", "trainable": {"top_n": 1}, "lora": {"rank": 2,
                                                          "layers": ["intermediate_dense"]}}]})
    check_stages(build_backbone(cfg.backbone), cfg)  # the fix the message names works
