"""Length-bucketed text batches on the quickstart: examples/s and macro-F1 against fixed padding.

    python bench/bucketing.py                                  # 1,500 examples per split
    python bench/bucketing.py --variants fixed,default --repeats 2 --set data.max_examples=3000

Variants (same config, seed, split and stages; only the padding of text batches differs):

* ``fixed``    — ``data.bucket_by_length: false``: every batch padded to the sequence length (64);
* ``trimmed``  — each batch cut to its longest sequence (rounded up to ``data.bucket_multiple``),
  batches drawn at random (``kerasft.data.pipeline.LENGTH_GROUP_BATCHES = 1``);
* ``default``  — kerasft's default: training batches drawn from windows of
  ``LENGTH_GROUP_BATCHES`` shuffled batches sorted by length, then trimmed; evaluation keeps the
  split's order and is trimmed per batch.

Reported per variant: mean padded length of a training batch, steady-state examples/s of the
full fine-tuning stage (wall and process CPU time, bench/benchutil.py), wall time of the whole
``fit`` (features for the head stage, head, fine-tuning, test evaluation) and test accuracy /
macro-F1.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from benchutil import (  # noqa: E402
    ROOT,
    load_average,
    machine,
    markdown_table,
    median,
    run_in_order,
    silent,
    timed_fits,
)


def padded_lengths(ft: Any) -> float:
    """Mean padded token length of one epoch of training batches."""
    widths = [int(x["token_ids"].shape[1]) for x, _ in ft._pipeline(ft.data.train, training=True)]
    return float(np.mean(widths))


def variant_job(name: str, config: str, sets: list[str], output_dir: str) -> Any:
    import kerasft.data.pipeline
    from kerasft.api import build_finetuner
    from kerasft.config import load_config

    window = getattr(kerasft.data.pipeline, "LENGTH_GROUP_BATCHES", None)
    # float32 unless --set says otherwise: the variants differ in padding only
    overrides = ["training.mixed_precision=none", *sets, f"output_dir={output_dir}",
                 "export.enabled=false", "training.verbose=silent"]
    if name == "fixed":
        overrides.append("data.bucket_by_length=false")

    def job() -> dict[str, Any]:
        if window is not None:
            kerasft.data.pipeline.LENGTH_GROUP_BATCHES = 1 if name == "trimmed" else window
        try:
            ft = build_finetuner(load_config(config, overrides), log=silent)
            start = time.perf_counter()
            with timed_fits(ft.config.data.batch_size) as timings:
                summary = ft.fit()
            wall = time.perf_counter() - start
            width = padded_lengths(ft)
        finally:
            if window is not None:
                kerasft.data.pipeline.LENGTH_GROUP_BATCHES = window
        finetune = timings[-1]  # the last stage: full fine-tuning
        return {"wall": wall, "finetune": finetune, "width": width,
                "accuracy": summary["metrics"]["accuracy"],
                "macro_f1": summary["metrics"]["macro_f1"]}

    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--variants", default="fixed,trimmed,default")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    sets = args.sets or ["data.max_examples=1500"]
    print(machine())
    print(f"load average at start: {load_average()}; overrides: {sets}")
    with tempfile.TemporaryDirectory(prefix="kerasft-bucketing-") as output_dir:
        jobs = {name: variant_job(name, args.config, sets, output_dir)
                for name in args.variants.split(",")}
        results = run_in_order(jobs, args.repeats)
    print(f"\nload average at end: {load_average()}; {args.repeats} repeat(s)\n")
    rows = []
    base = results.get("fixed")
    for name, runs in results.items():
        wall_rate = [r["finetune"].examples_per_second for r in runs]
        cpu_rate = [r["finetune"].examples_per_cpu_second for r in runs]
        speedup = ""
        if base is not None and name != "fixed":
            pairs = zip(runs, base, strict=True)
            speedup = " / ".join(
                f"{median(v):.2f}" for v in (
                    [a["finetune"].examples_per_second / b["finetune"].examples_per_second
                     for a, b in zip(runs, base, strict=True)],
                    [a["finetune"].examples_per_cpu_second / b["finetune"].examples_per_cpu_second
                     for a, b in zip(runs, base, strict=True)],
                    [b["wall"] / a["wall"] for a, b in pairs]))
        rows.append([name, f"{median([r['width'] for r in runs]):.1f}",
                     f"{median(wall_rate):.1f} / {median(cpu_rate):.1f}", speedup or "1",
                     f"{median([r['wall'] for r in runs]):.0f}",
                     " ".join(f"{r['accuracy']:.4f}" for r in runs),
                     " ".join(f"{r['macro_f1']:.4f}" for r in runs)])
    print(markdown_table(["variant", "mean padded length (train batches)",
                          "fine-tune ex/s (wall / CPU)",
                          "speed-up vs fixed: fine-tune wall / CPU / whole fit",
                          "whole fit s", "test accuracy", "test macro-F1"], rows))


if __name__ == "__main__":
    main()
