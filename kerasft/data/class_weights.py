"""``data.class_weight``: the class weights Keras's ``fit`` gets, and the line that logs them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasft.data.splits import known_names
from kerasft.errors import DataError, expected


def class_weights(setting: str | dict[Any, Any] | None, class_names: Sequence[str],
                  train_labels: np.ndarray) -> dict[int, float] | None:
    """``data.class_weight`` -> Keras's ``class_weight`` (class id -> weight), or None.

    ``balanced`` is scikit-learn's ``n_samples / (n_classes * count)`` over the training split's
    labels (classes without training examples, which never weigh a loss, get 1.0 and are not
    counted in ``n_classes``). A mapping names labels (integer keys are read as the labels "0",
    "1", ...); labels it leaves out weigh 1.0, as in Keras.
    """
    if setting is None:
        return None
    if setting == "balanced":
        counts = np.bincount(np.asarray(train_labels, np.int64), minlength=len(class_names))
        present = int((counts > 0).sum())
        total = int(counts.sum())
        return {i: (total / (present * int(k)) if k else 1.0) for i, k in enumerate(counts)}
    index = {name: i for i, name in enumerate(class_names)}
    weights = dict.fromkeys(range(len(class_names)), 1.0)
    for label, weight in setting.items():
        if str(label) not in index:
            import difflib

            close = difflib.get_close_matches(str(label), list(index), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(expected(f"labels of the training data (known: "
                                     f"{known_names(list(class_names))}{hint})",
                                     "data.class_weight label", str(label)))
        weights[index[str(label)]] = float(weight)
    return weights


def class_weight_line(setting: Any, weights: dict[int, float],
                      class_names: Sequence[str]) -> str:
    """The log line saying which class weights fit uses."""
    shown = ", ".join(f"{class_names[i]} {w:.4g}" for i, w in list(weights.items())[:20])
    more = f", ... ({len(weights)} classes)" if len(weights) > 20 else ""
    how = "balanced: n / (classes * count)" if setting == "balanced" else "given"
    return f"data: class_weight ({how}; Keras class_weight in fit): {shown}{more}"
