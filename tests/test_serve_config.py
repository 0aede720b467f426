"""``kerasft serve-config`` writes only what TF Serving accepts, checked through the stand-in.

README's canary recipe is read from README.md and replayed as written: each ``kerasft
serve-config`` line runs the CLI, the ``docker run`` line starts ``tests/tf_serving_stub.py`` with
the flags it carries (its ``-v "$PWD/saved_models:/models"`` mount becomes a rewrite of
``/models/`` to a temporary ``saved_models`` folder), later config changes are reloaded as the
server's config poll would, and each ``curl`` line is sent to the stand-in.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import tensorflow as tf
from click.testing import CliRunner

from kerasft.cli import main
from kerasft.errors import KerasftError
from kerasft.serving.models_config import (
    ServedModel,
    read_models_config,
    update_models_config,
    write_models_config,
)
from tests.tf_serving_stub import StubStartError, TFServingStub

ROOT = Path(__file__).resolve().parents[1]


class VersionModel(tf.Module):
    """Answers its own version number for every text, so the answering version is visible."""

    def __init__(self, version: int) -> None:
        super().__init__()
        self.version = tf.Variable(float(version))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"version": tf.fill(tf.shape(text), self.version)}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served") / "saved_models"
    for version in (1, 2, 3):
        module = VersionModel(version)
        tf.saved_model.save(module, str(root / "clf" / str(version)),
                            signatures={"serving_default": module.serve})
    return root


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess: what a user's terminal shows."""
    return subprocess.run([sys.executable, "-m", "kerasft.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def test_relative_base_path_is_refused(saved_models: Path, tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    result = _cli("serve-config", str(config), "--name", "clf", "--base-path", "saved_models/clf",
                  "--local-base-path", str(saved_models / "clf"))
    line = _assert_one_line_error(result, "expected an absolute path or a URI",
                                  "TF Serving refuses relative base paths",
                                  "Received: base_path='saved_models/clf'")
    assert line.startswith("Error: update_models_config (model 'clf'):")
    assert not config.exists()
    # the stand-in refuses the same entry, as server_core.cc ValidateModelConfigList does
    config.write_text("model_config_list { config { name: 'clf' base_path: 'saved_models/clf' "
                      "model_platform: 'tensorflow' } }")
    with pytest.raises(StubStartError, match="to have an absolute path or URI"):
        TFServingStub(config)


@pytest.mark.parametrize("base_path", ["/models/clf", "gs://bucket/models/clf",
                                       "s3://bucket/clf"])
def test_absolute_paths_and_uris_are_written(saved_models: Path, tmp_path: Path,
                                             base_path: str) -> None:
    path = update_models_config(tmp_path / "models.config", "clf", base_path,
                                local_base_path=str(saved_models / "clf"))
    assert read_models_config(path)[0].base_path == base_path


def test_moving_a_label_to_an_unserved_version_is_refused(saved_models: Path,
                                                          tmp_path: Path) -> None:
    config = tmp_path / "models.config"
    common = ["serve-config", str(config), "--name", "clf", "--base-path",
              str(saved_models / "clf"), "--policy", "specific"]
    first = _cli(*common, "--versions", "1,2", "--label", "stable=1", "--label", "canary=2")
    assert first.returncode == 0, first.stderr
    assert "--allow_version_labels_for_unavailable_models=true" in first.stdout
    before = config.read_text()
    result = _cli(*common, "--versions", "2,3", "--label", "stable=2", "--label", "canary=3")
    line = _assert_one_line_error(
        result, "label 'canary' to move only to a version the server already serves",
        "serve version 3 first with the label unchanged (--policy specific --versions 1,2,3 "
        "--label canary=2)", "GET /v1/models/clf/versions/3 says AVAILABLE",
        "then move the label (--label canary=3)", "Received: labels['canary']=3",
        "canary=2 now, served [1, 2]")
    assert "\n" not in line
    assert config.read_text() == before  # nothing written
    # The stand-in refuses that config at the reload too, even with the flag.
    moved = write_models_config(tmp_path / "moved.config", [ServedModel(
        "clf", str(saved_models / "clf"), policy="specific", versions=(2, 3),
        labels={"stable": 2, "canary": 3})])
    with TFServingStub(config, allow_version_labels_for_unavailable_models=True) as stub:
        with pytest.raises(StubStartError, match="assign label to version 3 of model clf"):
            stub.reload_config(moved)


def test_label_move_check_in_the_python_api(saved_models: Path, tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    base = str(saved_models / "clf")
    update_models_config(path, "clf", base, labels={"stable": 3})  # latest: serves 3
    with pytest.raises(KerasftError, match="served \\[3\\]"):
        update_models_config(path, "clf", base, policy="specific", versions=[2, 3],
                             labels={"stable": 2})
    # a new label, or one that moves to a version already served, is written
    update_models_config(path, "clf", base, policy="specific", versions=[2, 3],
                         labels={"stable": 3, "canary": 2})
    update_models_config(path, "clf", base, policy="specific", versions=[2, 3],
                         labels={"stable": 2, "canary": 3})
    assert read_models_config(path)[0].labels == {"stable": 2, "canary": 3}
    # write_models_config over the same file applies the same rule
    with pytest.raises(KerasftError, match="label 'canary' to move only"):
        write_models_config(path, [ServedModel(
            "clf", base, policy="specific", versions=(1, 2), labels={"canary": 1})])
    assert read_models_config(path)[0].labels == {"stable": 2, "canary": 3}


# ------------------------------------------------------------------------------------------
# README's canary recipe, as written
# ------------------------------------------------------------------------------------------


def _readme_recipe() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Versions, labels and several models: models.config"):]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README's models.config section has no bash block"
    joined = block.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            commands.append(shlex.split(line))
    return commands


def test_readme_canary_recipe_runs_on_the_stand_in(saved_models: Path) -> None:
    commands = _readme_recipe()
    assert [c[0] for c in commands] == ["kerasft", "docker", "curl", "kerasft", "kerasft",
                                        "curl", "kerasft", "curl"]
    workdir = saved_models.parent  # README's commands run where saved_models/ lives
    mount = str(saved_models)  # -v "$PWD/saved_models:/models"
    runner = CliRunner()
    stub: TFServingStub | None = None
    answers: list[object] = []

    def server_path(value: str) -> str:
        return value.replace("/models/", mount + "/").replace("NAME", "clf")

    try:
        for command in commands:
            if command[0] == "kerasft":
                assert command[1] == "serve-config"
                args = [server_path(a) if a.startswith("/models/") else a.replace("NAME", "clf")
                        for a in command[1:]]
                args = [str(workdir / a) if a.startswith("saved_models/") else a for a in args]
                result = runner.invoke(main, args)
                assert result.exit_code == 0, result.output
                if stub is not None:  # --model_config_file_poll_wait_seconds: a reload
                    stub.reload_config(workdir / "saved_models" / "models.config")
            elif command[0] == "docker":
                assert "-v" in command and "$PWD/saved_models:/models" in command
                flags = command[command.index("tensorflow/serving") + 1:]
                config = [f for f in flags if f.startswith("--model_config_file=")]
                assert config == ["--model_config_file=/models/models.config"]
                allow = "--allow_version_labels_for_unavailable_models=true" in flags
                if not allow:  # without the flag the first config cannot start at all
                    pytest.fail("README's docker command lacks the labels flag")
                stub = TFServingStub(server_path(config[0].split("=", 1)[1]),
                                     allow_version_labels_for_unavailable_models=allow).start()
            else:
                assert stub is not None
                url = command[-1] if "-d" not in command else command[command.index("-X") + 2]
                path = url.replace("localhost:8501", "").replace("NAME", "clf")
                data = command[command.index("-d") + 1].encode() if "-d" in command else None
                request = urllib.request.Request(stub.url + path, data=data,
                                                 method="POST" if data else "GET")
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(request, timeout=30) as response:
                    answers.append(json.loads(response.read()))
    finally:
        if stub is not None:
            stub.stop()
    assert answers[0] == {"predictions": [2.0]}  # canary=2 after step 1
    assert answers[1]["model_version_status"][0] == {
        "version": "3", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                         "error_message": ""}}
    assert answers[2] == {"predictions": [3.0]}  # canary=3 after step 3


def test_readme_first_config_needs_the_flag(saved_models: Path, tmp_path: Path) -> None:
    # Why the docker command carries the flag: TF Serving checks labels before it loads anything.
    config = write_models_config(tmp_path / "models.config", [ServedModel(
        "clf", str(saved_models / "clf"), policy="specific", versions=(1, 2),
        labels={"stable": 1, "canary": 2})])
    with pytest.raises(StubStartError, match="which is not currently available for inference"):
        TFServingStub(config)
