"""kerasft tune (Optuna over tune.params) and kerasft cv (K-fold runs) on the tiny CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from kerasft.cli import main
from kerasft.config import ConfigError, load_config
from tests.data_fixtures import write_png

COLORS = {"red": (220, 30, 30), "green": (30, 220, 30), "blue": (30, 30, 220)}


def _images(root: Path, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(0, 40, size=(16, 16, 3))
            write_png(root / name / f"{i}.png", np.clip(np.array(color) + noise - 20, 0, 255)
                      .astype(np.uint8))
    return root


def _config(tmp_path: Path, **extra) -> dict:
    cfg = {
        "name": "tiny", "output_dir": str(tmp_path / "runs"),
        "backbone": {"name": "tiny_cnn", "weights": "none", "input_shape": [16, 16, 3]},
        "data": {"source": "image_folder", "train": str(_images(tmp_path / "images")),
                 "validation_split": 0.2, "test_split": 0.2, "batch_size": 8},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.01}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
        "export": {"enabled": False},
    }
    cfg.update(extra)
    return cfg


def _write(tmp_path: Path, cfg: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


TUNE = {"metric": "val_macro_f1", "params": {
    "stages.0.learning_rate": {"low": 1e-3, "high": 1e-1, "log": True},
    "head.dropout": {"choices": [0.0, 0.2]}}}


# -- the tune: section ---------------------------------------------------------------------


def test_tune_params_are_checked_against_the_config():
    ok = load_config({"tune": TUNE})
    assert ok.tune.params["head.dropout"] == {"choices": [0.0, 0.2]}
    cases = {
        "head.dropuot": ({"choices": [0.1]}, "Did you mean 'head.dropout'?"),
        "stages.3.learning_rate": ({"low": 1e-4, "high": 1e-2}, "an index below 1"),
        "head.dropout": ({"choices": [0.1, 1.5]}, "the value 1.5 is not valid"),
        "stages.0.learning_rate": ({"low": 1e-4, "hihg": 1e-2}, "Did you mean 'high'?"),
        "stages.0.epochs": ({"low": 0, "high": 3, "log": True}, "low > 0 with log: true"),
        "tune.trials": ({"choices": [1]}, "a key outside tune"),
    }
    for key, (spec, message) in cases.items():
        with pytest.raises(ConfigError, match="tune.params") as e:
            load_config({"tune": {"params": {key: spec}}})
        assert message in str(e.value), (key, str(e.value))
    with pytest.raises(ConfigError, match="Did you mean 'val_macro_f1'"):
        load_config({"tune": {"metric": "val_macro_f2"}})


def test_a_run_resumes_whatever_its_tune_section_says():
    from kerasft.training.checkpoints import config_differences

    run = load_config({}).to_dict()
    run.pop("tune")  # a run folder from before tune: existed
    now = load_config({"tune": TUNE, "head": {"dropout": 0.2}}).to_dict()
    assert config_differences(run, now) == ["head.dropout=0.2 (run: 0.1)"]


def test_missing_optuna_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    path = _write(tmp_path, {"tune": TUNE})
    result = CliRunner().invoke(main, ["tune", path, "--trials", "1"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: kerasft tune: expected Optuna to be installed (pip install 'kerasft[tune]'). "
        "Received: no module named optuna"]


def test_pruning_callback_reports_each_epoch_and_prunes():
    import optuna

    class Trial:
        def __init__(self, prune_at):
            self.reported, self.prune_at = [], prune_at

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) == self.prune_at

    from kerasft.search.tune import pruning_callback

    trial = Trial(prune_at=2)
    callback = pruning_callback(trial, "val_macro_f1", score=lambda: 0.25)
    callback.on_epoch_end(0, {"loss": 1.0})  # not logged by fit: computed by score()
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        callback.on_epoch_end(1, {"loss": 0.9})
    assert trial.reported == [(0, 0.25), (1, 0.25)]
    logged = Trial(prune_at=0)
    pruning_callback(logged, "val_loss", score=lambda: None).on_epoch_end(4, {"val_loss": 0.5})
    assert logged.reported == [(4, 0.5)]


def test_search_marks_pruned_failed_and_killed_trials_and_resumes(tmp_path, monkeypatch):
    import optuna

    from kerasft.api import FineTuner
    from kerasft.errors import KerasftError
    from kerasft.search.tune import STUDY_FILE, run_search

    outcomes = iter(["pruned", "failed", 0.25])
    calls = []

    def fit(self, **kwargs):  # what a trial's run ends with, without training
        assert kwargs["run_id"].startswith("trial") and len(kwargs["callbacks"]) == 1
        calls.append(kwargs["run_id"])
        outcome = next(outcomes)
        if outcome == "pruned":
            raise optuna.TrialPruned("pruned at epoch 1: val_loss=9")
        if outcome == "failed":
            raise KerasftError("stage 'head' diverged")
        return {"run_dir": "r", "stages": [{"final_logs": {"val_loss": outcome}}],
                "metrics": None}

    monkeypatch.setattr(FineTuner, "fit", fit)
    lines = []
    cfg = {"name": "fake", "tune": {"metric": "val_loss", "params": TUNE["params"]}}
    folder = tmp_path / "s"
    result = run_search(cfg, trials=2, directory=folder, log=lines.append)
    assert [(t["trial"], t["state"]) for t in result["trials"]] == [(0, "PRUNED"), (1, "FAIL")]
    assert result["trials"][1]["error"] == "stage 'head' diverged"
    assert "tune: trial 1 failed: stage 'head' diverged" in lines
    assert result["best"] is None and not (folder / "best.yaml").exists()
    # A kill in the middle of trial 2 leaves it RUNNING in the storage.
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{folder / STUDY_FILE}")
    killed = study.ask()
    killed.suggest_float("stages.0.learning_rate", 1e-3, 1e-1, log=True)
    killed.suggest_categorical("head.dropout", [0.0, 0.2])
    # --trials is the total: the two finished trials are kept, the killed one runs again.
    result = run_search(cfg, trials=3, directory=folder, log=lines.append)
    assert calls == ["trial0", "trial1", "trial3"]
    assert "tune: trial 2 was interrupted; it runs again with the same values" in lines
    assert [(t["trial"], t["state"]) for t in result["trials"]] == [
        (0, "PRUNED"), (1, "FAIL"), (2, "FAIL"), (3, "COMPLETE")]
    assert result["trials"][3]["params"] == killed.params
    assert result["direction"] == "minimize"  # auto, from val_loss
    assert result["best"]["trial"] == 3 and result["best"]["value"] == 0.25
    assert load_config(folder / "best.yaml").head.dropout == killed.params["head.dropout"]


# -- folds ---------------------------------------------------------------------------------


def test_folds_are_disjoint_stratified_seeded_and_cover_train_and_validation():
    from kerasft.data.arrays import from_arrays
    from kerasft.data.folds import cross_validation_splits, fold_ids

    labels = np.repeat(np.array(["a", "b", "c"]), [30, 15, 9])
    x = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1, 1).repeat(3, -1)
    x = np.broadcast_to(x, (len(labels), 2, 2, 3)).copy()
    data = from_arrays(x, labels, validation_split=0.2, test_split=0.1, seed=3)
    pooled = np.concatenate([data.train.labels, data.validation.labels])
    folds = cross_validation_splits(data, 3, seed=7)
    assert len(folds) == 3
    seen = []
    for fold in folds:
        assert fold.test is data.test  # held out, the same for every fold
        val = [int(e[0][0, 0, 0]) for e, _ in zip(fold.validation.dataset.as_numpy_iterator(),
                                                   range(10**6))]
        train = [int(e[0][0, 0, 0]) for e in fold.train.dataset.as_numpy_iterator()]
        assert not set(val) & set(train)
        assert fold.train.size + fold.validation.size == len(pooled)
        assert len(val) == fold.validation.size and len(train) == fold.train.size
        # stratified: each class's share of the fold within one example of its share overall
        counts = np.bincount(fold.validation.labels, minlength=3)
        expected = np.bincount(pooled, minlength=3) / 3
        assert np.all(np.abs(counts - expected) <= 1), counts
        seen += val
    test_x = {int(e[0][0, 0, 0]) for e in data.test.dataset.as_numpy_iterator()}
    assert sorted(seen) == sorted(set(range(len(labels))) - test_x)  # every example once
    ids = fold_ids(pooled, 3, seed=7)
    np.testing.assert_array_equal(ids, fold_ids(pooled, 3, seed=7))
    assert not np.array_equal(ids, fold_ids(pooled, 3, seed=8))


# -- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_tune_writes_a_best_yaml_that_cross_validates(tmp_path):
    cfg = _config(tmp_path, tune={**TUNE, "metric": "val_accuracy"})
    cfg["training"].update(checkpoint_every_epoch=False, cache_features="off")
    path = _write(tmp_path, cfg)
    search = tmp_path / "search"
    result = CliRunner().invoke(main, ["tune", path, "--trials", "1", "--dir", str(search)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trial  "))
    assert sorted(lines[header].split()) == sorted(
        ["trial", "stages.0.learning_rate", "head.dropout", "val_accuracy", "state"])
    assert lines[header + 2].split()[-1] == "COMPLETE"
    for name in ("trials/tiny-trial0/config.yaml", "trials/tiny-trial0/history.csv",
                 "search.png", "search.json"):
        assert (search / name).is_file(), name
    best = json.loads((search / "search.json").read_text())["best"]
    assert best["trial"] == 0
    run = load_config(Path(best["run_dir"]) / "config.yaml", resolve_paths=False)
    # best.yaml: a full config with the best values, trainable from anywhere.
    best_cfg = load_config(search / "best.yaml")
    assert best_cfg.stages[0].learning_rate == run.stages[0].learning_rate == \
        pytest.approx(best["params"]["stages.0.learning_rate"])
    assert best_cfg.head.dropout == best["params"]["head.dropout"] == run.head.dropout
    assert Path(best_cfg.data.train).is_absolute()
    # kerasft cv on best.yaml: it trains, one run per fold, the summary adds up.
    result = CliRunner().invoke(main, ["cv", str(search / "best.yaml"), "--folds", "2",
                                       "--dir", str(tmp_path / "cv")])
    assert result.exit_code == 0, result.output
    cv = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [1, 2]
    assert sum(f["sizes"]["validation"] for f in cv["folds"]) == 24  # train + validation
    assert all(f["sizes"]["test"] == 6 for f in cv["folds"])
    for name in ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1"):
        values = [f["metrics"][name] for f in cv["folds"]]
        assert cv["mean"][name] == pytest.approx(np.mean(values))
        assert cv["std"][name] == pytest.approx(np.std(values))
    for fold in cv["folds"]:
        metrics = json.loads((Path(fold["run_dir"]) / "metrics.json").read_text())
        assert metrics["split"] == "test"
        trained = load_config(Path(fold["run_dir"]) / "config.yaml", resolve_paths=False)
        assert trained.stages[0].learning_rate == best_cfg.stages[0].learning_rate
        assert fold["metrics"]["test_accuracy"] == pytest.approx(metrics["accuracy"])
