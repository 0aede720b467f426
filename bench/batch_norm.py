"""BatchNorm from random weights: kerasft ``batch_norm: frozen`` vs ``train`` vs hand-written Keras.

    python bench/batch_norm.py                                  # 3 backbones x 3 variants, seed 0
    python bench/batch_norm.py --seeds 0 1 --models mobilenetv2

Data: scikit-learn's ``load_digits`` (8x8, 0..16) upsampled bilinearly to each backbone's minimum
input size (``kerasft backbones``: 32x32 for the three here), as uint8 RGB; a stratified, seeded
split of ``--train`` / ``--test`` images. Every variant trains the same network
(``keras.applications.<X>(include_top=False, weights=None)`` + global average pooling + a softmax
Dense, no dropout) for the same epochs, batch size and optimizer (Adam), from
``keras.utils.set_random_seed(seed)``:

- ``kerasft frozen`` / ``kerasft train``: one ``trainable: all`` stage with that ``batch_norm``;
- ``hand-written``: ``keras.Model`` + ``compile`` + ``fit(shuffle=True)`` as the Keras docs write
  it (the network called in the functional graph, so BN follows ``fit``'s training mode).

``--recalibrate`` adds a row computed from the ``kerasft train`` model after the bench (not
kerasft) re-estimates every BN layer's moving statistics as the plain average of the batch moments
over one pass of the training images in training mode (as detectron2's PreciseBN does): it
separates what the batch statistics learnt from how far the moving averages lag behind.

Columns: the last epoch's training accuracy as ``fit`` reports it (training mode, running mean over
the epoch), then accuracy on the training and test images in inference mode
(``model.predict``, moving statistics) and the wall time of the row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchutil import load_average, machine, markdown_table, quiet_tensorflow, silent  # noqa: E402

VARIANTS = ("kerasft frozen", "kerasft train", "hand-written")
RECALIBRATED = "kerasft train + re-estimated statistics (bench only)"


def digits(size: int, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    """load_digits as uint8 RGB `size`x`size` images; a stratified split (seeded)."""
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = d.images[..., None].astype("float32") * (255.0 / 16.0)
    images = tf.image.resize(images, (size, size), method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(images), 0, 255).astype("uint8"), 3, axis=-1)
    x_train, x_test, y_train, y_test = train_test_split(
        images, d.target, train_size=n_train, test_size=n_test, stratify=d.target,
        random_state=seed)
    return x_train, y_train, x_test, y_test


def accuracy(model: Any, preprocess: Any, x: np.ndarray, y: np.ndarray) -> float:
    probabilities = model.predict(preprocess(x.astype("float32")), batch_size=64, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=1) == y))


def run_kerasft(name: str, mode: str, data: tuple[np.ndarray, ...], args: Any,
                seed: int) -> dict[str, float]:
    from kerasft.api import build_finetuner

    x_train, y_train, x_test, y_test = data
    labels = np.array([str(v) for v in y_train])  # names "0".."9": sorted order = digit
    cfg = {
        "name": f"bn-{name}-{mode}", "seed": seed,
        "backbone": {"name": name, "weights": "none",
                     "input_shape": [x_train.shape[1], x_train.shape[2], 3]},
        "head": {"dropout": 0.0},
        "data": {"source": "arrays", "batch_size": args.batch_size},
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "restore_best": False, "cache_features": "off"},
        "export": {"enabled": False},
        "stages": [{"name": "all", "trainable": "all", "epochs": args.epochs,
                    "learning_rate": args.learning_rate, "batch_norm": mode}],
    }
    ft = build_finetuner(cfg, log=silent)
    with tempfile.TemporaryDirectory() as out:
        summary = ft.fit(x_train, labels, output_dir=out, evaluate=False)
    fit_accuracy = summary["stages"][-1]["final_logs"]["accuracy"]
    preprocess = ft.backbone.preprocess
    row = {"fit": fit_accuracy,
           "train": accuracy(ft.model, preprocess, x_train, y_train),
           "test": accuracy(ft.model, preprocess, x_test, y_test)}
    if mode == "train" and args.recalibrate:
        start = time.perf_counter()
        re_estimate_statistics(ft.backbone.network, preprocess(x_train.astype("float32")),
                               args.batch_size)
        row["recalibrated"] = {"fit": fit_accuracy,
                               "train": accuracy(ft.model, preprocess, x_train, y_train),
                               "test": accuracy(ft.model, preprocess, x_test, y_test),
                               "seconds": time.perf_counter() - start}
    return row


def re_estimate_statistics(network: Any, images: Any, batch_size: int) -> None:
    """Moving mean/variance of every BN layer := the mean of its batch moments over full batches
    of `images` (eager calls in training mode; momentum (k-1)/k at the k-th batch)."""
    import keras

    layers = [layer for layer in network._flatten_layers()
              if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, len(images) - batch_size + 1, batch_size), start=1):
            for layer in layers:
                layer.momentum = (k - 1) / k
            network(images[start:start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def run_hand_written(name: str, data: tuple[np.ndarray, ...], args: Any,
                     seed: int) -> dict[str, float]:
    import importlib

    import keras

    from kerasft.models.keras_applications import KERAS_APPLICATIONS

    module_name, fn_name, _, _ = KERAS_APPLICATIONS[name]
    module = importlib.import_module(f"keras.applications.{module_name}")
    x_train, y_train, x_test, y_test = data
    size = x_train.shape[1]
    keras.utils.set_random_seed(seed)
    network = getattr(keras.applications, fn_name)(include_top=False, weights=None,
                                                   input_shape=(size, size, 3))
    inputs = keras.Input(shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(network(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    def preprocess(images: np.ndarray) -> Any:
        return module.preprocess_input(images)

    history = model.fit(preprocess(x_train.astype("float32")), y_train,
                        batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0)
    return {"fit": float(history.history["accuracy"][-1]),
            "train": accuracy(model, preprocess, x_train, y_train),
            "test": accuracy(model, preprocess, x_test, y_test)}


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenetv2", "resnet50",
                                                        "efficientnetb0"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--recalibrate", action="store_true",
                        help="also re-estimate the train model's BN statistics (bench only)")
    args = parser.parse_args()
    quiet_tensorflow()
    import keras

    from kerasft.models.registry import get_entry

    print(f"machine: {machine()}; load average at start {load_average()}", flush=True)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for seed in args.seeds:  # seed-major: each finished seed prints a complete table
        for name in args.models:
            size = int(get_entry(name).min_size or 32)
            data = digits(size, args.train, args.test, seed)
            for variant in args.variants:
                keras.backend.clear_session()
                start = time.perf_counter()
                if variant == "hand-written":
                    row = run_hand_written(name, data, args, seed)
                else:
                    row = run_kerasft(name, variant.split()[1], data, args, seed)
                row["seconds"] = time.perf_counter() - start
                extra = row.pop("recalibrated", None)
                for label, result in ((variant, row), (RECALIBRATED, extra)):
                    if result is None:
                        continue
                    results.setdefault((name, label), []).append(result)
                    print(f"  {name} {size}x{size} seed {seed} {label}: "
                          f"fit {result['fit']:.3f}, train {result['train']:.3f}, "
                          f"test {result['test']:.3f}, {result['seconds']:.0f} s", flush=True)
        print_table(results, args, args.seeds[:args.seeds.index(seed) + 1])


def print_table(results: dict[tuple[str, str], list[dict[str, float]]], args: Any,
                seeds: list[int]) -> None:
    header = ["backbone", "variant", "fit accuracy (last epoch)", "train accuracy",
              "test accuracy", "seconds (per seed)"]
    rows = []
    for (name, variant), runs in results.items():
        rows.append([name, variant, *(cell([r[k] for r in runs])
                                      for k in ("fit", "train", "test")),
                     " / ".join(f"{r['seconds']:.0f}" for r in runs)])
    print(f"\n{args.epochs} epochs, batch {args.batch_size}, Adam {args.learning_rate:g}, "
          f"{args.train} train / {args.test} test digits, seeds {seeds} "
          "(median (min-max) over seeds when more than one)")
    print(markdown_table(header, rows))
    print(f"load average {load_average()}", flush=True)


if __name__ == "__main__":
    main()
