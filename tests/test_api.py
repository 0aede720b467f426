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


@pytest.mark.slow
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


def test_integer_labels_are_class_ids_in_fit_evaluate_and_predict(image_arrays, tmp_path):
    """Integer labels mean class ids 0..K-1 everywhere (Keras's convention); other integers are
    refused with one line instead of being renamed by fit and read as ids by evaluate."""
    from kerasft import build_finetuner

    x, names = image_arrays
    ids = np.array([["cat", "dog", "owl"].index(v) for v in names])
    ft = build_finetuner(_cfg(), log=lambda s: None)
    ft.fit(x, ids, output_dir=tmp_path, evaluate=False)
    assert ft.class_names == ["0", "1", "2"]
    report = ft.evaluate(x, ids)
    assert report["examples"] == 60 and report["accuracy"] > 0.5
    # the same labels as strings score the same: one meaning for both forms
    assert ft.evaluate(x, ids.astype(str))["accuracy"] == report["accuracy"]
    assert (ft.predict(x).argmax(-1) == ids).mean() == report["accuracy"]

    shifted = build_finetuner(_cfg(), log=lambda s: None)
    with pytest.raises(KerasftError, match=r"class ids 0..K-1.*Received: labels=\[1, 2, 3\] "
                                           r"\(missing ids: \[0\]\)$"):
        shifted.fit(x, ids + 1, output_dir=tmp_path, evaluate=False)
    with pytest.raises(KerasftError, match=r"expected class ids 0..2.*Received: y\[\d+\]=3$"):
        ft.evaluate(x, ids + 1)


def test_integer_labels_after_integer_like_string_labels_are_refused(image_arrays, tmp_path):
    """A model trained on the strings "1".."3" has ids 0..2: the integers 1..3 would score
    against the wrong classes, so they are refused (strings work)."""
    from kerasft import build_finetuner

    x, names = image_arrays
    ids = np.array([["cat", "dog", "owl"].index(v) for v in names]) + 1
    ft = build_finetuner(_cfg(), log=lambda s: None)
    ft.fit(x, ids.astype(str), output_dir=tmp_path, evaluate=False)
    assert ft.class_names == ["1", "2", "3"]
    with pytest.raises(KerasftError, match=r"labels as strings.*class_names=\['1', '2', '3'\]$"):
        ft.evaluate(x, ids)
    assert ft.evaluate(x, ids.astype(str))["examples"] == 60


def _image_run_config(tmp_path):
    from tests.test_resume import _images

    return _cfg(output_dir=str(tmp_path / "runs"),
                data={"source": "image_folder", "train": str(_images(tmp_path / "images")),
                      "validation_split": 0.25, "test_split": 0.25, "batch_size": 8},
                export={"dir": str(tmp_path / "saved_models"), "verify": False})


@pytest.mark.slow
def test_evaluate_keeps_each_split_apart_and_the_card_reports_test(image_arrays, tmp_path):
    """evaluate --split validation and evaluate(x, y) write their own files; metrics.json (and
    the model card of a later export) keep the test figures."""
    import json

    from click.testing import CliRunner

    from kerasft import build_finetuner
    from kerasft.cli import main

    ft = build_finetuner(_image_run_config(tmp_path), log=lambda s: None)
    ft.fit()
    run_dir = ft.run_dir
    test_json = (run_dir / "metrics.json").read_text()
    test_txt = (run_dir / "metrics.txt").read_text()
    assert json.loads(test_json)["split"] == "test"

    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--split", "validation"])
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "metrics-validation.json").read_text())["split"] == "validation"
    assert (run_dir / "metrics-validation.txt").is_file()
    x, y = image_arrays
    ft.evaluate(x, y)
    assert json.loads((run_dir / "metrics-given.json").read_text())["examples"] == 60
    assert (run_dir / "metrics.json").read_text() == test_json
    assert (run_dir / "metrics.txt").read_text() == test_txt

    assert ft.metrics["split"] == "test"
    card = (ft.export() / "assets.extra" / "README.md").read_text()
    assert "On the test split" in card


