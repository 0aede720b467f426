"""``kerasft tune`` and ``kerasft cv`` on the quickstart, run as a user runs them (the CLI in a
subprocess), timed, with the search's or the folds' figures read from search.json /
cv_summary.json.

    python bench/search.py tune --trials 3 --set data.max_examples=1500
    python bench/search.py cv --folds 3 --set data.max_examples=1500
    python bench/search.py tune --trials 3 --head-only --set data.max_examples=200   # smaller

``--head-only`` keeps the quickstart's first stage (backbone frozen) and drops the fine-tuning
stage and its tune.params entry: each trial then costs one frozen-feature pass, a few head epochs
and the validation / test predictions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from benchutil import load_average

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart_tune.yaml"


def _config(head_only: bool, folder: Path) -> Path:
    if not head_only:
        return CONFIG
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    data["stages"] = data["stages"][:1]
    data["tune"]["params"] = {k: v for k, v in data["tune"]["params"].items()
                              if not k.startswith("stages.1.")}
    path = folder / "quickstart_tune_head.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["tune", "cv"])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--head-only", action="store_true")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix=f"kerasft-bench-{args.command}-"))
    config = _config(args.head_only, folder)
    count = ["--trials", str(args.trials)] if args.command == "tune" else \
        ["--folds", str(args.folds)]
    command = [sys.executable, "-m", "kerasft.cli", args.command, str(config), *count,
               *(f"--set={s}" for s in args.sets), "--dir", str(folder / "out")]
    print("command:", " ".join(command[2:]), flush=True)
    print("load average before:", load_average(), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (folder / "output.txt").write_text(done.stdout + done.stderr, encoding="utf-8")
    print("load average after:", load_average())
    print(f"wall: {wall:.0f} s, exit code {done.returncode}, output: {folder / 'output.txt'}")
    if done.returncode:
        print(done.stderr[-2000:])
        sys.exit(done.returncode)
    if args.command == "tune":
        result = json.loads((folder / "out" / "search.json").read_text(encoding="utf-8"))
        for t in result["trials"]:
            print(f"trial {t['trial']}: {t['state']}, {result['metric']}={t['value']}, "
                  f"{t['params']}")
        print("best:", result["best"])
    else:
        result = json.loads((folder / "out" / "cv_summary.json").read_text(encoding="utf-8"))
        for name in result["mean"]:
            values = ", ".join(f"{f['metrics'].get(name, float('nan')):.4f}"
                               for f in result["folds"])
            print(f"{name}: {values}; mean {result['mean'][name]:.4f} "
                  f"std {result['std'][name]:.4f}")


if __name__ == "__main__":
    main()
