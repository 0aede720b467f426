"""Quality benchmark: kerasft's quickstart against TF-IDF + logistic regression, same split.

    python bench/quality.py                       # trains the quickstart config, then the baseline
    python bench/quality.py --run-dir runs/X      # scores an existing run's metrics.json instead

The baseline reads exactly the train and test splits kerasft builds from the config (same
stratified, seeded split and max_examples cap) and is trained on the training split only.
Prints a markdown table (accuracy, macro-F1, time to train) for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def split_texts(split) -> tuple[list[str], np.ndarray]:
    texts = [x.decode("utf-8") for x, _ in split.dataset.as_numpy_iterator()]
    return texts, split.labels


def tfidf_baseline(config_path: str, overrides: list[str]) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from kerasft.config import load_config
    from kerasft.data.sources import load_data
    from kerasft.evaluation.metrics import classification_report

    cfg = load_config(config_path, overrides)
    data = load_data(cfg.data, seed=cfg.seed)
    x_train, y_train = split_texts(data.train)
    test = data.test or data.validation
    x_test, y_test = split_texts(test)
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform(x_train)
    clf = LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced")
    clf.fit(features, y_train)
    seconds = time.perf_counter() - start
    probabilities = clf.predict_proba(vectorizer.transform(x_test))
    report = classification_report(y_test, probabilities, data.class_names)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "seconds": seconds, "train": len(x_train), "test": len(x_test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--run-dir", default=None, help="Use this run's metrics.json.")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rows = []
    if args.run_dir:
        run_dir = Path(args.run_dir)
        seconds = None
    else:
        from kerasft.api import build_finetuner
        from kerasft.config import load_config

        start = time.perf_counter()
        ft = build_finetuner(load_config(args.config, args.sets), log=print)
        ft.fit()
        seconds = time.perf_counter() - start
        run_dir = ft.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows.append(("kerasft " + Path(args.config).stem, metrics["accuracy"], metrics["macro_f1"],
                 seconds))
    base = tfidf_baseline(args.config, args.sets)
    rows.append(("TF-IDF (1-2 grams) + logistic regression", base["accuracy"], base["macro_f1"],
                 base["seconds"]))
    print(f"\nsplit: train {base['train']}, test {base['test']} (config {args.config})")
    print("| model | accuracy | macro-F1 | time to train |")
    print("|---|---|---|---|")
    for name, acc, f1, sec in rows:
        shown = f"{sec:.0f} s" if sec is not None else "see run"
        print(f"| {name} | {acc:.4f} | {f1:.4f} | {shown} |")
    print(f"\nmacro-F1 difference: {rows[0][2] - rows[1][2]:+.4f}")


if __name__ == "__main__":
    main()
