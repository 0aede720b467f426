"""The bad-input suite: every folder in tests/bad_inputs/ is one malformed config or data set.

A case folder holds ``config.yaml`` (absent for "the config file is missing"), its data files,
``expected.txt`` (the exact line the CLI must print) and ``case.yaml``: ``about`` (what is wrong),
``fixtures`` (files generated at test time, path -> kind: tiny models and images, which are
binary), ``env`` (environment variables) and ``commands`` (default: both ``validate`` and
``train``). Each case runs in a copy of its folder through the CLI in-process and must exit with
code 2, print exactly the expected line and no traceback, and leave the folder unchanged: no run
folder, nothing in ``saved_models/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from kerasft.cli import main
from tests.bert_fixtures import write_tiny_bert_preset, write_tiny_hf_bert_dir
from tests.data_fixtures import write_png

CASES_DIR = Path(__file__).resolve().parent / "bad_inputs"
CASES = sorted(p for p in CASES_DIR.iterdir() if (p / "expected.txt").is_file())


def _meta(case: Path) -> dict:
    return yaml.safe_load((case / "case.yaml").read_text(encoding="utf-8")) or {}


def _images(root: Path) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            image = rng.uniform(0, 80, size=(16, 16, 3))
            image[..., c] += 150
            write_png(root / name / f"{i}.png", image.astype("uint8"))


def _parquet_review_sentiment(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"review": ["good", "bad"], "sentiment": ["pos", "neg"]}), path)


FIXTURES = {
    "images": _images,
    "parquet_review_sentiment": _parquet_review_sentiment,
    "tiny_bert_preset": write_tiny_bert_preset,
    "tiny_hf_roberta": lambda path: write_tiny_hf_bert_dir(path, model_type="roberta"),
    "tiny_hf_bert_max32": lambda path: write_tiny_hf_bert_dir(path, max_position_embeddings=32),
}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (b"" if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


PARAMS = [pytest.param(case, command, id=f"{case.name}-{command}")
          for case in CASES for command in _meta(case).get("commands", ["validate", "train"])]


def test_the_suite_covers_at_least_30_cases():
    assert len(CASES) >= 30
    for case in CASES:
        assert _meta(case).get("about"), case.name
        lines = (case / "expected.txt").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), case.name


@pytest.mark.parametrize("case, command", PARAMS)
def test_bad_input(case: Path, command: str, tmp_path: Path, monkeypatch) -> None:
    meta = _meta(case)
    work = tmp_path / case.name
    shutil.copytree(case, work)
    for rel, kind in (meta.get("fixtures") or {}).items():
        FIXTURES[kind](work / rel)
    before = _tree(work)
    monkeypatch.chdir(work)
    result = CliRunner().invoke(main, [command, "config.yaml"], env=meta.get("env"))
    expected = (case / "expected.txt").read_text(encoding="utf-8")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output == expected
    assert _tree(work) == before  # no run folder, no export, nothing else
