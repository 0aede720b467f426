"""GPU: achieved FLOP/s of BERT-base fine-tuning through kerasft, as a fraction of the GPU's peak.

    python bench/gpu.py                                    # BERT-base, seq 128, batch 32
    python bench/gpu.py --precision mixed_bfloat16 --no-xla --batch 64
    python bench/gpu.py --size tiny --steps 12 --precision none   # 2-layer BERT: a CPU check

The model has BERT-base's shape (12 layers, hidden 768, 12 heads, intermediate 3072, WordPiece
vocabulary of all-MiniLM-L6-v2: 30,522 tokens) with random weights, written as a local KerasHub
preset (no download; speed does not depend on the weights). kerasft fine-tunes all of it
(``trainable: all``, AdamW) with ``training.mixed_precision`` (default ``mixed_float16``) and
``training.jit_compile`` (default on) on synthetic texts that fill the whole sequence
(``data.bucket_by_length: false``), so every position is real work.

FLOPs per training example (forward + backward = 3x forward, multiply-add = 2 FLOPs):
``6 * P * seq + 12 * layers * seq^2 * hidden``, where P counts the encoder and pooler weights
(embedding lookups are not matrix products) and the second term is attention's score and
weighted-sum products. Achieved FLOP/s = FLOPs per example x steady-state examples/s
(bench/benchutil.py: after the warmup steps, between-epoch work left out). The peak is the
dense float16/bfloat16 tensor-core figure of the GPU's data sheet (``--peak-tflops`` overrides;
the table below knows common data-centre GPUs). Goal (issue 6): at least 40 % of peak.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from benchutil import MINILM, ROOT, load_average, machine, silent, timed_fits  # noqa: E402

#: Dense float16/bfloat16 tensor-core peak (TFLOP/s, without sparsity) by GPU name fragment.
PEAK_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
    "A100": 312.0, "A10G": 70.0, "A10": 125.0, "L40S": 362.0, "L4": 121.0, "V100": 125.0,
    "T4": 65.0,
}
SIZES = {
    "base": {"num_layers": 12, "hidden_dim": 768, "num_heads": 12, "intermediate_dim": 3072},
    "tiny": {"num_layers": 2, "hidden_dim": 128, "num_heads": 2, "intermediate_dim": 512},
}


def encoder_parameters(layers: int, hidden: int, intermediate: int) -> int:
    """Weights that take part in matrix products: attention (4 h x h + biases), feed-forward,
    layer norms, and the pooler (h x h)."""
    attention = 4 * (hidden * hidden + hidden)
    feed_forward = hidden * intermediate + intermediate + intermediate * hidden + hidden
    norms = 2 * 2 * hidden
    return layers * (attention + feed_forward + norms) + hidden * hidden + hidden


def flops_per_example(layers: int, hidden: int, intermediate: int, seq: int) -> float:
    params = encoder_parameters(layers, hidden, intermediate)
    return 6.0 * params * seq + 12.0 * layers * seq * seq * hidden


def gpu_name() -> str | None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


def peak_for(name: str | None) -> float | None:
    if not name:
        return None
    for fragment, peak in PEAK_TFLOPS.items():
        if fragment.lower() in name.lower():
            return peak
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60, help="Training steps (one epoch).")
    parser.add_argument("--precision", default="mixed_float16",
                        choices=["none", "mixed_float16", "mixed_bfloat16"])
    parser.add_argument("--no-xla", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()

    import sys

    sys.path.insert(0, str(ROOT))
    from kerasft.api import build_finetuner
    from kerasft.io import resolve_pkg_path
    from tests.bert_fixtures import write_tiny_bert_preset

    dims = SIZES[args.size]
    name = gpu_name()
    peak = args.peak_tflops or peak_for(name)
    print(machine())
    print(f"GPU: {name or 'none'}; peak {peak or 'unknown'} TFLOP/s; "
          f"load average: {load_average()}")
    vocab = Path(resolve_pkg_path(MINILM), "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab = [token for token in vocab if token]
    words = [t for t in vocab[2000:] if t.isalpha()][:5000]
    rng = np.random.default_rng(0)
    count = args.batch * args.steps
    texts = np.array([" ".join(rng.choice(words, args.seq)) for _ in range(count)], dtype=object)
    labels = np.array(["a", "b", "c"])[np.arange(count) % 3]
    with tempfile.TemporaryDirectory(prefix="kerasft-gpu-") as tmp:
        started = time.perf_counter()
        preset = write_tiny_bert_preset(os.path.join(tmp, "preset"), vocab=vocab,
                                        max_sequence_length=max(512, args.seq),
                                        sequence_length=args.seq, **dims)
        print(f"wrote a random {args.size} preset in {time.perf_counter() - started:.0f} s")
        ft = build_finetuner({
            "name": "gpu_bench", "output_dir": os.path.join(tmp, "runs"),
            "backbone": {"name": "bert", "preset": preset, "sequence_length": args.seq},
            "data": {"batch_size": args.batch, "bucket_by_length": False},
            "stages": [{"name": "all", "trainable": "all", "epochs": 1,
                        "learning_rate": 2e-5, "optimizer": "adamw"}],
            "training": {"mixed_precision": args.precision, "jit_compile": not args.no_xla,
                         "verbose": "silent", "tensorboard": False,
                         "checkpoint_every_epoch": False},
            "export": {"enabled": False},
        }, log=silent)
        with timed_fits(args.batch, warmup=max(3, args.steps // 6)) as timings:
            ft.fit(texts, labels, evaluate=False)
    timing = timings[-1]
    rate = timing.examples_per_second
    per_example = flops_per_example(dims["num_layers"], dims["hidden_dim"],
                                    dims["intermediate_dim"], args.seq)
    achieved = per_example * rate / 1e12
    share = f"{100 * achieved / peak:.1f} % of {peak:.0f}" if peak else "peak unknown"
    print(f"BERT-{args.size} seq {args.seq}, batch {args.batch}, {args.precision}, "
          f"XLA {'off' if args.no_xla else 'on'}: {rate:.1f} examples/s "
          f"({len(timing.step_seconds)} timed steps), {per_example / 1e9:.1f} GFLOP/example, "
          f"achieved {achieved:.2f} TFLOP/s ({share} TFLOP/s)")


if __name__ == "__main__":
    main()
