"""Serving latency: SavedModel vs the in-process Keras call, and REST round trips on loopback.

Run by hand (not part of the tests), from the repository root:

    python bench/serving_latency.py                                  # mobilenetv2, 224x224
    python bench/serving_latency.py --backbone tiny_cnn --size 16    # the test model
    python bench/serving_latency.py --export saved_models/quickstart_sentiment/1 \\
        [--run runs/quickstart_sentiment-...]                        # a text export (+ Keras)

For an image backbone (weights "none": latency does not depend on the weights) it builds the
classifier (3 classes), exports it with kerasft (TF Serving layout, warmup, op check) and times,
at batch 1 and 32, p50 / p95 over ``--iterations`` calls after warmup calls:

- Keras ``model(preprocess(x), training=False)`` (eager) and ``model.predict_on_batch``;
- the SavedModel's ``serving_default`` (raw float32 pixels, resize + preprocessing in the graph)
  and ``serving_bytes`` (JPEG bytes, decoded in the graph), loaded with ``tf.saved_model.load``;
- the same two signatures through ``kerasft.serving.rest.predict_rest`` against the loopback stub
  (``tests/tf_serving_stub.py``): client JSON encoding, HTTP on 127.0.0.1, the stub's JSON
  parsing (Python; TF Serving parses in C++) and the answer. "REST overhead" = REST p50 minus the
  in-process SavedModel p50 of the same signature.

With ``--export`` (a text SavedModel version folder, e.g. the quickstart's) it times its
``serving_default`` on texts in-process and over REST, and the Keras call when ``--run`` gives the
run folder. It prints a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="kerasft-bench-keras-"))

import numpy as np  # noqa: E402

TEXTS = ["what a great day at the beach with friends", "worst service ever, never again",
         "the train is late again", "i love this song so much", "meh, it was ok i guess",
         "cannot believe how good this movie was", "my phone died in the middle of the call",
         "happy birthday to my best friend"]


def time_interleaved(fns: list[Callable[[], Any] | None], iterations: int,
                     warmup: int) -> list[tuple[float, float] | None]:
    """(p50, p95) in milliseconds per function (None stays None), over `iterations` rounds after
    `warmup` rounds. Each round calls every function once, so a change in the machine's load
    (a shared machine) hits all of them alike instead of one path's whole series."""
    live = [i for i, fn in enumerate(fns) if fn is not None]
    for _ in range(warmup):
        for i in live:
            fns[i]()
    times: dict[int, list[float]] = {i: [] for i in live}
    for _ in range(iterations):
        for i in live:
            start = time.perf_counter()
            fns[i]()
            times[i].append((time.perf_counter() - start) * 1000)
    out: list[tuple[float, float] | None] = [None] * len(fns)
    for i, values in times.items():
        values.sort()
        p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
        out[i] = (statistics.median(values), p95)
    return out


def _fmt(value: tuple[float, float] | None) -> str:
    return "n/a" if value is None else f"{value[0]:.1f} / {value[1]:.1f}"


