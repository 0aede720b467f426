"""``kerasft compare``: run folders side by side (differing config keys, metrics) and one plot.

The run folders are written by hand in the formats kerasft writes them: ``config.yaml`` from
:meth:`Config.to_yaml`, ``history.csv`` as ``StageCSVLogger`` writes it, ``metrics.json`` from
:func:`classification_report`.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kerasft.cli import main
from kerasft.config import load_config
from kerasft.evaluation.compare import flatten
from kerasft.evaluation.metrics import classification_report

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, overrides: list[str], losses: list[float], accuracy: float,
              seconds: list[float] | None = None) -> Path:
    folder.mkdir(parents=True)
    cfg = load_config({"backbone": {"name": "mobilenet_v2", "weights": "none",
                                    "input_shape": [32, 32, 3]},
                       "data": {"source": "image_folder", "train": "data"},
                       "stages": [{"name": "head", "epochs": 1},
                                  {"name": "finetune", "epochs": 1, "trainable": "all",
                                   "learning_rate": 1e-4}]},
                      overrides, resolve_paths=False)
    (folder / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    with open(folder / "history.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["stage", "epoch", "learning_rate", "accuracy", "loss", "val_accuracy",
                         "val_loss", *(["epoch_seconds"] if seconds else [])])
        for epoch, loss in enumerate(losses, start=1):
            stage = "head" if epoch == 1 else "finetune"
            writer.writerow([stage, epoch, 0.001, 0.5, loss, 0.5, loss + 0.1,
                             *([seconds[epoch - 1]] if seconds else [])])
    truth = np.array([0, 0, 1, 1])
    right = int(round(accuracy * 4))
    pred = np.array([t if i < right else 1 - t for i, t in enumerate(truth)])
    report = classification_report(truth, np.eye(2)[pred], ["cat", "dog"])
    report["split"] = "test"
    (folder / "metrics.json").write_text(json.dumps(report), encoding="utf-8")
    return folder


def test_flatten_names_list_items_by_index():
    assert flatten({"a": {"b": 1}, "stages": [{"lr": 2}, {"lr": 3}], "e": [], "n": None}) == {
        "a.b": 1, "stages[0].lr": 2, "stages[1].lr": 3, "e": [], "n": None}


def test_compare_prints_differing_keys_and_metrics_and_draws_one_plot(tmp_path):
    a = write_run(tmp_path / "runs" / "small-lr", ["stages.1.learning_rate=5e-5"],
                  [0.9, 0.7], accuracy=0.5)
    b = write_run(tmp_path / "runs" / "big-batch", ["data.batch_size=64"], [0.8, 0.6, 0.5],
                  accuracy=1.0, seconds=[2.5, 10.25, 10.0])
    out = tmp_path / "plots" / "cmp.png"
    result = CliRunner().invoke(main, ["compare", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    keys = {line.split()[0]: line.split()[1:] for line in lines
            if line.startswith(("stages[", "data.", "name"))}
    # Only what differs; the learning rate as written (5e-05), not rounded to 0.0001.
    assert keys == {"data.batch_size": ["32", "64"],
                    "stages[1].learning_rate": ["5e-05", "0.0001"]}, result.output
    header = next(line for line in lines if line.split()[:1] == ["metric"])
    assert header.split() == ["metric", "small-lr", "big-batch"]
    rows = {line.split()[0] + (" " + line.split()[1] if line.startswith(("last", "best",
                                                                          "training")) else ""):
            line for line in lines if line.strip()}
    assert rows["accuracy"].split()[1:] == ["0.5000", "1.0000"]
    assert rows["macro_f1"].split()[1:] == ["0.3333", "1.0000"]
    assert rows["epochs"].split()[1:] == ["2", "3"]
    assert rows["last loss"].split()[2:] == ["0.7000", "0.5000"]
    assert "val_loss=0.8000 (epoch 2)" in rows["best monitored"]
    assert "val_loss=0.6000 (epoch 3)" in rows["best monitored"]
    # big-batch's history has epoch_seconds (as kerasft writes it); small-lr's, an older run's,
    # has none.
    assert rows["training time"].split()[2:] == ["not", "recorded", "22.8", "s"]
    assert lines[-1] == f"training curves: {out}"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 450)
    assert [p.name for p in out.parent.iterdir()] == ["cmp.png"]  # no temporary file left


def _bad(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kerasft.cli", "compare", *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("case", ["one run", "not a run folder", "no history"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    good = write_run(tmp_path / "good", [], [0.5], accuracy=1.0)
    other = tmp_path / "other"
    if case == "one run":
        args, expected = [str(good)], ("Error: expected at least 2 run folders to compare. "
                                       f"Received: run_dirs=['{good}']")
    elif case == "not a run folder":
        other.mkdir()
        args, expected = [str(good), str(other)], (
            f"Error: expected a kerasft run folder with config.yaml. Received: "
            f"run_dir='{other}'")
    else:
        write_run(other, [], [0.5], accuracy=1.0)
        (other / "history.csv").unlink()
        args, expected = [str(good), str(other)], (
            "Error: expected a run folder with history.csv (a run that trained at least one "
            f"epoch). Received: run_dir='{other}'")
    proc = _bad(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [expected]
    assert not (tmp_path / "compare.png").exists()
