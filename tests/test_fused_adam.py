"""The fused Adam/AdamW update (kerasft/training/fused_adam.py) against Keras's own optimizers."""

from __future__ import annotations

import numpy as np
import pytest

from kerasft.config import StageConfig
from kerasft.training.stages import make_optimizer


def _model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,), dtype="int32")
    # An IndexedSlices gradient with repeated token ids: Keras's own update squares each
    # occurrence's slice before they are summed, the fused kernel would square the sum.
    x = keras.layers.Embedding(50, 8, name="emb")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.LayerNormalization(name="norm")(keras.layers.Dense(16, "relu")(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(x))


def _data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 50, size=(96, 6)).astype("int32"), rng.integers(0, 3, 96)


def _train(make, strategy=None):
    """(weights before, weights after, model): `_model()` fit 2 epochs with ``make(model)``."""
    import contextlib

    import keras

    with strategy.scope() if strategy else contextlib.nullcontext():
        model = _model()
        model.compile(optimizer=make(model), loss="sparse_categorical_crossentropy")
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return before, [keras.ops.convert_to_numpy(v) for v in model.trainable_variables], model


def _assert_same_training(ours, keras_own):
    before, got, _ = ours
    _, want, _ = keras_own
    assert len(got) == len(want) == 7
    for b, g, w in zip(before, got, want, strict=True):
        assert not np.allclose(b, w, rtol=0, atol=1e-4)  # every variable was updated
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@pytest.fixture
def kernel_calls(monkeypatch):
    """How often the fused kernel was called (at trace time in fit, at each call eagerly)."""
    import tensorflow as tf

    calls = []
    kernel = tf.raw_ops.ResourceApplyAdam

    def counted(**kwargs):
        calls.append(kwargs["var"])
        return kernel(**kwargs)

    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam", counted)
    return calls


@pytest.mark.parametrize("kwargs", [
    {"optimizer": "adamw", "weight_decay": 0.05},
    {"optimizer": "adam"},
    {"optimizer": "adamw", "weight_decay": 0.05, "lr_multipliers": {"^out/": 0.1}},
])
def test_fused_update_trains_to_kerass_own_weights(kwargs, kernel_calls):
    import keras

    from kerasft.training.lr_groups import layerwise_class, stage_multipliers

    stage = StageConfig(learning_rate=1e-2, **kwargs)
    base = keras.optimizers.AdamW if stage.optimizer == "adamw" else keras.optimizers.Adam
    decay = {"weight_decay": stage.weight_decay} if stage.weight_decay else {}

    def ours(model):
        return make_optimizer(stage, steps_per_epoch=6,
                              multipliers=stage_multipliers(model, None, stage)[0])

    def keras_own(model):
        mults = stage_multipliers(model, None, stage)[0]
        if not mults:
            return base(learning_rate=1e-2, **decay)
        optimizer = layerwise_class(base)(learning_rate=1e-2, **decay)
        optimizer.set_lr_multipliers(mults)
        return optimizer

    trained = _train(ours)
    # Once per dense-gradient variable (all but the embedding) per trace of the train step.
    assert kernel_calls and len(kernel_calls) % 6 == 0, "not every dense variable took the kernel"
    assert type(trained[2].optimizer).__name__.startswith(("Fused", "LayerwiseFused"))
    _assert_same_training(trained, _train(keras_own))


def test_mirrored_variables_and_amsgrad_take_kerass_update(kernel_calls):
    import keras
    import tensorflow as tf

    from kerasft.training.fused_adam import fused_class

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    stage = StageConfig(optimizer="adamw", learning_rate=1e-2, weight_decay=0.05)
    ours = _train(lambda m: make_optimizer(stage, steps_per_epoch=6), strategy)
    assert type(ours[2].optimizer).__name__ == "FusedAdamW"
    _assert_same_training(ours, _train(
        lambda m: keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0.05), strategy))
    _assert_same_training(_train(lambda m: fused_class(keras.optimizers.Adam)(1e-2, amsgrad=True)),
                          _train(lambda m: keras.optimizers.Adam(1e-2, amsgrad=True)))
    assert not kernel_calls


def test_sgd_is_kerass_and_a_fused_optimizer_deserializes():
    import keras

    sgd = make_optimizer(StageConfig(optimizer="sgd", learning_rate=0.1), steps_per_epoch=1)
    assert type(sgd) is keras.optimizers.SGD
    adam = make_optimizer(StageConfig(optimizer="adam", learning_rate=0.1), steps_per_epoch=1)
    assert isinstance(adam, keras.optimizers.Adam) and type(adam).__name__ == "FusedAdam"
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(adam))
    assert type(restored) is type(adam)
