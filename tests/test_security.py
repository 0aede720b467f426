"""What kerasft loads is data, never code: YAML by safe_load, weights and arrays only.

kerasft never loads a whole Keras model (``.keras``) or a pickle of user data: backbones load
``.weights.h5`` files (``load_weights``), presets go through KerasHub's ``from_preset`` (config
JSON + weights), checkpoints are ``.weights.h5`` + ``.npz`` read with ``allow_pickle=False``, and
exports are SavedModels loaded by ``tf.saved_model.load``. A source scan keeps it that way: any
``load_model`` call must pass ``safe_mode=True``. (The ``pkg://`` escape is tested in
test_config.py; labels with path separators in test_data.py.)
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from kerasft.config import ConfigError, read_yaml
from kerasft.errors import KerasftError

PACKAGE = Path(__file__).resolve().parents[1] / "kerasft"
SOURCES = sorted(PACKAGE.glob("*.py"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(
                func.value, ast.Name) else ""
            yield node, owner, name


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_source_loads_data_never_code(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve")
                   for n in names):
                problems.append(f"line {node.lineno}: imports a pickle-like module")
    for node, owner, name in _calls(tree):
        where = f"line {node.lineno}"
        if name in ("eval", "exec") and not owner:
            problems.append(f"{where}: {name}()")
        if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
            problems.append(f"{where}: yaml.{name} (use yaml.safe_load)")
        if name == "load_model" and _keyword(node, "safe_mode") is not True:
            problems.append(f"{where}: load_model without safe_mode=True")
        if name == "enable_unsafe_deserialization":
            problems.append(f"{where}: enables unsafe Keras deserialization")
        if name == "load" and owner in ("np", "numpy") and _keyword(node, "allow_pickle") not in (
                None, False):
            problems.append(f"{where}: np.load with allow_pickle")
    assert not problems, f"{path.name}: {problems}"


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"evil.yaml:1:7: expected valid YAML. Received: "
                                          r"error=.*python/object/apply"):
        read_yaml(config)
    assert not marker.exists()


def test_checkpoint_arrays_are_never_unpickled(tmp_path):
    from kerasft.training.checkpoints import Checkpointer, RunState

    (tmp_path / "checkpoints").mkdir()
    np.savez(tmp_path / "checkpoints" / "ckpt-000001.state.npz",
             opt_0=np.array([{"a": 1}], dtype=object))
    ckpt = Checkpointer(tmp_path, RunState(arrays="ckpt-000001.state.npz", has_optimizer=True),
                        log=lambda line: None)
    with pytest.raises(KerasftError, match=r"ckpt-000001.state.npz: expected a kerasft "
                                           r"checkpoint of plain arrays. Received: error="
                                           r"'Object arrays cannot be loaded"):
        ckpt._arrays()


def test_run_state_is_plain_json_with_known_fields(tmp_path):
    from kerasft.training.checkpoints import STATE_FILE, _read_state

    path = tmp_path / STATE_FILE
    path.write_text(json.dumps({"format": 2, "__class__": "os.system"}))
    with pytest.raises(KerasftError, match=r"state.json: expected the fields of a kerasft run "
                                           r"state. Received: unknown fields=\['__class__'\]"):
        _read_state(path)


def test_backbone_weights_must_be_a_weights_file():
    from kerasft.config import load_config

    with pytest.raises(ConfigError, match=r"expected pretrained \(or its alias imagenet\), none "
                                          r"or a path to a .weights.h5 file. Received: "
                                          r"backbone.weights='model.keras'"):
        load_config({"backbone": {"weights": "model.keras"}})
