"""Entity-level scores of tagged words, as seqeval computes them (its default, non-strict mode).

:func:`chunks` finds entities in IOB2 (also IOB1 / IOBES) tag sequences with seqeval's rules: a
chunk starts at ``B-X`` / ``S-X``, at an ``I-X`` / ``E-X`` after ``O`` or after another type,
and ends before ``B``, ``S``, ``O`` or a change of type. :func:`entity_report` scores predicted
chunks against the true ones (a chunk counts when type, first and last word all match): per type
precision / recall / F1 / support (true chunks), micro, macro and weighted averages, plus token
accuracy over all words. Written here (about 40 lines) instead of adding seqeval as a dependency;
tests compare it with seqeval's README example and with seqeval itself where installed. The
export computes the same chunks in its graph (kerasft/export/tokens.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Chunk = tuple[str, int, int]  # (type, first word, last word), inclusive as seqeval


def _split(tag: str) -> tuple[str, str]:
    """(prefix, type) as seqeval: ``B-PER`` -> (B, PER); ``O`` -> (O, _)."""
    return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev in ("E", "S") or (prev in ("B", "I") and tag in ("B", "S", "O"))
            or (prev not in ("O", ".") and prev_type != type_))


def _starts(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S") or (prev in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def chunks(tags: Sequence[str]) -> list[Chunk]:
    """The entities of one sentence's tags: ``[(type, first, last), ...]``."""
    found: list[Chunk] = []
    prev, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, type_ = _split(tag)
        if _ends(prev, prefix, prev_type, type_):
            found.append((prev_type, begin, i - 1))
        if _starts(prev, prefix, prev_type, type_):
            begin = i
        prev, prev_type = prefix, type_
    return found


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_report(true_tags: Sequence[Sequence[str]],
                  pred_tags: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Per type and averaged entity scores plus token accuracy; lists of tag lists, one per
    sentence, of equal lengths."""
    true_set: set[tuple[int, Chunk]] = set()
    pred_set: set[tuple[int, Chunk]] = set()
    correct = total = 0
    for i, (t, p) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(t) != len(p):
            raise ValueError(f"entity_report: sentence {i} has {len(t)} true and {len(p)} "
                             "predicted tags")
        true_set.update((i, c) for c in chunks(t))
        pred_set.update((i, c) for c in chunks(p))
        correct += sum(a == b for a, b in zip(t, p))
        total += len(t)
    types = sorted({c[0] for _, c in true_set | pred_set})
    per_type = {}
    for name in types:
        t = {c for c in true_set if c[1][0] == name}
        p = {c for c in pred_set if c[1][0] == name}
        precision, recall, f1 = _prf(len(t & p), len(p), len(t))
        per_type[name] = {"precision": precision, "recall": recall, "f1": f1,
                          "support": len(t)}
    micro = _prf(len(true_set & pred_set), len(pred_set), len(true_set))
    count = max(len(types), 1)
    support = max(len(true_set), 1)

    def average(key: str, weighted: bool) -> float:
        if weighted:
            return sum(r[key] * r["support"] for r in per_type.values()) / support
        return sum(r[key] for r in per_type.values()) / count

    return {
        "task": "token_classification",
        "examples": len(true_tags),
        "words": total,
        "token_accuracy": correct / total if total else 0.0,
        "micro_precision": micro[0], "micro_recall": micro[1], "micro_f1": micro[2],
        "macro_precision": average("precision", False), "macro_recall": average("recall", False),
        "macro_f1": average("f1", False),
        "weighted_f1": average("f1", True),
        "entities": len(true_set), "predicted_entities": len(pred_set),
        "per_type": per_type,
    }


def score_rows(label: str, rows: dict[str, dict[str, Any]],
               title: str = "") -> tuple[list[str], int]:
    """The head of a precision / recall / F1 / support table (`title`, the header naming the
    `label` column, a row per entry of `rows` in order) and its first column's width, shared
    by the classification and the entity reports."""
    width = max([len(n) for n in rows] + [12])
    lines = [title] if title else []
    lines.append(f"{label:<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>8}")
    for name, r in rows.items():
        lines.append(f"{name:<{width}}  {r['precision']:>9.4f}  {r['recall']:>9.4f}  "
                     f"{r['f1']:>9.4f}  {r['support']:>8d}")
    return lines, width


def format_entity_report(report: dict[str, Any], title: str = "") -> str:
    """seqeval's table: one row per entity type, then micro / macro / weighted averages."""
    lines, width = score_rows("entity", report["per_type"], title)
    n = report["entities"]
    lines.append("")
    lines.append(f"{'micro avg':<{width}}  {report['micro_precision']:>9.4f}  "
                 f"{report['micro_recall']:>9.4f}  {report['micro_f1']:>9.4f}  {n:>8d}")
    lines.append(f"{'macro avg':<{width}}  {report['macro_precision']:>9.4f}  "
                 f"{report['macro_recall']:>9.4f}  {report['macro_f1']:>9.4f}  {n:>8d}")
    lines.append(f"{'weighted avg':<{width}}  {'':>9}  {'':>9}  {report['weighted_f1']:>9.4f}  "
                 f"{n:>8d}")
    lines.append(f"{'token accuracy':<{width}}  {'':>9}  {'':>9}  "
                 f"{report['token_accuracy']:>9.4f}  {report['words']:>8d}")
    return "\n".join(lines)
