"""Exports as their real consumers meet them: TensorFlow's ``saved_model_cli run`` (a separate
process, TensorFlow's own tool) and the session-based loader TF Serving uses
(:mod:`tests.session_loader`, independent of kerasft's own check). Also the failure modes of the
export check, multi-label label sets, and exports of mixed-precision models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kerasft.errors import ExportError
from tests.bert_fixtures import write_tiny_bert_preset
from tests.conftest import make_image_arrays
from tests.session_loader import SessionModel, saved_model_cli_run
from tests.test_export import _trained_image_finetuner

GOOD = ["a good movie", "great film", "i loved this book", "very nice", "it was great"]
BAD = ["a bad movie", "awful film", "i hated this book", "very terrible", "it was bad"]
QUIET = {"strategy": "default", "tensorboard": False, "verbose": "silent"}


def _text_finetuner(tmp_path, **training):
    from kerasft.api import build_finetuner

    ft = build_finetuner({
        "name": "tinytext", "seed": 0,
        "backbone": {"name": "bert", "preset": write_tiny_bert_preset(tmp_path / "kh")},
        "data": {"source": "arrays", "batch_size": 4},
        "training": {**QUIET, **training},
        "stages": [{"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.01}],
        "export": {"dir": str(tmp_path / "saved_models")},
    }, log=lambda s: None)
    x = np.array(GOOD + BAD)
    y = np.array(["pos"] * len(GOOD) + ["neg"] * len(BAD))
    ft.fit(x, y, validation_data=(x, y), output_dir=tmp_path / "runs")
    return ft


@pytest.fixture(scope="module")
def image_ft(tmp_path_factory):
    """One trained tiny_cnn FineTuner for the module, and its checked export."""
    tmp = tmp_path_factory.mktemp("image")
    ft = _trained_image_finetuner(make_image_arrays(), tmp)
    return ft, ft.export()


# The text export under saved_model_cli: tests/test_text.py::test_text_end_to_end_export_and_
# fresh_reload (it trains the tiny BERT that this module would otherwise train again).


@pytest.mark.slow
def test_saved_model_cli_runs_both_image_signatures(image_ft, tmp_path):
    import tensorflow as tf

    ft, path = image_ft
    x, _ = make_image_arrays()
    np.save(tmp_path / "x.npy", x[:3].astype("float32"))
    expected = ft.predict(x[:3])
    out = saved_model_cli_run(["--dir", str(path), "--signature_def", "serving_default",
                            "--inputs", f"image={tmp_path / 'x.npy'}"], tmp_path)
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), expected, atol=1e-5)

    # An object array (saved_model_cli reads .npy files with allow_pickle=True): an
    # --input_exprs literal cannot carry PNG bytes, the tool splits expressions on ";".
    pngs = np.array([tf.io.encode_png(img).numpy() for img in x[:3]], dtype=object)
    np.save(tmp_path / "pngs.npy", pngs, allow_pickle=True)
    out = saved_model_cli_run(["--dir", str(path), "--signature_def", "serving_bytes",
                            "--inputs", f"image_bytes={tmp_path / 'pngs.npy'}"], tmp_path)
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), expected, atol=1e-5)


@pytest.mark.slow
def test_warmup_file_replays_through_the_session(image_ft):
    """TF Serving replays every warmup record at load; each must run in the session graph."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    _, path = image_ft
    records = list(tf.data.TFRecordDataset(
        str(path / "assets.extra" / "tf_serving_warmup_requests")).as_numpy_iterator())
    assert len(records) == 4
    with SessionModel(str(path)) as served:
        for raw in records:
            request = prediction_log_pb2.PredictionLog.FromString(raw).predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            out = served.run(request.model_spec.signature_name, **inputs)
            batch = len(next(iter(inputs.values())))
            assert out["probabilities"].shape == (batch, 3)


