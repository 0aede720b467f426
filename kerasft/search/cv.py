"""``kerasft cv CONFIG --folds K``: K-fold cross-validation, one ordinary run per fold.

The config's training and validation splits (as ``kerasft train`` reads and splits them) are
pooled and cut into K stratified, seeded folds (kerasft.data.folds); fold j trains on the other
folds and validates on fold j, with :meth:`kerasft.api.FineTuner.fit` as ``kerasft train`` does
(no export). The test split stays held out: every fold's model is scored on it. Run folders:
``<cv dir>/<name>-fold<j>``; ``<cv dir>/cv_summary.json`` holds each fold's metrics (``val_*``:
its validation fold, ``test_*``: the test split) and their mean and standard deviation
(population, ddof 0, as ``numpy.std``).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.config import TUNE_REPORT_METRICS, Config, load_config, refuse_token_task
from kerasft.errors import ConfigError, expected
from kerasft.io import atomic_write
from kerasft.search.report import table

Log = Callable[[str], None]
SUMMARY_FILE = "cv_summary.json"


def scalar_metrics(report: dict[str, Any] | None, prefix: str) -> dict[str, float]:
    """The report's scalar metrics (accuracy, macro_f1, ..., mae, r2, ...) as ``<prefix>_<m>``."""
    if not report:
        return {}
    return {f"{prefix}_{m}": float(report[m]) for m in TUNE_REPORT_METRICS
            if report.get(m) is not None}


def summarize(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """``mean`` and ``std`` of every metric over the folds that have it."""
    names = list(dict.fromkeys(k for f in folds for k in f["metrics"]))
    mean, std = {}, {}
    for name in names:
        values = np.array([f["metrics"][name] for f in folds if name in f["metrics"]])
        mean[name], std[name] = float(values.mean()), float(values.std())
    return {"mean": mean, "std": std}


def run_cv(config: str | os.PathLike | dict[str, Any] | Config, overrides: Sequence[str] = (),
           folds: int = 5, directory: str | os.PathLike | None = None,
           log: Log = print) -> dict[str, Any]:
    """Trains one run per fold; returns ``cv_summary.json``'s content (see the module doc)."""
    import keras

    from kerasft.api import FineTuner
    from kerasft.data.folds import cross_validation_splits
    from kerasft.data.splits import log_report
    from kerasft.validate import check_data_source

    cfg = load_config(config, overrides)
    refuse_token_task(cfg)
    if folds < 2:
        raise ConfigError(expected("at least 2 folds", "--folds", folds))
    check_data_source(cfg)
    reader = FineTuner(cfg, log=log)
    data = reader.load_data()  # resolves head.task into cfg
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(directory) if directory else Path(cfg.output_dir) / f"{cfg.name}-cv-{stamp}"
    if (folder / SUMMARY_FILE).exists():
        raise ConfigError(expected("a new cross-validation folder", "--dir", str(folder))
                          + f" ({SUMMARY_FILE} exists)")
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for j, fold in enumerate(cross_validation_splits(data, folds, cfg.seed)):
        log(f"cv: fold {j + 1}/{folds}")
        log_report(fold, log)
        ft = FineTuner(copy.deepcopy(cfg), log=log)
        ft.data = fold
        summary = ft.fit(output_dir=folder, run_id=f"fold{j + 1}")
        held_out = summary.get("metrics") or {}
        val = held_out if held_out.get("split") == "validation" else \
            ft.evaluate(split="validation")
        metrics = scalar_metrics(val, "val")
        if fold.test is not None:
            metrics.update(scalar_metrics(held_out, "test"))
        results.append({"fold": j + 1, "run_dir": summary["run_dir"],
                        "sizes": {k: v for k, v in fold.report["sizes"].items()},
                        "metrics": metrics})
        del ft
        keras.backend.clear_session()
    out = {"folds": results, **summarize(results), "config": cfg.name, "seed": cfg.seed,
           "k": folds}
    atomic_write(folder / SUMMARY_FILE, json.dumps(out, indent=1) + "\n")
    rows = [[name, *(f["metrics"].get(name) for f in results), out["mean"][name],
             out["std"][name]] for name in out["mean"]]
    for line in table(["metric", *(f"fold {f['fold']}" for f in results), "mean", "std"], rows):
        log(line)
    log(f"cv: {folder / SUMMARY_FILE}")
    return out
