"""Export: TF Serving layout, raw-input signatures, weights once, fresh-process reload."""

from __future__ import annotations

import numpy as np
import pytest

from kerasft.errors import ExportError
from tests.session_loader import SessionModel


def _trained_image_finetuner(image_arrays, tmp_path):
    from kerasft.api import build_finetuner

    x, y = image_arrays
    ft = build_finetuner({
        "name": "tiny", "backbone": {"name": "tiny_cnn", "weights": "none"},
        "data": {"source": "arrays", "batch_size": 16},
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.05},
                   {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.01}],
        "export": {"dir": str(tmp_path / "saved_models")},
    }, log=lambda s: None)
    ft.fit(x, y, output_dir=tmp_path / "runs")
    return ft


@pytest.mark.slow
def test_image_export_layout_signatures_and_fresh_reload(image_arrays, tmp_path):
    ft = _trained_image_finetuner(image_arrays, tmp_path)
    path = ft.export()
    assert path == tmp_path / "saved_models" / "tiny" / "1"
    assert (path / "saved_model.pb").is_file()
    assert (path / "assets.extra" / "labels.txt").read_text().split() == ["cat", "dog", "owl"]
    assert "name: tiny" in (path / "assets.extra" / "config.yaml").read_text()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    assert ft.export(verify=False) == path.parent / "2"  # next integer version

    # Weights stored once: variables/ holds about the parameters' bytes, not twice as much.
    params = sum(int(np.prod(w.shape)) for w in ft.model.weights) * 4
    size = sum(p.stat().st_size for p in (path / "variables").iterdir())
    assert size < 1.5 * params + 20_000

    # Raw pixels of any size go in; the outputs a client reads come out, under the session
    # loader TF Serving uses (a separate process: tests/test_export_loaders.py, saved_model_cli).
    x, _ = image_arrays
    big = np.repeat(np.repeat(x[:4].astype("float32"), 3, axis=1), 3, axis=2)  # 48x48
    with SessionModel(str(path)) as served:
        sig = served.signatures["serving_default"]
        assert sorted(sig.inputs) == ["image"]
        assert sorted(sig.outputs) == ["class_ids", "labels", "probabilities"]
        out = served.run("serving_default", image=big)
    assert {k: v.dtype.name for k, v in out.items()} == {
        "class_ids": "int64", "labels": "object", "probabilities": "float32"}
    expected = ft.predict(big)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    assert [s.decode() for s in out["labels"]] == [ft.class_names[i] for i in expected.argmax(-1)]


@pytest.mark.slow
def test_image_bytes_signature_matches_pixels(image_arrays, tmp_path):
    import tensorflow as tf

    ft = _trained_image_finetuner(image_arrays, tmp_path)
    path = ft.export(verify=False)
    loaded = tf.saved_model.load(str(path))
    x, _ = image_arrays
    pngs = [tf.io.encode_png(img).numpy() for img in x[:3]]
    by_bytes = loaded.signatures["serving_bytes"](image_bytes=tf.constant(pngs))
    by_pixels = loaded.signatures["serving_default"](image=tf.constant(x[:3].astype("float32")))
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(),
                               by_pixels["probabilities"].numpy(), atol=1e-6)


@pytest.mark.slow
def test_existing_version_is_never_overwritten(image_arrays, tmp_path):
    ft = _trained_image_finetuner(image_arrays, tmp_path)
    first = ft.export(version=3, verify=False)
    marker = first / "saved_model.pb"
    before = marker.stat().st_mtime_ns
    with pytest.raises(ExportError, match=r"version that does not exist yet \(next free: 4\)"
                                          r".*Received: export.version=3"):
        ft.export(version=3, verify=False)
    assert marker.stat().st_mtime_ns == before
    assert sorted(p.name for p in first.parent.iterdir()) == ["3"]


@pytest.mark.slow
def test_failed_verification_leaves_no_version(image_arrays, tmp_path, monkeypatch):
    import kerasft.export.saved_model as export

    ft = _trained_image_finetuner(image_arrays, tmp_path)

    def wrong(model, backbone, raw):
        return np.zeros((len(raw), 3), dtype="float32")

    monkeypatch.setattr(export, "reference_probabilities", wrong)
    with pytest.raises(ExportError, match=r"tiny/1 \(not written\): expected the export "
                                          r"\(serving_default, session loader\) to match"):
        ft.export()
    model_dir = tmp_path / "saved_models" / "tiny"
    assert list(model_dir.iterdir()) == []


@pytest.mark.slow
def test_served_and_predicted_images_are_resized_as_the_evaluation_pipeline_resizes(
        image_arrays, tmp_path):
    """Training and evaluation cache resized images as uint8 (rounded); the export, predict()
    and the TFLite path must see the same pixels, or a served image of another size gets
    slightly different answers from the ones the metrics were computed on."""
    import tensorflow as tf

    from kerasft.data.pipeline import make_pipeline
    from kerasft.data.splits import Split

    ft = _trained_image_finetuner(image_arrays, tmp_path)
    path = ft.export(verify=False)
    rng = np.random.default_rng(3)
    odd = rng.integers(0, 256, size=(6, 23, 21, 3), dtype=np.uint8)  # fractional resize weights
    split = Split(dataset=tf.data.Dataset.from_tensor_slices((odd, np.zeros(6, np.int32))),
                  labels=np.zeros(6, np.int32), size=6)
    ds = make_pipeline(split, batch_size=4, training=False, seed=0,
                       preprocess=ft.backbone.preprocess, image_size=ft.backbone.image_size)
    evaluated = np.asarray(ft.model.predict(ds, verbose=0))
    with SessionModel(str(path)) as served:
        out = served.run("serving_default", image=odd.astype("float32"))
        pngs = np.array([tf.io.encode_png(img).numpy() for img in odd], dtype=object)
        by_bytes = served.run("serving_bytes", image_bytes=pngs)
    np.testing.assert_allclose(out["probabilities"], evaluated, rtol=0, atol=1e-6)
    np.testing.assert_allclose(by_bytes["probabilities"], evaluated, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ft.predict(odd), evaluated, rtol=0, atol=1e-6)
