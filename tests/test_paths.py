"""Relative paths in a YAML: inputs are relative to the YAML's folder, outputs and --set values to
the working directory."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from kerasft.cli import main
from kerasft.config import load_config
from tests.bert_fixtures import write_tiny_bert_preset
from tests.test_text import BAD, GOOD, write_csv


def test_input_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    write_tiny_bert_preset(project / "kh")
    rows = [(t, "pos") for t in GOOD] + [(t, "neg") for t in BAD]
    (project / "data").mkdir()
    write_csv(project / "data" / "train.csv", rows)
    write_csv(project / "data" / "test.csv", rows)
    config = project / "configs" / "c.yaml"
    config.write_text(yaml.safe_dump({
        "backbone": {"name": "bert", "preset": "../kh", "sequence_length": 16},
        "data": {"train": "../data/train.csv", "test": "../data/test.csv"},
        "output_dir": "runs", "export": {"dir": "saved_models"},
    }))
    monkeypatch.chdir(tmp_path)
    cfg = load_config("project/configs/c.yaml", ["data.validation=elsewhere.csv"])
    assert cfg.data.train == "project/data/train.csv" and cfg.data.test == "project/data/test.csv"
    assert cfg.backbone.preset == "project/kh"
    assert cfg.data.validation == "elsewhere.csv"  # --set: relative to the working directory
    assert (cfg.output_dir, cfg.export.dir) == ("runs", "saved_models")  # outputs: the cwd's

    other = load_config({"backbone": {"name": "bert", "preset": "bert_base_en_uncased"}})
    assert other.backbone.preset == "bert_base_en_uncased"  # a KerasHub name, not a path
    config.write_text(yaml.safe_dump({
        "backbone": {"name": "vgg16", "weights": "w/b.weights.h5"},
        "data": {"source": "tfds", "tfds_name": "mnist", "train": "train[:90%]",
                 "tfds_data_dir": "../tfds"},
    }))
    cfg = load_config("project/configs/c.yaml")
    assert cfg.backbone.weights == "project/configs/w/b.weights.h5"
    assert cfg.data.train == "train[:90%]" and cfg.data.tfds_data_dir == "project/tfds"

    config.write_text(yaml.safe_dump({
        "backbone": {"name": "bert", "preset": "../kh", "sequence_length": 16},
        "data": {"train": "../data/train.csv", "test": "../data/test.csv"},
    }))
    result = CliRunner().invoke(main, ["validate", "project/configs/c.yaml"])
    assert result.exit_code == 0, result.output
