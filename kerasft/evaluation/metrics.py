"""Step 7 of a run: metrics a person can read.

Classification: accuracy, per-class precision / recall / F1 / support, macro and weighted F1
and the confusion matrix, computed with NumPy from integer labels and predicted probabilities.
Regression (:func:`regression_report`): MAE, RMSE, R², Pearson and Spearman correlation, in
NumPy (Spearman = Pearson of average ranks, as ``scipy.stats.spearmanr``; SciPy is not a
dependency). Printed as a table, written to ``metrics.json``, and drawn (confusion matrix or
predicted-vs-true scatter, training curves) when matplotlib is installed
(``pip install kerasft[plots]``).
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


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (``scipy.stats.rankdata``'s default)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Each run of equal values gets the mean of the positions it spans.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r; None when either side is constant (undefined)."""
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else None


def _one_target(truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    n = len(truth)
    error = pred - truth
    sst = float(((truth - truth.mean()) ** 2).sum()) if n else 0.0
    return {
        "mae": float(np.abs(error).mean()) if n else 0.0,
        "rmse": float(np.sqrt((error ** 2).mean())) if n else 0.0,
        "r2": 1.0 - float((error ** 2).sum()) / sst if sst > 0 else None,
        "pearson": _pearson(truth, pred) if n > 1 else None,
        "spearman": _pearson(_ranks(truth), _ranks(pred)) if n > 1 else None,
        "target_mean": float(truth.mean()) if n else None,
        "target_std": float(truth.std()) if n else None,
    }


def regression_report(y_true: np.ndarray, y_pred: np.ndarray,
                      names: list[str] | None = None) -> dict[str, Any]:
    """MAE, RMSE, R² (1 - SSE/SST; None for constant targets), Pearson and Spearman (None when
    either side is constant). One target: `y_pred` ``[n]`` or ``[n, 1]``. Several (``[n, k]``,
    `names` the k label columns): each target's figures under ``targets``, and at the top level
    their mean (what ``val_mae`` and ``kerasft tune`` read; None when a target's is None)."""
    truth = np.asarray(y_true, np.float64)
    pred = np.asarray(y_pred, np.float64)
    k = truth.shape[1] if truth.ndim == 2 else 1
    truth, pred = truth.reshape(len(truth), k), pred.reshape(len(pred), -1)
    if truth.shape != pred.shape:
        raise ValueError(f"regression_report: {truth.shape} targets, {pred.shape} predictions")
    per = [_one_target(truth[:, j], pred[:, j]) for j in range(k)]
    report: dict[str, Any] = {"task": "regression", "examples": int(len(truth))}
    if k == 1:
        return {**report, **per[0]}
    names = list(names) if names else [f"target_{j}" for j in range(k)]
    for key in ("mae", "rmse", "r2", "pearson", "spearman"):
        values = [p[key] for p in per]
        report[key] = None if None in values else float(np.mean(values))
    report["targets"] = dict(zip(names, per, strict=True))
    return report


_REGRESSION_ROWS = {"mae": "MAE", "rmse": "RMSE", "r2": "R²", "pearson": "Pearson r",
                    "spearman": "Spearman rho", "target_mean": "target mean",
                    "target_std": "target std"}


def _format_regression(report: dict[str, Any], title: str) -> str:
    lines = [title] if title else []

    def cell(value: Any) -> str:
        return f"{'n/a (constant)' if value is None else f'{value:.4f}':>16}"

    targets = report.get("targets")
    if targets:  # a column per target, then their mean
        lines.append(f"{'':<14}" + "".join(f"{name[:15]:>16}" for name in targets)
                     + f"{'mean':>16}")
        for key, name in _REGRESSION_ROWS.items():
            lines.append(f"{name:<14}" + "".join(cell(t.get(key)) for t in targets.values())
                         + (cell(report.get(key)) if key in report else f"{'':>16}"))
    else:
        for key, name in _REGRESSION_ROWS.items():
            lines.append(f"{name:<14}{cell(report.get(key))}")
    lines.append(f"{'examples':<14}{report['examples']:>16d}")
    return "\n".join(lines)


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A fixed-width table: one row per class, then accuracy, macro and weighted averages; for
    regression one row per metric."""
    if report.get("task") == "regression":
        return _format_regression(report, title)
    if report.get("task") == "token_classification":
        from kerasft.evaluation.entities import format_entity_report

        return format_entity_report(report, title)
    from kerasft.evaluation.entities import score_rows

    names = report["class_names"]
    lines, width = score_rows("class", {n: report["per_class"][n] for n in names}, title)
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


def plot_predictions(y_true: np.ndarray, y_pred: np.ndarray, report: dict[str, Any],
                     path: str | os.PathLike) -> bool:
    """Draws predicted against true values (regression) to a PNG, with the y = x line; returns
    False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    truth = np.asarray(y_true, np.float64)
    k = truth.shape[1] if truth.ndim == 2 else 1
    truth = truth.reshape(len(truth), k)
    pred = np.asarray(y_pred, np.float64).reshape(len(truth), k)
    # One panel per target (several label columns), each with its own figures.
    per = report.get("targets") or {"": report}
    fig, axes = plt.subplots(1, k, figsize=(5 * k, 5), squeeze=False)
    for j, (ax, (name, figures)) in enumerate(zip(axes[0], per.items(), strict=True)):
        ax.scatter(truth[:, j], pred[:, j], s=12, alpha=0.6)
        both = np.concatenate([truth[:, j], pred[:, j]]) if len(truth) else np.zeros(1)
        low, high = float(both.min()), float(both.max())
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
        ax.set_xlabel(f"true {name}".strip())
        ax.set_ylabel(f"predicted {name}".strip())
        r2 = figures.get("r2")
        ax.set_title(f"MAE {figures['mae']:.3g}, R² {'n/a' if r2 is None else f'{r2:.3f}'}")
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
    second = "accuracy" if "accuracy" in rows[0] else "mae"  # regression logs no accuracy
    for ax, metric in zip(axes, ("loss", second)):
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
