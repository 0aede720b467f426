"""Speed options are correct: mixed precision, XLA, steps_per_execution, gradient accumulation.

Tiny models only (tests/tiny_backbone.py's tiny_cnn, a 2-layer BERT); the speed of these options
is measured in bench/options.py, never asserted here.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.bert_fixtures import write_tiny_bert_preset
from tests.test_text import text_config


def _finetuner(stages, training=None, batch_size=8):
    from kerasft.api import build_finetuner

    cfg = {"name": "opt", "seed": 3, "backbone": {"name": "tiny_cnn", "weights": "none"},
           "head": {"dropout": 0.0}, "data": {"source": "arrays", "batch_size": batch_size},
           "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                        "restore_best": False, **(training or {})},
           "export": {"enabled": False}, "stages": stages}
    return build_finetuner(cfg, log=lambda line: None)


def _losses(run_dir):
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _split(image_arrays, train=48):
    x, y = image_arrays
    return (x[:train], y[:train]), (x[train:], y[train:])


def _train(image_arrays, tmp_path, stages, training=None, batch_size=8, start=None, train=48):
    """Trains a tiny_cnn from the weights `start` (when given); returns (tuner, weights)."""
    (x, y), val = _split(image_arrays, train)
    ft = _finetuner(stages, training, batch_size)
    ft.build(sorted(set(y)))
    if start is not None:
        ft.model.set_weights(start)
    ft.fit(x, y, validation_data=val, output_dir=tmp_path, evaluate=False)
    return ft, [np.array(w) for w in ft.model.get_weights()]


ALL = [{"name": "all", "trainable": "all", "epochs": 4, "learning_rate": 0.01}]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_float32_outputs(image_arrays, tmp_path, policy):
    import keras

    stages = [{"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 0.05}, *ALL]
    ft, _ = _train(image_arrays, tmp_path, stages, {"mixed_precision": policy})
    losses = _losses(ft.run_dir)
    assert len(losses) == 6 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[2], losses  # the unfrozen stage lowers the loss
    conv = ft.backbone.network.get_layer("conv1")
    assert conv.compute_dtype == policy.removeprefix("mixed_")
    assert conv.kernel.dtype == "float32"  # variables stay float32
    assert ft.model.output.dtype == "float32"
    # Keras 3 wraps the optimizer in a LossScaleOptimizer under mixed_float16 only.
    scaled = isinstance(ft.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    probabilities = ft.predict(image_arrays[0][:5])
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # The next FineTuner without mixed precision does not inherit the global policy.
    plain = _finetuner(ALL)
    plain.build(["cat", "dog", "owl"])
    assert plain.backbone.network.get_layer("conv1").compute_dtype == "float32"


@pytest.mark.slow
def test_mixed_float16_bert_with_trimmed_batches(tmp_path):
    import keras

    from tests.test_text import BAD, GOOD, write_csv

    rows = [(t, "pos") for t in GOOD] * 3 + [(t, "neg") for t in BAD] * 3
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", rows[:8])
    preset = write_tiny_bert_preset(tmp_path / "kh")
    cfg = text_config(preset, train, test, tmp_path,
                      training={"mixed_precision": "mixed_float16", "restore_best": False})
    cfg["stages"] = [{"name": "all", "trainable": "all", "epochs": 4, "learning_rate": 0.01}]
    from kerasft.api import build_finetuner

    ft = build_finetuner(cfg, log=lambda s: None)
    ft.fit(evaluate=False)
    losses = _losses(ft.run_dir)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert isinstance(ft.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert ft.predict(["a good movie", "awful"]).dtype == np.float32


def _initial_weights(stages):
    ft = _finetuner(stages)
    ft.build(["cat", "dog", "owl"])
    return [np.array(w) for w in ft.model.get_weights()]


@pytest.mark.slow
def test_jit_compile_matches_the_plain_train_step(image_arrays, tmp_path):
    stages = [{**ALL[0], "epochs": 2}]
    start = _initial_weights(stages)
    plain, w_plain = _train(image_arrays, tmp_path, stages, {"jit_compile": False}, start=start)
    xla, w_xla = _train(image_arrays, tmp_path, stages, {"jit_compile": True}, start=start)
    assert xla.model.jit_compile is True and plain.model.jit_compile is False
    losses = _losses(xla.run_dir)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    np.testing.assert_allclose(_losses(plain.run_dir), losses, rtol=1e-4)
    for a, b in zip(w_plain, w_xla, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_execution_steps_divide_the_epoch():
    from kerasft.training.loop import execution_steps

    assert [execution_steps(k, 6) for k in (1, 2, 3, 4, 5, 6, 64)] == [1, 2, 3, 3, 3, 6, 6]
    assert execution_steps(8, 7) == 7 and execution_steps(4, 7) == 1


@pytest.mark.slow
@pytest.mark.parametrize("steps", [3, 4])
def test_steps_per_execution_gives_the_same_weights(image_arrays, tmp_path, steps):
    # 48 examples / batch 8 = 6 steps per epoch: 3 divides it; 4 would overrun each epoch by 2
    # steps, so kerasft runs 3 per execution.
    stages = [{**ALL[0], "epochs": 2}]
    start = _initial_weights(stages)
    one, w_one = _train(image_arrays, tmp_path, stages, start=start)
    many, w_many = _train(image_arrays, tmp_path, stages, {"steps_per_execution": steps},
                          start=start)
    assert many.model.steps_per_execution == 3
    assert int(many.model.optimizer.iterations.numpy()) == 12
    np.testing.assert_allclose(_losses(one.run_dir), _losses(many.run_dir), rtol=1e-5)
    for a, b in zip(w_one, w_many, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_gradient_accumulation_equals_one_large_batch(image_arrays, tmp_path):
    """k=3 accumulated steps of batch 4 == one SGD step of batch 12 (BN frozen, no dropout)."""
    sgd = [{"name": "all", "trainable": "all", "epochs": 1, "optimizer": "sgd",
            "learning_rate": 0.5}]
    start = _initial_weights(sgd)
    big, w_big = _train(image_arrays, tmp_path, sgd, batch_size=12, start=start, train=12)
    acc, w_acc = _train(image_arrays, tmp_path, sgd, {"gradient_accumulation_steps": 3},
                        batch_size=4, start=start, train=12)
    small, w_small = _train(image_arrays, tmp_path, sgd, batch_size=4, start=start, train=12)
    assert acc.model.optimizer.gradient_accumulation_steps == 3
    changed = [not np.allclose(a, b) for a, b in zip(start, w_acc, strict=True)]
    assert any(changed)
    for a, b in zip(w_big, w_acc, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # Three separate updates of batch 4 land elsewhere: the comparison above is not vacuous.
    assert any(not np.allclose(a, b, rtol=1e-4, atol=1e-6)
               for a, b in zip(w_big, w_small, strict=True))


@pytest.mark.slow
def test_length_grouped_batches_keep_every_example_and_its_label(tmp_path, monkeypatch):
    import kerasft.data.pipeline
    from kerasft.api import build_finetuner
    from tests.test_text import write_csv

    # "good good ... good" (k words): label = parity of k, so a row's label can be checked
    # from its token count after grouping and trimming.
    rows = [(" ".join(["good"] * k), "even" if k % 2 == 0 else "odd")
            for k in list(range(1, 29)) * 4]
    train = write_csv(tmp_path / "train.csv", rows)
    preset = write_tiny_bert_preset(tmp_path / "kh", sequence_length=32, max_sequence_length=64)
    cfg = text_config(preset, train, train, tmp_path, data={"bucket_multiple": 8})
    cfg["backbone"]["sequence_length"] = 32
    cfg["data"]["validation_split"] = 0.1
    ft = build_finetuner(cfg, log=lambda s: None)
    ft.data = ft.load_data()
    ft.build(ft.data.class_names)
    monkeypatch.setattr(kerasft.data.pipeline, "LENGTH_GROUP_BATCHES", 4)

    def epoch(**kwargs):
        out = []
        for x, y in ft._pipeline(ft.data.train, training=True, **kwargs):
            if len(out) == -(-ft.data.train.size // 8):
                break
            out.append((x["token_ids"].numpy(), x["padding_mask"].numpy(), y.numpy()))
        return out

    grouped = epoch(start_epoch=0)
    assert len(grouped) == -(-ft.data.train.size // 8)
    seen = []
    for tokens, mask, labels in grouped:
        words = mask.sum(axis=1) - 2  # [CLS] ... [SEP]
        assert tokens.shape[1] == min(32, -(-int(mask.sum(axis=1).max()) // 8) * 8)
        names = [ft.class_names[i] for i in labels]
        assert names == ["even" if k % 2 == 0 else "odd" for k in words]
        seen += words.tolist()
    expected = sorted(len(x.numpy().split()) for x, _ in ft.data.train.dataset)
    assert sorted(seen) == expected  # every example once per epoch
    again = epoch(start_epoch=0)  # seeded: the same batches again
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(grouped, again, strict=True))
    monkeypatch.setattr(kerasft.data.pipeline, "LENGTH_GROUP_BATCHES", 1)
    trimmed = epoch(start_epoch=0)
    width = np.mean([t.shape[1] for t, _, _ in grouped])
    assert width < np.mean([t.shape[1] for t, _, _ in trimmed])


@pytest.mark.slow
def test_length_sorted_prediction_keeps_the_split_order(tmp_path):
    from kerasft.api import build_finetuner
    from tests.test_text import BAD, GOOD, write_csv

    rows = [(t, "pos") for t in GOOD] + [(t, "neg") for t in BAD]
    rows += [(" ".join([t] * 3), lab) for t, lab in rows]  # long and short texts, mixed
    train = write_csv(tmp_path / "train.csv", rows)
    preset = write_tiny_bert_preset(tmp_path / "kh", sequence_length=32, max_sequence_length=64)
    cfg = text_config(preset, train, train, tmp_path, data={"bucket_multiple": 8})
    cfg["backbone"]["sequence_length"] = 32
    ft = build_finetuner(cfg, log=lambda s: None)
    ft.data = ft.load_data()
    ft.build(ft.data.class_names)
    split = ft.data.test
    sorted_out = ft._predict_split(ft.model, split)
    texts = [x.decode() for x, _ in split.dataset.as_numpy_iterator()]
    np.testing.assert_allclose(sorted_out, ft.predict(texts), atol=1e-5)
    ft.config.data.bucket_by_length = False  # fixed padding, split order
    np.testing.assert_allclose(ft._predict_split(ft.model, split), sorted_out, atol=1e-5)


def test_tensorboard_writes_epoch_scalars_only(image_arrays, tmp_path):
    import tensorflow as tf

    ft, _ = _train(image_arrays, tmp_path, [{**ALL[0], "epochs": 2}], {"tensorboard": True})
    tags = []
    for path in (ft.run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags += [value.tag for value in event.summary.value]
    assert "epoch_loss" in tags and "epoch_accuracy" in tags
    assert not [t for t in tags if t.startswith("batch_")]


def test_mixed_float16_without_a_gpu_warns_for_image_backbones(tmp_path):
    from kerasft.api import build_finetuner
    from tests.bert_fixtures import write_tiny_bert_preset

    bert = {"name": "bert", "preset": write_tiny_bert_preset(tmp_path / "kh"),
            "sequence_length": 8}
    tiny = {"name": "tiny_cnn", "weights": "none"}
    for backbone, policy, warns in ((tiny, "mixed_float16", True),
                                    (tiny, "mixed_bfloat16", False),
                                    (bert, "mixed_float16", False)):  # dense float16: fine
        lines: list[str] = []
        ft = build_finetuner({"backbone": backbone, "training": {"mixed_precision": policy}},
                             log=lines.append)
        ft.build(["cat", "dog"])
        warning = [line for line in lines if "mixed_float16 without a GPU" in line]
        assert bool(warning) == warns, lines
        assert not warning or "use mixed_bfloat16" in warning[0]
    import keras

    keras.mixed_precision.set_global_policy("float32")
