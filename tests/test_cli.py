"""The kerasft command: exit codes, one-line errors, and a tiny run from train to predict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kerasft.cli import main
from tests.bert_fixtures import write_tiny_bert_preset
from tests.test_text import BAD, GOOD, text_config, write_csv

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_for_every_command():
    for command in ("train", "evaluate", "export", "predict", "validate", "backbones", "tune",
                    "cv"):
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


@pytest.mark.slow
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
    assert saved["backbone"]["weights"] == "pretrained"  # the preset's own, not "imagenet"

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


# ---------------------------------------------------------------------------------------------
# As a user's terminal sees it: a subprocess whose first TensorFlow import happens under the CLI.


def _cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # a user's shell does not set it
    return env


def _cli_subprocess(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kerasft.cli", *args], env=_cli_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_error_after_tensorflow_import_is_one_stderr_line(tmp_path):
    expected_line = ("Error: expected a SavedModel version folder (.../<name>/<version>/ with "
                     f"saved_model.pb) or a model folder holding one. Received: "
                     f"export_dir='{tmp_path}'")
    quiet = _cli_subprocess("predict", str(tmp_path), "--text", "hi")
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [expected_line]
    assert quiet.stdout == ""
    # --debug, after the subcommand too: TensorFlow's start-up lines and the traceback.
    debug = _cli_subprocess("predict", str(tmp_path), "--text", "hi", "--debug")
    assert debug.returncode == 1
    assert "oneDNN custom operations are on" in debug.stderr
    assert "Traceback" in debug.stderr and "ExportError" in debug.stderr


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_logs_it(tmp_path):
    preset = write_tiny_bert_preset(tmp_path / "kh")
    rows = [(t, "pos") for t in GOOD] * 3 + [(t, "neg") for t in BAD] * 3
    cfg = text_config(preset, write_csv(tmp_path / "train.csv", rows),
                      write_csv(tmp_path / "test.csv", rows[:6] + rows[-6:]), tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    marker = tmp_path / "paused"
    env = _cli_env(KERASFT_TEST_PAUSE="epoch@0", KERASFT_TEST_PAUSE_FILE=str(marker))
    # A terminal's SIGINT disposition: a suite started in the background (`pytest &` in a
    # non-interactive shell) passes SIGINT ignored down to its children, and Python then installs
    # no KeyboardInterrupt handler.
    proc = subprocess.Popen([sys.executable, "-m", "kerasft.cli", "train", str(config), "--set",
                             "stages.1.epochs=2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate(timeout=30)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"no exit after SIGINT: {proc.communicate()}") from None
    run_dir = next((tmp_path / "runs").iterdir())
    line = (f"Interrupted. Resume with: kerasft train {config} --set=stages.1.epochs=2 "
            f"--resume {run_dir}")
    # Only that line: no TensorFlow start-up logs during a normal run either.
    assert err.splitlines() == [line], err
    assert proc.returncode == 130
    assert (run_dir / "train.log").read_text().splitlines()[-1] == line
    result = run("train", str(config), "--set=stages.1.epochs=2", "--resume", str(run_dir),
                 "--no-export")
    assert result.exit_code == 0, result.output
    assert "(resumed)" in result.output


def test_tensorflow_startup_lines_are_dropped_python_warnings_kept():
    from kerasft.tf_logs import filter_lines

    captured = (
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        b"I0000 00:00:1796117056.496038    6070 port.cc:153] oneDNN custom operations are on.\n"
        b"I0000 00:00:1796117056.544723    6070 cpu_feature_guard.cc:227] This TensorFlow binary"
        b" is optimized to use available CPU instructions.\n"
        b"To enable the following instructions: AVX2 FMA, rebuild TensorFlow.\n"
        b"/x/y.py:3: DeprecationWarning: old api\n"
        b"  import old\n"
        b"E0000 00:00:1796117059.303473    6070 cuda_platform.cc:52] failed call to cuInit\n")
    assert filter_lines(captured, debug=False) == (b"/x/y.py:3: DeprecationWarning: old api\n"
                                                   b"  import old\n")
    assert filter_lines(captured, debug=True) == captured


def test_debug_after_the_command_and_resume_before_config(tmp_path):
    from tests.test_resume import _config

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path)))
    # `--resume CONFIG`: the config, and the newest run of it (there is none here).
    result = run("train", "--resume", str(config))
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("Error: expected a run folder resume-<timestamp>")
    result = run("train", "--resume", str(tmp_path / "runs" / "resume-1"))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "Error: Missing argument 'CONFIG': kerasft train CONFIG [--resume [RUN_DIR]] (")
    result = run("train", str(config), "--resume", "--debug")
    assert result.exit_code == 1 and "expected a run folder" in str(result.exception)


@pytest.mark.slow
def test_predict_image_checks_files_and_takes_the_newest_version(image_arrays, tmp_path):
    import tensorflow as tf

    from tests.test_export import _trained_image_finetuner

    ft = _trained_image_finetuner(image_arrays, tmp_path)
    ft.export(version=1, verify=False)
    ft.export(version=3, verify=False)
    model_dir = tmp_path / "saved_models" / "tiny"
    (model_dir / "10-notes").mkdir()  # not an integer: TF Serving ignores it
    png = tmp_path / "cat.png"
    png.write_bytes(tf.io.encode_png(image_arrays[0][0]).numpy())

    result = run("predict", str(model_dir), "--image", str(png))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"{model_dir}: using version 3 (the newest, as TF Serving does)"]
    assert result.stdout.split("\t")[0] in ("cat", "dog", "owl")

    config = tmp_path / "config.yaml"
    config.write_text("name: x\n")
    result = run("predict", str(model_dir / "3"), "--image", str(config))
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"Error: expected a JPEG, PNG, GIF or BMP image file. Received: --image='{config}' "
        "(starts with b'name: x\\n')"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.read_bytes()[:40])
    result = run("predict", str(model_dir / "3"), "--image", str(broken))
    assert result.exit_code == 2, result.output
    assert len(result.output.splitlines()) == 1
    assert result.output.startswith(f"Error: expected decodable image files. Received: "
                                    f"--image='{broken}' (")