def table(title: str, rows: dict[str, dict[int, tuple[float, float] | None]],
          batches: list[int]) -> list[str]:
    lines = [f"**{title}** (p50 / p95, ms)", "",
             "| path | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for name, by_batch in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(by_batch.get(b)) for b in batches) + " |")
    return lines


def derived(rows: dict[str, dict[int, tuple[float, float] | None]], batches: list[int],
            pairs: list[tuple[str, str, str]]) -> list[str]:
    """Lines ``label: batch b: ratio or difference`` for (label, numerator, denominator)."""
    lines = []
    for label, a, b in pairs:
        parts = []
        for batch in batches:
            x, y = rows.get(a, {}).get(batch), rows.get(b, {}).get(batch)
            if x is None or y is None:
                continue
            if label.endswith("ratio"):
                parts.append(f"batch {batch}: {x[0] / y[0]:.2f}x")
            else:
                parts.append(f"batch {batch}: {x[0] - y[0]:+.1f} ms")
        if parts:
            lines.append(f"- {label} (p50): " + ", ".join(parts))
    return lines


def bench_image(args: argparse.Namespace) -> list[str]:
    import tensorflow as tf

    from kerasft.api import build_finetuner
    from kerasft.export.saved_model import export_saved_model
    from kerasft.serving.requests import image_array_instances, image_bytes_instances
    from kerasft.serving.rest import predict_rest
    from tests.tf_serving_stub import MAX_BODY_BYTES, TFServingStub

    if args.backbone == "tiny_cnn":
        from tests.tiny_backbone import register_tiny_cnn

        register_tiny_cnn()
    size = args.size
    ft = build_finetuner({
        "name": "bench", "backbone": {"name": args.backbone, "weights": "none",
                                      "input_shape": [size, size, 3]},
        "training": {"strategy": "default", "tensorboard": False},
    }, log=lambda s: None)
    model = ft.build(["a", "b", "c"])
    backbone = ft.backbone
    base = Path(tempfile.mkdtemp(prefix="kerasft-bench-"))
    rng = np.random.default_rng(0)
    sample = rng.integers(0, 256, size=(4, size, size, 3)).astype("float32")
    path = export_saved_model(model, backbone, ft.class_names, base, "bench", verify=False,
                              sample_inputs=sample, log=lambda s: None)
    loaded = tf.saved_model.load(str(path))
    default, by_bytes = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]

    names = ["Keras model(x) eager", "Keras predict_on_batch", "SavedModel serving_default",
             "SavedModel serving_bytes (JPEG)", "REST serving_default (pixel JSON)",
             "REST serving_bytes (b64 JPEG)"]
    rows: dict[str, dict[int, tuple[float, float] | None]] = {n: {} for n in names}

    notes: list[str] = []

    def calls(x: np.ndarray, url: str) -> list[Callable[[], Any] | None]:
        jpegs = [tf.io.encode_jpeg(im.astype("uint8")).numpy() for im in x]
        x_tf = tf.constant(x)
        x_pre = backbone.preprocess(tf.image.resize(x_tf, backbone.image_size))
        pixels = image_array_instances(x)
        b64 = image_bytes_instances(jpegs)
        body = len(json.dumps({"instances": pixels}))
        rest_pixels: Callable[[], Any] | None = functools.partial(
            predict_rest, url, "bench", pixels, timeout=120, retries=0)
        if body > MAX_BODY_BYTES:
            rest_pixels = None
            notes.append(f"- REST pixels at batch {len(x)}: not run, the JSON body is "
                         f"{body / 1e6:.0f} MB (over the stub's {MAX_BODY_BYTES / 2**20:.0f} MiB "
                         "cap): send encoded images to serving_bytes instead.")
        return [
            lambda: model(backbone.preprocess(tf.image.resize(x_tf, backbone.image_size)),
                          training=False),
            lambda: model.predict_on_batch(x_pre),
            lambda: default(image=x_tf),
            lambda: by_bytes(image_bytes=tf.constant(jpegs)),
            rest_pixels,
            lambda: predict_rest(url, "bench", b64, signature_name="serving_bytes",
                                 timeout=120, retries=0),
        ]

    with TFServingStub(base / "bench", model_name="bench") as stub:
        for batch in args.batches:
            x = rng.integers(0, 256, size=(batch, size, size, 3)).astype("float32")  # pixels
            n = args.iterations if batch == 1 else max(args.iterations // 3, 10)
            for name, result in zip(names, time_interleaved(calls(x, stub.url), n,
                                                            args.warmup)):
                rows[name][batch] = result
    shutil.rmtree(base, ignore_errors=True)
    params = int(model.count_params())
    lines = table(f"{args.backbone} {size}x{size} ({params:,} parameters, weights none, "
                  "3 classes)", rows, args.batches)
    lines += [""] + derived(rows, args.batches, [
        ("SavedModel / Keras eager ratio", names[2], names[0]),
        ("SavedModel / Keras predict_on_batch ratio", names[2], names[1]),
        ("REST overhead, pixels", names[4], names[2]),
        ("REST overhead, b64 JPEG", names[5], names[3]),
    ]) + notes
    return lines


def bench_text(args: argparse.Namespace) -> list[str]:
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the export's tokenizer ops)

    from kerasft.serving.rest import predict_rest
    from tests.tf_serving_stub import TFServingStub

    export = Path(args.export).resolve()
    loaded = tf.saved_model.load(str(export))
    default = loaded.signatures["serving_default"]
    ft = None
    if args.run:
        from kerasft.api import FineTuner

        ft = FineTuner.from_run(args.run, log=lambda s: None)
    names = ["Keras model(preprocess(texts)) eager", "Keras predict_on_batch",
             "SavedModel serving_default", "REST serving_default (JSON texts)"]
    rows: dict[str, dict[int, tuple[float, float] | None]] = {n: {} for n in names}
    def calls(texts: list[str], url: str) -> list[Callable[[], Any] | None]:
        t = tf.constant(texts)
        out: list[Callable[[], Any] | None] = [None, None]
        if ft is not None:
            model, backbone = ft.model, ft.backbone
            features = backbone.preprocess(t)
            out = [lambda: model(backbone.preprocess(t), training=False),
                   lambda: model.predict_on_batch(features)]
        return out + [lambda: default(text=t),
                      lambda: predict_rest(url, export.parent.name, texts, timeout=120,
                                           retries=0)]

    with TFServingStub(export.parent, model_name=export.parent.name) as stub:
        for batch in args.batches:
            texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
            n = args.iterations if batch == 1 else max(args.iterations // 3, 10)
            for name, result in zip(names, time_interleaved(calls(texts, stub.url), n,
                                                            args.warmup)):
                rows[name][batch] = result
    lines = table(f"text export {export}", rows, args.batches)
    lines += [""] + derived(rows, args.batches, [
        ("SavedModel / Keras eager ratio", names[2], names[0]),
        ("SavedModel / Keras predict_on_batch ratio", names[2], names[1]),
        ("REST overhead", names[3], names[2]),
    ])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="mobilenetv2",
                        help="image backbone (weights none); tiny_cnn = the test model")
    parser.add_argument("--size", type=int, default=224, help="image size")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--iterations", type=int, default=60,
                        help="timed calls at batch 1 (a third, at least 10, at larger batches)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--export", default=None, help="a text SavedModel version folder")
    parser.add_argument("--run", default=None, help="its run folder, for the Keras comparison")
    parser.add_argument("--no-image", action="store_true", help="only the --export benchmark")
    args = parser.parse_args()

    import tensorflow as tf

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"TensorFlow {tf.__version__}, Python {platform.python_version()}")
    print(f"command: python bench/serving_latency.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    lines: list[str] = []
    if not args.no_image:
        lines += bench_image(args)
    if args.export:
        lines += ([""] if lines else []) + bench_text(args)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
