"""build_finetuner() for Keras users: arrays, tf.data, evaluate, from_run."""

from __future__ import annotations

import numpy as np
import pytest

from kerasft.errors import KerasftError


def _cfg(**extra):
    cfg = {"name": "api", "backbone": {"name": "tiny_cnn", "weights": "none"},
           "data": {"source": "arrays", "batch_size": 8},
           "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
           "stages": [{"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 0.05}]}
    cfg.update(extra)
    return cfg


def test_tf_data_dataset_after_build(image_arrays, tmp_path):
    import tensorflow as tf

    from kerasft import build_finetuner

    x, y = image_arrays
    names = ["cat", "dog", "owl"]
    ids = np.array([names.index(v) for v in y])
    ft = build_finetuner(_cfg(), log=lambda s: None)
    with pytest.raises(KerasftError, match=r"build\(class_names\)"):
        ft.fit(tf.data.Dataset.from_tensor_slices((x, ids)), output_dir=tmp_path)
    ft.build(names)
    train = tf.data.Dataset.from_tensor_slices((x[:48], ids[:48])).batch(8)
    val = tf.data.Dataset.from_tensor_slices((x[48:], ids[48:]))
    summary = ft.fit(train, validation_data=val, output_dir=tmp_path)
    assert summary["metrics"]["split"] == "validation"
    assert summary["metrics"]["examples"] == 12


def test_evaluate_given_arrays_and_from_run(image_arrays, tmp_path):
    from kerasft import build_finetuner
    from kerasft.api import FineTuner

    x, y = image_arrays
    ft = build_finetuner(_cfg(), log=lambda s: None)
    ft.fit(x, y, output_dir=tmp_path, evaluate=False)
    report = ft.evaluate(x, y)
    assert report["examples"] == 60 and set(report["per_class"]) == {"cat", "dog", "owl"}
    assert report["accuracy"] > 0.5  # the class is in the mean colour: learnable in 2 epochs
    again = FineTuner.from_run(ft.run_dir, log=lambda s: None)
    np.testing.assert_allclose(again.predict(x[:5]), ft.predict(x[:5]), atol=1e-6)
    with pytest.raises(KerasftError, match=r"labels among \['cat', 'dog', 'owl'\]"):
        ft.evaluate(x[:2], np.array(["cat", "cow"]))


def test_task_mismatch_is_an_error(tmp_path):
    from kerasft import build_finetuner

    ft = build_finetuner(_cfg(), log=lambda s: None)
    with pytest.raises(KerasftError, match="expected image data for backbone tiny_cnn"):
        ft.fit(np.array(["some text", "more text"] * 10), np.array(["a", "b"] * 10),
               output_dir=tmp_path)
