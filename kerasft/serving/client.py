"""What ``kerasft predict --server`` and ``kerasft serve-config`` do, on top of the clients
(:mod:`kerasft.serving.rest`, :mod:`kerasft.serving.grpc`) and
:mod:`kerasft.serving.models_config` (kept apart from the Click code so that it can be used and
tested alone).

No TensorFlow import at module level: a REST prediction needs only the standard library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.config import PAIR_INPUTS
from kerasft.errors import KerasftError, expected
from kerasft.export.loading import format_value, shown_input
from kerasft.serving.grpc import predict_grpc
from kerasft.serving.models_config import read_models_config
from kerasft.serving.requests import image_bytes_instances, pair_instances, text_instances
from kerasft.serving.rest import predict_rest

_LABEL_ARG = re.compile(r"^\s*([^=\s]+)\s*=\s*([0-9]+)\s*$")


def parse_versions(value: str | None) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``; raises a one-line error for anything but integers >= 0."""
    if value is None or not value.strip():
        return ()
    parts = [p.strip() for p in value.split(",")]
    if not all(p.isdigit() for p in parts):
        raise KerasftError(expected("comma-separated integer versions like 1,2", "--versions",
                                    value))
    return tuple(int(p) for p in parts)


def parse_labels(values: Iterable[str]) -> dict[str, int]:
    """``["stable=1", "canary=2"]`` -> ``{"stable": 1, "canary": 2}`` (one-line errors)."""
    labels: dict[str, int] = {}
    for value in values:
        match = _LABEL_ARG.match(value)
        if not match:
            raise KerasftError(expected("NAME=VERSION like stable=1", "--label", value))
        name, version = match.group(1), int(match.group(2))
        if name in labels and labels[name] != version:
            raise KerasftError(expected("each label once", "--label", value))
        labels[name] = version
    return labels


def _rows_from_rest(answer: dict[str, Any], count: int, where: str) -> list[dict[str, Any]]:
    rows = answer.get("predictions")
    if not isinstance(rows, list) or len(rows) != count:
        raise KerasftError(expected(f"a TF Serving answer with {count} predictions", "answer keys",
                                    sorted(answer), where))
    if rows and all(isinstance(row, (int, float, list)) for row in rows):
        # One output (a regression export's `value`): TF Serving's row format writes each row's
        # value bare, without the output's name.
        return [{"value": row} for row in rows]
    for row in rows:
        if not isinstance(row, dict) or not ({"probabilities", "labels"} <= set(row)
                                             or "value" in row):
            shown = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise KerasftError(expected("rows with probabilities and labels, or a value (a "
                                        "kerasft export)", "row", shown, where))
    return rows


def _rows_from_grpc(outputs: dict[str, np.ndarray], count: int,
                    where: str) -> list[dict[str, Any]]:
    if "value" in outputs:  # regression
        rows = [{"value": np.asarray(v).tolist()} for v in outputs["value"]]
        if len(rows) != count:
            raise KerasftError(expected(f"{count} predictions", "predictions", len(rows), where))
        return rows
    if not {"probabilities", "labels"} <= set(outputs):
        raise KerasftError(expected("outputs probabilities and labels (a kerasft export)",
                                    "outputs", sorted(outputs), where))
    rows = []
    for probs, label in zip(outputs["probabilities"], outputs["labels"]):
        rows.append({"probabilities": probs.tolist(),
                     "labels": label.decode("utf-8") if isinstance(label, bytes) else str(label)})
    if len(rows) != count:
        raise KerasftError(expected(f"{count} predictions", "predictions", len(rows), where))
    return rows


def predict_on_server(
    server: str,
    model: str,
    inputs: Sequence[Any],
    kind: str,
    *,
    version: int | None = None,
    label: str | None = None,
    use_grpc: bool = False,
    timeout: float = 10.0,
    retries: int = 2,
) -> list[dict[str, Any]]:
    """Asks TF Serving for texts or, `kind` ``pair``, ``(a, b)`` text pairs (``serving_default``;
    pairs as ``text_a`` / ``text_b``) or image files (``serving_bytes``, as
    base64 over REST, raw bytes over gRPC); returns one ``{"probabilities", "labels"}`` per input
    (``{"value"}`` for a regression export).
    """
    where = f"predict --server {server} --model {model}"
    if not inputs:
        raise KerasftError(expected("at least one input", "inputs", [], where))
    if kind == "image":
        signature = "serving_bytes"
        for path in inputs:
            if not os.path.isfile(path):
                raise KerasftError(expected("an image file", "--image", path, where))
    elif kind in ("text", "pair"):
        signature = "serving_default"
    else:
        raise KerasftError(expected("text, pair or image", "kind", kind, where))
    if use_grpc:
        if kind == "image":
            values: Any = np.array([Path(p).read_bytes() for p in inputs], dtype=object)
            request = {"image_bytes": values}
        elif kind == "pair":
            request = {name: np.array([p[i].encode("utf-8") for p in inputs], dtype=object)
                       for i, name in enumerate(PAIR_INPUTS)}
        else:
            request = {"text": np.array([s.encode("utf-8") for s in inputs], dtype=object)}
        outputs = predict_grpc(server, model, request, signature_name=signature,
                                       version=version, label=label, timeout=timeout)
        return _rows_from_grpc(outputs, len(inputs), where)
    instances = (image_bytes_instances(inputs) if kind == "image"
                 else pair_instances(inputs, PAIR_INPUTS) if kind == "pair"
                 else text_instances(inputs))
    answer = predict_rest(server, model, instances, signature_name=signature,
                                  version=version, label=label, timeout=timeout, retries=retries)
    return _rows_from_rest(answer, len(inputs), where)


def format_rows(inputs: Sequence[Any], rows: Sequence[dict[str, Any]], top: int = 3) -> list[str]:
    """``label<TAB>[top-k probabilities]<TAB>input`` per input, as ``kerasft predict`` prints
    for a local export. The server names the predicted class only; the others show as ``#id``."""
    lines = []
    for text, row in zip(inputs, rows):
        shown = shown_input(text)
        if "value" in row:  # regression: `value<TAB>input`, as for a local export
            lines.append(f"{format_value(row['value'])}\t{shown}")
            continue
        if "tags" in row:  # token classification, as for a local export
            from kerasft.export.loading import tagged_line

            lines.append(tagged_line(row["words"], row["tags"], row["entity_type"],
                                     row["entity_text"]))
            continue
        probs = np.asarray(row["probabilities"], dtype=float).reshape(-1)
        best_id = int(np.argmax(probs)) if probs.size else -1
        order = np.argsort(-probs)[: max(top, 1)]
        names = {best_id: str(row["labels"])}
        best = ", ".join(f"{names.get(int(i), f'#{int(i)}')} {probs[i]:.3f}" for i in order)
        lines.append(f"{row['labels']}\t[{best}]\t{shown}")
    return lines


def describe_models_config(path: str | os.PathLike) -> list[str]:
    """One line per model of a ``models.config``."""
    lines = []
    for m in read_models_config(path):
        policy = {"latest": f"latest {m.num_versions}",
                  "specific": "specific " + ",".join(map(str, m.versions)),
                  "all": "all"}.get(m.policy, m.policy)
        labels = ", ".join(f"{k}={v}" for k, v in sorted(m.labels.items()))
        lines.append(f"{m.name}: base_path {m.base_path}, versions: {policy}"
                     + (f", labels: {labels}" if labels else ""))
    return lines
