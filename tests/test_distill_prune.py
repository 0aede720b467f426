"""Distillation and pruning stages: config, the mixed loss on one batch, the pruning schedule and
masks, a student from a preset's lower layers, and one tiny BERT run (teacher export -> student
that distills and prunes -> export read by the session loader)."""

from __future__ import annotations

import numpy as np
import pytest

from kerasft.config import ConfigError, load_config
from tests.bert_fixtures import write_tiny_bert_preset
from tests.test_text import BAD, GOOD, write_csv


def _stage_cfg(**stage):
    return {"backbone": {"name": "bert", "preset": "x", "weights": "none"},
            "stages": [{"name": "s", "trainable": "all", **stage}]}


def test_distill_and_prune_config_is_validated():
    cfg = load_config(_stage_cfg(distill="runs/teacher", prune=0.5))
    assert cfg.stages[0].distill == {"teacher": "runs/teacher", "temperature": 2.0, "alpha": 0.5}
    assert cfg.stages[0].prune == {"sparsity": 0.5, "schedule": "polynomial", "begin_step": 0,
                                   "end_step": None, "frequency": 100}
    for stage, message in [
        ({"distill": {"teacher": "t", "temperature": 0}},
         r"^expected a positive number\. Received: stages\[0\]\.distill\.temperature=0$"),
        ({"distill": {"teacher": "t", "alpha": 1.5}}, r"distill\.alpha=1\.5$"),
        ({"distill": {"teacher": "t", "temprature": 2}},
         r"unknown key='stages\[0\]\.distill\.temprature'.*Did you mean 'temperature'\?"),
        ({"distill": {"alpha": 0.5}}, r"stages\[0\]\.distill\.teacher=None$"),
        ({"prune": 1.0}, r"^expected a fraction in \(0, 1\)\. Received: .*prune\.sparsity=1\.0$"),
        ({"prune": {"sparsity": 0.5, "schedule": "cubic"}},
         r"expected one of polynomial, constant\. Received: stages\[0\]\.prune\.schedule"),
        ({"prune": {"sparsity": 0.5, "begin_step": 10, "end_step": 5}},
         r"expected an end_step after begin_step 10\. Received: stages\[0\]\.prune\.end_step=5"),
        ({"prune": {"sparsity": 0.5, "frequency": 0}}, r"prune\.frequency=0$"),
        ({"prune": 0.5, "lora": 4}, r"no lora in a prune stage"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(_stage_cfg(**stage))
    mixed = {"backbone": {"name": "resnet50"},
             "data": {"source": "image_folder", "train": "x", "augmentation": {"mixup": 0.2}},
             "stages": [{"name": "s", "distill": {"teacher": "t"}}]}
    with pytest.raises(ConfigError, match=r"no mixup / cutmix with a distill stage"):
        load_config(mixed, resolve_paths=False)
    with pytest.raises(ConfigError, match=r"backbone\.num_layers=0"):
        load_config({"backbone": {"name": "bert", "preset": "x", "num_layers": 0}})


def test_a_missing_teacher_is_a_one_line_error_before_training(tmp_path):
    from kerasft.api import _teacher_kind
    from kerasft.errors import KerasftError

    with pytest.raises(KerasftError, match=r"^expected a kerasft export \(saved_model\.pb\) or "
                                           r"a finished run folder .*Received: "
                                           r"stages\[1\]\.distill\.teacher='nowhere'$"):
        _teacher_kind("nowhere", "stages[1].distill.teacher")
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert _teacher_kind(str(tmp_path), "k") == "export"


def test_distill_loss_is_the_hand_computed_mix_on_one_batch():
    from kerasft.training.distill import distill_loss, distill_metrics

    rng = np.random.default_rng(0)
    student = rng.dirichlet(np.ones(3), size=4).astype("float32")
    teacher = rng.dirichlet(np.ones(3), size=4).astype("float32")
    labels = np.array([0, 2, 1, 2])
    packed = np.concatenate([labels[:, None], teacher], axis=1).astype("float32")
    t, alpha = 2.0, 0.3

    def soft(p):
        z = np.exp(np.log(p) / t)
        return z / z.sum(-1, keepdims=True)

    hard = -np.log(student[np.arange(4), labels])
    kl = (soft(teacher) * np.log(soft(teacher) / soft(student))).sum(-1)
    got = np.asarray(distill_loss(t, alpha, 3)(packed, student))
    np.testing.assert_allclose(got, alpha * hard + (1 - alpha) * t * t * kl, rtol=1e-5)
    # Validation labels are plain ids: the loss is the hard-label cross-entropy alone.
    np.testing.assert_allclose(np.asarray(distill_loss(t, alpha, 3)(labels, student)), hard,
                               rtol=1e-5)
    accuracy = distill_metrics(3)[0]
    accuracy.update_state(packed, student)
    assert float(accuracy.result()) == np.mean(student.argmax(-1) == labels)


def test_teacher_probabilities_travel_with_their_examples_through_the_pipeline():
    import tensorflow as tf

    from kerasft.data.pipeline import make_pipeline
    from kerasft.data.splits import Split
    from kerasft.training.distill import packed_split

    texts = [f"text {i}" for i in range(10)]
    labels = np.arange(10) % 3
    probs = np.random.default_rng(2).dirichlet(np.ones(3), size=10).astype("float32")
    split = Split(tf.data.Dataset.from_tensor_slices((texts, labels.astype("int32"))), labels, 10)
    ds = make_pipeline(packed_split(split, probs), batch_size=4, training=True, seed=0,
                       preprocess=lambda x: x, start_epoch=0)
    seen = 0
    for x, y in ds.take(3):  # one shuffled epoch
        for text, row in zip(x.numpy(), y.numpy()):
            i = texts.index(text.decode())
            assert row[0] == labels[i]
            np.testing.assert_array_equal(row[1:], probs[i])
            seen += 1
    assert seen == 10


def test_pruning_schedule_masks_and_resume():
    from kerasft.training.prune import last_update, magnitude_mask, target_sparsity

    poly = {"sparsity": 0.8, "schedule": "polynomial", "begin_step": 10, "frequency": 5}
    assert target_sparsity(9, poly, 30) == 0.0
    assert target_sparsity(20, poly, 30) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert target_sparsity(30, poly, 30) == target_sparsity(99, poly, 30) == pytest.approx(0.8)
    assert target_sparsity(10, {**poly, "schedule": "constant"}, 30) == 0.8
    assert [last_update(s, poly, 30) for s in (3, 10, 14, 15, 29, 40)] == [3, 10, 10, 15, 25, 30]

    values = np.random.default_rng(1).normal(size=(40, 25)).astype("float32")
    mask = magnitude_mask(values, 0.6)
    assert int((mask == 0).sum()) == 600
    assert np.abs(values[mask == 0]).max() <= np.abs(values[mask == 1]).min()
    # A resumed stage recomputes the masks from the zeroed kernels: the same masks.
    np.testing.assert_array_equal(magnitude_mask(values * mask, 0.6), mask)


@pytest.mark.slow
def test_pruning_callback_reaches_the_sparsity_and_a_resumed_stage_keeps_its_masks():
    import keras

    from kerasft.training.prune import pruning_callback_class, sparsity_of

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10), keras.layers.Dense(4)])
    prune = {"sparsity": 0.6, "schedule": "polynomial", "begin_step": 0, "end_step": None,
             "frequency": 3}  # masks at steps 3, 6 and the end (8): an epoch ends between
    rng = np.random.default_rng(3)

    def run(epochs, first_epoch=0, state=None):
        callback = pruning_callback_class()(model, prune, 0, state if state is not None else {})
        callback.set_params({"steps": 4, "epochs": 2})
        callback.on_train_begin()
        for epoch in epochs:
            callback.on_epoch_begin(epoch)
            for batch in range(4):  # an optimizer step moves every weight, zeros included
                for v in model.trainable_weights:
                    v.assign(v.numpy() + rng.normal(scale=0.01, size=v.shape))
                callback.on_train_batch_end(batch)
        callback.on_train_end()
        return callback

    first = run([0])  # epoch 1 of 2, interrupted: the masks of step 3
    kernels = first.kernels
    assert len(kernels) == 2
    masks = [m.copy() for m in first.masks]
    zeros, total = sparsity_of(kernels)
    assert zeros == sum(round(0.6 * (1 - (5 / 8) ** 3) * k.numpy().size) for k in kernels)
    resumed = pruning_callback_class()(model, prune, 0, {})
    resumed.set_params({"steps": 4, "epochs": 2})
    resumed.on_train_begin()
    resumed.on_epoch_begin(1)  # a resumed run starts at epoch 2 from the checkpointed kernels
    for mine, theirs in zip(resumed.masks, masks):
        np.testing.assert_array_equal(mine, theirs)
    state = {}
    run([1], state=state)
    zeros, total = sparsity_of(state["kernels"])
    assert zeros == sum(round(0.6 * k.numpy().size) for k in kernels)


