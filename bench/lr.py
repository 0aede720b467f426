"""Layer-wise learning rates and the LR finder on the quickstart (issue 16).

Three commands, as a user runs them, each timed from start to exit:
1. ``kerasft train configs/quickstart.yaml --no-export`` (the baseline);
2. the same with ``--set stages.1.layer_lr_decay=DECAY`` (everything else equal);
3. ``kerasft lr-find configs/quickstart.yaml --stage 2`` (the fine-tuning stage's sweep).
It prints test macro-F1 / accuracy of 1 and 2 (metrics.json), the wall times, the sweep's
suggestion and the load average before each command.

    python bench/lr.py                                   # data.max_examples=1500, decay 0.8
    python bench/lr.py --max-examples 6000 --decay 0.9
    python bench/lr.py --decay-lr 1e-4      # a third run: the decay with a higher peak rate
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import load_average, machine

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> tuple[float, str]:
    print(f"$ {' '.join(cmd[2:])}   (load {load_average()})", flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--max-examples", type=int, default=1500)
    parser.add_argument("--decay", type=float, default=0.8)
    parser.add_argument("--decay-lr", type=float, default=None,
                        help="also train with layer_lr_decay and this stage-2 learning rate")
    parser.add_argument("--skip-train", action="store_true", help="only the lr-find sweep")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as out:
        base = [sys.executable, "-m", "kerasft.cli"]
        sets = ["--set", f"data.max_examples={args.max_examples}",
                "--set", "training.verbose=epoch", "--set", f"output_dir={out}/runs"]
        rows = []
        variants = [] if args.skip_train else [
            ("without layer_lr_decay", []),
            (f"layer_lr_decay {args.decay:g}", ["--set", f"stages.1.layer_lr_decay={args.decay}"])]
        if args.decay_lr is not None and not args.skip_train:
            variants.append((f"layer_lr_decay {args.decay:g}, learning_rate {args.decay_lr:g}",
                             ["--set", f"stages.1.layer_lr_decay={args.decay}",
                              "--set", f"stages.1.learning_rate={args.decay_lr}"]))
        for label, extra in variants:
            seconds, stdout = _run([*base, "train", args.config, "--no-export", *sets, *extra])
            run_dir = Path(re.findall(r"^run folder: (\S+)", stdout, re.M)[-1])
            metrics = json.loads((run_dir / "metrics.json").read_text())
            multipliers = re.findall(r"learning-rate multipliers: (.*)$", stdout, re.M)
            rows.append((label, metrics, seconds, multipliers))
        seconds, stdout = _run([*base, "lr-find", args.config, "--stage", "2", *sets])
        sweep = re.search(r"^lr-find: suggested .*$", stdout, re.M)
    for label, metrics, secs, multipliers in rows:
        print(f"{label}: test macro-F1 {metrics['macro_f1']:.4f}, accuracy "
              f"{metrics['accuracy']:.4f}, {secs:.0f} s wall"
              + (f"; multipliers: {multipliers[0]}" if multipliers else ""))
    print(f"lr-find --stage 2: {seconds:.0f} s wall; {sweep.group(0) if sweep else stdout[-500:]}")
    print(f"load average at the end {load_average()}")


if __name__ == "__main__":
    main()
