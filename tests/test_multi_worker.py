"""Multi-worker and TPU runs (kerasft/training/strategy.py, distribution.py, run_folder.py):
strategy choice, sharding and padding, run folder naming, ``kerasft train --dry-run``, and a real
2-worker ``kerasft train`` on loopback."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from kerasft.config import STEPS_PER_EXECUTION_BUG, load_config
from kerasft.errors import ConfigError, KerasftError
from kerasft.training.distribution import distribute_pipeline, pad_to_full_batches, steps_per_epoch
from kerasft.training.run_folder import open_run_folder, resolve_run_id
from kerasft.training.strategy import (
    Placement,
    StrategyInfo,
    placement,
    resolve_strategy,
    select_strategy_kind,
    tpu_address,
)
from tests.cluster import REPO, run_cluster
from tests.data_fixtures import write_png

WORKER_SCRIPT = REPO / "tests" / "multi_worker_train.py"


def two_workers(index: int = 0) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                     "task": {"type": "worker", "index": index}})}


def write_images(root: Path, per_class: int = 15, size: int = 16) -> Path:
    """3 classes of small PNGs whose class shows in the mean colour."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.uniform(0, 80, size=(size, size, 3))
            image[..., c] += 150
            write_png(root / name / f"{i}.png", image.astype("uint8"))
    return root


def image_config(tmp_path: Path, images: Path, **training) -> dict:
    return {
        "name": "tiny", "seed": 3, "output_dir": str(tmp_path / "runs"),
        "backbone": {"name": "tiny_cnn", "weights": "none", "input_shape": [16, 16, 3]},
        "data": {"source": "image_folder", "train": str(images), "validation_split": 0.2,
                 "batch_size": 8},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.01},
                   {"name": "all", "trainable": "all", "epochs": 2, "learning_rate": 0.001}],
        "training": {"strategy": "auto", "verbose": "epoch", "tensorboard": True, **training},
        "export": {"dir": str(tmp_path / "saved_models")},
    }


# --------------------------------------------------------------------------- strategy choice


@pytest.mark.parametrize("env, training, kind", [
    ({}, {}, "default"),
    ({"TPU_NAME": "my-tpu"}, {}, "tpu"),
    ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, {}, "tpu"),
    ({"KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS": "grpc://10.0.0.2:8470"}, {}, "tpu"),
    ({"TPU_NAME": ""}, {}, "default"),
    ({}, {"tpu": "local"}, "tpu"),
    (two_workers(), {}, "multi_worker"),
    ({"TPU_NAME": "t", **two_workers()}, {}, "tpu"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["h:1"]},
                               "task": {"type": "worker", "index": 0}})}, {}, "default"),
    ({}, {"devices": ["/cpu:0", "/cpu:1"]}, "mirrored"),
    (two_workers(), {"strategy": "mirrored"}, "mirrored"),
    ({"TPU_NAME": "t"}, {"strategy": "default"}, "default"),
])
def test_select_strategy_kind(env, training, kind):
    cfg = load_config({"training": training})
    assert select_strategy_kind(cfg, env) == kind


def test_auto_counts_gpus_only_when_needed():
    cfg = load_config({})
    assert select_strategy_kind(cfg, {}, lambda: 2) == "mirrored"
    assert select_strategy_kind(cfg, {}, lambda: 1) == "default"

    def boom() -> int:
        raise AssertionError("counting GPUs initialises TensorFlow: not before multi_worker")

    assert select_strategy_kind(cfg, two_workers(), boom) == "multi_worker"


def test_tpu_address_precedence():
    assert tpu_address(load_config({"training": {"tpu": "local"}}), {"TPU_NAME": "x"}) == "local"
    cfg = load_config({})
    assert tpu_address(cfg, {"COLAB_TPU_ADDR": "10.0.0.2:8470", "TPU_NAME": "x"}) == \
        "grpc://10.0.0.2:8470"
    assert tpu_address(cfg, {"TPU_NAME": "my-tpu"}) == "my-tpu"
    assert tpu_address(cfg, {}) is None  # TPUClusterResolver discovers it


