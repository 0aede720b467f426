"""Training throughput: 1 process vs 2 MultiWorkerMirroredStrategy workers on loopback.

    python bench/multi_worker.py                      # 32x32 images, global batch 64
    python bench/multi_worker.py --size 64 --epochs 4

Trains the test backbone ``tiny_cnn`` (2 conv + batch norm, ``tests/tiny_backbone.py``) with
kerasft's own model, input pipeline (``FineTuner._pipeline``: DATA sharding and full batches on
multi_worker), optimizer (``compile_stage``) and, on multi_worker, the batch-norm sync callback,
on synthetic images with all layers trainable. Throughput is global examples per second over the
epochs after the first (which includes tracing and the input cache fill); with 2 workers each
epoch time is the slower worker's. Three set-ups, same global batch and data:

* ``1 process``: strategy default, TensorFlow's default thread pools (both cores);
* ``1 process, 1 thread``: the same with one intra-op thread (what each worker gets below);
* ``2 workers``: two processes on 127.0.0.1, ``TF_CONFIG``, one intra-op thread each.

Prints a Markdown table (paste it into docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARK = "BENCH_RESULT "


def worker(args: argparse.Namespace) -> None:
    """One training process (run by main() with or without TF_CONFIG)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    import keras
    import numpy as np

    from kerasft.api import build_finetuner
    from kerasft.data.arrays import from_arrays
    from kerasft.training.distribution import drops_remainder, steps_per_epoch
    from kerasft.training.loop import compile_stage
    from kerasft.training.stages import apply_trainable
    from tests.tiny_backbone import register_tiny_cnn

    register_tiny_cnn()
    ft = build_finetuner({
        "backbone": {"name": "tiny_cnn", "weights": "none",
                     "input_shape": [args.size, args.size, 3]},
        "data": {"batch_size": args.batch, "cache": True},
        "stages": [{"name": "all", "trainable": "all", "learning_rate": 1e-3,
                    "batch_norm": "frozen"}],  # as measured before batch_norm existed
        "training": {"strategy": "auto", "verbose": "silent"},
    }, log=lambda line: None)
    ft._prepare_runtime()  # multi_worker: before any other TensorFlow op
    info = ft.strategy_info
    rng = np.random.default_rng(0)
    labels = np.arange(args.images) % 3
    images = rng.uniform(0, 255, size=(args.images, args.size, args.size, 3)).astype("uint8")
    data = from_arrays(images, labels.astype(str), validation_split=0.0, seed=0)
    ft.build(data.class_names)
    train = ft._pipeline(data.train, training=True)
    steps = steps_per_epoch(data.train.size, args.batch, drops_remainder(info.kind))
    stage = ft.config.stages[0]
    with info.strategy.scope():
        apply_trainable(ft.backbone, stage)
        compile_stage(ft.model, stage, ft.config, steps, len(data.class_names), info.replicas)

    epoch_seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            epoch_seconds.append(time.perf_counter() - self.start)

    callbacks: list[Any] = [Timer()]
    if info.kind == "multi_worker":
        from kerasft.training.multi_worker import batch_norm_sync_callback

        callbacks.insert(0, batch_norm_sync_callback())
    history = ft.model.fit(train, epochs=args.epochs, callbacks=callbacks, verbose=0)
    print(MARK + json.dumps({
        "kind": info.kind, "workers": info.workers, "replicas": info.replicas,
        "steps": steps, "global_batch": args.batch, "epoch_seconds": epoch_seconds,
        "final_loss": float(history.history["loss"][-1]),
    }), flush=True)


def _result(log: str) -> dict[str, Any]:
    lines = [line for line in log.splitlines() if line.startswith(MARK)]
    if not lines:
        raise SystemExit("a benchmark process failed:\n" + log[-3000:])
    return json.loads(lines[-1][len(MARK):])


def _throughput(results: list[dict[str, Any]]) -> tuple[float, float]:
    """(examples/s, seconds per epoch) over the epochs after the first; slowest worker."""
    per_epoch = [max(r["epoch_seconds"][e] for r in results)
                 for e in range(1, len(results[0]["epoch_seconds"]))]
    seconds = sum(per_epoch) / len(per_epoch)
    r = results[0]
    return r["steps"] * r["global_batch"] / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import subprocess

    from tests.cluster import run_cluster, worker_env

    common = ["--images", str(args.images), "--size", str(args.size), "--batch",
              str(args.batch), "--epochs", str(args.epochs)]
    script = str(Path(__file__).resolve())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-multi-worker-") as tmp:
        out = Path(tmp)
        for label, threads in (("1 process", 0), ("1 process, 1 thread", 1)):
            proc = subprocess.run([sys.executable, script, "--worker", "--threads",
                                   str(threads), *common], env=worker_env(out, None),
                                  capture_output=True, text=True, timeout=1800, cwd=REPO)
            result = _result(proc.stdout + proc.stderr)
            rows.append((label, result["replicas"], *_throughput([result]),
                         result["final_loss"]))
        run = run_cluster(out / "two", lambda i: [script, "--worker", "--threads", "1", *common],
                          workers=2, timeout_s=1800)
        if run.returncodes != [0, 0]:
            raise SystemExit("2-worker run failed:\n" + run.tail())
        results = [_result(log) for log in run.logs]
        rows.append(("2 workers (loopback), 1 thread each", results[0]["replicas"],
                     *_throughput(results), results[0]["final_loss"]))
    print(f"tiny_cnn {args.size}x{args.size}, {args.images} images, global batch "
          f"{args.batch}, {args.epochs} epochs (first excluded); {os.cpu_count()} CPU cores, "
          f"{platform.processor() or platform.machine()}, no GPU")
    print("| set-up | replicas | examples/s | s/epoch | final loss |")
    print("|---|---|---|---|---|")
    for label, replicas, rate, seconds, loss in rows:
        print(f"| {label} | {replicas} | {rate:.0f} | {seconds:.2f} | {loss:.4f} |")


if __name__ == "__main__":
    main()
