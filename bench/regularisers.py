"""MixUp and weight EMA on digits: test accuracy with and without, same seed, data and stages.

    python bench/regularisers.py                      # resnet50, 1,000 / 300 digits, 4 epochs
    python bench/regularisers.py --variants none mixup --epochs 6

Data: scikit-learn's ``load_digits`` upsampled to 32x32 uint8 RGB (bench/batch_norm.py's
``digits``), a stratified split seeded by ``--seed``. Every variant trains the same kerasft run
(``keras.applications`` ResNet50 at ``weights: none``, ``batch_norm: frozen``, one
``trainable: all`` stage, Adam, ``restore_best: false``, no validation split) and differs only in
``data.augmentation.mixup`` and the stage's ``ema``. Columns: the last epoch's training loss and
accuracy as ``fit`` logs them (on mixed batches for MixUp), accuracy on the test images
(``predict``: what the export answers) and the wall time of the row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.batch_norm import accuracy, digits  # noqa: E402
from bench.benchutil import load_average, machine, markdown_table, quiet_tensorflow, silent  # noqa: E402

VARIANTS = {
    "none": ({}, None),
    "mixup": ({"mixup": {"alpha": 0.2}}, None),
    "ema": ({}, {"momentum": 0.95}),
    "mixup+ema": ({"mixup": {"alpha": 0.2}}, {"momentum": 0.95}),
}


def run(variant: str, data: tuple[np.ndarray, ...], args: Any) -> dict[str, Any]:
    from kerasft.api import build_finetuner

    augmentation, ema = VARIANTS[variant]
    x_train, y_train, x_test, y_test = data
    cfg = {
        "name": f"reg-{variant.replace('+', '-')}", "seed": args.seed,
        "backbone": {"name": args.model, "weights": "none",
                     "input_shape": [x_train.shape[1], x_train.shape[2], 3]},
        "head": {"dropout": 0.0},
        "data": {"source": "arrays", "batch_size": args.batch_size,
                 "augmentation": augmentation},
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "restore_best": False, "cache_features": "off"},
        "export": {"enabled": False},
        "stages": [{"name": "all", "trainable": "all", "epochs": args.epochs,
                    "learning_rate": args.learning_rate, "batch_norm": "frozen", "ema": ema}],
    }
    ft = build_finetuner(cfg, log=silent)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = ft.fit(x_train, np.array([str(v) for v in y_train]), output_dir=out,
                         evaluate=False)
    logs = summary["stages"][-1]["final_logs"]
    return {"loss": logs["loss"], "fit": logs["accuracy"],
            "test": accuracy(ft.model, ft.backbone.preprocess, x_test, y_test),
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet_tensorflow()
    print(machine())
    print(f"load average at start: {load_average()}")
    data = digits(32, args.train, args.test, args.seed)
    rows = []
    for variant in args.variants:
        r = run(variant, data, args)
        rows.append([variant, f"{r['loss']:.3f}", f"{r['fit']:.3f}", f"{r['test']:.3f}",
                     f"{r['seconds']:.0f}"])
        print(rows[-1], f"load {load_average()}", flush=True)
    print(f"load average at end: {load_average()}")
    print(markdown_table(["variant", "fit loss (last epoch)", "fit accuracy (last epoch)",
                          "test accuracy", "seconds"], rows))


if __name__ == "__main__":
    main()
