"""Stage-aware resume, per-epoch checkpoints, determinism and NaN handling."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from kerasft.cli import main
from kerasft.errors import KerasftError
from tests.data_fixtures import write_png

REPO = Path(__file__).resolve().parents[1]


def _images(root: Path, per_class: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "owl"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.uniform(0, 80, size=(16, 16, 3))
            image[..., c] += 150
            write_png(root / name / f"{i}.png", image.astype("uint8"))
    return root


def _config(tmp_path: Path, **training) -> dict:
    return {
        "name": "resume", "seed": 7, "output_dir": str(tmp_path / "runs"),
        "backbone": {"name": "tiny_cnn", "weights": "none"},
        "head": {"dropout": 0.2},  # dropout's random-seed state is part of the checkpoint
        "data": {"source": "image_folder", "train": str(_images(tmp_path / "images")),
                 "validation_split": 0.25, "batch_size": 8},
        "stages": [
            {"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 0.05},
            {"name": "all", "trainable": "all", "epochs": 4, "learning_rate": 0.01,
             "schedule": "cosine", "warmup_steps": 3, "early_stopping": {"patience": 3}},
        ],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     **training},
        "export": {"enabled": False},
    }


def _history(run_dir: Path) -> list[dict[str, str]]:
    """history.csv without its wall times (which differ between identical runs)."""
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"}
                for row in csv.DictReader(f)]


def _stage_epochs(run_dir: Path) -> list[tuple[str, int]]:
    return [(row["stage"], int(row["epoch"])) for row in _history(run_dir)]


def _weights(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: out.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return out


EXPECTED_EPOCHS = [("head", 1), ("head", 2), ("all", 3), ("all", 4), ("all", 5), ("all", 6)]


# ---------------------------------------------------------------------------------------------
# In process: resume through the Python API after an interruption at a test hook.


class Interrupted(Exception):
    pass


def _interrupt_at(monkeypatch, spec: str) -> None:
    """Makes the process "die" (an exception out of fit) at a test hook point."""
    import kerasft.training.checkpoints as resume

    def pause(point: str, epoch: int) -> None:
        if f"{point}@{epoch}" == spec:
            raise Interrupted(spec)

    monkeypatch.setattr(resume, "pause_point", pause)
    monkeypatch.setenv(resume.PAUSE_ENV, spec)  # adds the "epoch" hook's callback


def _finetuner(cfg: dict):
    from kerasft.api import build_finetuner

    return build_finetuner(cfg, log=lambda line: None)


@pytest.mark.slow
def test_resume_continues_at_the_committed_stage_and_epoch(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    _interrupt_at(monkeypatch, "commit@4")  # epoch 5's state.json written, never renamed
    with pytest.raises(Interrupted):
        _finetuner(cfg).fit(evaluate=False)
    (run_dir,) = (tmp_path / "runs").iterdir()
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert (state["stage"], state["epoch"], state["stage_first_epoch"]) == (1, 4, 3)
    assert state["has_optimizer"] and state["stages_done"][0]["name"] == "head"
    # The row of the uncommitted epoch is in history.csv; resuming removes it (no repeat).
    assert _stage_epochs(run_dir)[-1] == ("all", 5)
    # An exception (unlike kill -9, test_kill_9_and_resume...) removes the temporary file.
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))

    monkeypatch.undo()
    ft = _finetuner(cfg)
    summary = ft.fit(resume=True, evaluate=False)
    assert summary["run_dir"] == str(run_dir) and ft.run_dir == run_dir
    assert _stage_epochs(run_dir) == EXPECTED_EPOCHS
    assert [s["name"] for s in summary["stages"]] == ["head", "all"]
    assert summary["stages"][1]["first_epoch"] == 3 and summary["stages"][1]["epochs_run"] == 4
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["status"] == "finished" and state["epoch"] == 6
    # The optimizer continued: Adam's iteration count covers all 4 epochs of stage 2 (5 steps
    # each), not just the 2 epochs run after the resume.
    assert int(ft.model.optimizer.iterations.numpy()) == 20
    assert "resuming " in (run_dir / "train.log").read_text()
    with pytest.raises(KerasftError, match=r"expected an interrupted run \(this one finished"):
        _finetuner(cfg).fit(resume=run_dir, evaluate=False)


@pytest.mark.slow
def test_resume_refuses_a_changed_config_unless_forced(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    _interrupt_at(monkeypatch, "epoch@3")
    with pytest.raises(Interrupted):
        _finetuner(cfg).fit(evaluate=False)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    history = (run_dir / "history.csv").read_bytes()
    changed = json.loads(json.dumps(cfg))
    changed["stages"][1]["learning_rate"] = 0.02
    with pytest.raises(KerasftError) as err:
        _finetuner(changed).fit(resume=run_dir, evaluate=False)
    assert str(err.value) == (
        f"{run_dir / 'config.yaml'}: expected the same resolved config to resume the run "
        "(or --force). Received: stages[1].learning_rate=0.02 (run: 0.01)")
    assert (run_dir / "history.csv").read_bytes() == history  # nothing touched
    summary = _finetuner(changed).fit(resume=run_dir, force=True, evaluate=False)
    assert _stage_epochs(run_dir) == EXPECTED_EPOCHS
    assert summary["stages"][1]["epochs_run"] == 4
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["stages"][1][
        "learning_rate"] == 0.02


def test_resume_without_a_run_and_with_other_data(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    with pytest.raises(KerasftError, match=r"expected a run folder resume-<timestamp> with "
                                           r"checkpoints/state.json to resume .*output_dir="):
        _finetuner(cfg).fit(resume=True, evaluate=False)
    assert not (tmp_path / "runs").exists()
    _interrupt_at(monkeypatch, "epoch@1")
    with pytest.raises(Interrupted):
        _finetuner(cfg).fit(evaluate=False)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    write_png(tmp_path / "images" / "cat" / "extra.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(KerasftError, match=r"expected the same data to resume the run. Received:"
                                           r" split sizes="):
        _finetuner(cfg).fit(resume=True, evaluate=False)


@pytest.mark.slow
def test_cli_resume_and_force(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path)))
    _interrupt_at(monkeypatch, "weights@3")
    result = CliRunner().invoke(main, ["train", str(config)])
    assert isinstance(result.exception, Interrupted)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    changed = ["--set", "stages.1.epochs=5", "--set", "training.verbose=epoch"]
    result = CliRunner().invoke(main, ["train", str(config), *changed, "--resume"])
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {run_dir / 'config.yaml'}: expected the same resolved config to resume the run "
        "(or --force). Received: stages[1].epochs=5 (run: 4)\n")
    result = CliRunner().invoke(main, ["train", str(config), "--force"])
    assert result.exit_code == 2 and "--force only applies with --resume" in result.output
    result = CliRunner().invoke(main, ["train", str(config), *changed, "--resume", str(run_dir),
                                       "--force"])
    assert result.exit_code == 0, result.output
    assert "resuming with a changed config (--force): stages[1].epochs=5 (run: 4)" in result.output
    assert _stage_epochs(run_dir) == [*EXPECTED_EPOCHS, ("all", 7)]
    assert list((tmp_path / "runs").iterdir()) == [run_dir]


def test_checkpointing_can_be_switched_off(tmp_path):
    cfg = _config(tmp_path, checkpoint_every_epoch=False)
    cfg["stages"] = cfg["stages"][:1]
    ft = _finetuner(cfg)
    ft.fit(evaluate=False)
    files = sorted(p.name for p in (ft.run_dir / "checkpoints").iterdir())
    assert files == ["best.weights.h5"]


@pytest.mark.parametrize("seed", [0, 3])
def test_epoch_order_depends_only_on_seed_and_epoch(seed):
    import tensorflow as tf

    from kerasft.data.pipeline import epoch_batches

    ds = tf.data.Dataset.range(10)

    def epochs(start: int, count: int, global_seed: int) -> list[list[int]]:
        tf.random.set_seed(global_seed)
        it = iter(epoch_batches(ds, start_epoch=start, seed=seed, buffer=10, batch_size=4))
        return [sum((next(it).numpy().tolist() for _ in range(3)), []) for _ in range(count)]

    from_zero = epochs(0, 4, global_seed=seed)
    # A resumed iterator sees epochs 2 and 3 unchanged, whatever the global seed.
    assert from_zero[2:] == epochs(2, 2, global_seed=seed) == epochs(2, 2, global_seed=11)
    assert all(sorted(e) == list(range(10)) for e in from_zero)
    assert len({tuple(e) for e in from_zero}) == 4  # reshuffled every epoch


def test_config_differences_name_keys_and_ignore_output_dir():
    from kerasft.config import load_config
    from kerasft.training.checkpoints import config_differences

    a = load_config({"stages": [{"name": "a"}, {"name": "b", "epochs": 2}]}).to_dict()
    b = load_config({"output_dir": "elsewhere", "training": {"verbose": "epoch"},
                     "stages": [{"name": "a"}, {"name": "b", "epochs": 3}]}).to_dict()
    assert config_differences(a, b) == ["stages[1].epochs=3 (run: 2)"]


# ---------------------------------------------------------------------------------------------
# NaN / Inf: a diverging stage through the CLI.


@pytest.mark.slow
def test_diverging_stage_stops_with_one_line_and_keeps_the_best_checkpoint(tmp_path):
    import keras

    cfg = _config(tmp_path)
    cfg["stages"][1].update(learning_rate=1e30, optimizer="sgd", schedule="constant",
                            warmup_steps=None, early_stopping=0)
    config = tmp_path / "diverge.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 2, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    best = run_dir / "checkpoints" / "best.weights.h5"
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: training diverged: expected a finite loss. Received: loss=")
    assert "at stage 'all', epoch 3, step " in last
    assert last.endswith(f"Try a lower learning rate for this stage; the best weights so far "
                         f"are in {best}")
    assert "Traceback" not in result.output
    # The best checkpoint is from stage 1 (epochs 1-2), finite, and loads into the model.
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert state["best_epoch"] == 2 and state["epoch"] == 2
    from kerasft.api import FineTuner

    ft = FineTuner.from_run(run_dir, log=lambda line: None,
                            weights="checkpoints/best.weights.h5")
    assert all(np.isfinite(w).all() for w in ft.model.get_weights())
    assert not (run_dir / "model.weights.h5").exists()
    assert _stage_epochs(run_dir)[:2] == [("head", 1), ("head", 2)]
    keras.backend.clear_session()


# ---------------------------------------------------------------------------------------------
# kill -9 in a subprocess, then resume: same stage/epoch sequence and weights as an
# uninterrupted run (deterministic, CPU).


def _cli(args: list[str], env: dict[str, str] | None = None, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "tests.tiny_cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _kill_at(args: list[str], point: str, marker: Path, timeout: float = 300) -> None:
    """Runs kerasft until it pauses at test hook `point`, then SIGKILLs it."""
    marker.unlink(missing_ok=True)
    proc = _cli(args, env={"KERASFT_TEST_PAUSE": point, "KERASFT_TEST_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited before {point}: {proc.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never reached {point}")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill_9_and_resume_match_an_uninterrupted_run(tmp_path):
    cfg = _config(tmp_path, deterministic=True)
    reference, interrupted = tmp_path / "reference.yaml", tmp_path / "interrupted.yaml"
    reference.write_text(yaml.safe_dump({**cfg, "output_dir": str(tmp_path / "ref")}))
    interrupted.write_text(yaml.safe_dump(cfg))
    first, second = _cli(["train", str(reference)]), _cli(["train", str(reference)])
    _finish(first), _finish(second)
    ref_a, ref_b = sorted((tmp_path / "ref").iterdir())
    # Two runs with training.deterministic give identical metrics.
    assert _history(ref_a) == _history(ref_b)
    assert _stage_epochs(ref_a) == EXPECTED_EPOCHS

    # One run, killed five times: between a stage's last epoch and its end, during stage 2 in
    # the middle of an epoch, and while checkpoints are written (weights and state.json under
    # their temporary names); each time resumed, alternately by folder and as the newest run.
    marker = tmp_path / "paused"
    _kill_at(["train", str(interrupted)], "stage_end@0", marker)
    (run_dir,) = (tmp_path / "runs").iterdir()
    kills = ["weights@2", "epoch@3", "commit@4", "epoch@5"]
    for i, point in enumerate(kills):
        resume = ["--resume", str(run_dir)] if i % 2 else ["--resume"]
        _kill_at(["train", str(interrupted), *resume], point, marker)
        state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
        assert state["epoch"] == int(point.split("@")[1]), point
        if point.startswith(("weights", "commit")):  # killed between the write and the rename
            assert list((run_dir / "checkpoints").glob(".tmp-*")), point
    out = _finish(_cli(["train", str(interrupted), "--resume"]))
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert f"resuming {run_dir} at stage 2/2 'all', epoch 6" in out
    assert list((tmp_path / "runs").iterdir()) == [run_dir]

    # No gap, no repeat; the same metrics and final weights as the uninterrupted run.
    assert _stage_epochs(run_dir) == EXPECTED_EPOCHS
    for got, want in zip(_history(run_dir), _history(ref_a), strict=True):
        for key, value in want.items():
            if key != "stage":
                assert float(got[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), key
    final, expected = _weights(run_dir / "model.weights.h5"), _weights(ref_a / "model.weights.h5")
    # model.weights.h5 holds the model only (the optimizer's continuation is checked in process,
    # test_resume_continues_at_the_committed_stage_and_epoch).
    assert final.keys() == expected.keys()
    assert not any("optimizer" in k.split("/") for k in final)
    for key in final:
        np.testing.assert_allclose(final[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


# ---------------------------------------------------------------------------------------------
# Atomic exports: kill -9 in the middle of an export.

_EXPORT_SCRIPT = r"""
import sys, time
from pathlib import Path
from tests.tiny_backbone import register_tiny_cnn
register_tiny_cnn()
from kerasft.api import build_finetuner
from kerasft.export.saved_model import export_saved_model

