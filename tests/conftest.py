"""Shared test setup: a private KERAS_HOME, two logical CPU devices, tiny models.

Two logical CPU devices let MirroredStrategy run with 2 replicas on a CPU-only machine (the test
bed Keras uses in ``backend/tensorflow/distribute_test.py``). They must be configured before
TensorFlow initialises its devices, so this happens at import time.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="kerasft-keras-home-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `training.mixed_precision: auto` (the default) sees a CPU without bfloat16 here and in the
# subprocesses tests start, so every test trains in float32 unless it asks for another policy
# or pins other hardware itself (tests/test_precision.py).
os.environ["KERASFT_TEST_HARDWARE"] = "cpu"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

from tests.tiny_backbone import register_tiny_cnn  # noqa: E402

register_tiny_cnn()


@pytest.fixture(autouse=True)
def _clear_keras_session():
    import keras

    yield
    # Without Keras's gc.collect() (free_memory): a full collection with TensorFlow loaded
    # takes about half a second, after every one of the suite's tests; Python's own
    # generational collector still frees the cycles, and _collect_after_module runs a full
    # collection after each test file.
    keras.backend.clear_session(free_memory=False)
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module", autouse=True)
def _collect_after_module():
    import gc

    yield
    gc.collect()  # once per test file: the models of a file's tests do not pile up


@pytest.fixture
def image_arrays():
    """60 tiny 3-class images (16x16) whose class is visible in the mean colour."""
    return make_image_arrays()


def make_image_arrays():
    """The data of the `image_arrays` fixture, for module-scoped fixtures."""
    rng = np.random.default_rng(0)
    n = 60
    labels = np.arange(n) % 3
    images = rng.uniform(0, 80, size=(n, 16, 16, 3)).astype("float32")
    for c in range(3):
        images[labels == c, :, :, c] += 150.0
    names = np.array(["cat", "dog", "owl"])[labels]
    return images.astype("uint8"), names
