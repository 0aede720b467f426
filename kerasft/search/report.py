"""The printed tables and the search plot of ``kerasft tune`` and ``kerasft cv``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from kerasft.io import atomic_path


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Left-aligned text columns, one line per row, headers and a rule first."""
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]
    return out


def plot_search(trials: Sequence[dict[str, Any]], metric: str, direction: str,
                path: str | os.PathLike) -> bool:
    """The metric of each trial (completed: dots, pruned: crosses at their last reported
    value) and the best so far; False without matplotlib (``pip install kerasft[plots]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    pruned = [t for t in trials if t["state"] == "PRUNED" and t.get("last_reported") is not None]
    if not done and not pruned:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    if done:
        ax.plot([t["trial"] for t in done], [t["value"] for t in done], "o", label="completed")
        best, xs, ys = None, [], []
        better = max if direction == "maximize" else min
        for t in done:
            best = t["value"] if best is None else better(best, t["value"])
            xs.append(t["trial"])
            ys.append(best)
        ax.step(xs, ys, where="post", label="best so far")
    if pruned:
        ax.plot([t["trial"] for t in pruned], [t["last_reported"] for t in pruned], "x",
                color="grey", label="pruned (last epoch reported)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"kerasft tune: {metric} ({direction})")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, durable=False) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True