base, marker = sys.argv[1:3]
ft = build_finetuner({"name": "tiny", "backbone": {"name": "tiny_cnn", "weights": "none"},
                      "training": {"strategy": "default"}}, log=lambda s: None)
ft.build(["cat", "dog"])

def pause(tmp, check):  # the SavedModel is written, the version not yet renamed into place
    Path(marker).write_text(str(tmp))
    time.sleep(3600)

export_saved_model(ft.model, ft.backbone, ft.class_names, base_dir=base, name="tiny",
                   verify=False, after_write=pause, log=lambda s: None)
"""


@pytest.mark.slow
def test_export_killed_midway_leaves_no_servable_version(tmp_path):
    from kerasft.api import build_finetuner
    from kerasft.export.saved_model import export_saved_model, next_version

    base, marker = tmp_path / "saved_models", tmp_path / "paused"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _EXPORT_SCRIPT, str(base), str(marker)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the export never reached its pause"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    model_dir = base / "tiny"
    (leftover,) = model_dir.iterdir()
    # What was written is there, under a name TF Serving ignores (not an integer).
    assert leftover.name.startswith(".tmp-1-") and (leftover / "saved_model.pb").is_file()
    assert not [p for p in model_dir.iterdir() if p.name.isdigit()]
    assert next_version(model_dir) == 1

    ft = build_finetuner({"name": "tiny", "backbone": {"name": "tiny_cnn", "weights": "none"},
                          "training": {"strategy": "default"}}, log=lambda s: None)
    ft.build(["cat", "dog"])
    path = export_saved_model(ft.model, ft.backbone, ft.class_names, base_dir=base, name="tiny",
                              verify=False, log=lambda s: None)
    assert path == model_dir / "1" and (path / "saved_model.pb").is_file()
    assert sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) == ["1"]


# ---------------------------------------------------------------------------------------------
# Head features across stages.


def _head_all_head(tmp_path: Path) -> dict:
    cfg = _config(tmp_path, cache_features="on", restore_best=False)
    cfg["head"] = {"dropout": 0.0}
    cfg["stages"] = [
        {"name": "head1", "trainable": "head", "epochs": 1, "learning_rate": 0.05},
        {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.05},
        {"name": "head2", "trainable": "head", "epochs": 2, "learning_rate": 0.05},
    ]
    return cfg


@pytest.mark.slow
def test_head_stage_after_fine_tuning_trains_on_the_fine_tuned_features(tmp_path, monkeypatch):
    """[head, all, head]: the last head stage's cached features are the backbone's after the
    `all` stage, not the ones computed before fine-tuning."""
    import keras

    from kerasft.training import loop

    seen = []
    original = loop._feature_batches

    def record(features, cfg, start_epoch):
        seen.append(np.array(features["x"]))
        return original(features, cfg, start_epoch)

    monkeypatch.setattr(loop, "_feature_batches", record)
    ft = _finetuner(_head_all_head(tmp_path))
    ft.fit(evaluate=False)
    assert len(seen) == 2
    # head2 leaves the backbone as `all` left it: its features are today's backbone's
    extractor = keras.Model(ft.backbone.inputs, ft.backbone.features)
    np.testing.assert_allclose(seen[1], ft._predict_split(extractor, ft.data.train), atol=1e-6)
    assert not np.allclose(seen[0], seen[1], atol=1e-4)


@pytest.mark.slow
def test_resumed_head_stage_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = _finetuner(_head_all_head(tmp_path / "a"))
    whole.fit(evaluate=False)
    cfg = _head_all_head(tmp_path / "b")
    _interrupt_at(monkeypatch, "commit@2")  # head2's first epoch done, never committed
    with pytest.raises(Interrupted):
        _finetuner(cfg).fit(evaluate=False)
    monkeypatch.undo()
    resumed = _finetuner(cfg)
    resumed.fit(resume=True, evaluate=False)
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Optimizer state is restored by path.


def _adam_checkpoint(tmp_path: Path, order, rename=None):
    """A compiled tiny model and a checkpoint of its Adam state saved in `order` (indices into
    the optimizer's variables) by another process (optimizer named adam_7)."""
    import keras

    from kerasft.training.checkpoints import Checkpointer, RunState

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="d")], name="m")
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.optimizer.build(model.trainable_variables)
    variables = list(model.optimizer.variables)
    rng = np.random.default_rng(0)
    values = {v.path.split("/", 1)[1]: (rng.normal(size=v.shape) * 100).astype(v.dtype)
              for v in variables}
    paths = ["adam_7/" + variables[i].path.split("/", 1)[1] for i in order]
    if rename:
        paths = [p.replace(*rename) for p in paths]
    arrays = {f"opt_{j}": values[variables[i].path.split("/", 1)[1]]
              for j, i in enumerate(order)}
    (tmp_path / "checkpoints").mkdir(parents=True)
    np.savez(tmp_path / "checkpoints" / "ckpt-000001.state.npz", opt_paths=np.array(paths),
             **arrays)
    state = RunState(arrays="ckpt-000001.state.npz", has_optimizer=True)
    return model, values, Checkpointer(tmp_path, state, log=lambda s: None)


def test_resume_restores_optimizer_variables_by_path(tmp_path):
    # saved with the kernel's momentum and velocity swapped: same shapes, different paths
    model, values, ckpt = _adam_checkpoint(tmp_path, order=[0, 1, 3, 2, 4, 5])
    assert ckpt.restore_optimizer(model)
    for v in model.optimizer.variables:
        np.testing.assert_array_equal(v.numpy(), values[v.path.split("/", 1)[1]],
                                      err_msg=v.path)


def test_resume_refuses_optimizer_state_of_other_variables(tmp_path):
    model, _, ckpt = _adam_checkpoint(tmp_path, order=[0, 1, 2, 3, 4, 5],
                                      rename=("m_d_bias", "m_e_bias"))
    with pytest.raises(KerasftError, match=r"ckpt-000001.state.npz: expected the optimizer state "
                                           r"of this stage's 6 variables, matched by path\. "
                                           r"Received: missing=\['m_d_bias_momentum', "
                                           r"'m_d_bias_velocity'\], unexpected=\['m_e_bias_"):
        ckpt.restore_optimizer(model)