def test_unreachable_tpu_address_fails_fast():
    import socket

    from kerasft.training.strategy import check_tpu_reachable

    check_tpu_reachable(None)
    check_tpu_reachable("local")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_tpu_reachable(f"grpc://127.0.0.1:{port}")
    with pytest.raises(KerasftError) as info:  # the listener is closed now
        check_tpu_reachable(f"grpc://127.0.0.1:{port}", timeout_s=5)
    assert "\n" not in str(info.value)
    assert f"Received: training.tpu='grpc://127.0.0.1:{port}'" in str(info.value)


def test_steps_per_execution_rejected_for_multi_worker():
    with pytest.raises(ConfigError) as info:
        load_config({"training": {"strategy": "multi_worker", "steps_per_execution": 4}})
    message = str(info.value)
    assert "\n" not in message and "keras-team/keras#19246" in message
    assert message.endswith("Received: training.steps_per_execution=4")
    # auto + a multi-worker TF_CONFIG: rejected before the strategy (and its server) is created.
    cfg = load_config({"training": {"steps_per_execution": 2}})
    with pytest.raises(ConfigError, match=re.escape(STEPS_PER_EXECUTION_BUG)):
        resolve_strategy(cfg, env=two_workers())
    # Other strategies keep steps_per_execution.
    load_config({"training": {"strategy": "mirrored", "steps_per_execution": 4}})


def test_placement_reads_tf_config():
    assert placement("default", two_workers(1)) == Placement("default")
    worker1 = placement("multi_worker", two_workers(1))
    assert (worker1.workers, worker1.task, worker1.is_chief) == (2, "worker 1", False)
    assert placement("multi_worker", two_workers(0)).is_chief
    with_chief = {"TF_CONFIG": json.dumps({"cluster": {"chief": ["h:0"], "worker": ["h:1"]},
                                           "task": {"type": "worker", "index": 0}})}
    assert not placement("multi_worker", with_chief).is_chief
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        placement("multi_worker", {})


# --------------------------------------------------------------------------- batches


def test_steps_per_epoch():
    assert steps_per_epoch(45, 8, drop_remainder=False) == 6
    assert steps_per_epoch(45, 8, drop_remainder=True) == 5
    assert steps_per_epoch(3, 8, drop_remainder=False) == 1
    with pytest.raises(KerasftError, match=r"full global batch.*Received: training examples=3"):
        steps_per_epoch(3, 8, drop_remainder=True)


def _batches(n: int, batch: int) -> tf.data.Dataset:
    x = np.arange(n * 2, dtype="float32").reshape(n, 2)
    y = (np.arange(n) % 2).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def test_pad_to_full_batches():
    padded = list(pad_to_full_batches(_batches(5, 4), 5, 4).as_numpy_iterator())
    assert [len(y) for _, y, _ in padded] == [4, 4]
    (x0, _, w0), (x1, y1, w1) = padded
    np.testing.assert_allclose(w0, [1.6] * 4)  # 8 padded rows / 5 real ones
    np.testing.assert_allclose(w1, [1.6, 0, 0, 0])
    np.testing.assert_array_equal(x1, [[8, 9]] * 4)  # padding repeats the batch's first row
    np.testing.assert_array_equal(y1, [0, 0, 0, 0])
    spec = pad_to_full_batches(_batches(5, 4), 5, 4).element_spec
    assert all(s.shape.is_fully_defined() for s in spec)


