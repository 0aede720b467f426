"""Distillation and pruning on the reduced quickstart (docs/BENCHMARKS.md, "Distillation and
pruning"): the teacher (configs/quickstart.yaml), a 2-layer student with and without the
teacher's soft labels (configs/distill_student.yaml, ``alpha: 1.0`` = hard labels only) and the
pruned quickstart (configs/prune.yaml), each ``kerasft train`` as a user runs it.

Per run: test macro-F1, parameters and export size (``variables/``), the export's gzip-compressed
size (tar.gz of the SavedModel folder), the fraction of zeros in its kernels, and the export's
throughput (``serving_default`` on the test texts, batches of 64, after one warm-up batch).

    python bench/distill_prune.py                               # all four runs
    python bench/distill_prune.py --teacher-export E --teacher-run R   # reuse a teacher
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import load_average, machine

ROOT = Path(__file__).resolve().parents[1]


def train(config: str, out: Path, run_id: str, sets: list[str]) -> tuple[Path, Path, str]:
    """Runs ``kerasft train``; returns (run folder, export folder, its log)."""
    cmd = [sys.executable, "-m", "kerasft.cli", "train", str(ROOT / config),
           "--output-dir", str(out / "runs"), "--run-id", run_id,
           "--set", f"export.dir={out / 'exports' / run_id}", "--set", "training.verbose=epoch"]
    for s in sets:
        cmd += ["--set", s]
    print("$", " ".join(cmd[1:]), flush=True)
    started = time.time()
    log_file = out / f"{run_id}.log"
    out.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as f:  # a file: the run outlives this script
        subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    log = log_file.read_text(encoding="utf-8")
    print(f"  {time.time() - started:.0f} s", flush=True)
    (run,) = (out / "runs").glob(f"*-{run_id}")
    (export,) = (out / "exports" / run_id).glob("*/*")
    return run, export, log


def export_figures(export: Path, texts: np.ndarray) -> dict[str, float]:
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 - the export's tokenizer ops

    reader = tf.train.load_checkpoint(str(export / "variables" / "variables"))
    tensors = [np.asarray(reader.get_tensor(n)) for n in reader.get_variable_to_shape_map()]
    floats = [t for t in tensors if t.dtype.kind == "f"]
    matrices = [t for t in floats if t.ndim >= 2]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(export), arcname="model")
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    serve(text=tf.constant(texts[:64]))
    started = time.perf_counter()
    for i in range(0, len(texts), 64):
        serve(text=tf.constant(texts[i:i + 64]))
    seconds = time.perf_counter() - started
    return {
        "parameters": int(sum(t.size for t in floats)),
        "variables_mb": sum(f.stat().st_size for f in (export / "variables").iterdir()) / 1e6,
        "gzip_mb": len(buffer.getvalue()) / 1e6,
        "zeros_in_matrices": float(sum((t == 0).sum() for t in matrices)
                                   / sum(t.size for t in matrices)),
        "examples_per_second": len(texts) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=1500)
    parser.add_argument("--teacher-export")
    parser.add_argument("--teacher-run")
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip", action="append", default=[],
                        help="student-hard / pruned: leave that run out")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="kerasft-distill-"))
    sets = [f"data.max_examples={args.max_examples}"]
    print(machine(), "| load average at start", load_average(), flush=True)
    runs: dict[str, tuple[Path, Path, str]] = {}
    if args.teacher_export and args.teacher_run:
        runs["teacher"] = (Path(args.teacher_run), Path(args.teacher_export), "")
    else:
        runs["teacher"] = train("configs/quickstart.yaml", out, "teacher", sets)
    teacher = f"stages.1.distill.teacher={runs['teacher'][1]}"
    runs["student (distill)"] = train("configs/distill_student.yaml", out, "student",
                                      sets + [teacher])
    if "student-hard" not in args.skip:
        runs["student (hard labels)"] = train("configs/distill_student.yaml", out,
                                              "student-hard",
                                              sets + [teacher, "stages.1.distill.alpha=1.0"])
    if "pruned" not in args.skip:
        runs["pruned 0.5"] = train("configs/prune.yaml", out, "pruned", sets)

    sys.path.insert(0, str(ROOT))
    from kerasft.api import FineTuner

    data = FineTuner.from_run(runs["teacher"][0], log=lambda s: None).load_data(report=False)
    texts = np.array([x.numpy() for x, _ in data.test.dataset])
    for name, (run, export, log) in runs.items():
        metrics = json.loads((run / "metrics.json").read_text())
        figures = export_figures(export, texts)
        pruned = [line for line in log.splitlines() if "pruned" in line and "kernels" in line]
        print(f"{name}: macro-F1 {metrics['macro_f1']:.4f}, accuracy {metrics['accuracy']:.4f}, "
              f"{figures['parameters']:,} parameters, variables {figures['variables_mb']:.1f} MB, "
              f"gzip {figures['gzip_mb']:.1f} MB, zeros in kernels/embeddings "
              f"{figures['zeros_in_matrices']:.3f}, serving {figures['examples_per_second']:.0f} "
              f"examples/s" + (f"\n  {pruned[-1]}" if pruned else ""), flush=True)
    print("load average at end", load_average(), flush=True)


if __name__ == "__main__":
    main()
