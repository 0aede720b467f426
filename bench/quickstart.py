"""Where the quickstart's wall time goes: ``kerasft train configs/quickstart.yaml`` as a user runs
it, every line of its output stamped with the seconds since the process started.

The phases are the gaps between marker lines the run prints anyway (the data report, the
backbone line, the feature computation, each stage, the test metrics, the export and its check),
so the bench measures the real command, not an instrumented copy. ``training`` in the summary is
what issue 13 calls training: from the end of loading (the backbone line) to the test metrics.

    python bench/quickstart.py                       # the config's defaults
    python bench/quickstart.py --set training.mixed_precision=none
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import load_average, machine

ROOT = Path(__file__).resolve().parents[1]
# (phase that ends at the first line matching, regex); phases a run does not print are skipped.
MARKERS = (
    ("Python start, imports, config", r"^data: source="),
    ("reading and splitting the data", r"^backbone: "),
    ("building the pipelines, tokenizing", r"computing the frozen backbone's features|^stage 1/"),
    ("frozen features (once)", r"^stage 1/"),
    ("stage 1 (head)", r"^stage 2/"),
    ("stage 2 (fine-tune)", r"^restored the best weights|^checkpoints: |^training curves"),
    ("best weights, curves", r"^metrics on test"),
    ("test pass and report", r"^op check: |^warmup: "),
    ("export (trace, save, warmup)", r"^export checked in a fresh process"),
    ("export check (fresh process)", r"^exported "),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], help="passed to kerasft train")
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    args = parser.parse_args()
    print(f"machine: {machine()}; load average at start {load_average()}")
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "kerasft.cli", "train", args.config,
               "--set", f"output_dir={out}/runs", "--set", f"export.dir={out}/saved_models",
               "--set", "training.verbose=epoch", *sum((["--set", s] for s in args.set), [])]
        print("command:", " ".join(cmd[1:]))
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            t = time.perf_counter() - start
            lines.append((t, line.rstrip("\n")))
            print(f"{t:8.1f}  {line.rstrip()}", flush=True)
        rc = proc.wait()
        total = time.perf_counter() - start
    if rc:
        sys.exit(f"kerasft train exited with {rc}")
    print(f"\nload average at end {load_average()}; wall {total:.1f} s\n")
    print("| phase | seconds | share |\n|---|---|---|")
    previous = 0.0
    marks: dict[str, float] = {}
    for phase, pattern in MARKERS:
        hit = next((t for t, text in lines if t >= previous and re.search(pattern, text)), None)
        if hit is None:
            continue
        print(f"| {phase} | {hit - previous:.1f} | {(hit - previous) / total:.0%} |")
        marks[phase] = hit
        previous = hit
    print(f"| rest (exit) | {total - previous:.1f} | {(total - previous) / total:.0%} |")
    loaded = next((t for t, text in lines if re.search(MARKERS[1][1], text)), None)
    tested = next((t for t, text in lines if re.search(r"^metrics on test", text)), None)
    if loaded is not None and tested is not None:
        print(f"\ntraining (backbone line to test metrics): {tested - loaded:.1f} s")
    f1 = next((text for _, text in lines if "macro" in text.lower()), None)
    if f1:
        print(f"last macro-F1 line: {f1.strip()}")


if __name__ == "__main__":
    main()
