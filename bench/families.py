"""Time and size per KerasHub family, on the tiny random presets the tests write.

For each text family (tests/hub_presets.py: a 2-layer backbone, hidden size 16, the family's own
tokenizer kind) and the two image families the tests cover (tests/test_hub_images.py): build,
train two stages (head, then all) on a small set, export, and answer a batch of 32 raw inputs
through TF Serving's session-based loader (tests/session_loader.py). Rows: seconds to train,
seconds to export (writing the SavedModel, its warmup file and kerasft's own check), the export's
size on disk, and the median of 20 batch-32 calls under the session loader.

These are not pretrained sizes: they show what each family's tokenizer and graph cost around a
model small enough to leave that cost visible, and that every family goes through the same path.

    cd bench && python families.py                  # every family
    cd bench && python families.py --only bert,hub_vit
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import load_average, machine, quiet_tensorflow  # noqa: E402

TEXT = ("bert", "distil_bert", "roberta", "deberta_v3", "albert", "xlm_roberta", "f_net",
        "roformer_v2", "electra")
IMAGE = ("hub_vit", "hub_mobilenet_v3")


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _text_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    from tests.test_text_families import BAD, GOOD

    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(n):
        good = i % 2 == 0
        words = list(rng.choice(GOOD if good else BAD, size=2))
        texts.append(" ".join(words))
        labels.append("pos" if good else "neg")
    return np.array(texts), np.array(labels)


def _run(name: str, root: Path) -> dict[str, float | str]:
    from kerasft.api import build_finetuner
    from tests.session_loader import SessionModel

    text = name in TEXT
    if text:
        from tests.hub_presets import TOKENIZER_KINDS, write_tiny_hub_preset

        preset = write_tiny_hub_preset(root / name, name, sequence_length=16)
        x, y = _text_data(256)
        kind = TOKENIZER_KINDS[name]
        served_input = {"text": np.array(list(x[:32]), dtype=object)}
    else:
        from sklearn.datasets import load_digits

        from tests.hub_presets import tiny_mobilenet_v3_preset, tiny_vit_preset

        preset = str({"hub_vit": tiny_vit_preset, "hub_mobilenet_v3": tiny_mobilenet_v3_preset}[
            name](root / name))
        digits = load_digits()  # 8x8 grey digits, as 16x16 RGB pixels in 0..255
        x = np.repeat(np.repeat(digits.images[:256, :, :, None] * 16, 2, 1), 2, 2)
        x = np.repeat(x, 3, axis=-1).clip(0, 255).astype("uint8")
        y = np.array([str(d) for d in digits.target[:256]])
        kind = "image 16x16"
        served_input = {"image": x[:32].astype("float32")}
    cfg = {
        "name": f"tiny_{name}", "seed": 1,
        "backbone": {"name": name, "preset": preset,
                     **({"sequence_length": 16} if text else {})},
        "data": {"source": "arrays", "batch_size": 16},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.01},
                   {"name": "all", "trainable": "all", "epochs": 1, "learning_rate": 0.001,
                    **({} if text or name == "hub_vit" else {"batch_norm": "train"})}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
        "export": {"dir": str(root / "saved_models")},
    }
    start = time.perf_counter()
    ft = build_finetuner(cfg, log=lambda s: None)
    ft.fit(x, y, output_dir=root / "runs", evaluate=False)
    trained = time.perf_counter() - start
    start = time.perf_counter()
    path = Path(ft.export())
    exported = time.perf_counter() - start
    calls = []
    with SessionModel(str(path)) as served:
        served.run("serving_default", **served_input)
        for _ in range(20):
            t0 = time.perf_counter()
            served.run("serving_default", **served_input)
            calls.append(time.perf_counter() - t0)
    return {"family": name, "kind": kind, "examples": len(x), "train_s": trained,
            "export_s": exported, "export_mb": _size_mb(path),
            "batch32_ms": 1000 * statistics.median(calls)}


def main() -> None:
    quiet_tensorflow()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(TEXT + IMAGE))
    args = parser.parse_args()
    print(machine(), "| load", load_average())
    print(f"{'family':<17}{'tokenizer/input':<16}{'examples':>9}{'train s':>9}{'export s':>10}"
          f"{'export MB':>11}{'batch-32 ms':>13}")
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            row = _run(name, Path(tmp))
        print(f"{row['family']:<17}{row['kind']:<16}{row['examples']:>9}{row['train_s']:>9.1f}"
              f"{row['export_s']:>10.1f}{row['export_mb']:>11.2f}{row['batch32_ms']:>13.1f}",
              flush=True)


if __name__ == "__main__":
    main()