def test_padded_evaluation_is_exact():
    """Keras divides the loss by the padded batch length; the weights compensate exactly."""
    import keras

    from kerasft.training.loop import compile_stage

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    cfg = load_config({})
    compile_stage(model, cfg.stages[0], cfg, steps_per_epoch=4, num_classes=2)
    plain = model.evaluate(_batches(13, 4), verbose=0, return_dict=True)
    padded = model.evaluate(pad_to_full_batches(_batches(13, 4), 13, 4), verbose=0,
                            return_dict=True)
    assert padded["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert padded["accuracy"] == pytest.approx(plain["accuracy"], rel=1e-6)
    predictions = model.predict(pad_to_full_batches(_batches(13, 4), 13, 4), verbose=0)
    assert len(predictions) == 16
    np.testing.assert_allclose(predictions[:13], model.predict(_batches(13, 4), verbose=0),
                               atol=1e-6)


def test_distribute_pipeline_by_kind():
    ds = _batches(5, 4)
    assert distribute_pipeline(ds, "default", size=5, global_batch=4, training=False) is ds
    assert distribute_pipeline(ds, "mirrored", size=5, global_batch=4, training=True) is ds
    data_policy = tf.data.experimental.AutoShardPolicy.DATA
    for kind in ("multi_worker", "tpu"):
        train = distribute_pipeline(ds, kind, size=5, global_batch=4, training=True)
        assert train.options().experimental_distribute.auto_shard_policy == data_policy
        assert len(train.element_spec) == 2
        evaluation = distribute_pipeline(ds, kind, size=5, global_batch=4, training=False)
        assert evaluation.options().experimental_distribute.auto_shard_policy == data_policy
        assert len(evaluation.element_spec) == 3


def _fake_tpu(ft) -> None:
    """The TPU code paths of FineTuner without a TPU: the default strategy labelled 'tpu'."""
    ft.strategy_info = StrategyInfo(tf.distribute.get_strategy(), "tpu", 8)


def test_tpu_image_pipelines_have_static_shapes(image_arrays):
    from kerasft.api import build_finetuner
    from kerasft.data.arrays import from_arrays

    x, y = image_arrays
    ft = build_finetuner({"backbone": {"name": "tiny_cnn", "weights": "none"},
                          "data": {"batch_size": 8}}, log=lambda s: None)
    _fake_tpu(ft)
    data = from_arrays(x, y, validation_split=0.2, seed=0)
    ft.build(data.class_names)
    train = ft._pipeline(data.train, training=True)
    evaluation = ft._pipeline(data.validation, training=False)
    for ds in (train, evaluation):
        for spec in ds.element_spec:
            assert spec.shape.is_fully_defined(), ds.element_spec
            assert spec.shape[0] == 8
    assert sum(1 for _ in train) == data.train.size // 8


def test_tpu_text_pipeline_keeps_fixed_length(tmp_path):
    """data.bucket_by_length trims batches to their longest text; on TPU it is off."""
    from kerasft.api import build_finetuner
    from kerasft.data.arrays import from_arrays
    from tests.bert_fixtures import write_tiny_bert_preset
    from tests.test_text import BAD, GOOD

    preset = write_tiny_bert_preset(tmp_path / "kh")
    texts = GOOD * 2 + BAD * 2
    labels = ["pos"] * len(GOOD) * 2 + ["neg"] * len(BAD) * 2
    ft = build_finetuner({"backbone": {"name": "bert", "preset": preset, "sequence_length": 16},
                          "data": {"batch_size": 4, "bucket_by_length": True}},
                         log=lambda s: None)
    _fake_tpu(ft)
    data = from_arrays(np.array(texts, dtype=object), np.array(labels), validation_split=0.25,
                       seed=0)
    ft.build(data.class_names)
    for training in (True, False):
        x_spec = ft._pipeline(data.train, training=training).element_spec[0]
        for name, spec in x_spec.items():
            assert spec.shape.as_list() == [4, 16], (name, spec)


def test_compile_stage_scales_learning_rate_linearly():
    import keras

    from kerasft.training.loop import compile_stage

    cfg = load_config({"training": {"lr_scaling": "linear"},
                       "stages": [{"name": "head", "learning_rate": 0.002}]})
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    compile_stage(model, cfg.stages[0], cfg, steps_per_epoch=3, num_classes=2, replicas=4)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.008)
    cfg.training.lr_scaling = "none"
    compile_stage(model, cfg.stages[0], cfg, steps_per_epoch=3, num_classes=2, replicas=4)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.002)


# --------------------------------------------------------------------------- run folder


def test_run_folder_single_process(tmp_path):
    single = Placement("default")
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    first = open_run_folder(tmp_path, "m", None, single, now=now)
    second = open_run_folder(tmp_path, "m", None, single, now=now)
    assert first.run_dir.name == "m-20260102-030405" and first.write_dir == first.run_dir
    assert second.run_dir.name == "m-20260102-030405-2" and second.run_dir.is_dir()
    named = open_run_folder(tmp_path, "m", "job-7", single)
    assert named.run_dir == tmp_path / "m-job-7" and not named.temporary
    with pytest.raises(KerasftError, match=r"a new run id.*Received: run id='job-7'"):
        open_run_folder(tmp_path, "m", "job-7", single)


