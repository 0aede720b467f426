"""MirroredStrategy on two logical CPU devices (set up in conftest), for images and for BERT."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kerasft.config import load_config
from kerasft.training.strategy import resolve_strategy
from tests.bert_fixtures import write_tiny_bert_preset
from tests.test_text import text_config


def _mirrored():
    return {"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"], "tensorboard": False,
            "verbose": "silent"}


@pytest.mark.slow
def test_image_fit_under_mirrored_strategy(image_arrays, tmp_path):
    from kerasft.api import build_finetuner

    x, y = image_arrays
    ft = build_finetuner({
        "backbone": {"name": "tiny_cnn", "weights": "none"},
        "data": {"source": "arrays", "batch_size": 8},
        "training": _mirrored(),
        "stages": [{"name": "head", "trainable": "head", "epochs": 1},
                   {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 1e-4}],
    }, log=lambda s: None)
    summary = ft.fit(x, y, output_dir=tmp_path)
    assert ft.strategy_info.replicas == 2
    assert type(ft.strategy_info.strategy).__name__ == "MirroredStrategy"
    assert np.isfinite(summary["stages"][-1]["final_logs"]["loss"])
    assert summary["metrics"]["examples"] == 6


@pytest.mark.slow
def test_bert_fit_under_mirrored_strategy(tmp_path):
    from kerasft.api import build_finetuner
    from tests.test_text import BAD, GOOD, write_csv

    preset = write_tiny_bert_preset(tmp_path / "kh")
    # Odd sizes: the last training batch (length-grouped, trimmed) and the test split (7, under
    # one global batch of 8) do not split evenly over the 2 replicas.
    rows = ([(t, "pos") for t in GOOD] * 2 + [(t, "neg") for t in BAD] * 2)[:-1]
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", rows[:7])
    cfg = text_config(preset, train, test, tmp_path, training=_mirrored())
    ft = build_finetuner(cfg, log=lambda s: None)
    summary = ft.fit()
    assert ft.strategy_info.replicas == 2
    assert all(np.isfinite(s["final_logs"]["loss"]) for s in summary["stages"])
    assert summary["metrics"]["examples"] == 7
    assert ft.export(verify=False).is_dir()  # the fresh-process check: tests/test_export.py


def test_auto_strategy_selection(monkeypatch):
    cfg = load_config({"training": {"strategy": "auto"}})
    info = resolve_strategy(cfg, env={})
    assert info.kind == "default" and info.replicas == 1
    two = load_config({"training": {"strategy": "auto", "devices": ["/cpu:0", "/cpu:1"]}})
    assert resolve_strategy(two, env={}).kind == "mirrored"


def test_strategy_description_names_replicas_and_batches():
    cfg = load_config({"training": {"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"]}})
    text = resolve_strategy(cfg, env=os.environ).describe(32)
    assert "replicas: 2" in text and "global batch: 32" in text and "per-replica batch: 16" in text


@pytest.mark.parametrize("strategy", ["tpu"])
def test_tpu_without_tpu_is_one_line_error(strategy):
    from kerasft.errors import KerasftError

    cfg = load_config({"training": {"strategy": strategy, "tpu": "grpc://127.0.0.1:1"}})
    with pytest.raises(KerasftError, match=r"expected a reachable TPU.*Received: training.tpu="):
        resolve_strategy(cfg, env={})


@pytest.mark.parametrize("size", [1, 5, 8, 9, 41, 43, 47, 600])
def test_even_batches_split_over_replicas_and_match_the_step_count(size):
    import tensorflow as tf

    from kerasft.training.distribution import even_batches, steps_per_epoch

    ds = tf.data.Dataset.from_tensor_slices(({"a": np.arange(size)}, np.arange(size))).batch(8)
    rows = [int(y.shape[0]) for _, y in even_batches(ds, 2)]
    assert all(r > 0 and r % 2 == 0 for r in rows)
    assert len(rows) == steps_per_epoch(size, 8, False, replicas=2) or size == 1
    assert sum(rows) == size - size % 8 % 2  # at most one example sits out


def test_uneven_global_batch_is_refused_before_the_run_folder(image_arrays, tmp_path):
    from kerasft.api import build_finetuner
    from kerasft.errors import KerasftError

    x, y = image_arrays
    ft = build_finetuner({"backbone": {"name": "tiny_cnn", "weights": "none"},
                          "data": {"source": "arrays", "batch_size": 7},
                          "training": _mirrored(),
                          "stages": [{"name": "all", "trainable": "all", "epochs": 1}]},
                         log=lambda s: None)
    with pytest.raises(KerasftError, match=r"expected data.batch_size divisible by the 2 "
                                           r"replicas under mirrored .*e.g. 6 or 8\)\. "
                                           r"Received: data.batch_size=7"):
        ft.fit(x, y, output_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_mirrored_fit_with_uneven_last_batches_reports_exact_validation(image_arrays, tmp_path):
    """41 training images at batch 8 leave a last batch of 1 (one replica would get nothing),
    5 validation images one uneven batch: Keras's fit under MirroredStrategy failed on both
    ("Inputs to operation AddN ... must have the same size and shape", BatchNormalization on an
    empty piece). Validation is padded with weight-0 rows: its metrics are the plain ones."""
    import keras

    from kerasft.api import build_finetuner

    x, y = image_arrays
    x, y = np.concatenate([x, x]), np.concatenate([y, y])
    batches = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(batch)

    ft = build_finetuner({
        "backbone": {"name": "tiny_cnn", "weights": "none"},
        "data": {"source": "arrays", "batch_size": 8},
        "training": _mirrored(),
        "stages": [{"name": "head", "trainable": "head", "epochs": 1},
                   {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 1e-3,
                    "batch_norm": "train"}],
    }, log=lambda s: None)
    summary = ft.fit(x[:41], y[:41], validation_data=(x[100:105], y[100:105]),
                     output_dir=tmp_path, callbacks=[Count()])
    assert batches == [0, 1, 2, 3, 4] * 2  # 5 full batches; the last one example sits out
    logs = summary["stages"][-1]["final_logs"]
    probabilities = ft.predict(x[100:105])
    labels = np.array([list(ft.class_names).index(name) for name in y[100:105]])
    accuracy = float(np.mean(probabilities.argmax(-1) == labels))
    loss = float(np.mean(-np.log(probabilities[np.arange(5), labels])))
    assert logs["val_accuracy"] == pytest.approx(accuracy)
    assert logs["val_loss"] == pytest.approx(loss, rel=1e-4)
    # batch_size 1 is rounded up to the 2 replicas (else one replica gets an empty piece)
    np.testing.assert_allclose(ft.predict(x[100:105], batch_size=1), probabilities, atol=1e-6)


@pytest.mark.slow
def test_uneven_global_batch_is_one_stderr_line_in_a_dry_run(tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.test_text import BAD, GOOD, write_csv

    rows = [(t, "pos") for t in GOOD] + [(t, "neg") for t in BAD]
    cfg = text_config(write_tiny_bert_preset(tmp_path / "kh"), write_csv(tmp_path / "t.csv", rows),
                      write_csv(tmp_path / "s.csv", rows), tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # a user's shell does not set it
    result = subprocess.run(
        [sys.executable, "-m", "kerasft.cli", "train", str(config), "--dry-run",
         "--set", "data.batch_size=9", "--set", "training.strategy=mirrored",
         "--set", "training.devices=[/cpu:0, /cpu:1]"],
        env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "Error: expected data.batch_size divisible by the 2 replicas under mirrored (each global "
        "batch is split evenly across them; e.g. 8 or 10). Received: data.batch_size=9"]
