"""One worker of the 2-process MultiWorkerMirroredStrategy test (tests/test_multi_worker_compat.py).

Usage: ``TF_CONFIG=... python tests/mwms_worker.py OUT_DIR {compat,plain} [STEPS_PER_EXECUTION]``.

Trains a tiny Dense + BatchNormalization model for a few steps with ``fit`` (with validation),
runs ``evaluate`` and ``predict``, and saves the model from every worker (saving may run
collective ops): the chief to ``OUT_DIR/saved/model.keras``, the others to a temporary folder that
is removed afterwards, as in TensorFlow's multi-worker Keras guide. Writes
``OUT_DIR/weights_<index>.npy`` (all weights, flattened, in ``model.weights`` order) and
``OUT_DIR/result_<index>.json`` (history, evaluation, prediction shape, chief flag).

``compat`` uses :func:`kerasft.training.multi_worker.make_multi_worker_strategy` and the batch-norm
sync callback; ``plain`` uses ``tf.distribute.MultiWorkerMirroredStrategy`` as is (expected to
fail on Keras versions with keras-team/keras#20585).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(2)

import keras  # noqa: E402

from kerasft.training import multi_worker  # noqa: E402


def main(out_dir: str, mode: str, steps_per_execution: int = 1) -> None:
    keras.config.disable_traceback_filtering()
    tf_config = multi_worker.parse_tf_config(os.environ["TF_CONFIG"])
    index = tf_config["task"]["index"]
    if mode == "compat":
        strategy = multi_worker.make_multi_worker_strategy()
        callbacks = [multi_worker.batch_norm_sync_callback()]
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        callbacks = []
    print(f"worker {index}: {strategy.num_replicas_in_sync} replicas", flush=True)

    # Same data on every worker (tf.data auto-sharding splits it); a different init seed on
    # each worker: MWMS broadcasts worker 0's initial values, so weights must still agree.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    global_batch = 8 * strategy.num_replicas_in_sync
    train = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch)
    train = train.with_options(options)
    val = tf.data.Dataset.from_tensor_slices((x[:32], y[:32])).batch(global_batch)
    val = val.with_options(options)

    keras.utils.set_random_seed(100 + index)
    with strategy.scope():
        inputs = keras.Input((4,))
        h = keras.layers.Dense(8, activation="relu")(inputs)
        h = keras.layers.BatchNormalization()(h)
        outputs = keras.layers.Dense(2)(h)
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
        )
    history = model.fit(
        train, epochs=2, steps_per_epoch=3, validation_data=val, callbacks=callbacks, verbose=2
    )
    evaluation = model.evaluate(val, verbose=0, callbacks=callbacks)
    prediction = model.predict(val, verbose=0)

    chief = multi_worker.is_chief(tf_config)
    folder = os.path.join(out_dir, "saved") if chief else tempfile.mkdtemp()
    os.makedirs(folder, exist_ok=True)
    try:
        model.save(os.path.join(folder, "model.keras"))
    finally:
        if not chief:
            shutil.rmtree(folder, ignore_errors=True)

    weights = np.concatenate([np.ravel(w) for w in model.get_weights()])
    np.save(os.path.join(out_dir, f"weights_{index}.npy"), weights)
    result = {
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "evaluate": [float(v) for v in evaluation],
        "predict_shape": list(prediction.shape),
        "chief": chief,
        "weight_paths": [w.path for w in model.weights],
    }
    with open(os.path.join(out_dir, f"result_{index}.json"), "w") as f:
        json.dump(result, f)
    print(f"worker {index}: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