def test_evaluate_refuses_a_split_the_run_did_not_hold_out(tmp_path):
    from click.testing import CliRunner

    from kerasft import build_finetuner
    from kerasft.cli import main

    ft = build_finetuner(_image_run_config(tmp_path), log=lambda s: None)
    ft.fit(evaluate=False)
    for path in sorted((tmp_path / "images" / "cat").iterdir())[:4]:  # the data changed since
        path.unlink()
    result = CliRunner().invoke(main, ["evaluate", str(ft.run_dir), "--split", "validation"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "data.json: expected the validation split the run held out" \
        in errors[0] and "Received: validation={'size': 11" in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (ft.run_dir / "metrics-validation.json").exists()


def test_fit_dataset_without_validation_finishes_and_skips_metrics(image_arrays, tmp_path):
    import tensorflow as tf

    from kerasft import build_finetuner

    x, y = image_arrays
    names = ["cat", "dog", "owl"]
    ids = np.array([names.index(v) for v in y])
    lines = []
    ft = build_finetuner(_cfg(), log=lines.append)
    ft.build(names)
    summary = ft.fit(tf.data.Dataset.from_tensor_slices((x, ids)).batch(8), output_dir=tmp_path)
    assert summary["metrics"] is None and len(summary["stages"]) == 1
    assert (ft.run_dir / "model.weights.h5").is_file()
    assert any("final metrics skipped" in line for line in lines)
    assert "final metrics skipped" in (ft.run_dir / "train.log").read_text()


def test_predict_takes_one_image_or_a_batch_and_returns_labels(image_arrays):
    from kerasft import build_finetuner

    x, _ = image_arrays
    ft = build_finetuner(_cfg(), log=lambda s: None)
    ft.build(["cat", "dog", "owl"])
    batch = ft.predict(x[:4])
    assert batch.shape == (4, 3)
    one = ft.predict(x[0])
    assert one.shape == (3,)
    np.testing.assert_allclose(one, batch[0], atol=1e-6)
    probabilities, label = ft.predict(x[0], return_labels=True)
    assert label == ["cat", "dog", "owl"][int(np.argmax(probabilities))]
    probabilities, labels = ft.predict(x[:4], return_labels=True)
    assert labels == [["cat", "dog", "owl"][i] for i in batch.argmax(-1)]
    np.testing.assert_allclose(ft.predict(x[0, :, :, :1]), ft.predict(
        np.repeat(x[0, :, :, :1], 3, axis=-1)), atol=1e-6)  # grayscale [h, w, 1] is one image
    for bad in ("cat.jpg", np.zeros((2, 8, 8, 5)), np.zeros(7)):
        with pytest.raises(KerasftError, match=r"^predict: expected one image \[h, w, 3\] or a "
                                               r"batch \[n, h, w, 3\].*Received: inputs shape=\("):
            ft.predict(bad)


@pytest.mark.slow
def test_predict_takes_one_string_or_a_batch(tmp_path):
    from kerasft import build_finetuner
    from tests.bert_fixtures import write_tiny_bert_preset

    preset = write_tiny_bert_preset(tmp_path / "kh")
    ft = build_finetuner({"backbone": {"name": "bert", "preset": preset, "sequence_length": 16},
                          "training": {"strategy": "default"}}, log=lambda s: None)
    ft.build(["neg", "pos"])
    batch = ft.predict(["a good movie", "awful film"])
    assert batch.shape == (2, 2)
    one, label = ft.predict("a good movie", return_labels=True)
    assert one.shape == (2,) and label in ("neg", "pos")
    np.testing.assert_allclose(one, batch[0], atol=1e-5)
    with pytest.raises(KerasftError, match=r"^predict: expected one string or a non-empty list "
                                           r"of strings\. Received: inputs shape=\(1, 8, 8, 3\) "
                                           r"\(ndarray\)$"):
        ft.predict(np.zeros((1, 8, 8, 3)))


def test_a_run_name_outside_tensorflow_scope_names_trains(image_arrays, tmp_path):
    """Names like "mixup+ema v2" are valid run and export names; TensorFlow's root scope
    names allow no "+" or spaces, so the Keras model is named from a cleaned copy."""
    from kerasft import build_finetuner

    x, y = image_arrays
    ft = build_finetuner(_cfg(name="mixup+ema v2", stages=[
        {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.05}]),
        log=lambda s: None)
    summary = ft.fit(x[:16], y[:16], output_dir=tmp_path, evaluate=False)
    assert ft.model.name == "kerasft_mixup_ema_v2" and len(summary["stages"]) == 1
    assert ft.run_dir.name.startswith("mixup+ema v2")
