"""Image-world regularisers: MixUp / CutMix / RandAugment (training batches only, soft labels)
and weight EMA (the averaged weights are what is evaluated, kept as best and exported)."""

from __future__ import annotations

import numpy as np
import pytest

from kerasft.config import ConfigError, load_config
from tests.session_loader import SessionModel

VALUES = np.array([30.0, 120.0, 240.0])  # class k's images are filled with VALUES[k]


def _solid_split(n: int = 24):
    import tensorflow as tf

    from kerasft.data.splits import Split

    labels = np.arange(n) % 3
    x = np.ones((n, 8, 8, 3), np.uint8) * VALUES[labels].astype(np.uint8)[:, None, None, None]
    return Split(dataset=tf.data.Dataset.from_tensor_slices((x, labels)), labels=labels, size=n)


def _batches(augmentation, training, mix_classes=3):
    from kerasft.data.pipeline import make_pipeline

    ds = make_pipeline(_solid_split(), batch_size=8, training=training, seed=1,
                       preprocess=lambda v: v, image_size=(8, 8), augmentation=augmentation,
                       mix_classes=mix_classes if training else None)
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_mixup_mixes_training_batches_only():
    train = _batches({"mixup": {"alpha": 0.4}}, training=True)
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    assert y.shape == (24, 3)
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-6)
    assert ((y > 0.01) & (y < 0.99)).any()  # some labels are soft
    # Each image is the label-weighted mix of the two images' pixels (solid images: one value).
    np.testing.assert_allclose(x.reshape(24, -1), np.repeat(y @ VALUES, 192).reshape(24, -1),
                               atol=1e-3)
    for x_val, y_val in _batches({"mixup": {"alpha": 0.4}}, training=False):
        assert y_val.ndim == 1 and y_val.dtype.kind == "i"  # class ids, untouched
        np.testing.assert_array_equal(x_val[:, 0, 0, 0], VALUES[y_val])


def test_cutmix_labels_follow_the_pasted_area():
    train = _batches({"cutmix": {"factor": 1.0}}, training=True)
    y = np.concatenate([b[1] for b in train])
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)
    assert ((y > 0.01) & (y < 0.99)).any()


