"""Exports load and answer under the session-based loader (TF Serving's, saved_model_cli's)."""

from __future__ import annotations

import numpy as np

from tests.session_loader import SessionModel
from tests.test_export import _trained_image_finetuner


def test_image_export_answers_under_the_session_loader(image_arrays, tmp_path):
    ft = _trained_image_finetuner(image_arrays, tmp_path)
    path = ft.export(verify=False)
    x, _ = image_arrays
    import tensorflow as tf

    pngs = np.array([tf.io.encode_png(img).numpy() for img in x[:3]], dtype=object)
    with SessionModel(str(path)) as served:
        assert sorted(served.signatures) == ["serving_bytes", "serving_default"]
        by_pixels = served.run("serving_default", image=x[:3].astype("float32"))
        by_bytes = served.run("serving_bytes", image_bytes=pngs)
    expected = ft.predict(x[:3])
    np.testing.assert_allclose(by_pixels["probabilities"], expected, atol=1e-5)
    np.testing.assert_allclose(by_bytes["probabilities"], expected, atol=1e-5)
    assert [s.decode() for s in by_pixels["labels"]] == \
        [ft.class_names[i] for i in expected.argmax(-1)]
