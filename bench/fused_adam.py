"""Keras's AdamW against kerasft's fused-kernel AdamW (kerasft/training/fused_adam.py) on the
quickstart's fine-tuning step.

    python bench/fused_adam.py               # 5 alternating repeats, about 3 min on 2 cores
    python bench/fused_adam.py --repeats 9

One process, bench/overhead.py's ``hand_bert`` (the quickstart's MiniLM model) under
``mixed_bfloat16``, batch 32, 16 batches of tweets cut to length 40 (about the quickstart's mean
padded length). Each repeat compiles the model with each optimizer in turn (alternating which
goes first), builds the optimizer before ``fit`` (as kerasft's ``compile_stage`` does) and fits one
epoch of the 16 batches: the first step (the train step's trace, paid once per stage) and the
median of the other 15 steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchutil import load_average, machine, read_corpus  # noqa: E402
from finetune_step import step_times  # noqa: E402
from overhead import hand_bert  # noqa: E402

LENGTH = 40
BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}; load average at start {load_average()}")
    import keras
    import numpy as np
    import tensorflow as tf

    from kerasft.training.fused_adam import fused_class

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model, _, preprocessor = hand_bert(3, 64)
    texts, _ = read_corpus(BATCH * 16, seed=1)
    features = {k: np.asarray(v)[:, :LENGTH] for k, v in preprocessor(tf.constant(texts)).items()}
    labels = (np.arange(len(texts)) % 3).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(BATCH)
    kinds: dict[str, Any] = {"Keras AdamW": keras.optimizers.AdamW,
                             "kerasft FusedAdamW": fused_class(keras.optimizers.AdamW)}
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for r in range(args.repeats):
        for name in (list(kinds) if r % 2 == 0 else list(reversed(kinds))):
            model.compile(optimizer=kinds[name](5e-5, weight_decay=0.01),
                          loss="sparse_categorical_crossentropy")
            model.optimizer.build(model.trainable_variables)
            times = step_times(model, data)
            results[name].append((times[0], 1000 * statistics.median(times[1:])))
            print(f"  repeat {r + 1} {name}: first step {times[0]:.2f} s, steady "
                  f"{results[name][-1][1]:.0f} ms", flush=True)
    print("\n| optimizer | first step (s), median (min-max) | steady ms/step, median (min-max) |"
          "\n|---|---|---|")
    for name, rows in results.items():
        first, steady = zip(*rows)
        print(f"| {name} | {statistics.median(first):.2f} ({min(first):.2f}-{max(first):.2f}) | "
              f"{statistics.median(steady):.0f} ({min(steady):.0f}-{max(steady):.0f}) |")
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
