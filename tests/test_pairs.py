"""Sentence pairs (issue 15): ``data.text_column: [a, b]`` read from csv / jsonl / parquet /
arrays, packed by the family's own KerasHub preprocessor (BERT segment ids; DeBERTaV3 without),
and exported with a two-input ``serving_default`` (``text_a``, ``text_b``) that the session
loader, the warmup replay and the TF Serving stub answer."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from kerasft.config import PAIR_INPUTS, ConfigError, load_config, text_columns
from kerasft.errors import DataError
from tests.bert_fixtures import DEFAULT_VOCAB, write_tiny_bert_preset
from tests.session_loader import SessionModel
from tests.test_text import BAD, GOOD

PAIR = ["premise", "hypothesis"]


def _pair_rows() -> list[tuple[str, str, str]]:
    """Same / different sentiment: neither text alone gives the label."""
    rows = []
    for i in range(8):
        rows += [(GOOD[i], GOOD[(i + 1) % 8], "same"), (GOOD[i], BAD[i], "different"),
                 (BAD[i], BAD[(i + 3) % 8], "same"), (BAD[i], GOOD[(i + 5) % 8], "different")]
    return rows


def _write_csv(path, rows, header=(*PAIR, "label")) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _data_cfg(source: str, train: str, **extra):
    # The same file as validation: train keeps every row.
    return load_config({"data": {"source": source, "train": train, "validation": train,
                                 "text_column": PAIR, **extra}}).data


# ---------------------------------------------------------------------------------------------
# Config and readers (no model).


def test_text_column_takes_one_name_or_two():
    assert text_columns(load_config({}).data) == ("text",)
    assert text_columns(load_config({"data": {"text_column": PAIR}}).data) == tuple(PAIR)
    for value in (["premise"], ["a", "b", "c"], ["a", "a"]):
        with pytest.raises(ConfigError, match=r"^expected one column name or a list of two "
                                              r".*Received: data\.text_column=\["):
            load_config({"data": {"text_column": value}})
    with pytest.raises(ConfigError, match=r"^expected one column name for data\.source: "
                                          r"text_folder .*Received: data\.text_column="):
        load_config({"data": {"source": "text_folder", "text_column": PAIR}})


def test_pairs_read_from_csv_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kerasft.data.sources import load_data

    rows = _pair_rows()[:8] + [("a good movie", "  ", "same")]  # an empty second text
    csv_path = _write_csv(tmp_path / "p.csv", rows)
    jsonl_path = tmp_path / "p.jsonl"
    jsonl_path.write_text("".join(json.dumps({"premise": a, "hypothesis": b, "label": y}) + "\n"
                                  for a, b, y in rows))
    parquet_path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"premise": [r[0] for r in rows], "hypothesis": [r[1] for r in rows],
                             "label": [r[2] for r in rows]}), parquet_path)
    for source, path in (("csv", csv_path), ("jsonl", str(jsonl_path)),
                         ("parquet", str(parquet_path))):
        data = load_data(_data_cfg(source, path), seed=0)
        assert data.train.dataset.element_spec[0].shape == [2], source
        got = {tuple(v.decode() for v in x) for x, _ in data.train.dataset.as_numpy_iterator()}
        assert got == {(a, b) for a, b, _ in rows[:8]}, source
        assert data.report["skipped"]["train"]["empty text"]["count"] == 1, source


def test_pairs_from_arrays():
    from kerasft.data.arrays import from_arrays

    x = [("a good movie", "very bad"), ("great film", "nice"), ("awful film", ""), ("a", "b")]
    data = from_arrays(x, ["different", "same", "same", "different"], validation_split=0)
    assert data.train.dataset.element_spec[0].shape == [2]
    assert data.train.size == 3 and data.report["skipped"]["train"]["empty text"]["count"] == 1
    with pytest.raises(DataError, match=r"expected texts \[n\] or text pairs \[n, 2\]"):
        from_arrays([("a", "b", "c")] * 2, ["x", "y"], validation_split=0)


def test_a_missing_pair_column_names_the_file_and_the_column(tmp_path):
    from kerasft.data.sources import load_data

    path = _write_csv(tmp_path / "p.csv", [("a", "good", "same")],
                      header=("premise", "hypotesis", "label"))
    with pytest.raises(DataError, match=r"^.*p\.csv: expected a column named 'hypothesis' "
                                        r"\(set data\.text_column; did you mean 'hypotesis'\?\)"
                                        r"\. Received: columns=") as e:
        load_data(_data_cfg("csv", path), seed=0)
    assert "\n" not in str(e.value)


def test_cli_validate_names_the_missing_column_in_one_line(tmp_path):
    from click.testing import CliRunner

    from kerasft.cli import main

    preset = write_tiny_bert_preset(tmp_path / "kh")
    path = _write_csv(tmp_path / "p.csv", [("a", "good", "same")], header=("premise", "x", "label"))
    config = tmp_path / "c.yaml"
    config.write_text(f"backbone: {{name: bert, preset: {preset}}}\n"
                      f"data: {{train: {path}, text_column: [premise, hypothesis]}}\n")
    result = CliRunner().invoke(main, ["validate", str(config)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "expected a column named 'hypothesis'" in lines[0], lines
    assert "p.csv" in lines[0]


# ---------------------------------------------------------------------------------------------
# Packing by the family's own preprocessor (no fit).


def _pair_backbone(preset: str, name: str = "bert"):
    from kerasft.models.registry import build_backbone

    cfg = load_config({"backbone": {"name": name, "preset": preset, "sequence_length": 16,
                                    "weights": "none"}}).backbone
    return build_backbone(cfg, "cls", segments=2)


@pytest.mark.slow
def test_bert_pairs_get_segment_ids(tmp_path):
    import tensorflow as tf

    backbone = _pair_backbone(write_tiny_bert_preset(tmp_path / "kh"))
    assert "segment_ids" in backbone.inputs and backbone.segments == 2
    x = backbone.preprocess(tf.constant([["a good movie", "very bad"]]))
    vocab = {t: i for i, t in enumerate(DEFAULT_VOCAB)}
    words = ["[CLS]", "a", "good", "movie", "[SEP]", "very", "bad", "[SEP]"]
    np.testing.assert_array_equal(x["token_ids"][0].numpy(),
                                  [vocab[w] for w in words] + [0] * 8)
    np.testing.assert_array_equal(x["segment_ids"][0].numpy(), [0] * 5 + [1] * 3 + [0] * 8)
    np.testing.assert_array_equal(x["padding_mask"][0].numpy(), [1] * 8 + [0] * 8)


@pytest.mark.slow
def test_deberta_v3_pairs_are_packed_without_segment_ids(tmp_path):
    # DeBERTaV3 rather than RoBERTa: tracing the tiny byte-level BPE tokenizer costs minutes here.
    import tensorflow as tf

    from tests.hub_presets import write_tiny_hub_preset

    backbone = _pair_backbone(write_tiny_hub_preset(tmp_path / "db", "deberta_v3"), "deberta_v3")
    assert "segment_ids" not in backbone.inputs
    tokenizer = backbone.preprocessor.tokenizer
    first, second = "a good film", "it was bad"
    x = backbone.preprocess(tf.constant([[first, second]]))
    assert set(x) == {"token_ids", "padding_mask"}
    a, b = (np.asarray(tokenizer(t)).tolist() for t in (first, second))
    assert len(a) == 3 and len(b) == 3  # word pieces of the tiny corpus
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    packed = [cls, *a, sep, *b, sep]
    np.testing.assert_array_equal(x["token_ids"][0].numpy(),
                                  packed + [pad] * (16 - len(packed)))


# ---------------------------------------------------------------------------------------------
# One tiny-BERT pair run: two stages, export, served as raw string pairs.




@pytest.mark.slow
def test_tiny_bert_pair_run_exports_a_two_input_signature(tmp_path):
    from click.testing import CliRunner

    from kerasft.api import build_finetuner
    from kerasft.cli import main
    from kerasft.export.warmup import read_warmup_requests
    from tests.tf_serving_stub import TFServingStub, post_json

    rows = _pair_rows()
    ft = build_finetuner({
        "name": "pairs", "seed": 1, "output_dir": str(tmp_path / "runs"),
        "backbone": {"name": "bert", "preset": write_tiny_bert_preset(tmp_path / "kh"),
                     "sequence_length": 16},
        "data": {"source": "csv", "train": _write_csv(tmp_path / "train.csv", rows),
                 "test": _write_csv(tmp_path / "test.csv", rows[:8]), "text_column": PAIR,
                 "validation_split": 0.25, "batch_size": 8},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.01},
                   {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.01}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "mixed_precision": "none", "monitor": "loss"},
        "export": {"dir": str(tmp_path / "saved_models"), "verify": False},
    }, log=lambda s: None)
    summary = ft.fit()
    assert [s["name"] for s in summary["stages"]] == ["head", "all"]
    path = ft.export()

    pairs = [("a good movie", "very bad"), ("very bad", "a good movie"), ("great film", "nice")]
    expected = ft.predict(pairs)
    assert not np.allclose(expected[0], expected[1])  # the order of the pair matters
    np.testing.assert_allclose(ft.predict(pairs[0]), expected[0], atol=1e-6)
    with SessionModel(path) as served:
        assert set(served.signatures["serving_default"].inputs) == set(PAIR_INPUTS)
        out = served.run("serving_default", text_a=np.array([a for a, _ in pairs], object),
                         text_b=np.array([b for _, b in pairs], object))
        np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
        # TF Serving replays these at load time: both inputs, batches of 1 and 4.
        requests = [log.predict_log.request for log in read_warmup_requests(path)]
        assert [sorted(r.inputs) for r in requests] == [sorted(PAIR_INPUTS)] * 2
        for request in requests:
            import tensorflow as tf

            served.run("serving_default",
                       **{k: tf.make_ndarray(v) for k, v in request.inputs.items()})

        # The model card's curl bodies: the session loader's answers, then the stand-in's.
        card = (path / "assets.extra" / "README.md").read_text()
        row_body, columnar_body = re.findall(r"-d '(\{.*\})'", card)
        card_rows = json.loads(row_body)["instances"]
        want = served.run("serving_default",
                          text_a=np.array([r["text_a"] for r in card_rows], object),
                          text_b=np.array([r["text_b"] for r in card_rows], object))[
                              "probabilities"]
    with TFServingStub(tmp_path / "saved_models" / "pairs", model_name="pairs") as stub:
        url = f"{stub.url}/v1/models/pairs:predict"
        rows_out = post_json(url, row_body)["predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows_out], want, atol=1e-5)
        outputs = post_json(url, columnar_body)["outputs"]
        np.testing.assert_allclose(outputs["probabilities"], want, atol=1e-5)
        # `kerasft predict --pair`, on the server and on the export folder alone.
        label = ft.class_names[int(expected[0].argmax())]
        for where in (["--server", stub.url, "--model", "pairs"], [str(path)]):
            result = CliRunner().invoke(main, ["predict", *where, "--pair", *pairs[0]])
            assert result.exit_code == 0, result.output
            line = result.output.strip().splitlines()[-1]
            assert line.startswith(f"{label}\t[") and line.endswith("a good movie | very bad")
