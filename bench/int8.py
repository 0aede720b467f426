"""int8 against float32 SavedModels of one run: test accuracy / macro-F1 and serving latency.

    kerasft train configs/quickstart.yaml                    # saved_models/quickstart_sentiment/1
    kerasft export runs/quickstart_sentiment-<stamp> --quantize int8   # .../2
    python bench/int8.py runs/quickstart_sentiment-<stamp> saved_models/quickstart_sentiment

Each version answers the run's test split through ``serving_default`` (raw strings, batches of
64); latency: 30 calls after one warm call, batch 1 and batch 32, median (min, max).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402, F401  (the text ops of the exports)
from sklearn.metrics import f1_score  # noqa: E402

from kerasft.api import FineTuner  # noqa: E402


def latency(fn, texts: np.ndarray, batch: int) -> str:
    x = tf.constant(texts[:batch])
    fn(text=x)
    times = []
    for _ in range(30):
        start = time.perf_counter()
        fn(text=x)
        times.append(time.perf_counter() - start)
    return (f"p50 {1000 * np.median(times):.1f} ms (min {1000 * min(times):.1f}, "
            f"max {1000 * max(times):.1f})")


def main() -> None:
    run, base = sys.argv[1], sys.argv[2]
    ft = FineTuner.from_run(run, log=lambda s: None)
    data = ft.load_data(report=False)
    texts = np.array([x.numpy() for x, _ in data.test.dataset])
    y = np.asarray(data.test.labels)
    for version in (1, 2):
        fn = tf.saved_model.load(f"{base}/{version}").signatures["serving_default"]
        p = np.concatenate([fn(text=tf.constant(texts[i:i + 64]))["probabilities"].numpy()
                            for i in range(0, len(texts), 64)])
        accuracy = float((p.argmax(-1) == y).mean())
        macro = f1_score(y, p.argmax(-1), average="macro")
        print(f"version {version}: accuracy {accuracy:.4f} macro-F1 {macro:.4f}; "
              f"batch 1 {latency(fn, texts, 1)}; batch 32 {latency(fn, texts, 32)}", flush=True)


if __name__ == "__main__":
    main()