def test_rand_augment_changes_training_images():
    from kerasft.data.pipeline import build_augmentation

    augment = build_augmentation({"rand_augment": {"num_ops": 2, "factor": 0.9}}, seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    out = np.asarray(augment(x))
    assert out.shape == x.shape and not np.allclose(out, x)


def test_soft_label_loss_and_accuracy():
    from keras import ops

    from kerasft.config import HeadConfig
    from kerasft.training.stages import make_loss, make_metrics

    head = HeadConfig(task="classification")
    probs = ops.convert_to_tensor(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32"))
    soft = np.array([[0.6, 0.4, 0.0], [0.0, 0.3, 0.7]], "float32")
    ids = np.array([0, 2])
    loss = make_loss(head, 3, 0.0, soft_labels=True)
    expect = -(soft * np.log(np.asarray(probs))).sum(1).mean()
    np.testing.assert_allclose(float(loss(ops.convert_to_tensor(soft), probs)), expect, rtol=1e-5)
    np.testing.assert_allclose(float(loss(ops.convert_to_tensor(ids), probs)),
                               -np.log([0.7, 0.8]).mean(), rtol=1e-5)
    smoothed = make_loss(head, 3, 0.3, soft_labels=True)  # label smoothing still applies
    target = soft * 0.7 + 0.1
    np.testing.assert_allclose(float(smoothed(ops.convert_to_tensor(soft), probs)),
                               -(target * np.log(np.asarray(probs))).sum(1).mean(), rtol=1e-5)
    (accuracy,) = make_metrics(head, 3, soft_labels=True)
    accuracy.update_state(ops.convert_to_tensor(np.array([[0.3, 0.7, 0.0], [0, 0.2, 0.8]],
                                                         "float32")), probs)
    assert float(accuracy.result()) == 0.5  # the first row's larger share is class 1


def test_regulariser_config_errors():
    image = {"backbone": {"name": "tiny_cnn", "weights": "none"}, "data": {"source": "arrays"}}
    cfg = load_config({**image, "stages": [{"name": "s", "ema": True}]})
    assert cfg.stages[0].ema == {"momentum": 0.99}
    assert load_config({**image, "stages": [{"name": "s", "ema": 0.9}]}).stages[0].ema == \
        {"momentum": 0.9}
    cases = [
        ({"data": {"source": "csv", "augmentation": {"mixup": {"alpha": 0.2}}}},
         r"^expected an image backbone for mixup.*Received: data\.augmentation\.mixup="),
        ({**image, "data": {"source": "arrays", "augmentation": {"mixup": {"alfa": 0.2}}}},
         r"unknown key='data\.augmentation\.mixup\.alfa' Did you mean 'alpha'\?$"),
        ({**image, "data": {"source": "arrays", "augmentation": {"cutmix": 2}}},
         r"factor in \(0, 1\].*Received: data\.augmentation\.cutmix=2$"),
        ({**image, "data": {"source": "arrays", "augmentation": {"mixup": 0.2, "cutmix": 1}}},
         r"mixup or cutmix, not both"),
        ({**image, "head": {"task": "multi_label"},
          "data": {"source": "arrays", "augmentation": {"mixup": 0.2}}},
         r"head\.task classification with mixup"),
        ({**image, "data": {"source": "arrays", "augmentation": {"rand_augment": {"ops": 2}}}},
         r"unknown key='data\.augmentation\.rand_augment\.ops'"),
        ({**image, "stages": [{"name": "s", "ema": {"momentum": 1.5}}]},
         r"momentum in \(0, 1\).*Received: stages\[0\]\.ema\.momentum=1\.5$"),
    ]
    for data, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            cfg = load_config(data)
            from kerasft.validate import check_data_source

            check_data_source(cfg)
        assert "\n" not in str(e.value)


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_mixup_and_ema_run_resumes_and_exports_the_averages(image_arrays, tmp_path,
                                                            monkeypatch):
    """One mixup + EMA stage (2 epochs), interrupted at its second epoch's commit and resumed;
    every step's raw weights are recorded, and the averages recomputed from them."""
    import kerasft.training.checkpoints as checkpoints
    import kerasft.training.loop as loop
    from kerasft.api import build_finetuner
    from kerasft.models.weights import load_model_weights
    from kerasft.training.callbacks import callback_classes

    raw: list[list[np.ndarray]] = []  # the trained weights after every step
    classes = dict(callback_classes())

    class Recorder(classes["NaNGuard"]):
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            raw.append([np.array(v) for v in self.model.trainable_weights])

    classes["NaNGuard"] = Recorder
    monkeypatch.setattr(loop, "callback_classes", lambda: classes)

    def interrupt(point, epoch):
        if (point, epoch) == ("commit", 1):
            raise Interrupted()

    momentum = 0.8
    cfg = {
        "name": "reg", "seed": 0, "backbone": {"name": "tiny_cnn", "weights": "none"},
        "data": {"source": "arrays", "batch_size": 16, "validation_split": 0.2,
                 "augmentation": {"mixup": {"alpha": 0.4}}},
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "restore_best": False},
        "stages": [{"name": "all", "trainable": "all", "epochs": 2, "learning_rate": 0.05,
                    "label_smoothing": 0.1, "ema": {"momentum": momentum}}],
        "export": {"dir": str(tmp_path / "saved_models")},
    }
    x, y = image_arrays
    with monkeypatch.context() as m:
        m.setattr(checkpoints, "pause_point", interrupt)
        with pytest.raises(Interrupted):
            build_finetuner(cfg, log=lambda s: None).fit(x, y, output_dir=tmp_path / "runs",
                                                         evaluate=False)
    (run_dir,) = (tmp_path / "runs").iterdir()
    ft = build_finetuner(cfg, log=lambda s: None)
    ft.fit(x, y, output_dir=tmp_path / "runs", resume=run_dir, evaluate=False)

    # The training pipeline mixes; the validation pipeline gives raw pixels and class ids.
    (_, yt), = ft._pipeline(ft.data.train, training=True, start_epoch=0).take(1)
    assert yt.shape == (16, 3) and np.allclose(yt.numpy().sum(1), 1.0)
    (_, yv), = ft._pipeline(ft.data.validation, training=False).take(1)
    assert yv.shape.rank == 1

    steps = len(raw) // 3  # epoch 1, epoch 2 (lost: never committed), epoch 2 again
    kept = raw[:steps] + raw[2 * steps:]
    averages, e = [], None
    for t, weights in enumerate(kept):
        e = [w.copy() for w in weights] if t == 0 else [
            momentum * a + (1 - momentum) * w for a, w in zip(e, weights)]
        if (t + 1) % steps == 0:
            averages.append(e)

    def close(a, b):
        return all(np.allclose(u, v, atol=1e-5) for u, v in zip(a, b))

    # The model holds the last epoch's averages, not the raw weights; the resumed epoch trained
    # on from epoch 1's raw weights (not from its averages, which the checkpoint's model file
    # holds) and its averages continued from epoch 1's.
    final = [np.array(v) for v in ft.model.trainable_weights]
    assert close(final, averages[-1]) and not close(final, kept[-1])
    jump = sum(np.abs(a - b).sum() for a, b in zip(kept[steps], kept[steps - 1]))
    from_average = sum(np.abs(a - b).sum() for a, b in zip(kept[steps], averages[0]))
    assert jump < from_average

    path = ft.export(verify=False)  # checked here with the session loader
    with SessionModel(str(path)) as served:
        first = served.run("serving_default", image=x[:6].astype("float32"))["probabilities"]
        again = served.run("serving_default", image=x[:6].astype("float32"))["probabilities"]
    np.testing.assert_array_equal(first, again)  # no augmentation in the export
    np.testing.assert_allclose(first, ft.predict(x[:6]), atol=1e-5)

    load_model_weights(ft.model, run_dir / "checkpoints" / "best.weights.h5")
    best = [np.array(v) for v in ft.model.trainable_weights]
    assert any(close(best, a) for a in averages)  # the best epoch's averages


def test_ema_weights_stay_after_an_early_stop():
    """A stage stopped before its last epoch ends with the averages in the model (Keras's fit
    would otherwise write the raw weights back at its end)."""
    import keras

    from kerasft.training.callbacks import callback_classes

    classes = callback_classes()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.5),
                  loss="mse")
    raw = []

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append([np.array(v) for v in self.model.trainable_weights])

        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True  # as EarlyStopping does, after epoch 1 of 3

    ema = classes["EMAWeights"]()
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(x, x[:, :2] * 3.0, batch_size=4, epochs=3, verbose=0, shuffle=False,
              callbacks=[ema, Stop(), classes["EMAStop"](ema)])
    average = [0.5 * a + 0.5 * b for a, b in zip(*raw)]  # first average = first step's weights
    for w, expected, last in zip(model.trainable_weights, average, raw[-1]):
        np.testing.assert_allclose(np.array(w), expected, atol=1e-6)
        assert not np.allclose(np.array(w), last)


