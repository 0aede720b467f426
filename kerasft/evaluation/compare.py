"""``kerasft compare``: several run folders side by side, and one plot of their curves.

Reads only the files a run folder holds (``config.yaml``, ``history.csv``, ``metrics.json``),
so it needs neither TensorFlow nor the models. Prints the config keys that differ (flattened,
``stages[1].learning_rate``), the held-out metrics (``metrics.json``: accuracy, macro-F1,
weighted F1, the split and its size), the history's last losses and best monitored value, and
the training time when the run recorded one; then draws every run's loss and monitored metric
per epoch on one figure.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kerasft.errors import KerasftError, expected
from kerasft.io import atomic_path

MISSING = "-"  # a key or value a run does not have
NOT_RECORDED = "not recorded"
# Columns a run's history may carry with its training time: kerasft writes epoch_seconds (each
# epoch's wall time, validation included); runs from before it have none (NOT_RECORDED).
TIME_COLUMNS = ("epoch_seconds", "seconds", "time")


@dataclass
class Run:
    """What compare reads from one run folder."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, str]]
    metrics: dict[str, Any] | None
    flat: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def monitor(self) -> str:
        training = self.config.get("training") or {}
        return str(training.get("monitor") or "val_loss")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as dotted keys: ``{"stages": [{"lr": 1}]}`` ->
    ``{"stages[0].lr": 1}``. An empty mapping or list stays a value of its own."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, inner in enumerate(value):
            out.update(flatten(inner, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def read_run(path: str | Path) -> Run:
    """Reads one run folder; a folder that is not one raises a one-line KerasftError."""
    path = Path(path)
    if not path.is_dir():
        raise KerasftError(expected("a kerasft run folder (a folder with config.yaml and "
                                    "history.csv)", "run_dir", str(path)))
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise KerasftError(expected("a kerasft run folder with config.yaml", "run_dir",
                                    str(path)))
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise KerasftError(expected("a readable YAML config", "config", str(config_path))
                           + f" ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(config, dict):
        raise KerasftError(expected("a YAML mapping", "config", str(config_path)))
    history_path = path / "history.csv"
    if not history_path.is_file():
        raise KerasftError(expected("a run folder with history.csv (a run that trained at "
                                    "least one epoch)", "run_dir", str(path)))
    with open(history_path, newline="", encoding="utf-8") as f:
        history = list(csv.DictReader(f))
    if not history or "epoch" not in history[0] or "loss" not in history[0]:
        raise KerasftError(expected("a history.csv with a header (epoch, loss, ...) and at least "
                                    "one epoch row", "history", str(history_path)))
    metrics = None
    metrics_path = path / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise KerasftError(expected("a JSON metrics file", "metrics",
                                        str(metrics_path))) from None
    return Run(path, config, history, metrics, flatten(config))


def read_runs(paths: Sequence[str | Path]) -> list[Run]:
    if len(paths) < 2:
        raise KerasftError(expected("at least 2 run folders to compare", "run_dirs",
                                    [str(p) for p in paths]))
    return [read_run(p) for p in paths]


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Flattened config keys whose value is not the same in every run (absent counts), in the
    order the first run's config lists them, then keys only later runs have."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.flat if k not in keys]
    return [k for k in keys
            if len({json.dumps(r.flat[k], default=str, sort_keys=True) if k in r.flat
                    else "<absent>" for r in runs}) > 1]


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _column(run: Run, key: str) -> list[float | None]:
    return [_float(row.get(key)) for row in run.history]


def _best(run: Run) -> tuple[float, int] | None:
    """The best value of the run's monitored metric and its epoch (lower is better for losses,
    higher for the rest, as Keras's ``mode="auto"`` decides)."""
    values = [(v, int(row["epoch"])) for v, row in zip(_column(run, run.monitor), run.history)
              if v is not None]
    if not values:
        return None
    lower = "loss" in run.monitor
    return min(values) if lower else max(values, key=lambda t: (t[0], -t[1]))


def training_time(run: Run) -> str:
    for column in TIME_COLUMNS:
        values = _column(run, column)
        if values and all(v is not None for v in values):
            return f"{sum(v for v in values if v is not None):.1f} s"
    return NOT_RECORDED


def _fmt(value: Any, limit: int = 48) -> str:
    """A config value as YAML spells it (5e-05 stays 5e-05, None is null), cut at `limit`."""
    if value is None:
        return "null"
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _metric(value: Any) -> str:
    if value is None:
        return MISSING
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metric_rows(runs: Sequence[Run]) -> list[tuple[str, list[str]]]:
    """(row name, one cell per run) for the metrics table."""
    rows: list[tuple[str, list[str]]] = []

    def held_out(key: str) -> list[str]:
        return [_metric(r.metrics.get(key)) if r.metrics else MISSING for r in runs]

    rows.append(("split", held_out("split")))
    rows.append(("examples", held_out("examples")))
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro_f1"),
                       ("weighted_f1", "weighted_f1")):
        rows.append((label, held_out(key)))
    rows.append(("epochs", [str(len(r.history)) for r in runs]))
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        cells = []
        for r in runs:
            values = _column(r, key)
            cells.append(_metric(values[-1]) if values and values[-1] is not None else MISSING)
        rows.append((f"last {key}", cells))
    cells = []
    for r in runs:
        best = _best(r)
        cells.append(f"{r.monitor}={best[0]:.4f} (epoch {best[1]})" if best else
                     f"{r.monitor}={MISSING}")
    rows.append(("best monitored", cells))
    rows.append(("training time", [training_time(r) for r in runs]))
    return rows


def _table(header: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    width0 = max([len(header[0])] + [len(name) for name, _ in rows])
    widths = [max([len(header[i + 1])] + [len(cells[i]) for _, cells in rows])
              for i in range(len(header) - 1)]
    lines = ["  ".join([header[0].ljust(width0)] + [h.ljust(w) for h, w in
                                                     zip(header[1:], widths)]).rstrip()]
    for name, cells in rows:
        lines.append("  ".join([name.ljust(width0)] + [c.ljust(w) for c, w in
                                                        zip(cells, widths)]).rstrip())
    return lines


def compare_lines(runs: Sequence[Run]) -> list[str]:
    """The printable comparison: runs, differing config keys, metrics."""
    names = [r.name for r in runs]
    header = ["run", *names] if len(set(names)) == len(names) else \
        ["run", *(f"{i + 1}:{n}" for i, n in enumerate(names))]
    lines = [f"runs: {', '.join(str(r.path) for r in runs)}", ""]
    keys = differing_keys(runs)
    if keys:
        lines.append(f"config keys that differ ({len(keys)}):")
        lines += _table(["key", *header[1:]],
                        [(k, [_fmt(r.flat.get(k)) if k in r.flat else MISSING for r in runs])
                         for k in keys])
    else:
        lines.append("config keys that differ: none (the configs are the same)")
    lines.append("")
    lines.append("metrics (held-out split from metrics.json; last/best epoch from history.csv):")
    lines += _table(["metric", *header[1:]], metric_rows(runs))
    if any(training_time(r) == NOT_RECORDED for r in runs):
        lines.append("training time: not recorded (history.csv has no epoch_seconds column and "
                     "train.log no timestamps)")
    return lines


def plot_compare(runs: Sequence[Run], path: str | Path) -> bool:
    """One figure: loss (left) and each run's monitored metric (right) per epoch, one line per
    run labelled by its folder name, stage boundaries as dotted lines. False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    monitors = sorted({r.monitor for r in runs})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        epochs = [int(row["epoch"]) for row in run.history]
        for ax, key in ((axes[0], "loss"), (axes[1], run.monitor)):
            points = [(e, v) for e, v in zip(epochs, _column(run, key)) if v is not None]
            if not points:
                continue
            label = run.name if len(monitors) == 1 or key == "loss" else f"{run.name} ({key})"
            ax.plot(*zip(*points), "-", marker="o", color=color, label=label)
        for e, (row, previous) in zip(epochs[1:], zip(run.history[1:], run.history)):
            if row.get("stage") != previous.get("stage"):
                for ax in axes:
                    ax.axvline(e - 0.5, color=color, linestyle=":", linewidth=0.8)
    axes[0].set_title("loss (training)")
    axes[1].set_title(f"monitored: {', '.join(monitors)}")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (dotted lines: stage boundaries)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path, durable=False) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True


def compare_runs(paths: Sequence[str | Path], out: str | Path) -> tuple[list[str], bool]:
    """Reads `paths` (at least 2 run folders), returns the printable lines and whether the plot
    was written to `out`."""
    runs = read_runs(paths)
    out = Path(out)
    if out.is_dir():
        raise KerasftError(expected("a PNG file path", "--out", str(out)))
    return compare_lines(runs), plot_compare(runs, out)
