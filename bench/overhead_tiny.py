"""Where the tiny-CNN overhead row's gap goes: the same 7 ms training step taken apart.

    python bench/overhead_tiny.py              # about 3 min on 2 cores
    python bench/overhead_tiny.py --repeats 8

``bench/overhead.py --rows tiny_cnn`` compares kerasft's ``FineTuner.fit`` with a hand-written
``model.fit`` of the same 2-conv CNN. This script splits that comparison in three, each paired
and alternated within a repeat:

1. **graph execution**: one profiled fit each (``cProfile``): the seconds spent in TensorFlow's
   function execution (``TFE_Py_Execute``) and in per-batch callbacks.
2. **model and compile**: kerasft's compiled model and the hand-written one, both under a plain
   ``model.fit`` on the same float32 arrays (Keras's array adapter), compiled with the same
   optimizer, loss and metric.
3. **input pipeline**: kerasft's model under a plain ``model.fit``, fed by kerasft's training
   pipeline (uint8 images cached, shuffled, batched, cast and rescaled in tf.data) or by Keras's
   array adapter over the float32 arrays the hand-written side prepares before timing.
4. **the pipelines alone**: the same two pipelines iterated without a model (ms per batch).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from benchutil import load_average, machine, median, run_in_order, timed_fits  # noqa: E402
from overhead import tiny_rows  # noqa: E402

BATCH = 32


def examples_per_second(timing: object, cpu: bool = False) -> float:
    return timing.examples_per_cpu_second if cpu else timing.examples_per_second


def profiled(job: object) -> tuple[float, float]:
    """(seconds in TFE_Py_Execute, seconds in per-batch callbacks) of one run of `job`."""
    profile = cProfile.Profile()
    profile.enable()
    job()
    profile.disable()
    stats = pstats.Stats(profile).stats
    execute = sum(v[2] for k, v in stats.items() if "TFE_Py_Execute" in k[2])
    callbacks = sum(v[3] for k, v in stats.items()
                    if k[2] == "on_train_batch_end" and k[0].endswith("callback_list.py"))
    return execute, callbacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    from kerasft.data.pipeline import make_pipeline
    from kerasft.data.splits import Split

    print(f"machine: {machine()}; load average at start {load_average()}")
    row = tiny_rows(argparse.Namespace(quick=False), tempfile.mkdtemp(), {"tiny_cnn"})[0]
    row.jobs["kerasft_like"]()  # builds the FineTuner's model
    tuner = next(o for o in gc.get_objects() if type(o).__name__ == "FineTuner")
    hand_model = next(o for o in gc.get_objects() if isinstance(o, keras.Model)
                      and o.name.startswith("functional") and len(o.layers) > 3)
    kerasft_model = tuner.model

    for name in ("hand", "kerasft_like"):
        row.jobs[name]()
    print("\n1. graph execution and callbacks, one profiled fit each (120 steps):")
    for name in ("hand", "kerasft_like"):
        execute, callbacks = profiled(row.jobs[name])
        print(f"   {name:13s} TFE_Py_Execute {execute:.3f} s, on_train_batch_end {callbacks:.3f} s")

    n = 3840
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    pixels = images.astype("float32") / 127.5 - 1.0
    ids = (np.arange(n) % 3).astype("int32")
    split = Split(dataset=tf.data.Dataset.from_tensor_slices((images, ids)), labels=ids, size=n)
    pipeline = make_pipeline(split, batch_size=BATCH, training=True, seed=1,
                             preprocess=lambda x: x / 127.5 - 1.0, image_size=(32, 32))

    def plain_fit(model: object, data: str) -> object:
        def job() -> object:
            model.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            with timed_fits(BATCH) as timings:
                if data == "arrays":
                    model.fit(pixels, ids, batch_size=BATCH, epochs=1, verbose=0, shuffle=True)
                else:
                    model.fit(pipeline, epochs=1, verbose=0, shuffle=False)  # shuffled in tf.data
            return timings[0]
        return job

    sections = (
        ("2. model and compile, plain fit on float32 arrays",
         {"hand model": plain_fit(hand_model, "arrays"),
          "kerasft model": plain_fit(kerasft_model, "arrays")}),
        ("3. input pipeline, kerasft's model under a plain fit",
         {"Keras array adapter": plain_fit(kerasft_model, "arrays"),
          "kerasft pipeline": plain_fit(kerasft_model, "pipeline")}),
    )
    for title, jobs in sections:
        results = run_in_order(jobs, args.repeats, progress=lambda line: None)
        first, second = list(jobs)
        ratios = [examples_per_second(b) / examples_per_second(a)
                  for a, b in zip(results[first], results[second], strict=True)]
        cpu = [examples_per_second(b, True) / examples_per_second(a, True)
               for a, b in zip(results[first], results[second], strict=True)]
        print(f"\n{title} ({args.repeats} alternating repeats):")
        for name in jobs:
            rates = [examples_per_second(t) for t in results[name]]
            print(f"   {name:20s} median {median(rates):.0f} ex/s")
        print(f"   {second} / {first}: {median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
              f", CPU time {median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f})")

    # Keras's adapter as model.fit(x=arrays, shuffle=True) builds it (a private module: bench only).
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    def iterate(make: object) -> float:
        data = make()
        for _ in data:  # first pass: the tf.data cache fills, functions trace
            pass
        start = time.perf_counter()
        batches = sum(1 for _ in data)
        return 1000 * (time.perf_counter() - start) / batches

    pipelines = {
        "Keras array adapter": lambda: ArrayDataAdapter(
            pixels, ids, batch_size=BATCH, shuffle=True).get_tf_dataset(),
        "kerasft pipeline": lambda: make_pipeline(
            split, batch_size=BATCH, training=True, seed=1, preprocess=lambda x: x / 127.5 - 1.0,
            image_size=(32, 32)),
    }
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for r in range(args.repeats):
        for name in (list(pipelines) if r % 2 == 0 else list(reversed(pipelines))):
            times[name].append(iterate(pipelines[name]))
    print(f"\n4. the input pipelines alone, no model: ms per training batch of {BATCH} "
          f"({args.repeats} alternating repeats, one epoch each after a first one):")
    for name, values in times.items():
        print(f"   {name:20s} median {median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
