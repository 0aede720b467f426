"""``kerasft validate``: check a config fully without training.

Keys and types, the backbone (registry name, preset directory, input size, sequence length,
weights file), the data (files exist, columns, labels readable, splits), every stage's
``trainable`` against the real backbone layers, ``TF_CONFIG`` for multi-worker runs and the export
folder. What only a download can check (ImageNet weights, a KerasHub preset by name, a tfds
dataset that is not prepared yet) is reported, not fetched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kerasft.config import (
    BACKBONE_WEIGHTS,
    PRETRAINED,
    TOKEN_TASK,
    BackboneConfig,
    Config,
    ConfigError,
    check_mixing,
    head_task,
    load_config,
    text_columns,
)
from kerasft.errors import expected


def check_data_source(cfg: Config) -> None:
    """``data.source`` gives the backbone's kind of data (csv, jsonl, parquet, text_folder:
    text; image_folder: images)."""
    from kerasft.models.registry import get_entry

    task = get_entry(cfg.backbone.name).task
    check_mixing(cfg, task)
    text_sources = ("csv", "jsonl", "parquet", "text_folder")
    wrong = {"text": ("image_folder",), "image": text_sources}.get(task, ())
    if cfg.data.source in wrong:
        sources = ("csv, jsonl, parquet, text_folder or tfds" if task == "text"
                   else "image_folder or tfds")
        raise ConfigError(expected(f"{'a text' if task == 'text' else 'an image'} data source "
                                   f"for backbone {cfg.backbone.name} ({sources})",
                                   "data.source", cfg.data.source))
    if task != "text" and len(text_columns(cfg.data)) > 1:
        raise ConfigError(expected(f"one data.text_column for backbone {cfg.backbone.name} "
                                   "(sentence pairs need a text backbone)", "data.text_column",
                                   cfg.data.text_column))


def validate_config(config: str | os.PathLike | dict[str, Any] | Config,
                    overrides: Sequence[str] = ()) -> list[str]:
    """Raises a one-line error at the first problem; returns what was checked."""
    from kerasft.models.keras_hub import describe_preset
    from kerasft.models.keras_hub_images import (
        HUB_IMAGE_FAMILIES,
        describe_image_preset,
        resolve_auto_image,
    )
    from kerasft.models.registry import get_entry

    cfg = load_config(config, overrides)
    lines = [f"config: {len(cfg.stages)} stages, keys and types OK"]
    resolve_auto_image(cfg.backbone)  # backbone.name: auto with a KerasHub image preset
    entry = get_entry(cfg.backbone.name)
    check_data_source(cfg)
    if entry.task == "text":
        if not cfg.backbone.preset:
            raise ConfigError(expected(f"a preset for {cfg.backbone.name}", "backbone.preset",
                                       None))
        source = describe_preset(cfg.backbone.preset, entry.name)
        max_len = source["max_sequence_length"]
        if max_len and cfg.backbone.sequence_length and cfg.backbone.sequence_length > max_len:
            raise ConfigError(expected(f"a sequence length of at most {max_len} (the model's "
                                       "maximum)", "backbone.sequence_length",
                                       cfg.backbone.sequence_length))
        note = " (downloaded at train time)" if source["kind"] == "kerashub_name" else ""
        lines.append(f"backbone: {source['family']} from {source['kind']} {source['path']}{note}")
    elif entry.name in HUB_IMAGE_FAMILIES:
        if not cfg.backbone.preset:
            raise ConfigError(expected(f"a preset for {entry.name}", "backbone.preset", None))
        source = describe_image_preset(cfg.backbone.preset, HUB_IMAGE_FAMILIES[entry.name],
                                       cfg.backbone.weights)
        note = " (downloaded at train time)" if source["kind"] == "kerashub_name" else ""
        lines.append(f"backbone: {entry.name} from {source['kind']} {source['path']}{note}")
    else:
        if cfg.backbone.input_shape is not None and entry.min_size:
            from kerasft.models.keras_applications import image_size

            image_size(cfg.backbone, cfg.backbone.name, entry.default_size or entry.min_size,
                       entry.min_size)
        lines.append(f"backbone: {entry.name} ({entry.description})"
                     + (" with ImageNet weights (downloaded at train time)"
                        if cfg.backbone.weights == PRETRAINED else ""))
    if cfg.backbone.weights not in BACKBONE_WEIGHTS:
        from kerasft.models.backbone import check_weights_file

        check_weights_file(cfg.backbone.weights)
    lines += _check_stages(cfg)
    lines += _check_data(cfg)
    from kerasft.config import check_strategy_options
    from kerasft.training.strategy import check_global_batch, placement, select_strategy_kind

    kind = select_strategy_kind(cfg, os.environ)  # GPUs are not counted: nothing initialised
    check_strategy_options(cfg, kind)
    if kind == "multi_worker":
        where = placement(kind, os.environ)  # parses TF_CONFIG (one-line error when invalid)
        check_global_batch(cfg.data.batch_size, where.workers, kind)  # >= 1 replica per worker
        lines.append(f"TF_CONFIG: OK ({where.workers} workers; this process: {where.task}"
                     f"{', chief' if where.is_chief else ''})")
    check_writable(cfg.output_dir, "output_dir", "a writable output folder")
    if cfg.export.enabled:
        check_export_target(cfg)
    return lines


def check_writable(path: str | os.PathLike, key: str, what: str) -> None:
    """Raises the one-line error creating `path` would give, without creating anything."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = ("Not a directory" if probe.exists() and not probe.is_dir()
               else "Permission denied" if probe.exists() and not os.access(probe, os.W_OK)
               else None)
    if problem:
        raise ConfigError(expected(what, key, str(path)) + f" ({problem})")