def test_run_id_from_option_or_environment():
    assert resolve_run_id(None, {}) is None
    assert resolve_run_id(None, {"KERASFT_RUN_ID": "tfjob-a1"}) == "tfjob-a1"
    assert resolve_run_id("x.2", {"KERASFT_RUN_ID": "tfjob-a1"}) == "x.2"
    for bad in ("../up", "a/b", "-x", "", "é"):
        if bad:
            with pytest.raises(ConfigError, match="Received: run id="):
                resolve_run_id(bad, {})


def test_fit_uses_run_id(tmp_path, image_arrays):
    from kerasft.api import build_finetuner

    x, y = image_arrays
    ft = build_finetuner({"backbone": {"name": "tiny_cnn", "weights": "none"},
                          "data": {"batch_size": 16},
                          "training": {"tensorboard": False, "verbose": "silent"}},
                         log=lambda s: None)
    summary = ft.fit(x, y, output_dir=tmp_path, run_id="r1", evaluate=False)
    assert summary["run_dir"] == str(tmp_path / "model-r1")
    assert (tmp_path / "model-r1" / "model.weights.h5").is_file()


# --------------------------------------------------------------------------- dry run


def test_plan_creates_no_strategy(monkeypatch, tmp_path, image_arrays):
    from kerasft.api import build_finetuner

    monkeypatch.setenv("TF_CONFIG", two_workers(1)["TF_CONFIG"])
    x, y = image_arrays  # 60 images: 54 train, 6 validation
    ft = build_finetuner({"backbone": {"name": "tiny_cnn", "weights": "none"},
                          "output_dir": str(tmp_path / "runs"),
                          "data": {"batch_size": 8},
                          "training": {"lr_scaling": "linear"},
                          "stages": [{"name": "head", "epochs": 2, "learning_rate": 0.01},
                                     {"name": "all", "trainable": "all", "epochs": 1}],
                          "export": {"dir": str(tmp_path / "saved")}}, log=lambda s: None)
    plan = ft.plan(x, y, run_id="r9")
    assert ft.strategy_info is None  # nothing created: no port bound
    assert plan["strategy"] == "multi_worker" and plan["workers"] == 2
    assert plan["replicas"] == 2 and plan["per_replica_batch"] == 4
    assert plan["data"]["train"] == 54 and plan["data"]["validation"] == 6
    assert plan["steps_per_epoch"] == 6  # 54 // 8: the remainder is dropped
    assert [s["steps"] for s in plan["stages"]] == [12, 6] and plan["total_steps"] == 18
    assert plan["stages"][0]["effective_learning_rate"] == pytest.approx(0.02)
    assert plan["run_dir"] == str(tmp_path / "runs" / "model-r9")
    assert plan["export"]["path"] == str(tmp_path / "saved" / "model" / "1")
    assert not plan["chief"]
    text = "\n".join(plan["lines"])
    assert "temporary folders" in text and "AutoShardPolicy.DATA" in text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "saved").exists()


def _invoke(tmp_path, monkeypatch, env: dict[str, str], command: str, args: tuple[str, ...],
            per_class: int, **training):
    """`kerasft COMMAND cfg.yaml ARGS` on a folder of images, with `env` as the environment."""
    images = write_images(tmp_path / "images", per_class=per_class)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(image_config(tmp_path, images, **training)))
    for key in ("KERASFT_RUN_ID", "TF_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from kerasft.cli import main

    return CliRunner().invoke(main, [command, str(config), *args])


def _dry_run(tmp_path, monkeypatch, env: dict[str, str], *args: str, **training):
    return _invoke(tmp_path, monkeypatch, env, "train", ("--dry-run", *args), 10, **training)


def test_cli_dry_run_multi_worker(tmp_path, monkeypatch):
    result = _dry_run(tmp_path, monkeypatch, two_workers(0), "--run-id", "job-3")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "strategy: multi_worker (MultiWorkerMirroredStrategy)" in out
    assert "workers: 2 (this process: worker 0, chief)" in out
    assert "replicas: 2" in out
    assert "global batch: 8, per-replica batch: 4, last partial training batch dropped" in out
    assert "train 24, validation 6, test 0 examples" in out  # 30 images, validation_split 0.2
    assert "steps per epoch: 3 training, 1 validation" in out
    assert "stage 'head': 1 epochs x 3 steps = 3 steps" in out
    assert "stage 'all': 2 epochs x 3 steps = 6 steps" in out
    assert "total: 3 epochs, 9 steps" in out
    assert f"run folder: {tmp_path / 'runs' / 'tiny-job-3'}" in out
    assert f"export: {tmp_path / 'saved_models' / 'tiny' / '1'} (version 1)" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "saved_models").exists()


