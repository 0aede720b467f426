"""BERT end to end on tiny checkpoints: CSV → stages → metrics → raw-text SavedModel."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from kerasft.config import BackboneConfig, ConfigError
from kerasft.models.keras_hub import describe_preset
from tests.bert_fixtures import write_tiny_bert_preset, write_tiny_hf_bert_dir
from tests.session_loader import saved_model_cli_run

GOOD = ["a good movie", "great film", "i loved this book", "very nice", "it was great",
        "liked it", "a great book", "nice film and good"]
BAD = ["a bad movie", "awful film", "i hated this book", "very terrible", "it was bad",
       "not good", "an awful book", "terrible film and bad"]


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def text_csvs(tmp_path):
    train = [(t, "pos") for t in GOOD] * 3 + [(t, "neg") for t in BAD] * 3
    test = [(t, "pos") for t in GOOD[:4]] + [(t, "neg") for t in BAD[:4]]
    return write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "test.csv", test)


def text_config(preset, train, test, tmp_path, **extra):
    cfg = {
        "name": "tinybert", "seed": 1,
        "backbone": {"name": "bert", "preset": preset, "sequence_length": 16},
        "data": {"source": "csv", "train": train, "test": test, "validation_split": 0.25,
                 "batch_size": 8},
        "stages": [{"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 0.01},
                   {"name": "top", "trainable": {"top_n": 2}, "epochs": 1,
                    "learning_rate": 0.001, "optimizer": "adamw", "schedule": "cosine",
                    "warmup_ratio": 0.2}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
        "output_dir": str(tmp_path / "runs"),
        "export": {"dir": str(tmp_path / "saved_models")},
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def test_preset_kinds_are_detected(tmp_path):
    kh = write_tiny_bert_preset(tmp_path / "kh")
    hf = write_tiny_hf_bert_dir(tmp_path / "hf", sentence_transformers=True)
    assert describe_preset(kh)["kind"] == "kerashub_dir"
    info = describe_preset(hf)
    assert info["kind"] == "hf_dir" and info["sentence_transformers"]
    roberta = write_tiny_hf_bert_dir(tmp_path / "rob", model_type="roberta")
    with pytest.raises(ConfigError, match=r"model_type: bert.*Received: .*model_type='roberta'"):
        describe_preset(roberta)
    (tmp_path / "kh" / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="KerasHub preset directory with tokenizer.json"):
        describe_preset(kh)
    with pytest.raises(ConfigError, match=r"a KerasHub BERT preset name \(.*bert_base_en_uncased"
                                          r".*Received: backbone.preset='bert_nonexistent"):
        describe_preset("bert_nonexistent_preset")


def test_hf_dir_loads_with_mean_pooling_and_sequence_limit(tmp_path):
    from kerasft.models.registry import build_backbone

    hf = write_tiny_hf_bert_dir(tmp_path / "hf", sentence_transformers=True,
                                max_position_embeddings=32)
    backbone = build_backbone(BackboneConfig(name="bert", preset=hf))
    assert backbone.info["pooling"] == "mean" and backbone.sequence_length == 16
    assert backbone.unused_layers == ["pooled_dense"]
    with pytest.raises(ConfigError, match=r"at most 32 \(the model's maximum\).*"
                                          r"backbone.sequence_length=64"):
        build_backbone(BackboneConfig(name="bert", preset=hf, sequence_length=64))
    plain = write_tiny_hf_bert_dir(tmp_path / "plain")
    assert build_backbone(BackboneConfig(name="bert", preset=plain)).info["pooling"] == "cls"


def test_mean_pooling_ignores_padding(tmp_path):
    import keras

    from kerasft.models.registry import build_backbone

    preset = write_tiny_bert_preset(tmp_path / "kh")
    backbone = build_backbone(BackboneConfig(name="bert", preset=preset, sequence_length=8),
                              pooling="mean")
    features = keras.Model(backbone.inputs, backbone.features)
    out8 = features(backbone.preprocess(np.array(["good movie"]))).numpy()
    backbone.preprocessor.sequence_length = 16
    out16 = features(backbone.preprocess(np.array(["good movie"]))).numpy()
    np.testing.assert_allclose(out8, out16, atol=1e-5)  # more padding, same features


@pytest.mark.slow
def test_text_end_to_end_export_and_fresh_reload(tmp_path, text_csvs):
    from kerasft.api import build_finetuner

    preset = write_tiny_bert_preset(tmp_path / "kh")
    ft = build_finetuner(text_config(preset, *text_csvs, tmp_path), log=lambda s: None)
    summary = ft.fit()
    units = [u for u in ft.backbone.network.layers if u.weights]
    assert summary["stages"][1]["unfrozen_layers"] == 2
    assert [u.trainable for u in units][-2:] == [True, True]
    metrics = json.loads((ft.run_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["examples"] == 8
    assert set(metrics["per_class"]) == {"neg", "pos"}
    assert len(metrics["confusion_matrix"]) == 2
    assert (ft.run_dir / "config.yaml").is_file() and (ft.run_dir / "history.csv").is_file()

    path = ft.export()
    # TensorFlow's own tool, in a separate process: empty and unknown-word texts included.
    texts = ["a great movie", "terrible and awful", "", "unknownword zzz"]
    expected = ft.predict(texts)
    out = saved_model_cli_run(["--dir", str(path), "--signature_def", "serving_default",
                            "--input_exprs", f"text={texts!r}"], tmp_path, text_ops=True)
    probabilities = np.load(out / "probabilities.npy", allow_pickle=False)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(np.load(out / "class_ids.npy", allow_pickle=False),
                                  expected.argmax(-1))

    # Weights stored once.
    params = sum(int(np.prod(w.shape)) for w in ft.model.weights) * 4
    size = sum(p.stat().st_size for p in (path / "variables").iterdir())
    assert size < 1.5 * params + 50_000


@pytest.mark.slow
def test_tiny_bert_learns_the_toy_task(tmp_path, text_csvs):
    from kerasft.api import build_finetuner

    preset = write_tiny_bert_preset(tmp_path / "kh")
    cfg = text_config(preset, *text_csvs, tmp_path)
    cfg["stages"] = [{"name": "all", "trainable": "all", "epochs": 8, "learning_rate": 0.01}]
    ft = build_finetuner(cfg, log=lambda s: None)
    report = ft.fit()["metrics"]
    assert report["accuracy"] >= 0.75, report


@pytest.mark.slow
def test_length_bucketing_gives_the_same_predictions(tmp_path, text_csvs):
    from kerasft.api import build_finetuner

    preset = write_tiny_bert_preset(tmp_path / "kh", sequence_length=32, max_sequence_length=64)
    texts = ["good", "a great movie and a nice book", "it was bad", "not good but nice"]
    outputs = []
    for bucket in (True, False):
        cfg = text_config(preset, *text_csvs, tmp_path, data={"bucket_by_length": bucket,
                                                              "bucket_multiple": 8})
        cfg["backbone"]["sequence_length"] = 32
        ft = build_finetuner(cfg, log=lambda s: None)
        ft.build(["neg", "pos"])
        outputs.append(ft.predict(texts))
        features = ft._preprocess()(np.array(texts))
        assert features["token_ids"].shape[1] == (16 if bucket else 32)
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


def test_text_pipelines_share_one_tokenizer_trace(tmp_path, text_csvs):
    # Every Dataset.map traced KerasHub's tokenizer again (seconds per pipeline on 2 cores).
    from kerasft.api import FineTuner
    from kerasft.config import load_config

    preset = write_tiny_bert_preset(tmp_path / "kh")
    ft = FineTuner(load_config(text_config(preset, *text_csvs, tmp_path)), log=lambda _: None)
    data = ft.load_data(report=False)
    ft.build(data.class_names)
    for split, training in ((data.train, True), (data.test, False)):
        next(iter(ft._pipeline(split, training=training)))
    # kerasft/models/keras_hub.py traces it once, with a fixed input signature
    assert ft.backbone.preprocess.experimental_get_tracing_count() == 1


def test_text_pipelines_run_without_the_autotuning_thread(tmp_path, text_csvs):
    # Deleting an iterator waited for tf.data's autotuning thread to wake up: 39-45 s after the
    # quickstart's fine-tuning epoch (docs/BENCHMARKS.md, "Where the quickstart's time goes").
    from kerasft.api import FineTuner
    from kerasft.config import load_config

    preset = write_tiny_bert_preset(tmp_path / "kh")
    ft = FineTuner(load_config(text_config(preset, *text_csvs, tmp_path)), log=lambda _: None)
    data = ft.load_data(report=False)
    ft.build(data.class_names)
    for ds in (ft._pipeline(data.train, training=True, start_epoch=0),
               ft._pipeline(data.test, training=False)):
        assert ds.options().autotune.enabled is False
