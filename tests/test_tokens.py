"""head.task token_classification: tagged-word readers, word -> sub-word alignment, entity
metrics against seqeval's own numbers, and one tiny BERT run from CoNLL text to a SavedModel that
TF Serving's session loader answers with per-word tags and entity spans."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from kerasft.config import ConfigError, load_config
from kerasft.data.tokens import align, read_conll, read_token_jsonl
from kerasft.errors import DataError
from kerasft.evaluation.entities import chunks, entity_report

# seqeval's README example (github.com/chakki-works/seqeval).
README_TRUE = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
README_PRED = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]


def test_entity_scores_match_seqeval_readme_example():
    report = entity_report(README_TRUE, README_PRED)
    # seqeval: f1_score 0.50, accuracy_score 0.80; MISC 0/0/0 support 1, PER 1/1/1 support 1
    assert report["micro_f1"] == pytest.approx(0.5)
    assert report["micro_precision"] == pytest.approx(0.5)
    assert report["micro_recall"] == pytest.approx(0.5)
    assert report["token_accuracy"] == pytest.approx(0.8)
    assert report["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                          "support": 1}
    assert report["per_type"]["PER"]["f1"] == 1.0
    assert report["macro_f1"] == pytest.approx(0.5)
    assert report["weighted_f1"] == pytest.approx(0.5)


def test_chunks_follow_seqeval_default_rules():
    # An I- after O or after another type opens a chunk (seqeval's non-strict mode).
    assert chunks(["I-PER", "I-PER", "O", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 4)]
    assert chunks(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 0), ("PER", 1, 2)]
    assert chunks(["S-LOC", "B-ORG", "E-ORG", "O"]) == [("LOC", 0, 0), ("ORG", 1, 2)]
    assert chunks(["B-geo-loc", "I-geo-loc"]) == [("geo-loc", 0, 1)]
    assert chunks(["O", "O"]) == []
    # Hand-computed: 2 true, 3 predicted, 1 correct -> P 1/3, R 1/2, F1 0.4.
    report = entity_report([["B-PER", "O", "B-LOC"]], [["B-PER", "B-LOC", "I-ORG"]])
    assert (report["micro_precision"], report["micro_recall"]) == pytest.approx((1 / 3, 0.5))
    assert report["micro_f1"] == pytest.approx(0.4)


def _random_tags(rng: random.Random, n: int) -> list[list[str]]:
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "E-LOC", "S-PER"]
    return [[rng.choice(tags) for _ in range(rng.randint(0, 9))] for _ in range(n)]


def test_entity_scores_equal_seqeval_where_installed():
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    rng = random.Random(0)
    true, pred = _random_tags(rng, 200), _random_tags(rng, 200)
    pred = [p[: len(t)] + ["O"] * (len(t) - len(p)) for t, p in zip(true, pred)]
    report = entity_report(true, pred)
    assert report["micro_f1"] == pytest.approx(seqeval_metrics.f1_score(true, pred))
    assert report["macro_f1"] == pytest.approx(
        seqeval_metrics.f1_score(true, pred, average="macro"))
    assert report["weighted_f1"] == pytest.approx(
        seqeval_metrics.f1_score(true, pred, average="weighted"))
    assert report["micro_precision"] == pytest.approx(seqeval_metrics.precision_score(true, pred))
    assert report["micro_recall"] == pytest.approx(seqeval_metrics.recall_score(true, pred))
    assert report["token_accuracy"] == pytest.approx(seqeval_metrics.accuracy_score(true, pred))


def test_graph_chunks_equal_python_chunks():
    import tensorflow as tf

    from kerasft.export.tokens import entity_masks

    rng = random.Random(1)
    rows = _random_tags(rng, 60)
    width = max(len(r) for r in rows)
    grid = tf.constant([r + [""] * (width - len(r)) for r in rows])
    starts, ends, types = (t.numpy() for t in entity_masks(grid))
    for i, row in enumerate(rows):
        first, last = np.flatnonzero(starts[i]), np.flatnonzero(ends[i])
        got = [(types[i, s].decode(), int(s), int(e)) for s, e in zip(first, last, strict=True)]
        assert got == chunks(row), row


def test_conll_reader(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects\tVBZ\tO\n\n\n"
                    "Peter B-PER\nBlackburn I-PER\n", encoding="utf-8")
    split = read_conll(str(path))
    assert split.words == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert split.tags == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    path.write_text("EU B-ORG\nrejects\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.txt:2: expected 'word tag'"):
        read_conll(str(path))


def test_jsonl_reader(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"words": ["a", "b"], "ner": ["O", "B-X"]}) + "\n\n",
                    encoding="utf-8")
    split = read_token_jsonl(str(path), "words", "ner")
    assert split.words == [["a", "b"]] and split.tags == [["O", "B-X"]]
    with pytest.raises(DataError, match=r"train.jsonl:1: expected keys 'tokens' and 'tags'"):
        read_token_jsonl(str(path))
    path.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="same length"):
        read_token_jsonl(str(path))


PIECES = {"new": [10], "york": [11], "rocks": [12, 13], "!": [14], "unbelievable": [15, 16, 17]}


def test_alignment_labels_the_first_piece_only():
    tags = {"O": 0, "B-LOC": 1, "I-LOC": 2}
    a = align([["new", "york", "rocks", "!"]], [["B-LOC", "I-LOC", "O", "O"]], PIECES.__getitem__,
              tags, sequence_length=9, cls_id=2, sep_id=3, pad_id=0)
    assert a.inputs["token_ids"].tolist() == [[2, 10, 11, 12, 13, 14, 3, 0, 0]]
    assert a.inputs["padding_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1, 0, 0]]
    assert a.weights.tolist() == [[0, 1, 1, 1, 0, 1, 0, 0, 0]]  # "##cks", CLS, SEP, pad: 0
    assert a.labels[0, [1, 2, 3, 5]].tolist() == [1, 2, 0, 0]
    assert a.first_token.tolist() == [[1, 2, 3, 5]]


def test_alignment_truncates_at_the_sequence_length():
    tags = {"O": 0, "B-X": 1}
    a = align([["new", "unbelievable", "york"]], [["O", "B-X", "O"]], PIECES.__getitem__, tags,
              sequence_length=5, cls_id=2, sep_id=3, pad_id=0)
    # room for 3 pieces: "unbelievable" keeps 2 of its 3, "york" is cut (no label, position -1)
    assert a.inputs["token_ids"].tolist() == [[2, 10, 15, 16, 3]]
    assert a.weights.tolist() == [[0, 1, 1, 0, 0]]
    assert a.first_token.tolist() == [[1, 2, -1]]


@pytest.mark.slow  # imports KerasHub
def test_word_pieces_tokenize_each_word_with_the_preset_tokenizer():
    import keras_hub

    from kerasft.data.tokens import word_pieces
    from tests.bert_fixtures import DEFAULT_VOCAB

    vocab = list(DEFAULT_VOCAB)
    tok = keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True)
    pieces = word_pieces(tok, ["Movies", "good!", "\u200b", "zzz"])
    assert pieces["Movies"] == [vocab.index("movie"), vocab.index("##s")]
    assert pieces["good!"] == [vocab.index("good"), vocab.index("!")]
    # a word the tokenizer drops entirely still holds one position (its tag's)
    assert pieces["\u200b"] == pieces["zzz"] == [vocab.index("[UNK]")]


def _token_config(tmp_path, **data):
    return {"backbone": {"name": "bert", "preset": "x"}, "head": {"task": "token_classification"},
            "data": {"source": "conll", "train": str(tmp_path / "t.txt"), **data}}


def test_config_checks_token_classification(tmp_path):
    assert load_config(_token_config(tmp_path)).head.task == "token_classification"
    with pytest.raises(ConfigError, match="conll, jsonl with head.task.*data.source='csv'"):
        load_config(_token_config(tmp_path, source="csv"))
    with pytest.raises(ConfigError, match="head.task token_classification with data.source conll"):
        load_config({"data": {"source": "conll", "train": "t.txt"}})
    with pytest.raises(ConfigError, match=r"stages\[0\].label_smoothing"):
        load_config({**_token_config(tmp_path), "stages": [{"label_smoothing": 0.1}]})


SENTENCES = [("john visited paris", "B-PER O B-LOC"), ("mary likes london", "B-PER O B-LOC"),
             ("the film was good", "O O O O"),
             ("mary visited london and paris", "B-PER O B-LOC O B-LOC"),
             ("john likes the book", "B-PER O O O")]


@pytest.mark.slow
def test_tiny_bert_tags_words_from_conll_to_session_loader(tmp_path):
    from kerasft import build_finetuner
    from kerasft.api import FineTuner
    from tests.bert_fixtures import DEFAULT_VOCAB, write_tiny_bert_preset
    from tests.session_loader import SessionModel

    vocab = [*DEFAULT_VOCAB, "paris", "london", "john", "mary", "visited", "likes"]
    preset = write_tiny_bert_preset(tmp_path / "preset", vocab=vocab, sequence_length=16)
    with open(tmp_path / "train.txt", "w", encoding="utf-8") as f:
        f.write("-DOCSTART- O\n\n")
        for text, tags in SENTENCES * 6:
            f.writelines(f"{w}\t{t}\n" for w, t in zip(text.split(), tags.split()))
            f.write("\n")
    with open(tmp_path / "test.txt", "w", encoding="utf-8") as f:
        for text, tags in SENTENCES:
            f.writelines(f"{w} {t}\n" for w, t in zip(text.split(), tags.split()))
            f.write("\n")
    cfg = {"name": "tagger", "seed": 1,
           "backbone": {"name": "bert", "preset": preset, "sequence_length": 16},
           "head": {"task": "token_classification", "dropout": 0.0},
           "data": {"source": "conll", "train": str(tmp_path / "train.txt"),
                    "test": str(tmp_path / "test.txt"), "batch_size": 8},
           "stages": [{"name": "head", "trainable": "head", "epochs": 3, "learning_rate": 0.1},
                      {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.01}],
           "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
           "output_dir": str(tmp_path / "runs"), "export": {"dir": str(tmp_path / "sm")}}
    tagger = build_finetuner(cfg, log=lambda line: None)
    summary = tagger.fit()
    run = summary["run_dir"]
    metrics = json.loads(open(f"{run}/metrics.json", encoding="utf-8").read())
    assert metrics["task"] == "token_classification" and metrics["entities"] == 8
    assert metrics["micro_f1"] == 1.0 and metrics["token_accuracy"] == 1.0
    assert tagger.class_names == ["O", "B-LOC", "B-PER"]

    reloaded = FineTuner.from_run(run, log=lambda line: None)  # what `kerasft export` loads
    assert reloaded.predict("mary visited paris") == ["B-PER", "O", "B-LOC"]
    path = reloaded.export(verify=False)
    assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()
    texts = ["john visited london", "mary likes paris and london", ""]
    import tensorflow as tf

    from kerasft.export.warmup import read_warmup_requests

    with SessionModel(str(path)) as model:  # TF Serving's loader, no kerasft
        out = model.run("serving_default", text=np.array([t.encode() for t in texts]))
        for record in read_warmup_requests(path):  # what TF Serving replays before serving
            request = record.predict_log.request
            model.run("serving_default", text=tf.make_ndarray(request.inputs["text"]))
    assert out["tags"][0].tolist() == [b"B-PER", b"O", b"B-LOC", b"", b""]
    assert out["tags"][1].tolist() == [b"B-PER", b"O", b"B-LOC", b"O", b"B-LOC"]
    assert out["tags"][2].tolist() == [b""] * 5
    assert out["entity_text"][1].tolist() == [b"mary", b"paris", b"london"]
    assert out["entity_type"][1].tolist() == [b"PER", b"LOC", b"LOC"]
    assert out["entity_start"][0].tolist() == [0, 2, -1]
    assert out["entity_end"][1].tolist() == [1, 3, 5]
    assert (out["entity_start"][2] == -1).all()
    assert out["tag_scores"].dtype == np.float32 and out["tag_scores"][0, 0] > 0.5

    from click.testing import CliRunner

    from kerasft.cli import main

    result = CliRunner().invoke(main, ["predict", str(path), "--text", "john visited london"])
    assert result.exit_code == 0, result.output
    assert "john/B-PER visited/O london/B-LOC\tPER: john; LOC: london" in result.output


def test_server_answers_print_as_tagged_words():
    from kerasft.serving.client import format_rows

    row = {"words": ["john", "visited", "new", "york", ""], "tags": ["B-PER", "O", "B-LOC",
                                                                    "I-LOC", ""],
           "tag_scores": [0.9, 0.9, 0.8, 0.7, 0.0], "entity_type": ["PER", "LOC"],
           "entity_text": ["john", "new york"], "entity_start": [0, 2], "entity_end": [1, 4]}
    assert format_rows(["john visited new york"], [row]) == [
        "john/B-PER visited/O new/B-LOC york/I-LOC\tPER: john; LOC: new york"]


@pytest.mark.slow
@pytest.mark.filterwarnings("error:Your input ran out of data")  # the cut batches are counted
def test_tagger_under_mirrored_strategy_with_uneven_batches(tmp_path):
    """31 sentences at batch 8 (uneven last training batches) and 5 test sentences (one uneven
    batch) over 2 replicas: the tagger's pipelines go through the same replica rule as the
    classifier's (training batches cut to a multiple of the replicas, evaluation padded with
    weight-0 rows), so fit and its entity scores run (Keras's fit failed on unequal pieces)."""
    from kerasft import build_finetuner
    from tests.bert_fixtures import DEFAULT_VOCAB, write_tiny_bert_preset

    vocab = [*DEFAULT_VOCAB, "paris", "london", "john", "mary", "visited", "likes"]
    preset = write_tiny_bert_preset(tmp_path / "preset", vocab=vocab, sequence_length=16)
    for name, rows in (("train", (SENTENCES * 7)[:31]), ("test", SENTENCES)):
        with open(tmp_path / f"{name}.txt", "w", encoding="utf-8") as f:
            for text, tags in rows:
                f.writelines(f"{w} {t}\n" for w, t in zip(text.split(), tags.split()))
                f.write("\n")
    tagger = build_finetuner({
        "name": "tagger", "seed": 1,
        "backbone": {"name": "bert", "preset": preset, "sequence_length": 16},
        "head": {"task": "token_classification", "dropout": 0.0},
        "data": {"source": "conll", "train": str(tmp_path / "train.txt"),
                 "test": str(tmp_path / "test.txt"), "validation_split": 0.1,
                 "batch_size": 8},
        "stages": [{"name": "head", "trainable": "head", "epochs": 4, "learning_rate": 0.1}],
        "training": {"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"],
                     "tensorboard": False, "verbose": "silent"},
        "output_dir": str(tmp_path / "runs")}, log=lambda line: None)
    summary = tagger.fit()
    assert tagger.strategy_info.replicas == 2
    assert np.isfinite(summary["stages"][-1]["final_logs"]["loss"])
    assert summary["stages"][-1]["epochs_run"] == 4
    assert summary["metrics"]["entities"] == 8