_DRAWS = """
import sys
import numpy as np
import tensorflow as tf
tf.config.experimental.enable_op_determinism()  # what training.deterministic: true turns on
from kerasft.data.pipeline import make_pipeline
from kerasft.data.splits import Split
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (128, 16, 16, 3), dtype=np.uint8)
y = (np.arange(128) % 3).astype("int32")
def draws():
    split = Split(dataset=tf.data.Dataset.from_tensor_slices((x, y)), labels=y, size=128)
    ds = make_pipeline(split, batch_size=16, training=True, seed=7, preprocess=lambda t: t,
                       image_size=(16, 16), mix_classes=3,
                       augmentation={"flip": True, "rotation": 0.1, "mixup": {"alpha": 0.4}})
    return [b[0].numpy() for b in ds]
first, second = draws(), draws()
print(sum(not np.array_equal(a, b) for a, b in zip(first, second, strict=True)))
"""


@pytest.mark.slow
def test_augmentation_and_mixup_draws_repeat_under_op_determinism():
    """README's "Reproducible runs": seed + training.deterministic give the same draws. The
    random layers run in a parallel tf.data map; without op determinism their seed state is
    advanced by whichever batch runs first, so seed alone does not repeat them (TensorFlow's
    enable_op_determinism runs maps with stateful random ops serially)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", _DRAWS], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "0"  # batches that differ between the two pipelines