def test_cli_dry_run_single_process(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = _dry_run(tmp_path, monkeypatch, {}, "--no-export")
    assert result.exit_code == 0, result.output
    assert "strategy: default" in result.output and "workers: 1" in result.output
    assert "steps per epoch: 3 training" in result.output  # ceil(24 / 8)
    assert "tiny-<start time YYYYmmdd-HHMMSS>" in result.output
    assert "export: disabled" in result.output


def test_cli_dry_run_rejects_unknown_backbone(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    images = write_images(tmp_path / "images", per_class=4)
    config = tmp_path / "cfg.yaml"
    cfg = image_config(tmp_path, images)
    cfg["backbone"]["name"] = "tiny_cn"
    config.write_text(yaml.safe_dump(cfg))
    from kerasft.cli import main

    result = CliRunner().invoke(main, ["train", str(config), "--dry-run"])
    assert result.exit_code == 2 and "Did you mean 'tiny_cnn'?" in result.output


def test_cli_dry_run_rejects_steps_per_execution(tmp_path, monkeypatch):
    result = _dry_run(tmp_path, monkeypatch, two_workers(1), steps_per_execution=2)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()[-1:]
    assert line.startswith("Error: ") and "keras-team/keras#19246" in line


# --------------------------------------------------------------------------- validate, batch


def _validate(tmp_path, monkeypatch, env: dict[str, str], **training):
    return _invoke(tmp_path, monkeypatch, env, "validate", (), 4, **training)


def test_validate_detects_multi_worker_under_auto(tmp_path, monkeypatch):
    result = _validate(tmp_path, monkeypatch, two_workers(1))
    assert result.exit_code == 0, result.output
    assert "TF_CONFIG: OK (2 workers; this process: worker 1)" in result.output
    # strategy auto + a 2-worker TF_CONFIG = multi_worker: steps_per_execution is refused here,
    # before anything starts, not only at train time.
    result = _validate(tmp_path / "b", monkeypatch, two_workers(0), steps_per_execution=3)
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert "keras-team/keras#19246" in last and last.endswith("steps_per_execution=3")
    assert "Traceback" not in result.output


def test_global_batch_needs_one_example_per_replica():
    from kerasft.training.strategy import check_global_batch

    check_global_batch(8, 8, "tpu")
    check_global_batch(8, 2, "multi_worker")
    # Uneven pieces: Keras's fit reduces the first batch across replicas, which needs equal
    # shapes (and TPUs need static ones).
    with pytest.raises(ConfigError, match=r"divisible by the 2 replicas under multi_worker "
                                          r".*e.g. 8 or 10\)\. Received: data.batch_size=9"):
        check_global_batch(9, 2, "multi_worker")
    with pytest.raises(ConfigError) as info:
        check_global_batch(2, 4, "mirrored")
    assert str(info.value).endswith("Received: data.batch_size=2")
    assert "4 replicas under mirrored" in str(info.value)
    with pytest.raises(ConfigError, match=r"divisible by the 8 replicas under tpu.*batch_size=12"):
        check_global_batch(12, 8, "tpu")


def test_resolve_strategy_checks_the_global_batch():
    cfg = load_config({"data": {"batch_size": 1},
                       "training": {"devices": ["/cpu:0", "/cpu:1"]}})
    with pytest.raises(ConfigError, match=r"2 replicas under mirrored.*batch_size=1"):
        resolve_strategy(cfg, env={})


def _committed_run(tmp_path: Path) -> Path:
    """A run folder as a chief leaves it: config, history, labels, state and one checkpoint."""
    run = tmp_path / "runs" / "m-job"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: m\n")
    (run / "history.csv").write_text("stage,epoch\nhead,1\n")
    (run / "labels.txt").write_text("a\nb\n")
    (run / "checkpoints" / "ckpt-000001.weights.h5").write_bytes(b"w")
    (run / "checkpoints" / "ckpt-000001.state.npz").write_bytes(b"s")
    (run / "checkpoints" / "ckpt-000000.weights.h5").write_bytes(b"old, unreferenced")
    (run / "checkpoints" / "state.json").write_text(json.dumps(
        {"format": 2, "commit": 1, "epoch": 1, "weights": "ckpt-000001.weights.h5",
         "arrays": "ckpt-000001.state.npz"}))
    return run


def test_non_chief_resumes_from_a_private_copy(tmp_path, monkeypatch):
    """A non-chief worker copies the committed checkpoint into its temporary folder, resumes
    that, and every worker fails with one line when another worker read another state."""
    from kerasft.training import run_folder
    from kerasft.training.checkpoints import copy_committed_run

    run = _committed_run(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    worker1 = placement("multi_worker", two_workers(1))
    seen = []

    def agree_with(chief_row):
        def agree(strategy, mine, chief):
            return chief_row(mine), [chief_row(mine), mine]
        return agree

    monkeypatch.setattr(run_folder, "agree", agree_with(lambda mine: list(mine)))
    folder, result = run_folder.resume_run_folder(
        lambda: run, lambda d: seen.append(d) or "ckpt", worker1,
        copy=lambda r, t: copy_committed_run(r, t, ("labels.txt",)))
    assert result == "ckpt" and folder.run_dir == run and folder.temporary
    copy = folder.write_dir
    assert copy.parent == tmp_path / "tmp" and seen == [copy]
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == [
        "ckpt-000001.state.npz", "ckpt-000001.weights.h5", "state.json"]
    assert (copy / "labels.txt").read_text() == "a\nb\n"
    assert (copy / "history.csv").read_text() == (run / "history.csv").read_text()
    folder.close()
    assert not copy.exists()
    # The chief resumed another state (e.g. a worker read a stale copy of the folder).
    monkeypatch.setattr(run_folder, "agree",
                        agree_with(lambda mine: [mine[0], mine[1], mine[2] + 1, 0.0]))
    with pytest.raises(KerasftError) as info:
        run_folder.resume_run_folder(lambda: run, lambda d: "ckpt", worker1,
                                     copy=copy_committed_run)
    assert "same run folder at the same commit" in str(info.value)
    assert list((tmp_path / "tmp").iterdir()) == []  # the private copy is gone
    # A worker that cannot read the run folder: its own error says why, with the hint.
    monkeypatch.setattr(run_folder, "agree", agree_with(lambda mine: [0.0, *mine[1:]]))
    with pytest.raises(KerasftError) as info:
        run_folder.resume_run_folder(lambda: tmp_path / "nowhere", lambda d: "ckpt", worker1,
                                     copy=copy_committed_run)
    message = str(info.value)
    assert "\n" not in message and "Received: resume=" in message
    assert "every worker reads the chief's run folder" in message


# --------------------------------------------------------------------------- 2 real workers


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory):
    """`kerasft train` on 2 workers (loopback), uninterrupted: (tmp folder, ClusterRun)."""
    tmp_path = tmp_path_factory.mktemp("two_workers")
    images = write_images(tmp_path / "images")  # 45 images: 36 train, 9 validation
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(image_config(tmp_path, images, deterministic=True)))
    out = tmp_path / "cluster"
    run = run_cluster(out, lambda i: [str(WORKER_SCRIPT), str(out / f"weights_{i}.npy"),
                                      str(config)], timeout_s=240)
    return tmp_path, run


@pytest.mark.slow
def test_two_workers_train_end_to_end(two_worker_run):
    """Both workers exit 0, one run folder and one export (the chief's), nothing left in the
    workers' temporary folders, identical final weights, padded predictions in input order."""
    tmp_path, run = two_worker_run
    out = run.out.parent
    assert run.returncodes == [0, 0], run.tail()
    logs = run.logs
    # The CLI's last line names the run folder: the same on both workers (the chief's).
    folders = [re.findall(r"^run folder: (\S+)", log, re.M) for log in logs]
    assert len(set(folders[0] + folders[1])) == 1, run.tail()
    runs = sorted((tmp_path / "runs").iterdir())
    assert [str(p) for p in runs] == [folders[0][-1]]
    for name in ("model.weights.h5", "metrics.json", "history.csv", "config.yaml", "train.log",
                 "checkpoints/best.weights.h5", "tensorboard"):
        assert (runs[0] / name).exists(), name
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["examples"] == 9  # every validation example, none of the padding
    assert sorted(p.name for p in (tmp_path / "saved_models" / "tiny").iterdir()) == ["1"]
    assert all(f"SavedModel: {tmp_path / 'saved_models' / 'tiny' / '1'}" in log for log in logs)
    for i in range(2):  # TMPDIR of each worker: temporary run and export folders are gone
        assert list((run.out / f"tmp_{i}").iterdir()) == [], i
    assert "AutoShardPolicy.DATA" in logs[0] and "writes to a temporary folder" in logs[1]
    w0, w1 = (np.load(out / f"weights_{i}.npy") for i in range(2))
    assert np.all(np.isfinite(w0))
    # Gradients are all-reduced and batch-norm statistics averaged: every weight agrees.
    np.testing.assert_allclose(w0, w1, rtol=0, atol=1e-6)
    for i in range(2):  # 13 images on a global batch of 8: padded, cut, in input order
        predicted = np.load(out / f"weights_{i}.predict.npz")
        assert predicted["predict"].shape == (13, 3)
        np.testing.assert_allclose(predicted["predict"], predicted["direct"], atol=1e-5)


@pytest.mark.slow
def test_two_workers_resume_after_both_are_killed(two_worker_run, tmp_path):
    """Both workers killed (SIGKILL) mid-epoch in the second stage, then `kerasft train --resume
    RUN_DIR` on both: the run continues at the committed epoch from the chief's run folder and
    ends with the weights of the uninterrupted run."""
    reference_tmp, reference = two_worker_run
    assert reference.returncodes == [0, 0], reference.tail()
    images = write_images(tmp_path / "images")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(image_config(tmp_path, images, deterministic=True)))
    marker = tmp_path / "paused"
    out = tmp_path / "killed"
    killed = run_cluster(
        out, lambda i: [str(WORKER_SCRIPT), str(out / f"weights_{i}.npy"), str(config),
                        "--run-id", "job-1", "--no-export"], timeout_s=240,
        kill_when=marker.exists,
        extra_env={"KERASFT_TEST_PAUSE": "epoch@2", "KERASFT_TEST_PAUSE_FILE": str(marker)})
    assert marker.exists(), killed.tail()
    run_dir = tmp_path / "runs" / "tiny-job-1"
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert (state["stage"], state["epoch"]) == (1, 2), state  # stage 'all', its 2nd epoch next
    out = tmp_path / "resumed"
    resumed = run_cluster(out, lambda i: [str(WORKER_SCRIPT), str(out / f"weights_{i}.npy"),
                                          str(config), "--resume", str(run_dir), "--no-export"],
                          timeout_s=240)
    assert resumed.returncodes == [0, 0], resumed.tail()
    assert all(f"run folder: {run_dir}" in log and "(resumed)" in log for log in resumed.logs)
    assert "resuming" in resumed.logs[0] and "stage 2/2 'all', epoch 3" in resumed.logs[0]
    with open(run_dir / "history.csv", newline="") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [1, 2, 3]  # no gap, no repeat
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny-job-1"]
    for i in range(2):
        assert list((resumed.out / f"tmp_{i}").iterdir()) == [], i
    w0, w1 = (np.load(out / f"weights_{i}.npy") for i in range(2))
    np.testing.assert_allclose(w0, w1, rtol=0, atol=1e-6)
    expected_weights = np.load(reference.out.parent / "weights_0.npy")
    np.testing.assert_allclose(w0, expected_weights, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