@pytest.mark.slow
def test_check_names_the_variable_the_session_loader_misses(image_ft, tmp_path, monkeypatch):
    """Tracking Keras's variable wrappers (what exports did before) loads under
    tf.saved_model.load but not under TF Serving's loader: the check must refuse it."""
    import kerasft.export.saved_model as export

    ft, _ = image_ft
    real = export._serving_module

    def wrapper_tracking(model, backbone, spec):
        module, signatures = real(model, backbone, spec)
        module.model_variables = list(model.variables)  # Keras 3 Variable wrappers
        return module, signatures

    monkeypatch.setattr(export, "_serving_module", wrapper_tracking)
    with pytest.raises(ExportError, match=r"tiny/1: the export check failed \(nothing was "
                                          r"written\): warmup record 0 \(signature "
                                          r"serving_default\) under the session loader: Could "
                                          r"not find variable \S+"):
        ft.export(dir=tmp_path)
    assert list((tmp_path / "tiny").iterdir()) == []


@pytest.mark.slow
def test_check_refuses_a_warmup_record_the_graph_cannot_run(image_ft, tmp_path, monkeypatch):
    """TF Serving fails a version's load when one warmup record fails: so does the check."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    import kerasft.export.saved_model as export

    ft, _ = image_ft
    real = export.write_warmup

    def with_a_bad_record(export_dir, model_name, backbone, sample_inputs):
        count = real(export_dir, model_name, backbone, sample_inputs)
        target = Path(export_dir) / "assets.extra" / "tf_serving_warmup_requests"
        records = list(tf.data.TFRecordDataset(str(target)).as_numpy_iterator())
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=model_name, signature_name="serving_default"))
        # One channel where the graph needs three: the record parses but cannot run.
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 5, 5, 1), "float32")))
        records.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
            request=request)).SerializeToString())
        with tf.io.TFRecordWriter(str(target)) as writer:
            for record in records:
                writer.write(record)
        return count + 1

    monkeypatch.setattr(export, "write_warmup", with_a_bad_record)
    with pytest.raises(ExportError, match=r"warmup record 4 \(signature serving_default\) under "
                                          r"the session loader: "):
        ft.export(dir=tmp_path)
    assert list((tmp_path / "tiny").iterdir()) == []


@pytest.mark.slow
def test_multi_label_export_answers_label_sets(tmp_path):
    """class_ids multi-hot, labels joined by data.label_separator (array labels are split by
    it too), the same `> threshold` as evaluate; an empty string when no label passes."""
    from kerasft.api import build_finetuner

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 60, size=(48, 16, 16, 3)).astype("float32")
    y = []
    for i in range(48):
        tags = [name for c, name in enumerate(["red", "green", "blue"]) if (i >> c) & 1]
        for c, name in enumerate(["red", "green", "blue"]):
            if name in tags:
                x[i, :, :, c] += 180
        y.append(";".join(tags) if tags else "red")
    ft = build_finetuner({
        "name": "tags", "backbone": {"name": "tiny_cnn", "weights": "none"},
        "head": {"activation": "sigmoid", "threshold": 0.4},
        "data": {"source": "arrays", "batch_size": 16, "label_separator": ";"},
        "training": QUIET,
        "stages": [{"name": "all", "trainable": "all", "epochs": 6, "learning_rate": 0.02}],
        "export": {"dir": str(tmp_path / "saved_models")},
    }, log=lambda s: None)
    ft.fit(x.astype("uint8"), np.array(y), validation_data=(x.astype("uint8"), np.array(y)),
           output_dir=tmp_path / "runs")
    path = ft.export()
    probabilities = ft.predict(x[:12])
    with SessionModel(str(path)) as served:
        out = served.run("serving_default", image=x[:12])
    np.testing.assert_allclose(out["probabilities"], probabilities, atol=1e-5)
    chosen = probabilities > 0.4
    assert ft.class_names == ["blue", "green", "red"]  # ";" split the array labels
    assert out["class_ids"].dtype == np.int64 and out["class_ids"].shape == (12, 3)
    np.testing.assert_array_equal(out["class_ids"], chosen.astype(np.int64))
    assert [s.decode() for s in out["labels"]] == [
        ";".join(n for n, c in zip(ft.class_names, row) if c) for row in chosen]
    report = ft.evaluate(x[:12], np.array([[int(v) for v in row] for row in chosen]))
    assert report["accuracy"] == 1.0  # evaluate thresholds exactly like the export

    ft.config.head.threshold = 0.999999  # nothing passes: empty label strings
    path = ft.export(verify=False)
    with SessionModel(str(path)) as served:
        out = served.run("serving_default", image=x[:4])
    assert [s.decode() for s in out["labels"]] == [""] * 4
    assert not out["class_ids"].any()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_image_models_export_in_float32(image_arrays, tmp_path, policy):
    from kerasft.api import build_finetuner

    x, y = image_arrays
    ft = build_finetuner({
        "name": "tiny", "backbone": {"name": "tiny_cnn", "weights": "none"},
        "data": {"source": "arrays", "batch_size": 16},
        "training": {**QUIET, "mixed_precision": policy},
        "stages": [{"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.01}],
        "export": {"dir": str(tmp_path / "saved_models")},
    }, log=lambda s: None)
    ft.fit(x, y, output_dir=tmp_path / "runs")
    assert ft.model.dtype_policy.name == policy
    path = ft.export()  # the check compares with a float32 copy of the trained weights
    with SessionModel(str(path)) as served:
        out = served.run("serving_default", image=x[:8].astype("float32"))
    assert out["probabilities"].dtype == np.float32
    # Against the 16-bit in-memory model: the rounding of 16-bit arithmetic, no more.
    np.testing.assert_allclose(out["probabilities"], ft.predict(x[:8]), atol=2e-2)


@pytest.mark.slow
def test_mixed_bfloat16_text_model_exports(tmp_path):
    """The quickstart with --set training.mixed_precision=mixed_bfloat16 used to fail its export
    check after the whole run (max_abs_diff 0.0036 > 1e-5)."""
    ft = _text_finetuner(tmp_path, mixed_precision="mixed_bfloat16")
    path = ft.export()
    with SessionModel(str(path)) as served:
        out = served.run("serving_default", text=np.array([b"a good movie", b"awful"],
                                                          dtype=object))
    np.testing.assert_allclose(out["probabilities"], ft.predict(["a good movie", "awful"]),
                               atol=3e-2)


# The smallest member of each keras.applications family, at its minimum input size.
FAMILIES = ["convnexttiny", "densenet121", "efficientnetb0", "efficientnetv2b0",
            "inceptionresnetv2", "inceptionv3", "mobilenet", "mobilenetv2", "mobilenetv3small",
            "nasnetmobile", "resnet50", "resnet50v2", "vgg16", "xception"]
# 10-21 s each on 2 CPU cores (88 s together): run with KERASFT_ALL_FAMILIES=1, so that the
# default suite stays within its 15-minute budget; the other eight always run.
HEAVY_FAMILIES = {"densenet121", "efficientnetb0", "efficientnetv2b0", "inceptionresnetv2",
                  "inceptionv3", "nasnetmobile"}
ALL_FAMILIES = os.environ.get("KERASFT_ALL_FAMILIES") == "1"


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.skipif(n in HEAVY_FAMILIES and not ALL_FAMILIES,
                                             reason="heavy family: KERASFT_ALL_FAMILIES=1"))
    for n in FAMILIES])
def test_every_keras_applications_family_serves_under_the_session_loader(name, tmp_path):
    from kerasft.api import build_finetuner
    from kerasft.models.keras_applications import KERAS_APPLICATIONS

    size = KERAS_APPLICATIONS[name][3]
    ft = build_finetuner({
        "name": name, "backbone": {"name": name, "weights": "none",
                                   "input_shape": [size, size, 3]},
        "training": QUIET, "export": {"dir": str(tmp_path)},
    }, log=lambda s: None)
    ft.build(["a", "b"])
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(2, size + 7, size, 3)).astype("float32")
    path = ft.export(verify=False)  # the op check still runs
    with SessionModel(str(path)) as served:
        out = served.run("serving_default", image=images)
    import tensorflow as tf

    # An eager call: tracing ft.predict's tf.function would double the cost for large graphs.
    # Resized and rounded to whole pixel values, as the training cache (uint8) holds them.
    resized = tf.clip_by_value(tf.round(tf.image.resize(images, (size, size))), 0.0, 255.0)
    expected = ft.model(ft.backbone.preprocess(resized), training=False)
    np.testing.assert_allclose(out["probabilities"], np.asarray(expected), atol=1e-5)
