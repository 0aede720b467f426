"""Step 7 of a run: metrics a person can read.

Accuracy, per-class precision / recall / F1 / support, macro and weighted F1 and the confusion
matrix, computed with NumPy from integer labels and predicted probabilities; printed as a table,
written to ``metrics.json``, and drawn (confusion matrix, training curves) when matplotlib is
installed (``pip install kerasft[plots]``).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import numpy as np

from kerasft.io import atomic_path, atomic_write


def classification_report(
    y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str],
    multi_label: bool = False, threshold: float = 0.5,
) -> dict[str, Any]:
    """Scores predictions: single-label (argmax) or multi-label (``probabilities > threshold``)."""
    probabilities = np.asarray(probabilities)
    n_classes = len(class_names)
    if multi_label:
        truth = np.asarray(y_true).astype(bool)
        pred = probabilities > threshold
        tp = (truth & pred).sum(0).astype(float)
        fp = (~truth & pred).sum(0).astype(float)
        fn = (truth & ~pred).sum(0).astype(float)
        support = truth.sum(0)
        accuracy = float((truth == pred).all(1).mean()) if len(truth) else 0.0
        confusion = None
    else:
        truth = np.asarray(y_true).reshape(-1).astype(int)
        pred = probabilities.argmax(-1) if probabilities.ndim == 2 else probabilities.astype(int)
        confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(confusion, (truth, pred), 1)
        tp = np.diag(confusion).astype(float)
        fp = confusion.sum(0) - tp
        fn = confusion.sum(1) - tp
        support = confusion.sum(1)
        accuracy = float(tp.sum() / max(confusion.sum(), 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    total = max(int(support.sum()), 1)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]),
               "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    report: dict[str, Any] = {
        "examples": int(len(probabilities)),
        "accuracy": accuracy,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / total),
        "per_class": per_class,
        "class_names": list(class_names),
    }
    if confusion is not None:
        report["confusion_matrix"] = confusion.tolist()
    return report


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A fixed-width table: one row per class, then accuracy, macro and weighted averages."""
    names = report["class_names"]
    width = max([len(n) for n in names] + [12])
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'class':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>8}")
    for name in names:
        row = report["per_class"][name]
        lines.append(f"{name:<{width}}  {row['precision']:>9.4f}  {row['recall']:>9.4f}  "
                     f"{row['f1']:>9.4f}  {row['support']:>8d}")
    n = report["examples"]
    lines.append("")
    lines.append(f"{'accuracy':<{width}}  {'':>9}  {'':>9}  {report['accuracy']:>9.4f}  {n:>8d}")
    lines.append(f"{'macro avg':<{width}}  {report['macro_precision']:>9.4f}  "
                 f"{report['macro_recall']:>9.4f}  {report['macro_f1']:>9.4f}  {n:>8d}")
    lines.append(f"{'weighted avg':<{width}}  {'':>9}  {'':>9}  {report['weighted_f1']:>9.4f}  "
                 f"{n:>8d}")
    if "confusion_matrix" in report:
        lines.append("")
        lines.append("confusion matrix (rows: true, columns: predicted)")
        widest_value = max(len(str(v)) for row in report["confusion_matrix"] for v in row)
        cell = max(widest_value, min(max(len(n) for n in names), 12)) + 2
        short = [n[: cell - 2] for n in names]
        lines.append(" " * width + "  " + "".join(f"{s:>{cell}}" for s in short))
        for name, row in zip(names, report["confusion_matrix"]):
            lines.append(f"{name:<{width}}  " + "".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)


def write_json(data: dict[str, Any], path: str | os.PathLike) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False), durable=False)


def plot_confusion_matrix(report: dict[str, Any], path: str | os.PathLike) -> bool:
    """Draws the confusion matrix to a PNG; returns False when matplotlib is not installed."""
    if "confusion_matrix" not in report:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    matrix = np.asarray(report["confusion_matrix"])
    names = report["class_names"]
    size = max(4.0, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    limit = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > limit else "black")
    ax.set_title(f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    fig.tight_layout()
    with atomic_path(path, durable=False) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True


def plot_history(history_csv: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Draws loss and accuracy per epoch (train and validation), stage boundaries marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    with open(history_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    epochs = [int(r["epoch"]) for r in rows]  # history.csv numbers epochs from 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
            if len(values) == len(rows):
                ax.plot(epochs, values, style, marker="o", label=key)
        previous = None
        for epoch, row in zip(epochs, rows):
            if previous is not None and row["stage"] != previous:
                ax.axvline(epoch - 0.5, color="grey", linewidth=0.8)
            previous = row["stage"]
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (vertical lines: stage boundaries)")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, durable=False) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True
