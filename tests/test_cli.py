"""The kerasft command: exit codes, one-line errors, and a tiny run from train to predict."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kerasft.cli import main
from tests.bert_fixtures import write_tiny_bert_preset
from tests.test_text import BAD, GOOD, text_config, write_csv

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_for_every_command():
    for command in ("train", "evaluate", "export", "predict", "validate", "backbones"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_configs_validate_offline(config):
    result = run("validate", str(config))
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(": OK")


def test_backbones_lists_registry():
    result = run("backbones")
    assert result.exit_code == 0
    assert "resnet50" in result.output and "23,587,712" in result.output
    assert "bert" in result.output


def test_backbones_layers_of_one():
    result = run("backbones", "--layers", "vgg16")
    assert result.exit_code == 0
    assert "13 layers with weights" in result.output
    assert result.output.splitlines()[1].split()[:2] == ["1", "block5_conv3"]


@pytest.mark.parametrize("args, message", [
    (["validate", "nope.yaml"], "expected an existing YAML config file. Received: config="),
    (["backbones", "--layers", "resnet5"], "Did you mean 'resnet50'"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_set_value_and_unknown_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\nbackbone: {name: vgg16, weights: none}\n")
    result = run("validate", str(config), "--set", "stages.0.optimizer=adamx")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: expected one of adam, adamw, sgd. Received: stages[0].optimizer='adamx' "
        "Did you mean 'adam'?")
    result = run("validate", str(config), "--set", "noequals")
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_debug_shows_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "validate", str(tmp_path / "x.yaml")])
    assert result.exit_code != 0 and result.exception is not None


def test_train_evaluate_export_predict(tmp_path):
    preset = write_tiny_bert_preset(tmp_path / "kh")
    rows = [(t, "pos") for t in GOOD] * 3 + [(t, "neg") for t in BAD] * 3
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", rows[:6] + rows[-6:])
    cfg = text_config(preset, train, test, tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))

    result = run("train", str(config), "--set", "stages.1.epochs=1", "--set", "name=clitiny")
    assert result.exit_code == 0, result.output
    assert "macro avg" in result.output and "confusion matrix" in result.output
    export = tmp_path / "saved_models" / "clitiny" / "1"
    assert (export / "saved_model.pb").is_file()
    run_dir = next((tmp_path / "runs").iterdir())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["name"] == "clitiny" and saved["stages"][1]["epochs"] == 1

    result = run("evaluate", str(run_dir))
    assert result.exit_code == 0, result.output
    assert "metrics on test (12 examples)" in result.output

    result = run("export", str(run_dir), "--no-verify")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "saved_models" / "clitiny" / "2" / "saved_model.pb").is_file()

    result = run("predict", str(export), "--text", "a great movie", "--text", "awful")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in ("pos", "neg")

    result = run("export", str(run_dir), "--version", "1", "--no-verify")
    assert result.exit_code == 2
    assert "Received: export.version=1" in result.output
