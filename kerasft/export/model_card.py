"""The model card: ``<version>/assets.extra/README.md`` in every export made by a FineTuner.

An operator reads it to serve the model without reading kerasft's code: task and labels, the
backbone and its preset, the data sizes, the training stages, the metrics, the signatures (read
back from the written ``saved_model.pb``, so the card cannot disagree with the graph) with example
REST requests for TF Serving, the date and the versions of kerasft, TensorFlow and Keras.

    info = card_info_from_finetuner(ft)          # plain data, taken before the export
    write_model_card(version_dir, info)          # or: after_write=model_card_hook(ft)

TF Serving ignores everything in ``assets.extra/`` except the warmup file, so the card travels
with the version folder at no cost.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.config import PAIR_INPUTS
from kerasft.errors import ExportError, expected
from kerasft.export.signatures import read_signatures
from kerasft.io import DEFAULT_MODE, atomic_write

CARD_FILENAME = "README.md"
_CHECKED = "session-based loader, as TF Serving loads it"


def _shell_json(value: Any) -> str:
    """JSON for a single-quoted shell argument."""
    return json.dumps(value, ensure_ascii=False).replace("'", "'\\''")
EXTRAS_DIRNAME = "assets.extra"


@dataclass
class ModelCardInfo:
    """What a model card says, as plain data (JSON-friendly)."""

    name: str
    task: str
    labels: list[str]
    multi_label: bool = False
    threshold: float = 0.5
    label_separator: str = "|"
    head_task: str = "classification"  # classification, multi_label or regression
    target_stats: list[Any] | None = None  # regression target scaling: [mean, std] (or lists)
    backbone: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    # How the served weights differ from the trained ones: [key, value] rows; quantize first.
    export: list[list[Any]] = field(default_factory=lambda: [["quantize", "none"]])


# ---------------------------------------------------------------------------------------------
# Collecting the facts from a FineTuner.


def _library_versions() -> dict[str, str]:
    from importlib import metadata

    from kerasft._version import __version__

    out = {"kerasft": __version__}
    for package in ("tensorflow", "keras", "keras-hub", "tensorflow-text"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def _original_backbone_weights(ft: Any) -> str:
    """``from_run`` sets ``backbone.weights: none`` to rebuild offline; the run's own
    ``config.yaml`` says which weights training started from."""
    weights = ft.config.backbone.weights
    run_config = Path(ft.run_dir) / "config.yaml" if ft.run_dir else None
    if run_config is not None and run_config.is_file():
        import yaml

        try:
            saved = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
            weights = (saved.get("backbone") or {}).get("weights", weights)
        except (OSError, yaml.YAMLError):
            pass
    return str(weights)


def _stages_from_history(history_csv: Path) -> dict[str, dict[str, Any]]:
    """Epochs run and last logged values of each stage, from a run's ``history.csv``."""
    out: dict[str, dict[str, Any]] = {}
    if not history_csv.is_file():
        return out
    with open(history_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            stage = row.get("stage") or "?"
            entry = out.setdefault(stage, {"epochs_run": 0, "final_logs": {}})
            entry["epochs_run"] += 1
            entry["final_logs"] = {
                k: float(v) for k, v in row.items()
                if k not in ("stage", "epoch", "learning_rate") and v not in (None, "")
            }
    return out


def card_info_from_finetuner(ft: Any) -> ModelCardInfo:
    """The card's facts from a built (trained or reloaded) :class:`kerasft.api.FineTuner`."""
    cfg = ft.config
    backbone = ft.backbone
    weights = _original_backbone_weights(ft)
    if weights in ("pretrained", "imagenet"):  # "imagenet": runs written before "pretrained"
        weights = ("the preset's pretrained weights" if backbone.task == "text"
                   else "ImageNet (pretrained)")
    info: dict[str, Any] = {"name": backbone.name, "weights": weights}
    if cfg.backbone.preset:
        info["preset"] = cfg.backbone.preset
    info.update({k: v for k, v in backbone.info.items() if k not in ("weights", "preset")})
    if backbone.image_size:
        info["input_size"] = list(backbone.image_size)
    if backbone.sequence_length:
        info["sequence_length"] = int(backbone.sequence_length)

    data: dict[str, Any] = {"source": cfg.data.source}
    if cfg.data.max_examples:
        data["max_examples"] = int(cfg.data.max_examples)
    if ft.data is not None:
        report = ft.data.report or {}
        data["sizes"] = dict(report.get("sizes") or {
            name: split.size for name in ("train", "validation", "test")
            if (split := getattr(ft.data, name, None)) is not None
        })
        if report.get("split"):
            data["split"] = dict(report["split"])
        if report.get("class_counts"):
            data["class_counts"] = report["class_counts"]
    files = {k: getattr(cfg.data, k) for k in ("train", "validation", "test")
             if getattr(cfg.data, k)}
    if files:
        data["files"] = files

    results = [asdict(r) if is_dataclass(r) else dict(r) for r in (ft.stage_results or [])]
    history = _stages_from_history(Path(ft.run_dir) / "history.csv") if ft.run_dir else {}
    stages = []
    for index, stage in enumerate(cfg.stages):
        entry: dict[str, Any] = {
            "name": stage.name, "trainable": stage.trainable, "epochs": stage.epochs,
            "optimizer": stage.optimizer, "learning_rate": stage.learning_rate,
            "schedule": stage.schedule,
        }
        if index < len(results):
            entry.update({k: results[index][k] for k in
                          ("epochs_run", "trainable_params", "unfrozen_layers", "stopped_early",
                           "final_logs") if k in results[index]})
        elif stage.name in history:
            entry.update(history[stage.name])
        stages.append(entry)

    return ModelCardInfo(
        name=cfg.name,
        task=backbone.task,
        labels=list(ft.class_names or []),
        multi_label=bool(ft.multi_label),
        threshold=float(cfg.head.threshold),
        label_separator=cfg.data.label_separator,
        head_task=cfg.head.task or "classification",
        target_stats=list(ft.target_stats) if getattr(ft, "target_stats", None) else None,
        backbone=info,
        data=data,
        stages=stages,
        metrics=ft.metrics,
        versions=_library_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


# ---------------------------------------------------------------------------------------------
# Rendering.


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        text = f"{value:,}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(", ", ": "))
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _shape(shape: list[int] | None) -> str:
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("batch" if i == 0 and d == -1 else ("any" if d == -1 else str(d))
                           for i, d in enumerate(shape)) + "]"


def _answer_rows(check: Any, signature: str, count: int) -> str | None:
    """The first `count` answers of `signature` in the checked export, as TF Serving's row
    format writes them (probabilities rounded to 4 digits here)."""
    answers = getattr(check, "answers", None) or {}
    value = answers.get(f"{signature}/value")
    if value is not None:  # regression: one output, which TF Serving's rows write bare
        rows = [json.dumps(np.round(np.asarray(v, float), 4).tolist()) for v in value[:count]]
        return '{"predictions": [' + ", ".join(rows) + "]}"
    keys = [f"{signature}/{k}" for k in ("class_ids", "labels", "probabilities")]
    if not all(k in answers for k in keys):
        return None
    rows = []
    for i in range(min(count, len(answers[keys[0]]))):
        ids, label, probs = (answers[k][i] for k in keys)
        label = label.decode("utf-8") if isinstance(label, bytes) else str(label)
        rows.append(json.dumps({"class_ids": ids.tolist() if hasattr(ids, "tolist") else ids,
                                "labels": label,
                                "probabilities": [round(float(p), 4) for p in probs]}))
    return '{"predictions": [' + ", ".join(rows) + "]}"


def _example_requests(name: str, task: str, labels: list[str],
                      signatures: dict[str, dict[str, Any]], check: Any = None,
                      examples: list[str] | None = None) -> list[str]:
    url = f"http://localhost:8501/v1/models/{name}:predict"
    texts = [t for t in (examples or [])[:2]] or ["great movie", "a waste of two hours"]
    not_run = ("(not shown: the export was written without the check, so no answer was "
               "computed)")
    lines = ["## Example requests (TensorFlow Serving REST API)", "",
             "Serve the model folder (the parent of this version) with the standard image:", "",
             "```sh",
             f'docker run -p 8501:8501 -v "$PWD/saved_models/{name}:/models/{name}" '
             f"-e MODEL_NAME={name} tensorflow/serving",
             "```", ""]
    pair = set(signatures.get("serving_default", {}).get("inputs", {})) == set(PAIR_INPUTS)
    if "serving_default" in signatures and task == "text":
        if pair:
            first, second = PAIR_INPUTS
            pairs = [p for p in (examples or [])[:2] if isinstance(p, tuple)] or [
                ("A man is playing a guitar.", "Someone plays music.")]
            heading = (f"Sentence pairs, row format (`instances`, one object with `{first}` and "
                       f"`{second}` per pair; answer `predictions`, one entry per pair):")
            instances: list[Any] = [{first: a, second: b} for a, b in pairs]
            columns: dict[str, Any] = dict(zip(PAIR_INPUTS, map(list, zip(*pairs))))
        else:
            heading = "Texts, row format (`instances`, answer `predictions`, one entry per text):"
            instances, columns = list(texts), {"text": texts}
        lines += [heading, "", "```sh", f"curl -s -X POST {url} \\",
                  f"  -d '{_shell_json({'instances': instances})}'", "```", ""]
        answer = _answer_rows(check, "serving_default", len(instances))
        lines += ([f"Answer of this export (computed by the export check, {_CHECKED}):", "",
                   "```json", answer, "```", ""] if answer else [f"Answer: {not_run}", ""])
        lines += [
            "Columnar format (`inputs`, answer `outputs`, one list per output):", "",
            "```sh",
            f"curl -s -X POST {url} \\",
            f"  -d '{_shell_json({'inputs': columns})}'",
            "```", "",
        ]
    if "serving_default" in signatures and task == "image":
        lines += [
            "Pixels (`serving_default`, input `image`): one `height x width x 3` array of 0..255 "
            "values per instance, any size (resized in the graph):", "",
            "```sh",
            f"curl -s -X POST {url} \\",
            '  -d \'{"instances": [[[[255, 0, 0], [250, 10, 5]], [[245, 3, 0], [251, 0, 9]]]]}\'',
            "```", "",
            "The answer has one entry per image, with the outputs below (see the bytes example "
            "for this export's own answer).", "",
        ]
    if "serving_bytes" in signatures:
        lines += [
            "Encoded JPEG/PNG files (`serving_bytes`, input `image_bytes`), base64 in "
            '`{"b64": ...}`:', "",
            "```sh",
            f"curl -s -X POST {url} \\",
            '  -d "{\\"signature_name\\": \\"serving_bytes\\", \\"instances\\": '
            '[{\\"b64\\": \\"$(base64 -w0 photo.jpg)\\"}]}"',
            "```", "",
        ]
        answer = _answer_rows(check, "serving_bytes", 1)
        lines += ([f"Answer of this export for its first test image, PNG-encoded ({_CHECKED}):",
                   "", "```json", answer, "```", ""] if answer else [f"Answer: {not_run}", ""])
    if not pair:  # `kerasft predict` sends one text per request
        lines += [f"With kerasft: `kerasft predict --server http://localhost:8501 --model {name} "
                  + ("--text \"great movie\"`" if task == "text" else "--image photo.jpg`"), ""]
    if task == "text":
        lines += ["The graph tokenises with TensorFlow Text ops: TF Serving's standard build "
                  "links them; a Python process must `import tensorflow_text` before "
                  "`tf.saved_model.load`.", ""]
    return lines


REGRESSION_METRICS = ("mae", "rmse", "r2", "pearson", "spearman")


def _regression_output(info: ModelCardInfo) -> list[str]:
    k = len(info.labels)
    if k == 1:
        shape, rows = "`[batch]`, the predicted target", "[v1, v2, ...]"
    else:
        shape = (f"`[batch, {k}]`, the predicted targets in the order "
                 f"{', '.join(f'`{n}`' for n in info.labels)}")
        rows = "[[a1, b1, ...], [a2, b2, ...], ...]"
    lines = ["## Output", "", f"`value`: float32 {shape} in the training data's own units (there "
             "are no class or probability outputs). It is the only output, so TF Serving's row "
             f"format answers `{{\"predictions\": {rows}}}` (values without a name) and the "
             f"columnar format `{{\"outputs\": {rows}}}`.", ""]
    if info.target_stats:
        mean, std = (", ".join(f"{v:.6g}" for v in np.atleast_1d(part))
                     for part in info.target_stats)
        lines += [f"The head was trained on standardised targets (`head.target_scaling: "
                  f"standard`: training-split mean {mean}, std {std}); the graph maps "
                  "them back (`value = z * std + mean`), so answers need no post-processing. "
                  "`targets.json` next to this card holds the numbers.", ""]
    return lines


def render_model_card(info: ModelCardInfo,
                      signatures: dict[str, dict[str, Any]] | None = None,
                      check: Any = None) -> str:
    """The card as Markdown; `signatures` as returned by
    :func:`kerasft.export.signatures.read_signatures`, `check` the export check's
    :class:`kerasft.export.saved_model.CheckResult` (None: not checked)."""
    kind = "multi-label" if info.multi_label else "single-label"
    made = f"fine-tuned with kerasft {info.versions.get('kerasft', '?')} on {info.created}."
    lines = [f"# {info.name}: model card", ""]
    if info.head_task == "regression":
        k = len(info.labels)
        lines += [f"{info.task.capitalize()} regression ({k} target{'s' if k > 1 else ''}), "
                  f"{made}", ""]
        lines += _regression_output(info)
    else:
        lines += [f"{info.task.capitalize()} classification ({kind}, {len(info.labels)} "
                  f"classes), {made}", ""]
        lines += ["## Labels", "", "Class id = row; `labels.txt` next to this card has the same "
                  "order.", ""]
        lines += _table(["class_id", "label"], [[i, name] for i, name in enumerate(info.labels)])
    if info.multi_label:
        lines += ["", f"Multi-label: `probabilities` has one sigmoid per class; a label is "
                  f"predicted when its probability is > {info.threshold:g} (`head.threshold`, "
                  "the same comparison as the metrics below). `class_ids` is multi-hot "
                  "(int64 `[batch, classes]`), `labels` the predicted labels joined by "
                  f"`{info.label_separator}` (empty when none passes)."]

    lines += ["", "## Backbone", ""]
    lines += _table(["key", "value"], [[k, v] for k, v in info.backbone.items()])

    lines += ["", "## Data", ""]
    data = info.data
    rows = [["source", data.get("source", "?")]]
    rows += [[f"{k} file", v] for k, v in (data.get("files") or {}).items()]
    sizes = data.get("sizes")
    if sizes:
        rows += [[f"{k} examples", v] for k, v in sizes.items()]
    else:
        rows.append(["sizes", "not recorded (exported without loading the data)"])
    if data.get("max_examples"):
        rows.append(["data.max_examples", f"{data['max_examples']} (each split capped by a "
                     "stratified, seeded sample)"])
    rows += [[f"{k} split", v] for k, v in (data.get("split") or {}).items()]
    lines += _table(["key", "value"], rows)

    lines += ["", "## Training stages", ""]
    rows = []
    for stage in info.stages:
        final = stage.get("final_logs") or {}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
        rows.append([stage["name"], stage["trainable"],
                     f"{stage.get('epochs_run', '?')}/{stage['epochs']}",
                     f"{stage['optimizer']} {_rate(stage['learning_rate'])} ({stage['schedule']})",
                     stage.get("trainable_params", ""), shown])
    lines += _table(["stage", "trainable", "epochs run", "optimizer", "trainable params",
                     "last epoch"], rows)

    lines += ["", "## Metrics", ""]
    metrics = info.metrics
    if metrics:
        cap = (f"; each split capped at data.max_examples={data['max_examples']}"
               if data.get("max_examples") else "")
        lines += [f"On the {metrics.get('split', '?')} split ({metrics.get('examples', '?')} "
                  f"examples{cap}):", ""]
        lines += _table(["metric", "value"], [[k, metrics[k]] for k in
                                              ("accuracy", "macro_f1", "weighted_f1",
                                               "macro_precision", "macro_recall",
                                               *REGRESSION_METRICS)
                                              if k in metrics])
        per_class = metrics.get("per_class") or {}
        if per_class:
            lines += [""]
            lines += _table(["label", "precision", "recall", "f1", "support"],
                            [[k, v["precision"], v["recall"], v["f1"], v["support"]]
                             for k, v in per_class.items()])
    else:
        lines += ["No metrics recorded (the run was exported without an evaluation)."]

    lines += ["", "## Export", ""]
    lines += _table(["key", "value"], info.export)

    lines += ["", "## Signatures", ""]
    for sig_name, sig in sorted((signatures or {}).items()):
        rows = [["input", k, v["dtype"], _shape(v["shape"])] for k, v in sorted(
            sig["inputs"].items())]
        rows += [["output", k, v["dtype"], _shape(v["shape"])] for k, v in sorted(
            sig["outputs"].items())]
        lines += [f"`{sig_name}`", ""] + _table(["", "name", "dtype", "shape"], rows) + [""]
    if not signatures:
        lines += ["(not read)", ""]
    lines += ["## Checks", ""]
    if check is not None and check.checks:
        lines += ["Before this version folder appeared, a fresh Python process checked it:", ""]
        lines += [f"- {c}" for c in check.checks] + [""]
    else:
        lines += ["Not checked: the export was written with `verify: false` (or without sample "
                  "inputs). Check it with `saved_model_cli run` before serving.", ""]
    examples: list[Any] | None = None
    requests = getattr(check, "requests", {}) if check is not None else {}

    def decoded(values: Any) -> list[str]:
        return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in values[:2]]

    if "serving_default/text" in requests:
        examples = decoded(requests["serving_default/text"])
    elif all(f"serving_default/{k}" in requests for k in PAIR_INPUTS):
        examples = list(zip(*(decoded(requests[f"serving_default/{k}"]) for k in PAIR_INPUTS)))
    lines += _example_requests(info.name, info.task, info.labels, signatures or {}, check,
                               examples)

    lines += ["## Versions", ""]
    lines += _table(["package", "version"], [[k, v] for k, v in info.versions.items()])
    return "\n".join(lines) + "\n"


def write_model_card(export_dir: str | os.PathLike, info: ModelCardInfo,
                     check: Any = None) -> Path:
    """Writes ``<export_dir>/assets.extra/README.md`` (signatures read from its
    ``saved_model.pb``) through a temporary file; returns its path."""
    export_dir = Path(export_dir)
    if not (export_dir / "saved_model.pb").is_file():
        raise ExportError(expected("a SavedModel folder with saved_model.pb", "export_dir",
                                   str(export_dir), "write_model_card"))
    text = render_model_card(info, read_signatures(export_dir), check)
    extras = export_dir / EXTRAS_DIRNAME
    extras.mkdir(exist_ok=True)
    target = extras / CARD_FILENAME
    return atomic_write(target, text, mode=DEFAULT_MODE, durable=False)


def model_card_hook(ft: Any, quantized: Any = None) -> Callable[[Path], None]:
    """An ``after_write`` hook for :func:`kerasft.export.saved_model.export_saved_model` writing
    `ft`'s card; `quantized`: the :class:`kerasft.export.quantize.QuantizeReport` of an int8
    export."""
    info = card_info_from_finetuner(ft)
    if quantized is not None:
        info.export = quantized.card_rows()

    def write(export_dir: Path, check: Any = None) -> None:
        write_model_card(export_dir, info, check)

    return write


def _rate(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)
