"""One worker of tests/test_multi_worker.py: ``kerasft train`` with the test backbone registered.

Usage: ``TF_CONFIG=... python tests/multi_worker_train.py WEIGHTS.npy CONFIG [train options]``.

Runs the real CLI (``kerasft.cli.main(["train", CONFIG, ...])``) after registering ``tiny_cnn``
(a test-only backbone), and saves this worker's final weights (all of them, flattened in
``model.weights`` order) to WEIGHTS.npy when ``FineTuner.fit`` returns, so the test can compare
workers whose own run folders are temporary. It also saves, to WEIGHTS.predict.npz,
``FineTuner.predict`` on 13 images (not a multiple of the global batch: padded under
multi_worker) next to the model called directly on the same preprocessed images.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerasft import api, cli  # noqa: E402
from tests.tiny_backbone import register_tiny_cnn  # noqa: E402


def main(weights_out: str, args: list[str]) -> None:
    # Two processes share 2 cores: one compute thread each (set before TF's runtime starts).
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    register_tiny_cnn()
    fit = api.FineTuner.fit

    def fit_and_save_weights(self: api.FineTuner, *a: object, **k: object) -> dict:
        summary = fit(self, *a, **k)
        np.save(weights_out, np.concatenate([np.ravel(w) for w in self.model.get_weights()]))
        images = np.random.default_rng(5).uniform(0, 255, (13, 20, 20, 3)).astype("float32")
        # rounded to whole pixel values, as the training cache (uint8) holds them
        resized = tf.clip_by_value(tf.round(tf.image.resize(images, self.backbone.image_size)),
                                   0.0, 255.0)
        direct = self.model(self.backbone.preprocess(resized), training=False)
        np.savez(weights_out.replace(".npy", ".predict.npz"), predict=self.predict(images),
                 direct=np.asarray(direct))
        return summary

    api.FineTuner.fit = fit_and_save_weights  # type: ignore[method-assign]
    cli.main(["train", *args], prog_name="kerasft")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
