"""Config: defaults < YAML < --set, and one-line errors for every bad key or value."""

from __future__ import annotations

import pytest

from kerasft.config import ConfigError, load_config, read_yaml, save_config
from kerasft.io import resolve_pkg_path


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = """
name: demo
backbone: {name: resnet50, weights: none, input_shape: [32, 32, 3]}
data: {source: image_folder, train: /tmp/x, batch_size: 16}
stages:
  - {name: head, trainable: head, epochs: 2, learning_rate: 1e-3}
  - {name: top, trainable: {top_n: 3}, epochs: 1, optimizer: adamw, learning_rate: 1e-5,
     schedule: cosine, warmup_ratio: 0.1}
"""


def test_precedence_defaults_yaml_overrides(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["data.batch_size=8", "stages.1.epochs=4",
                                              "head.hidden_units=[64, 32]"])
    assert cfg.data.batch_size == 8  # --set beats YAML
    assert cfg.stages[1].epochs == 4
    assert cfg.stages[0].epochs == 2  # YAML beats default (1)
    assert cfg.head.hidden_units == [64, 32]
    assert cfg.head.dropout == 0.1  # default
    assert cfg.stages[0].learning_rate == pytest.approx(1e-3)  # "1e-3" read as a number
    assert cfg.stages[1].trainable == {"top_n": 3}


def test_python_keyword_overrides(tmp_path):
    cfg = load_config(write(tmp_path, BASE), data__batch_size=4, name="other")
    assert cfg.data.batch_size == 4 and cfg.name == "other"


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"expected a known config key \(valid under data: "
                                          r"source, train, .*\)\. Received: unknown "
                                          r"key='data.batch_sise' Did you mean 'batch_size'\?$"):
        load_config(write(tmp_path, BASE), ["data.batch_sise=3"])


def test_unknown_stage_key(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\[0\].learnig_rate.*learning_rate"):
        load_config({"stages": [{"name": "a", "learnig_rate": 1}]})


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", r"expected a positive number. Received: data.batch_size=0"),
    ("data.batch_size=abc", r"expected an integer. Received: data.batch_size='abc'"),
    ("stages.0.epochs=-1", r"stages\[0\].epochs=-1"),
    ("stages.0.learning_rate=0", r"stages\[0\].learning_rate=0"),
    ("stages.0.optimizer=adamx", r"one of adam, adamw, sgd. Received: stages\[0\].optimizer="
                                 r"'adamx'.*Did you mean 'adam"),
    ("stages.0.schedule=step", r"stages\[0\].schedule='step'"),
    ("stages.0.trainable=some", r"'head', 'all', \{top_n: N\}"),
    ("stages.0.trainable={top_n: 0}", r"top_n=0"),
    ("head.dropout=1.5", r"head.dropout=1.5"),
    ("training.strategy=gpu", r"training.strategy='gpu'"),
    ("export.version=-2", r"export.version=-2"),
    ("export.quantize=int4", r"one of none, int8. Received: export.quantize='int4'"),
    ("export.quantize=float16", r"one of none, int8 for a SavedModel \(float16 and dynamic are "
                                r"TFLite quantisations: kerasft export RUN_DIR --format tflite "
                                r"--quantize float16\)\. Received: export.quantize='float16'$"),
    ("data.validation_split=1.5", r"data.validation_split=1.5"),
    ("name=a/b", r"name='a/b'"),
    ("backbone.input_shape=[32, 32]", r"\[height, width, 3\]"),
])
def test_bad_values_name_key_expected_received(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE), [override])


def test_validation_and_split_both_given(tmp_path):
    with pytest.raises(ConfigError, match="either data.validation or data.validation_split"):
        load_config(write(tmp_path, BASE), ["data.validation=/tmp/v",
                                            "data.validation_split=0.2"])


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "name: x\nstages:\n  - {name: a, epochs: 1\nfoo: [\n")
    with pytest.raises(ConfigError, match=r"config.yaml:\d+:\d+: expected valid YAML"):
        read_yaml(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected an existing YAML config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a YAML mapping at the top level"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_yaml_is_safe_loaded(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="expected valid YAML"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["stages.0.early_stopping.patience=2"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    assert "early_stopping" in out.read_text()


def test_pkg_uri_resolves_inside_package_only():
    path = resolve_pkg_path("pkg://kerasft/config.py")
    assert path.endswith("kerasft/config.py")
    with pytest.raises(ConfigError, match="no '..'"):
        resolve_pkg_path("pkg://kerasft/../setup.cfg")
    with pytest.raises(ConfigError, match="an installed Python package named 'no_such_pkg'"):
        resolve_pkg_path("pkg://no_such_pkg/x")


@pytest.mark.parametrize("override, message", [
    ("training.monitor=val_acc", r"^expected a metric the run logs \(loss, accuracy, val_loss, "
                                 r"val_accuracy\)\. Received: training.monitor='val_acc' "
                                 r"Did you mean 'val_accuracy'\?$"),
    ("stages.1.early_stopping={patience: 2, monitor: val_los}",
     r"^expected a metric the run logs .*Received: stages\[1\].early_stopping.monitor="
     r"'val_los' Did you mean 'val_loss'\?$"),
    ("training.monitor=val_auc", r"Received: training.monitor='val_auc'"),  # softmax: no AUC
])
def test_monitor_typos_are_config_errors(tmp_path, override, message):
    """A monitor the run never logs would silently disable best-weight restore or early
    stopping: it is refused when the config is loaded."""
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE), [override])


def test_monitor_accepts_what_the_run_logs(tmp_path):
    for monitor in ("val_loss", "loss", "accuracy", "val_accuracy"):
        assert load_config(write(tmp_path, BASE), [f"training.monitor={monitor}"])
    cfg = load_config(write(tmp_path, BASE), ["head.activation=sigmoid",
                                              "training.monitor=val_auc"])
    assert cfg.training.monitor == "val_auc"
