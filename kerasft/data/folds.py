"""Cross-validation folds (``kerasft cv``) over the splits :mod:`kerasft.data.splits` made.

The training and validation splits are pooled and cut into K folds with the same stratified,
seeded sampling as the splits themselves (``_strata``, ``_stratified_pick``); the test split stays
held out and is every fold's test split.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerasft.data.splits import DataSplits, Split, _class_counts, _strata, _stratified_pick
from kerasft.data.targets import target_stats
from kerasft.errors import DataError, expected


def fold_ids(labels: np.ndarray, folds: int, seed: int, multi_label: bool = False,
             regression: bool = False) -> np.ndarray:
    """The fold (0..folds-1) of each example: stratified (regression: seeded random) and seeded;
    fold j takes ``1 / (folds - j)`` of what the earlier folds left, so fold sizes differ by at
    most about one per class."""
    labels = np.asarray(labels)
    n = len(labels)
    if not 2 <= folds <= n:
        raise DataError(expected(f"between 2 and {n} folds (the examples of train + "
                                 "validation)", "folds", folds))
    keys = np.zeros(n, np.int64) if regression else _strata(labels, multi_label)
    out = np.full(n, folds - 1, np.int64)
    rest = np.arange(n)
    for j in range(folds - 1):
        rng = np.random.default_rng([seed, 20 + j])
        take = _stratified_pick(keys[rest], round(len(rest) / (folds - j)), rng,
                                keep_one=False)
        out[rest[take]] = j
        rest = rest[~take]
    return out


def _subset(dataset: tf.data.Dataset, mask: np.ndarray) -> tf.data.Dataset:
    """The elements of `dataset` where `mask` is true, in order (any source: files are read
    lazily, as in the split they came from)."""
    keep = tf.constant(mask)
    return dataset.enumerate().filter(lambda i, _: tf.gather(keep, i)).map(lambda _, e: e)


def cross_validation_splits(data: DataSplits, folds: int, seed: int) -> list[DataSplits]:
    """One :class:`DataSplits` per fold: the fold's examples of train + validation (pooled) are
    its validation split, the rest its training split; the test split is every fold's."""
    parts = [data.train] + ([data.validation] if data.validation is not None else [])
    labels = np.concatenate([p.labels for p in parts])
    pooled = parts[0].dataset
    for part in parts[1:]:
        pooled = pooled.concatenate(part.dataset)
    assignment = fold_ids(labels, folds, seed, data.multi_label, data.regression)
    how = "random" if data.regression else "stratified"
    out = []
    for j in range(folds):
        val, train = assignment == j, assignment != j
        splits = {"train": Split(_subset(pooled, train), labels[train], int(train.sum())),
                  "validation": Split(_subset(pooled, val), labels[val], int(val.sum()))}
        report = dict(data.report)
        report["split"] = {
            **({"test": data.report["split"]["test"]} if "test" in data.report.get("split", {})
               else {}),
            "validation": f"fold {j + 1} of {folds} of train + validation ({len(labels)} "
                          f"examples, {how}, seed {seed}); train: the other folds"}
        report["sizes"] = {**{k: v.size for k, v in splits.items()},
                           **({"test": data.test.size} if data.test is not None else {})}
        if data.regression:
            report["targets"] = {**{k: target_stats(v.labels) for k, v in splits.items()},
                                 **({"test": target_stats(data.test.labels)}
                                    if data.test is not None else {})}
        else:
            report["class_counts"] = {
                **{k: _class_counts(v.labels, data.class_names, data.multi_label)
                   for k, v in splits.items()},
                **({"test": data.report.get("class_counts", {}).get("test", {})}
                   if data.test is not None else {})}
        report.pop("overlap", None)
        out.append(DataSplits(task=data.task, class_names=list(data.class_names),
                              multi_label=data.multi_label, train=splits["train"],
                              validation=splits["validation"], test=data.test, report=report,
                              regression=data.regression))
    return out