def check_export_target(cfg: Config) -> None:
    """The export folder is writable and a fixed ``export.version`` does not exist yet (checked
    before training, so a bad export target costs no training time and writes nothing)."""
    from kerasft.errors import ExportError
    from kerasft.export.saved_model import next_version

    check_writable(cfg.export.dir, "export.dir", "a writable export folder")
    model_dir = Path(cfg.export.dir) / cfg.name
    version = cfg.export.version
    if version != "auto" and (model_dir / str(version)).exists():
        raise ExportError(
            expected(f"a version that does not exist yet (next free: {next_version(model_dir)})",
                     "export.version", version) + f" ({model_dir / str(version)} exists; "
            "versions are never overwritten)"
        )


def _build_network(cfg: BackboneConfig) -> Any:
    from kerasft.models.registry import build_backbone

    offline = BackboneConfig(**{**cfg.__dict__, "weights": "none"})
    return build_backbone(offline)


def _check_stages(cfg: Config) -> list[str]:
    import dataclasses

    from kerasft.training.lr_groups import stage_multipliers
    from kerasft.training.stages import apply_trainable

    needs_network = any(s.trainable not in ("head", "all") or s.lora is not None
                        or s.layer_lr_decay is not None for s in cfg.stages)
    if not needs_network:
        return ["stages: OK"]
    backbone = _build_network(cfg.backbone)
    for i, stage in enumerate(cfg.stages):
        apply_trainable(backbone, stage, key=f"stages[{i}].trainable")
        # the blocks layer_lr_decay needs (lr_multipliers also match the head: checked at fit)
        stage_multipliers(backbone.network, backbone,
                          dataclasses.replace(stage, lr_multipliers=None), f"stages[{i}]")
    return [f"stages: OK (checked against {backbone.name}'s layers)"]


def _check_data(cfg: Config) -> list[str]:
    if cfg.data.source == "tfds":
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(cfg.data.tfds_name, data_dir=cfg.data.tfds_data_dir)
        except Exception as e:  # noqa: BLE001 - tfds raises many types for an unknown name.
            raise ConfigError(expected("a tfds dataset name", "data.tfds_name",
                                       cfg.data.tfds_name) + f" ({str(e).splitlines()[0]})"
                              ) from None
        prepared = builder.is_prepared()
        return [f"data: tfds {cfg.data.tfds_name} "
                + ("prepared" if prepared else "not prepared (downloaded at train time)")]
    if head_task(cfg.head) == TOKEN_TASK:
        from kerasft.data.tokens import load_token_data

        tagged = load_token_data(cfg.data, cfg.seed)
        sizes = ", ".join(f"{k} {v}" for k, v in tagged.report["sentences"].items())
        return [f"data: {cfg.data.source}, token classification, {len(tagged.tag_names)} tags "
                f"({', '.join(tagged.tag_names[:10])}); sentences: {sizes}"]
    from kerasft.data.class_weights import class_weight_line, class_weights
    from kerasft.data.sources import load_data

    task = head_task(cfg.head)
    data = load_data(cfg.data, seed=cfg.seed, multi_label=task == "multi_label",
                     regression=None if task is None else task == "regression")
    sizes = ", ".join(f"{name} {getattr(data, name).size}"
                      for name in ("train", "validation", "test") if getattr(data, name))
    if data.regression:
        how = "head.task" if task else "labels are numbers, not all whole: head.task unset"
        return [f"data: {data.task}, regression ({how}); {sizes}"]
    lines = [f"data: {data.task}, {len(data.class_names)} classes "
             f"({', '.join(data.class_names[:10])}{', ...' if len(data.class_names) > 10 else ''})"
             f"; {sizes}"]
    weights = class_weights(cfg.data.class_weight, data.class_names, data.train.labels)
    if weights is not None:  # labels named in data.class_weight exist
        lines.append(class_weight_line(cfg.data.class_weight, weights, data.class_names))
    return lines


def describe_layers(name: str, preset: str | None = None) -> list[str]:
    """The layers of a backbone as ``top_n`` counts them (top first) with BatchNorm frozen."""
    from kerasft.training.stages import trainable_units

    backbone = _build_network(BackboneConfig(name=name, weights="none", preset=preset))
    units = trainable_units(backbone, bn_trains=False)
    lines = [f"{name}: {len(units)} layers with weights that train with BatchNorm frozen "
             "(top_n counts these, top first; with batch_norm: train BatchNorm layers count too)"]
    for i, layer in enumerate(reversed(units), start=1):
        lines.append(f"{i:>4}  {layer.name:<40} {layer.count_params():>12,}")
    return lines
