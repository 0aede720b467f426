"""KerasHub text families: one tiny preset per family, one end-to-end run per tokenizer kind.

End to end (train head then all, export, serve raw strings under the session loader): distil_bert
(WordPiece), roberta (byte-level BPE, through ``backbone.name: auto``) and deberta_v3
(SentencePiece). Every family: ``auto`` reads it from the preset, and kerasft's builder gives
it the backbone's own inputs and pooled features.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from kerasft.config import BackboneConfig, ConfigError
from kerasft.models.keras_hub import TEXT_FAMILIES, describe_preset
from tests.hub_presets import TOKENIZER_KINDS, write_tiny_hub_preset
from tests.session_loader import SessionModel

GOOD = ["a good movie", "great film", "i loved this book", "very nice", "it was great",
        "liked it", "a great book", "nice film and good", "the movie is good", "you liked it",
        "good", "great"]
BAD = ["a bad movie", "awful film", "i hated this book", "very terrible", "it was bad",
       "not good", "an awful book", "terrible film and bad", "that book was bad", "bad",
       "awful", "terrible"]
#: Served texts: empty, unknown words and characters, longer than sequence_length.
SERVED = ["a great movie", "terrible and awful", "", "zzz unknownword ü!",
          " ".join(["good film"] * 20)]
#: family -> backbone.name of its end-to-end run, one per tokenizer kind.
END_TO_END = {"distil_bert": "distil_bert", "roberta": "auto", "deberta_v3": "deberta_v3"}
# 30-120 s each on 2 shared CPU cores (the BPE tokenizer's graph is the slowest to instantiate,
# and each tf.data pipeline, the export and the session load instantiate it again): the
# SentencePiece run always runs, the WordPiece (test_text.py trains BERT's end to end too) and
# BPE runs with KERASFT_ALL_FAMILIES=1, as the heavy keras.applications families do.
ALL_FAMILIES = os.environ.get("KERASFT_ALL_FAMILIES") == "1"
ALWAYS = {"deberta_v3"}


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_presets")
    return {family: write_tiny_hub_preset(root / family, family) for family in TOKENIZER_KINDS}


def test_the_family_table_is_every_text_family():
    assert set(TEXT_FAMILIES) == set(TOKENIZER_KINDS)
    assert {f: TEXT_FAMILIES[f].kind for f in TEXT_FAMILIES} == TOKENIZER_KINDS
    from kerasft.models.registry import list_backbones

    rows = {r["name"]: r for r in list_backbones()}
    for family in TEXT_FAMILIES.values():
        assert rows[family.name]["task"] == "text"
        assert f"{family.backbone}, {family.kind} tokenizer" in rows[family.name]["source"]
    assert rows["auto"]["task"] == "text"


def test_auto_reads_each_family_and_a_mismatch_is_one_line(presets, tmp_path):
    for family, path in presets.items():
        assert describe_preset(path, "auto")["family"] == family
    with pytest.raises(ConfigError, match=r"a KerasHub BERT preset \(class_name BertBackbone\) "
                                          r"for backbone.name bert.*class_name='RobertaBackbone'"):
        describe_preset(presets["roberta"], "bert")
    # A Hugging Face directory of a family KerasHub 0.32 does not convert.
    hf = tmp_path / "deberta_hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))
    (hf / "model.safetensors").write_bytes(b"")
    for name in ("auto", "deberta_v3"):
        with pytest.raises(ConfigError) as info:
            describe_preset(str(hf), name)
        message = str(info.value)
        assert "\n" not in message and "model_type='deberta-v2'" in message
        assert ("KerasHub 0.32 converts: bert (bert), distil_bert (distilbert), roberta "
                "(roberta), albert (albert), xlm_roberta (xlm-roberta)") in message
    # An unknown name lists that family's names only (RobertaBackbone.presets also holds
    # XLM-RoBERTa's).
    with pytest.raises(ConfigError) as info:
        describe_preset("roberta_huge_en", "roberta")
    assert "roberta_base_en" in str(info.value) and "xlm_roberta" not in str(info.value)


def test_every_family_builds_with_its_own_inputs_and_pooling(presets):
    import keras

    from kerasft.models.registry import build_backbone

    texts = np.array(["a good movie", "it was bad and terrible"])
    for family, path in presets.items():
        spec = TEXT_FAMILIES[family]
        cls = build_backbone(BackboneConfig(name=family, preset=path))
        want = set(spec.inputs) | ({"padding_mask"} if spec.masked else set())
        assert set(cls.inputs) == want, family
        assert {i.name for i in cls.network.inputs} == set(spec.inputs), family
        assert type(cls.network).__name__ == spec.backbone
        # Tokenized in test_text.py / the end-to-end runs below (tracing is the cost).
        if family == "bert" or family in END_TO_END and (family in ALWAYS or ALL_FAMILIES):
            continue
        x = cls.preprocess(texts)
        assert set(x) == want and all(v.dtype == "int32" for v in x.values())
        assert cls.info["pooling"] == "cls" and cls.unused_layers == []
        features = keras.Model(cls.inputs, cls.features)(x)
        assert features.shape == (2, 16), family
        if not spec.masked:  # FNet: no padding mask, so batches are never trimmed
            from kerasft.data.pipeline import trim_padding

            assert trim_padding(x, 4)["token_ids"].shape == x["token_ids"].shape
    mean = build_backbone(BackboneConfig(name="f_net", preset=presets["f_net"]), pooling="mean")
    assert mean.unused_layers == ["pooled_dense"] and mean.info["pad_token_id"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("family, name", [
    pytest.param(f, n, marks=pytest.mark.skipif(f not in ALWAYS and not ALL_FAMILIES,
                                                reason="heavy run: KERASFT_ALL_FAMILIES=1"))
    for f, n in END_TO_END.items()])
def test_train_export_and_serve_raw_strings(family, name, presets, tmp_path):
    from kerasft.api import build_finetuner
    from kerasft.export.op_check import TOKENIZER_TEXT_OPS, list_graph_ops, text_ops

    cfg = {
        "name": f"tiny_{family}", "seed": 1,
        "backbone": {"name": name, "preset": presets[family], "sequence_length": 16},
        "head": {"pooling": "mean" if family == "roberta" else "cls"},
        "data": {"source": "arrays", "batch_size": 8},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.01},
                   {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.001}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
        "export": {"dir": str(tmp_path / "saved_models"), "verify": False},
    }
    ft = build_finetuner(cfg, log=lambda s: None)
    texts = np.array(GOOD + BAD)
    labels = np.array(["pos"] * len(GOOD) + ["neg"] * len(BAD))
    summary = ft.fit(texts, labels, output_dir=tmp_path / "runs", evaluate=False)
    assert ft.backbone.name == family and len(summary["stages"]) == 2
    path = ft.export()
    # The tokenizer is in the graph; its tensorflow-text ops are the ones op_check lists.
    kind = TOKENIZER_KINDS[family]
    ops = list_graph_ops(path)
    assert set(text_ops(ops)) <= TOKENIZER_TEXT_OPS[kind], sorted(ops)
    assert {"WordPiece": {"FastWordpieceTokenizeWithOffsets"},
            "BPE": {"RegexSplitWithOffsets", "StringSplitV2", "MutableHashTableV2"},
            "SentencePiece": {"SentencepieceOp", "SentencepieceTokenizeOp"}}[kind] <= ops
    with SessionModel(path) as served:
        out = served.run("serving_default", text=np.array(SERVED, dtype=object))
    # An eager call on the traced tokenizer: ft.predict would build (and pay for) one more
    # tf.data pipeline around the same ops.
    expected = np.asarray(ft.model(ft.backbone.preprocess(np.array(SERVED)), training=False))
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    assert [v.decode() for v in out["labels"]] == \
        [["neg", "pos"][i] for i in expected.argmax(-1)]


def test_tflite_text_export_is_bert_only():
    from types import SimpleNamespace

    from kerasft.errors import ExportError
    from kerasft.export.tflite import export_tflite

    ft = SimpleNamespace(model=None, backbone=SimpleNamespace(task="text", name="roberta"),
                         config=SimpleNamespace(head=SimpleNamespace(task="classification")))
    with pytest.raises(ExportError, match=r"a bert backbone for a TFLite text export.*"
                                          r"backbone.name='roberta'"):
        export_tflite(ft)
