"""What a run folder holds, as a user reads it: epoch numbering, learning rates, weights file."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest


def _fit(image_arrays, tmp_path, **training):
    from kerasft.api import build_finetuner

    x, y = image_arrays
    ft = build_finetuner({
        "name": "folder", "backbone": {"name": "tiny_cnn", "weights": "none"},
        "data": {"source": "arrays", "batch_size": 16},
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "restore_best": False, **training},
        "stages": [{"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 0.05},
                   {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.01,
                    "schedule": "cosine"}],
        "export": {"enabled": False},
    }, log=lambda s: None)
    ft.fit(x, y, output_dir=tmp_path / "runs", evaluate=False)
    return ft


def test_epochs_are_numbered_from_1_and_history_has_the_rate_the_epoch_used(image_arrays,
                                                                             tmp_path):
    ft = _fit(image_arrays, tmp_path)
    with open(ft.run_dir / "history.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], int(r["epoch"])) for r in rows] == [("head", 1), ("head", 2),
                                                             ("all", 3)]
    assert float(rows[0]["learning_rate"]) == pytest.approx(0.05)
    assert all(float(r["epoch_seconds"]) > 0 for r in rows)  # what kerasft compare sums
    # One cosine epoch of 4 steps (54 training images, batch 16) from 0.01 towards 0: the mean
    # of the rates its steps used, not the 0.0 the schedule reaches after the last step.
    cosine = 0.01 * 0.5 * (1 + np.cos(math.pi * np.arange(4) / 4))
    assert float(rows[2]["learning_rate"]) == pytest.approx(cosine.mean(), rel=1e-5)

    state = json.loads((ft.run_dir / "checkpoints" / "state.json").read_text())
    assert state["format"] == 2 and state["epoch"] == 3 and state["stage_first_epoch"] == 4
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert state["best_epoch"] == int(best["epoch"])
    assert [(s["first_epoch"], s["last_epoch"]) for s in state["stages_done"]] == [(1, 2), (3, 3)]


def test_a_run_state_with_0_based_epochs_is_refused_in_one_line(tmp_path):
    from kerasft.errors import KerasftError
    from kerasft.training.checkpoints import _read_state

    path = tmp_path / "state.json"
    path.write_text(json.dumps({"format": 1, "epoch": 2, "stage_first_epoch": 0}))
    with pytest.raises(KerasftError, match=r"state.json: expected a kerasft run state of format "
                                           r"2 \(epochs numbered from 1\); this run was written "
                                           r"by an older kerasft.*Received: format=1$"):
        _read_state(path)


def test_backbone_weights_pretrained_is_the_default_and_imagenet_an_alias(tmp_path):
    from kerasft.config import load_config, save_config
    from kerasft.training.checkpoints import config_differences

    assert load_config({"backbone": {"name": "bert"}}).backbone.weights == "pretrained"
    old = load_config({"backbone": {"name": "vgg16", "weights": "imagenet"}})
    assert old.backbone.weights == "pretrained"
    save_config(old, tmp_path / "config.yaml")
    assert "weights: pretrained" in (tmp_path / "config.yaml").read_text()
    # A run folder written before the rename still matches its config when resumed.
    saved = {**old.to_dict(), "backbone": {**old.to_dict()["backbone"], "weights": "imagenet"}}
    assert config_differences(saved, old.to_dict()) == []


def _h5_groups(path) -> set[str]:
    import h5py

    names: set[str] = set()
    with h5py.File(path, "r") as f:
        f.visit(names.add)
    return names


@pytest.mark.slow
def test_weights_files_hold_the_model_only(image_arrays, tmp_path):
    from kerasft.api import FineTuner

    ft = _fit(image_arrays, tmp_path)
    run_dir = ft.run_dir
    checkpoints = run_dir / "checkpoints"
    files = [run_dir / "model.weights.h5", checkpoints / "best.weights.h5",
             *checkpoints.glob("ckpt-*.weights.h5")]
    assert len(files) >= 3
    for path in files:
        groups = _h5_groups(path)
        # Neither the model's optimizer nor that of the head compiled alone (cached features).
        assert not any("optimizer" in g.split("/") for g in groups), (path, sorted(groups))
        # Only the model's parameters (and metric counters): not Adam's two moments per weight.
        params = sum(int(np.prod(w.shape)) for w in ft.model.weights) * 4
        assert path.stat().st_size < 2 * params + 200_000, path
    # (The optimizer state lives once, in ckpt-<n>.state.npz: test_resume checks that a resumed
    # run continues Adam's iteration count.)

    x, _ = image_arrays
    reloaded = FineTuner.from_run(run_dir, log=lambda s: None)
    np.testing.assert_allclose(reloaded.model.predict(x[:4], verbose=0),
                               ft.model.predict(x[:4], verbose=0), atol=1e-6)