def test_student_keeps_the_lower_layers_of_its_preset(tmp_path):
    from kerasft.config import BackboneConfig
    from kerasft.models.registry import build_backbone

    preset = write_tiny_bert_preset(tmp_path / "kh", num_layers=3)
    full = build_backbone(BackboneConfig(name="bert", preset=preset))
    small = build_backbone(BackboneConfig(name="bert", preset=preset, num_layers=1))
    assert (small.info["num_layers"], full.info["num_layers"]) == (1, 3)
    names = {layer.name for layer in small.network.layers}
    assert "transformer_layer_0" in names and "transformer_layer_1" not in names
    for layer in small.network.layers:
        for mine, theirs in zip(layer.weights, full.network.get_layer(layer.name).weights):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
    with pytest.raises(ConfigError, match=r"expected 1 to 3 .* backbone\.num_layers=4$"):
        build_backbone(BackboneConfig(name="bert", preset=preset, num_layers=4))


def _save_teacher_export(path):
    """A SavedModel with a kerasft export's ``serving_default`` contract (raw texts in,
    ``probabilities`` out): texts with "good" / "great" / "nice" / "loved" / "liked" are pos."""
    import tensorflow as tf

    class Teacher(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            pos = tf.strings.regex_full_match(text, ".*(good|great|nice|loved|liked).*")
            p = tf.where(pos, 0.9, 0.2)
            return {"probabilities": tf.stack([1.0 - p, p], axis=-1)}

    teacher = Teacher()
    tf.saved_model.save(teacher, str(path), signatures={"serving_default": teacher.serve})


@pytest.mark.slow
def test_student_distills_from_an_export_prunes_and_exports_the_zeros(tmp_path):
    import tensorflow as tf

    from kerasft.api import build_finetuner
    from kerasft.training.prune import prunable_kernels, sparsity_of
    from tests.session_loader import SessionModel

    preset = write_tiny_bert_preset(tmp_path / "kh", num_layers=2)
    rows = [(t, "pos") for t in GOOD] * 2 + [(t, "neg") for t in BAD] * 2
    train = write_csv(tmp_path / "train.csv", rows)
    base = {"seed": 1, "output_dir": str(tmp_path / "runs"),
            "backbone": {"name": "bert", "preset": preset, "sequence_length": 16},
            "data": {"source": "csv", "train": train, "batch_size": 8},
            "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                         "monitor": "loss", "mixed_precision": "none"},
            "export": {"dir": str(tmp_path / "saved_models"), "verify": False}}
    teacher_export = tmp_path / "teacher" / "1"
    _save_teacher_export(teacher_export)
    lines = []
    student = build_finetuner({
        **base, "name": "student",
        "backbone": {**base["backbone"], "num_layers": 1},
        "stages": [{"name": "distill", "trainable": "all", "epochs": 1, "learning_rate": 0.01,
                    "distill": {"teacher": str(teacher_export), "temperature": 2.0,
                                "alpha": 0.5},
                    "prune": {"sparsity": 0.5, "schedule": "polynomial", "frequency": 1}}],
    }, log=lines.append)
    summary = student.fit(evaluate=False)
    assert any(line.startswith("distill: the teacher export") for line in lines)
    assert any("pruned" in line and "sparsity 0.500" in line for line in lines), lines
    assert summary["stages"][0]["epochs_run"] == 1

    export = student.export()
    reader = tf.train.load_checkpoint(str(export / "variables" / "variables"))
    exported = [np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()]
    kernels = prunable_kernels(student.model)
    assert len(kernels) == 8  # 4 attention and 2 feed-forward kernels, the pooler, the head
    for kernel in kernels:  # each trained kernel is in the export, with its zeros
        value = kernel.numpy()
        assert any(t.shape == value.shape and np.array_equal(t, value) for t in exported), \
            kernel.path
    zeros, total = sparsity_of(kernels)
    assert zeros == total // 2
    with SessionModel(str(export)) as served:
        out = served.run("serving_default", text=np.array([b"a good movie", b"awful film"]))
    assert out["probabilities"].shape == (2, 2)
