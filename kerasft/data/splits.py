"""Step 2 of a run, after reading: the label vocabulary, the splits and the data report.

Each reader (:mod:`kerasft.data.sources`, :mod:`kerasft.data.datasets`,
:mod:`kerasft.data.arrays`) turns a given part (train, validation, test) into a :class:`Part`;
:func:`finish` makes the :class:`DataSplits` from them:

1. **Vocabulary**: the sorted labels of the training part (integer-like labels sort as numbers, so
   ``"2" < "10"``). ``tfds`` keeps the dataset's own ``ClassLabel`` order, ``from_datasets`` and
   ``from_arrays(class_names=...)`` the order given, so class ids match the source's ids.
   Validation / test labels must occur in the training part; labels must not be empty, '.' or
   '..', or contain line breaks (they are lines of labels.txt; '/' is fine: kerasft never makes a
   path of a label).

2. **Split**: without a test file, ``data.test_split`` takes a stratified, seeded test split of the
   training part first; without a validation file, ``data.validation_split`` (0.1 when neither is
   given) takes the validation split from the rest. Both fractions are of the whole training part.
   Each class keeps at least one training example.

3. **Cap**: ``data.max_examples`` caps each split after splitting with a stratified, seeded
   sample (class proportions kept); the kept examples stay in their original order.

Regression (``head.task: regression``, or unset and ``targets.looks_like_regression``): float
targets, one per example (``class_names`` ``["value"]``) or one per label column (``class_names``
the columns); nothing is stratified (seeded random samples) and the report gives each split's
target mean / std / min / max instead of class counts.

Integer labels are class ids 0..K-1 (:func:`integer_class_names`, :func:`check_integer_labels`).
:func:`fingerprint` identifies a run's data; :func:`log_report` prints what was read, skipped and
split.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from kerasft.data.targets import REGRESSION_NAMES, looks_like_regression, target_stats, targets
from kerasft.errors import DataError, expected

DEFAULT_VALIDATION_SPLIT = 0.1
SHOWN = 5  # row numbers / file names listed per reason in the report
_INT_LABEL = re.compile(r"-?\d+")


@dataclass
class Split:
    """One split: unbatched ``(x, y)`` elements and their labels in the same order.

    ``x`` is a scalar ``tf.string`` (text) or a ``uint8`` ``[h, w, 3]`` image of any size; ``y`` is
    an ``int32`` class id, a ``float32`` multi-hot ``[num_classes]`` vector when multi-label, or a
    ``float32`` target for regression.
    """

    dataset: tf.data.Dataset
    labels: np.ndarray
    size: int
    streamed: bool = False  # read from disk each pass (data.stream): no cache, no reordering


@dataclass
class DataSplits:
    """What the readers (``load_data``, ``from_arrays``, ``from_datasets``) return: the splits,
    the label vocabulary and a report."""

    task: str
    class_names: list[str]
    multi_label: bool
    train: Split
    validation: Split | None
    test: Split | None
    report: dict = field(default_factory=dict)
    regression: bool = False


@dataclass
class Part:
    """One file, folder or tfds split after reading.

    Exactly one of `raw` (label strings, or tuples of them when multi-label) and `ids` (label ids
    or multi-hot rows, for sources whose vocabulary is fixed) is set. `build(indices, y)` returns
    the ``(x, y)`` dataset of the examples at `indices` (ascending), whose labels are `y`.
    """

    name: str
    where: str
    build: Callable[[np.ndarray, np.ndarray], tf.data.Dataset]
    raw: list[Any] | None = None
    ids: np.ndarray | None = None
    texts: list[str] | None = None
    lines: list[int] | None = None
    hashes: np.ndarray | None = None  # streamed CSV: text hashes instead of `texts`
    streamed: bool = False


def integer_values(y: Any) -> np.ndarray | None:
    """The labels as int64 when `y` is a 1-D array of whole numbers (NaN: a missing label)."""
    try:
        arr = np.asarray(y)
    except ValueError:  # ragged
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iuf" or arr.dtype == bool:
        return None
    if arr.dtype.kind == "f":
        arr = arr[~np.isnan(arr)]
        if not np.all(arr == np.round(arr)):
            return None
    return arr.astype(np.int64)


def integer_class_names(y: Any) -> list[str] | None:
    """Class names for integer labels without `class_names`: ``"0".."K-1"``, or None when `y`
    is not integers.

    Integer labels are class ids 0..K-1 (Keras's ``SparseCategoricalCrossentropy`` convention),
    in fit, evaluate, predict and the export alike. Any other set of integers (1..3, or ids with
    a gap) is refused rather than renumbered: renumbering would make ``evaluate(x, y)`` with the
    same integers score against other classes.
    """
    values = integer_values(y)
    if values is None or not len(values):
        return None
    present = np.unique(values)
    k = int(present.max()) + 1
    if present.min() < 0 or len(present) != k:
        shown = present.tolist()[:10]
        missing = sorted(set(range(max(k, 0))) - set(present.tolist()))[:5]
        raise DataError(expected(
            "integer labels that are class ids 0..K-1, every id present (Keras's convention; "
            "pass string labels, or FineTuner.build(class_names) first, to use other values)",
            "labels", shown, where="from_arrays train")
            + (f" (missing ids: {missing})" if missing and present.min() >= 0 else ""))
    return [str(i) for i in range(k)]


def check_integer_labels(y: Any, class_names: Sequence[str] | None, where: str) -> None:
    """Refuses integer labels for a model whose class names are other integers.

    Integer labels are class ids; a model trained on the string labels "1", "2", "3" has ids 0, 1,
    2, so the integer 1 would silently mean class "2". Such labels must be given as strings.
    """
    if class_names is not None and integer_values(y) is not None:
        check_integer_names(class_names, where)


def check_integer_names(class_names: Sequence[str], where: str) -> None:
    """Refuses integer class names other than "0".."K-1" for integer labels (see
    :func:`check_integer_labels`)."""
    names = [str(c) for c in class_names]
    if all(_INT_LABEL.fullmatch(n) for n in names) and names != [str(i)
                                                               for i in range(len(names))]:
        raise DataError(expected(
            "labels as strings (y.astype(str)): integer labels are class ids 0.."
            f"{len(names) - 1}, and this model's class names are other integers", "class_names",
            names[:10], where=where))


def fingerprint(splits: DataSplits) -> dict[str, Any]:
    """What identifies a run's data: the labels and, per split, its size and a hash of its labels
    in order (a split re-drawn with another seed, fraction or file gives another hash)."""
    import hashlib

    out: dict[str, Any] = {"class_names": list(splits.class_names), "splits": {}}
    for name in ("train", "validation", "test"):
        split = getattr(splits, name)
        if split is not None:
            labels = np.ascontiguousarray(split.labels)
            out["splits"][name] = {"size": int(split.size),
                                   "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest()}
    return out


def log_report(splits: DataSplits, log: Callable[[str], None] = print) -> None:
    """Writes the data report as a few human-readable lines."""
    r = splits.report
    if splits.regression:
        log(f"data: source={r.get('source')} task={splits.task} regression (float targets: "
            f"{', '.join(splits.class_names)})")
    else:
        log(f"data: source={r.get('source')} task={splits.task} "
            f"classes={len(splits.class_names)}{' (multi-label)' if splits.multi_label else ''}")
    unit = {"csv": "rows", "jsonl": "lines", "parquet": "rows", "text_folder": "text files",
            "image_folder": "image files"}.get(r.get("source"), "examples")
    seen = {"parquet": "rows", "text_folder": "files"}.get(r.get("source"), "lines")
    for name, where in r.get("files", {}).items():
        line = f"data: {name}: {where}: {r.get('rows_read', {}).get(name, '?')} {unit} read"
        skipped = r.get("skipped", {}).get(name, {})
        if skipped:
            total = sum(s["count"] for s in skipped.values())
            reasons = "; ".join(
                f"{reason}: {s['count']} (e.g. {', '.join(str(v) for v in s['examples'])})"
                for reason, s in skipped.items()
            )
            line += f", {total} skipped ({reasons})"
        dup = r.get("duplicates", {}).get(name)
        if dup and dup["count"]:
            line += (f", {dup['count']} duplicate texts kept ({dup['conflicting']} with "
                     f"different labels; e.g. {seen} {', '.join(map(str, dup['examples']))})")
        ignored = r.get("ignored_files", {}).get(name)
        if ignored:
            kind = "non-.txt" if r.get("source") == "text_folder" else "non-image"
            line += f", {ignored['count']} {kind} files ignored"
        log(line)
    for name in r.get("streamed", []):
        log(f"data: {name}: streamed from disk (texts read by byte offset each pass)")
    for name, empty in r.get("empty_classes", {}).items():
        if empty:
            log(f"data: {name}: class folders without readable images: {', '.join(empty)}")
    for name, how in r.get("split", {}).items():
        log(f"data: {name} split: {how}")
    for name, count in r.get("overlap", {}).items():
        if count:
            log(f"data: {name}: {count} texts also appear in train")
    if r.get("max_examples"):
        log(f"data: max_examples={r['max_examples']} (stratified, seeded sample of each split)")
    sizes = r.get("sizes", {})
    log("data: sizes: " + ", ".join(f"{n} {s}" for n, s in sizes.items()))
    for name, stats in r.get("targets", {}).items():
        if stats:
            log(f"data: {name} targets: " + ", ".join(f"{k} " + "/".join(  # a/b: per column
                f"{x:.4g}" for x in np.atleast_1d(v)) for k, v in stats.items()))
    counts = r.get("class_counts", {})
    weights = (r.get("class_weight") or {}).get("weights")
    if counts:
        names = list(sizes)
        width = max(10, *(len(c) for c in splits.class_names[:50]))
        log("data: " + "class".ljust(width) + "".join(n.rjust(12) for n in names)
            + ("weight".rjust(12) if weights else ""))
        for c in splits.class_names[:50]:
            log("data: " + c.ljust(width)
                + "".join(str(counts.get(n, {}).get(c, 0)).rjust(12) for n in names)
                + (f"{weights[c]:.4g}".rjust(12) if weights else ""))
        if len(splits.class_names) > 50:
            log(f"data: ... and {len(splits.class_names) - 50} more classes")


# ---------------------------------------------------------------------------------------------
# Vocabulary, splitting and the report.


def finish(
    *,
    task: str | None,
    parts: dict[str, Part],
    class_names: list[str] | None,
    multi_label: bool,
    seed: int,
    validation_split: float | None,
    test_split: float | None,
    max_examples: int | None,
    report: dict[str, Any],
    regression: bool | None = False,
) -> DataSplits:
    """The read parts (keyed train / validation / test) -> the vocabulary, the split, the cap
    and the report (steps 1-3 of the module docstring). `regression` None: decided from the
    training labels (:func:`kerasft.data.targets.looks_like_regression`)."""
    train = parts["train"]
    if regression is None:
        regression = not multi_label and looks_like_regression(train.raw or [])
    if regression:  # the targets' names: given for several label columns, else "value"
        class_names = list(class_names) if class_names else list(REGRESSION_NAMES)
        ids = {name: targets(part, class_names) for name, part in parts.items()}
    else:
        if class_names is None:
            class_names = _vocabulary(train.raw or [], multi_label)
        _check_class_names(class_names, train.where)
        ids = {name: _label_ids(part, class_names, multi_label) for name, part in parts.items()}
    n = len(ids["train"])
    if n == 0:
        raise DataError(expected("at least one labelled example", "examples", 0,
                                 where=train.where))
    if not regression:
        present = _present_classes(ids["train"], class_names, multi_label)
        if len(present) < 2:
            raise DataError(expected("at least 2 classes in the training data", "classes",
                                     present, where=train.where))

    def strata(labels: np.ndarray) -> np.ndarray:
        # Float targets have no classes to stratify by: one stratum, a seeded random sample.
        return np.zeros(len(labels), np.int64) if regression else _strata(labels, multi_label)

    keys = strata(ids["train"])
    selection: dict[str, tuple[str, np.ndarray]] = {}
    rest = np.arange(n)
    split_info: dict[str, str] = {}
    for name, fraction, step in (("test", test_split, 1), ("validation", validation_split, 2)):
        if name in parts:
            selection[name] = (name, np.arange(len(ids[name])))
            split_info[name] = f"from {parts[name].where}"
        elif fraction:
            count = max(1, int(round(fraction * n)))
            rng = np.random.default_rng([seed, step])
            take = _stratified_pick(keys[rest], count, rng, keep_one=True)
            if take.any():
                selection[name] = ("train", rest[take])
                rest = rest[~take]
                split_info[name] = (f"{fraction:.0%} of {train.where} "
                                    f"({'random' if regression else 'stratified'}, seed {seed})")
            else:
                split_info[name] = f"none (too few examples for {fraction:.0%} of {train.where})"
    selection["train"] = ("train", rest)

    if max_examples:
        report["max_examples"] = max_examples
        for step, (name, (source, idx)) in enumerate(sorted(selection.items())):
            if len(idx) > max_examples:
                source_keys = keys if source == "train" else strata(ids[source])
                rng = np.random.default_rng([seed, 10 + step])
                keep = _stratified_pick(source_keys[idx], max_examples, rng, keep_one=False)
                selection[name] = (source, idx[keep])

    splits: dict[str, Split] = {}
    for name in ("train", "validation", "test"):
        if name not in selection:
            continue
        source, idx = selection[name]
        y = ids[source][idx]
        splits[name] = Split(dataset=parts[source].build(idx, y), labels=y, size=len(idx),
                             streamed=parts[source].streamed)

    report["task"] = task
    report["split"] = split_info
    report["sizes"] = {name: s.size for name, s in splits.items()}
    if regression:
        report["targets"] = {name: target_stats(s.labels) for name, s in splits.items()}
    else:
        report["class_counts"] = {
            name: _class_counts(s.labels, class_names, multi_label) for name, s in splits.items()
        }
    train_source, train_idx = selection["train"]
    if parts[train_source].hashes is not None:  # streamed: every part has hashes
        train_hashes = parts[train_source].hashes[train_idx]
        report["overlap"] = {name: int(np.isin(parts[source].hashes[idx], train_hashes).sum())
                             for name, (source, idx) in selection.items() if name != "train"}
    elif train.texts is not None:
        train_texts = {parts[train_source].texts[i] for i in train_idx}
        report["overlap"] = {
            name: sum(parts[source].texts[i] in train_texts for i in idx)
            for name, (source, idx) in selection.items()
            if name != "train" and parts[source].texts is not None
        }
    return DataSplits(
        task=task or "text",
        class_names=list(class_names),
        multi_label=multi_label,
        train=splits["train"],
        validation=splits.get("validation"),
        test=splits.get("test"),
        report=report,
        regression=bool(regression),
    )


def sort_labels(labels: set[str]) -> list[str]:
    if labels and all(_INT_LABEL.fullmatch(x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _vocabulary(raw: list[Any], multi_label: bool) -> list[str]:
    if multi_label:
        return sort_labels({label for labels in raw for label in labels})
    return sort_labels(set(raw))


def _check_class_names(class_names: list[str], where: str) -> None:
    if len(set(class_names)) != len(class_names):
        dup = [c for c, k in Counter(class_names).items() if k > 1]
        raise DataError(expected("unique class names", "duplicates", dup, where=where))
    for name in class_names:
        # Labels become lines of labels.txt and strings in exports, never paths: 'Sci/Tech' is
        # fine. What would escape a folder if a label ever named one ('.', '..') is refused.
        if not name or name in (".", "..") or "\n" in name or "\r" in name:
            raise DataError(expected("labels that are not empty, '.' or '..' and have no line "
                                     "breaks", "label", name, where=where))


def known_names(class_names: list[str]) -> str:
    """The first class names, quoted, for error messages."""
    shown = ", ".join(repr(c) for c in class_names[:20])
    return shown + (f", ... ({len(class_names)} in all)" if len(class_names) > 20 else "")


def _label_ids(part: Part, class_names: list[str], multi_label: bool) -> np.ndarray:
    if part.ids is not None:
        return part.ids
    index = {c: i for i, c in enumerate(class_names)}
    raw = part.raw or []

    def lookup(label: str, row: int) -> int:
        try:
            return index[label]
        except KeyError:
            where = part.where
            if part.lines is not None:
                where = f"{where}:{part.lines[row]}"
            what = ("labels that occur in the training data" if part.name != "train"
                    else "labels from class_names")
            raise DataError(expected(f"{what} (known: {known_names(class_names)})",
                                     f"{part.name} label", label, where=where)) from None

    if multi_label:
        out = np.zeros((len(raw), len(class_names)), np.float32)
        for row, labels in enumerate(raw):
            for label in labels:
                out[row, lookup(label, row)] = 1.0
        return out
    return np.array([lookup(label, row) for row, label in enumerate(raw)], np.int32)


def _present_classes(ids: np.ndarray, class_names: list[str], multi_label: bool) -> list[str]:
    if multi_label:
        return [class_names[i] for i in np.flatnonzero(ids.sum(axis=0) > 0)]
    return [class_names[i] for i in np.unique(ids)]


def _class_counts(ids: np.ndarray, class_names: list[str], multi_label: bool) -> dict[str, int]:
    if multi_label:
        sums = ids.sum(axis=0) if len(ids) else np.zeros(len(class_names))
        return {c: int(s) for c, s in zip(class_names, sums, strict=True)}
    counts = np.bincount(ids, minlength=len(class_names)) if len(ids) else [0] * len(class_names)
    return {c: int(k) for c, k in zip(class_names, counts, strict=True)}


def _strata(ids: np.ndarray, multi_label: bool) -> np.ndarray:
    """Stratification keys: the class id; for multi-label, the example's rarest class.

    (Sets of classes are mostly unique, so they would leave nothing to stratify; the rarest class
    keeps rare labels spread over the splits.) Examples without any label get -1.
    """
    if not multi_label:
        return ids
    if len(ids) == 0:
        return np.zeros(0, np.int64)
    rarity = np.where(ids > 0, ids.sum(axis=0)[np.newaxis, :], np.inf)
    return np.where(ids.max(axis=1) > 0, np.argmin(rarity, axis=1), -1)


def _stratified_pick(keys: np.ndarray, count: int, rng: np.random.Generator,
                     keep_one: bool) -> np.ndarray:
    """A boolean mask choosing `count` positions with the class proportions of `keys`.

    Each stratum gets ``floor(count * share)``; the remainder goes to the strata with the largest
    fractional parts (ties broken at random). With `keep_one`, every stratum keeps at least one
    unchosen member (so a class never leaves the training data entirely).
    """
    n = len(keys)
    mask = np.zeros(n, bool)
    count = min(count, n)
    if count <= 0:
        return mask
    _, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    cap = np.maximum(sizes - 1, 0) if keep_one else sizes
    exact = sizes * count / n
    alloc = np.minimum(np.floor(exact).astype(int), cap)
    short = count - int(alloc.sum())
    while short > 0 and (alloc < cap).any():
        order = np.lexsort((rng.random(len(sizes)), -(exact - alloc)))
        for g in order:
            if short == 0:
                break
            if alloc[g] < cap[g]:
                alloc[g] += 1
                short -= 1
    members = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for g, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        if alloc[g]:
            mask[rng.choice(members[start:start + size], alloc[g], replace=False)] = True
    return mask


def skip(skipped: dict[str, dict[str, Any]], reason: str, example: Any) -> None:
    """Counts a skipped row under `reason` in a report's `skipped`, keeping a few examples."""
    entry = skipped.setdefault(reason, {"count": 0, "examples": []})
    entry["count"] += 1
    if len(entry["examples"]) < SHOWN:
        entry["examples"].append(example)


def duplicates(texts: list[str], labels: list[Any], lines: list[int]) -> dict[str, Any]:
    """The report's duplicate texts: how many repeat an earlier text, how many texts have
    different labels, and the first lines (or indices) of repeats."""
    seen: dict[str, set] = {}
    count, examples = 0, []
    for text, label, line in zip(texts, labels, lines, strict=True):
        if text in seen:
            count += 1
            if len(examples) < SHOWN:
                examples.append(line)
            seen[text].add(label)
        else:
            seen[text] = {label}
    conflicting = sum(len(v) > 1 for v in seen.values())
    return {"count": count, "conflicting": conflicting, "examples": examples}
