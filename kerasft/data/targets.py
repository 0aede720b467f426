"""Regression targets: float labels read as text, one per example or one per label column
(``head.task: regression``, ``data.label_column: [a, b]``).

:func:`looks_like_regression` is the rule that picks regression when ``head.task`` is unset;
:mod:`kerasft.data.splits` turns a part's labels into float32 targets with :func:`targets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasft.errors import DataError, expected

REGRESSION_NAMES = ["value"]


def _finite_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def looks_like_regression(raw: Sequence[Any]) -> bool:
    """Whether labels read as text are regression targets when ``head.task`` is unset: every
    label parses as a finite float and at least one is not a whole number. Whole numbers alone
    ("1".."5" stars) stay class names: a rating scale is as often a classification task, and
    ``head.task: regression`` says otherwise."""
    if not raw or not all(isinstance(v, str) for v in raw):
        return False
    numbers = [_finite_float(v) for v in raw]
    return all(n is not None for n in numbers) and any(not float(n).is_integer()
                                                         for n in numbers)


def targets(part: Any, names: Sequence[str] = REGRESSION_NAMES) -> np.ndarray:
    """A :class:`kerasft.data.splits.Part`'s labels as float32 regression targets: ``[n]`` for
    one target, ``[n, k]`` for the k label columns `names` (each row's labels a tuple of k
    values); a value that is not a finite number is an error naming its line and column."""
    raw = part.raw or []
    k = len(names)
    out = np.empty((len(raw), k) if k > 1 else len(raw), np.float32)
    for row, label in enumerate(raw):
        values = label if k > 1 else (label,)
        for column, value in enumerate(values):
            number = _finite_float(value)
            if number is None:
                where = part.where if part.lines is None else f"{part.where}:{part.lines[row]}"
                key = f"{part.name} label" if k == 1 else f"{part.name} {names[column]!r}"
                raise DataError(expected("a number (head.task is regression)", key, value,
                                         where=where))
            if k > 1:
                out[row, column] = number
            else:
                out[row] = number
    return out


def target_stats(y: np.ndarray) -> dict[str, Any]:
    """Mean, std, min and max of targets ``[n]`` (numbers) or ``[n, k]`` (a list per stat)."""
    if not len(y):
        return {}
    if y.ndim == 2:
        return {"mean": y.mean(0).tolist(), "std": y.std(0).tolist(), "min": y.min(0).tolist(),
                "max": y.max(0).tolist()}
    return {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()),
            "max": float(y.max())}
