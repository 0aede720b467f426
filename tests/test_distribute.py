"""MirroredStrategy on two logical CPU devices (set up in conftest), for images and for BERT."""

from __future__ import annotations

import os

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
    rows = [(t, "pos") for t in GOOD] * 2 + [(t, "neg") for t in BAD] * 2
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", rows[:8])
    cfg = text_config(preset, train, test, tmp_path, training=_mirrored())
    ft = build_finetuner(cfg, log=lambda s: None)
    summary = ft.fit()
    assert ft.strategy_info.replicas == 2
    assert all(np.isfinite(s["final_logs"]["loss"]) for s in summary["stages"])
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
