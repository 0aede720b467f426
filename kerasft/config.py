"""Step 1 of a run: the typed config.

Every default lives in the dataclasses below. A run's config is built in three layers, each
overriding the previous one: these defaults < the YAML file < ``--set key=value`` overrides. The
result is validated (unknown keys with a did-you-mean suggestion, types, ranges, combinations)
and written next to every run and every export as ``config.yaml``.

This module imports neither TensorFlow nor Keras, so ``kerasft validate`` and ``--help`` stay fast.

Why this module is long: it is the whole config contract, one dataclass per YAML section with
its defaults, and the validation of each key beside the loader that names the key in its
errors; split up, one key's default, type and checks would live in three files. It imports only
kerasft.errors and kerasft.io.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from kerasft.errors import ConfigError, expected
from kerasft.io import atomic_write

# "pretrained": the architecture's published weights (ImageNet for keras.applications, the
# preset's own for BERT). "imagenet", its old name, stays accepted and resolves to it.
PRETRAINED = "pretrained"
WEIGHTS_ALIASES = {"imagenet": PRETRAINED}
BACKBONE_WEIGHTS = (PRETRAINED, *WEIGHTS_ALIASES, "none")
HEAD_ACTIVATIONS = ("softmax", "sigmoid")
# What the head predicts. token_classification: one tag per word (kerasft/tagger.py).
HEAD_TASKS = ("classification", "multi_label", "regression", "token_classification")
TOKEN_TASK = "token_classification"
#: Sources that hold tagged words (head.task token_classification reads only these).
TOKEN_SOURCES = ("conll", "jsonl")
HEAD_LOSSES = ("mse", "huber")
TARGET_SCALINGS = ("none", "standard")
HEAD_POOLINGS = ("auto", "cls", "mean", "avg", "max")
DATA_SOURCES = ("csv", "jsonl", "parquet", "text_folder", "image_folder", "tfds", "arrays",
                "conll")
#: Sources whose data.train / validation / test are paths (relative to the YAML's folder).
PATH_SOURCES = ("csv", "jsonl", "parquet", "text_folder", "image_folder", "conll")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "exponential", "linear")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
MIXED_PRECISION = ("auto", "none", "mixed_float16", "mixed_bfloat16")
LR_SCALING = ("none", "linear")
LR_FIND_SUGGESTIONS = ("steepest", "minimum")
BATCH_NORM_MODES = ("frozen", "train")
# export.quantize (the SavedModel): int8 = Keras's weight quantization (kerasft/export/quantize.py).
EXPORT_QUANTIZE = ("none", "int8")
# export.precision: the serving graph's compute dtype (bfloat16: Keras's mixed_bfloat16 policy).
EXPORT_PRECISION = ("float32", "bfloat16")
AUGMENTATIONS = ("flip", "rotation", "zoom", "translation", "contrast", "brightness",
                 "rand_augment", "mixup", "cutmix")
#: Augmentations that mix two examples, labels included: the training labels become soft.
MIXING_AUGMENTATIONS = ("mixup", "cutmix")
MIXING_PARAMETERS = {"mixup": "alpha", "cutmix": "factor"}  # keras.layers.MixUp / CutMix's
MIXING_DEFAULTS = {"mixup": 0.2, "cutmix": 1.0}  # Keras's defaults
RAND_AUGMENT_DEFAULTS = {"num_ops": 2, "factor": 0.5}  # keras.layers.RandAugment's
EMA_MOMENTUM = 0.99  # Keras's ema_momentum
# tune: (kerasft/search/tune.py) a trial's objective is a validation metric: what the validation
# split's report holds (kerasft.evaluation.metrics) or what fit logs per epoch.
TUNE_REPORT_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1",
                       "mae", "rmse", "r2", "pearson", "spearman")
TUNE_METRICS = ("auto", "val_loss", "val_auc",
                *(f"val_{m}" for m in TUNE_REPORT_METRICS))
TUNE_DIRECTIONS = ("auto", "maximize", "minimize")
TUNE_PRUNERS = ("median", "none")
TUNE_SAMPLERS = ("tpe", "random")
TUNE_SPEC_KEYS = ("low", "high", "log", "step", "choices")


@dataclass
class BackboneConfig:
    """Which pretrained network the head sits on."""

    name: str = "bert"
    weights: str = PRETRAINED
    preset: str | None = None
    sequence_length: int | None = None
    input_shape: list[int] | None = None
    # Keep only the lower N transformer layers of a text preset (a distillation student).
    num_layers: int | None = None


@dataclass
class HeadConfig:
    """The new head: classification (softmax), multi-label (sigmoid) or regression (linear)."""

    hidden_units: list[int] = field(default_factory=list)
    dropout: float = 0.1
    l2: float = 0.0
    # None = from activation (sigmoid: multi_label) and the data (resolve_task); a run writes
    # the resolved task here, so its config.yaml says which head ran.
    task: str | None = None
    activation: str = "softmax"  # sigmoid: the older spelling of task multi_label
    pooling: str = "auto"
    threshold: float = 0.5
    loss: str = "mse"  # regression only
    huber_delta: float = 1.0
    target_scaling: str = "none"  # regression only: standard = mean/std of the training split


@dataclass
class DataConfig:
    """Where the examples come from and how they are batched."""

    source: str = "csv"
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    validation_split: float | None = None
    test_split: float | None = None
    # One column, or two ([premise, hypothesis]) for sentence-pair tasks (text_columns()).
    text_column: str | list[str] = "text"
    # One column, or several numeric ones for a multi-target regression (label_columns()).
    label_column: str | list[str] = "label"
    label_separator: str = "|"
    # head.task token_classification with data.source jsonl: the words and their tags
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    encoding: str = "utf-8"
    delimiter: str = ","
    skip_rows: int = 0  # rows after the header that are not data (csv)
    strict: bool = False
    tfds_name: str | None = None
    tfds_data_dir: str | None = None
    image_key: str | None = None
    label_key: str | None = None
    batch_size: int = 32
    max_examples: int | None = None
    augmentation: dict[str, Any] = field(default_factory=dict)
    cache: bool = True
    shuffle_buffer: int = 10000
    bucket_by_length: bool = True
    bucket_multiple: int = 8
    # None, "balanced" or {label: weight}: Keras's class_weight in fit (one-label heads only).
    class_weight: str | dict[str, Any] | None = None
    # csv: "auto" streams files over kerasft.data.stream.STREAM_AUTO_BYTES (texts read from disk
    # by byte offset, never all held); true always, false never.
    stream: bool | str = "auto"


@dataclass
class EarlyStoppingConfig:
    """Stop a stage when the monitored metric stops improving."""

    patience: int = 0
    monitor: str = "val_loss"
    min_delta: float = 0.0


@dataclass
class StageConfig:
    """One training stage: which weights train, for how long, with which optimizer."""

    name: str = "head"
    trainable: Any = "head"
    epochs: int = 1
    optimizer: str = "adam"
    # A number, or ``auto``: an LR sweep at the stage's start picks it (kerasft/training/lr_find.py)
    # and the run's config.yaml records the value found.
    learning_rate: float | str = 1e-3
    schedule: str = "constant"
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    weight_decay: float = 0.0
    weight_decay_exclude: list[str] = field(default_factory=lambda: ["bias", "normalization"])
    label_smoothing: float = 0.0
    clipnorm: float | None = None
    momentum: float = 0.9
    # Layer-wise learning rates (kerasft/training/lr_groups.py): the top backbone block gets
    # LR x decay, the next x decay^2, ..., the embeddings / stem the lowest; the head the full LR.
    layer_lr_decay: float | None = None
    # Regular expression on a variable's path (re.search) -> LR multiplier; first match wins.
    lr_multipliers: dict[str, float] | None = None
    # None = default_batch_norm(); validate() writes the resolved mode here, so a run's
    # config.yaml says which one ran.
    batch_norm: str | None = None
    train_bn: bool | None = None  # alias of batch_norm (true = train, false = frozen)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # LoRA adapters instead of the backbone's own weights: ``{rank, alpha, layers}`` or a rank;
    # validate() writes the resolved mapping here (see parse_lora).
    lora: Any = None
    # Weight EMA (Keras's use_ema): ``true``, a momentum or ``{momentum}``; validate() writes the
    # resolved ``{momentum}`` here (see parse_ema).
    ema: Any = None
    # Soft labels from a teacher, ``{teacher, temperature, alpha}`` (kerasft/training/distill.py),
    # and magnitude pruning, ``{sparsity, schedule, begin_step, end_step, frequency}``
    # (kerasft/training/prune.py); validate() writes the resolved mappings here.
    distill: Any = None
    prune: Any = None


@dataclass
class LRFindConfig:
    """The learning-rate sweep of ``kerasft lr-find`` and of ``learning_rate: auto``."""

    min_lr: float = 1e-7
    max_lr: float = 1.0
    steps: int = 100  # at most; one pass over the training batches caps it
    suggestion: str = "steepest"  # steepest descent of the smoothed loss, or minimum / 10


@dataclass
class TrainingConfig:
    """How `model.fit` runs: strategy and numerical options."""

    strategy: str = "auto"
    devices: list[str] | None = None
    tpu: str | None = None
    mixed_precision: str = "auto"  # resolved at the start of a run: kerasft/training/precision.py
    mixed_precision_reason: str | None = None  # written by kerasft: why auto chose the policy
    jit_compile: bool = False
    steps_per_execution: int = 1
    gradient_accumulation_steps: int = 1
    lr_scaling: str = "none"
    deterministic: bool = False
    restore_best: bool = True
    checkpoint_every_epoch: bool = True
    cache_features: str = "auto"
    monitor: str = "val_loss"
    tensorboard: bool = True
    verbose: str = "auto"
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)


@dataclass
class ExportConfig:
    """Where the TF Serving SavedModel goes."""

    dir: str = "saved_models"
    version: Any = "auto"
    enabled: bool = True
    verify: bool = True
    quantize: str = "none"
    precision: str = "float32"

@dataclass
class TuneConfig:
    """``kerasft tune``: the search space (``params``: dotted config keys, as ``--set`` takes
    them, to ``{low, high[, log][, step]}`` or ``{choices: [...]}``) and its objective. Ignored
    by ``kerasft train``."""

    metric: str = "auto"  # val_macro_f1 (classification, multi_label), val_mae (regression)
    direction: str = "auto"  # from the metric: minimize loss / mae / rmse, maximize the rest
    trials: int = 10  # kerasft tune --trials overrides it
    pruner: str = "median"  # Optuna's MedianPruner at epoch ends, or none
    sampler: str = "tpe"
    dir: str | None = None  # the search folder; default <output_dir>/<name>-tune
    params: dict[str, Any] = field(default_factory=dict)


STEPS_PER_EXECUTION_BUG = (
    "Keras 3 multi-step execution under MultiWorkerMirroredStrategy fails with 'You must feed "
    "a value for placeholder tensor' from the gradient all-reduce inside its while loop, see "
    "keras-team/keras#19246"
)


def _default_stages() -> list[StageConfig]:
    return [StageConfig()]


@dataclass
class Config:
    """A whole run. ``kerasft.config.load_config`` builds and validates one."""

    name: str = "model"
    seed: int = 42
    output_dir: str = "runs"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[StageConfig] = field(default_factory=_default_stages)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# Building a Config from plain data.


def _did_you_mean(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(arg)}"
    if origin is dict:
        return "a mapping"
    if tp is Any:
        return "a value"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp`; returns the (possibly converted) value."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(expected(_type_name(tp), key, value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(expected("a mapping", key, value))
        return _build(tp, value, key)
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(expected(_type_name(tp), key, value))
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(expected("a mapping", key, value))
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(expected("true or false", key, value))
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(expected("an integer", key, value))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(expected("a number", key, value))
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(expected("a string", key, value))
    raise ConfigError(expected(_type_name(tp), key, value))


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                expected(f"a known config key (valid{' under ' + prefix if prefix else ''}: "
                         f"{', '.join(names)})", "unknown key", full)
                + _did_you_mean(str(key), names)
            )
        if key == "stages":
            if not isinstance(value, list) or not value:
                raise ConfigError(expected("a non-empty list of stages", full, value))
            kwargs[key] = [
                _build(StageConfig, _stage_mapping(v, f"stages[{i}]"), f"stages[{i}]")
                for i, v in enumerate(value)
            ]
            continue
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _stage_mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(expected("a mapping with name, trainable, epochs, ...", key, value))
    value = dict(value)
    es = value.get("early_stopping")
    if isinstance(es, int) and not isinstance(es, bool):  # `early_stopping: 3` = patience 3.
        value["early_stopping"] = {"patience": es}
    return value


# ---------------------------------------------------------------------------------------------
# Validation of values and combinations.


def _check_choice(value: Any, choices: typing.Sequence[str], key: str) -> None:
    if value not in choices:
        raise ConfigError(
            expected(f"one of {', '.join(choices)}", key, value)
            + _did_you_mean(str(value), choices)
        )


def _check_positive(value: float | int | None, key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(expected("a positive number", key, value))


def _check_lr_groups(s: StageConfig, key: str) -> None:
    """``layer_lr_decay`` in (0, 1]; ``lr_multipliers`` regular expressions that compile, each
    to a number >= 0."""
    if s.layer_lr_decay is not None and not 0.0 < s.layer_lr_decay <= 1.0:
        raise ConfigError(expected("a number in (0, 1]", f"{key}.layer_lr_decay",
                                   s.layer_lr_decay))
    for pattern, mult in (s.lr_multipliers or {}).items():
        where = f"{key}.lr_multipliers[{pattern!r}]"
        try:
            re.compile(str(pattern))
        except re.error as e:
            raise ConfigError(expected("a regular expression on variable paths (e.g. "
                                       "'^conv1' or 'embedding')", where, pattern)
                              + f" ({e})") from None
        if isinstance(mult, str):
            try:
                mult = float(mult)
            except ValueError:
                pass
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult < 0:
            raise ConfigError(expected("a multiplier >= 0", where, mult))
        s.lr_multipliers[pattern] = float(mult)


def _check_fraction(value: float | None, key: str) -> None:
    if value is not None and not 0.0 < value < 1.0:
        raise ConfigError(expected("a fraction between 0 and 1 (exclusive)", key, value))


def _check_class_weight(value: str | dict[str, Any] | None, activation: str) -> None:
    key = "data.class_weight"
    if value is None:
        return
    if activation == "sigmoid":
        raise ConfigError(expected(
            "no class_weight with head.activation: sigmoid (Keras's class_weight weighs an "
            "example by its one class id; a multi-label example has several)", key, value))
    if isinstance(value, str):
        _check_choice(value, ("balanced",), key)
        return
    if not value:
        raise ConfigError(expected("balanced or a mapping {label: weight}", key, value))
    for label, weight in value.items():
        if (isinstance(weight, bool) or not isinstance(weight, (int, float))
                or not 0 < weight < float("inf")):
            raise ConfigError(expected("a positive number", f"{key}.{label}", weight))


def parse_trainable(value: Any, key: str = "trainable") -> tuple[str, Any]:
    """Normalises a stage's `trainable` to ('head'|'all'|'top_n'|'from_layer', argument)."""
    if value in ("head", "all"):
        return value, None
    if isinstance(value, dict) and len(value) == 1:
        (kind, arg), = value.items()
        if kind == "top_n":
            if isinstance(arg, int) and not isinstance(arg, bool) and arg > 0:
                return "top_n", arg
            raise ConfigError(expected("a positive integer", f"{key}.top_n", arg))
        if kind == "from_layer":
            if isinstance(arg, str) and arg:
                return "from_layer", arg
            raise ConfigError(expected("a layer name", f"{key}.from_layer", arg))
    raise ConfigError(
        expected("'head', 'all', {top_n: N} or {from_layer: NAME}", key, value)
    )


LORA_KEYS = ("rank", "alpha", "layers")


def parse_lora(value: Any, key: str = "lora") -> dict[str, Any] | None:
    """Normalises a stage's ``lora`` to ``{rank, alpha, layers}`` (None: no LoRA).

    ``lora: 8`` is ``{rank: 8}``; ``alpha`` defaults to the rank (Keras's default: the adapters'
    update is scaled by alpha / rank = 1); ``layers`` (None: the backbone's
    ``default_lora_layer_names()``, the attention query/value projections) names the Dense /
    EinsumDense layers that get adapters.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"rank": value}
    if not isinstance(value, dict):
        raise ConfigError(expected("a rank or a mapping {rank, alpha, layers}", key, value))
    unknown = [k for k in value if k not in LORA_KEYS]
    if unknown:
        raise ConfigError(expected(f"a known config key (valid under {key}: "
                                   f"{', '.join(LORA_KEYS)})", "unknown key",
                                   f"{key}.{unknown[0]}") + _did_you_mean(str(unknown[0]),
                                                                           LORA_KEYS))
    rank = value.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ConfigError(expected("a positive integer", f"{key}.rank", rank))
    alpha = value.get("alpha", rank)
    if alpha is None:
        alpha = rank
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(expected("a positive number", f"{key}.alpha", alpha))
    layers = value.get("layers")
    if layers is not None and (
            not isinstance(layers, list) or not layers
            or not all(isinstance(n, str) and n.strip() for n in layers)):
        raise ConfigError(expected("a non-empty list of layer names (e.g. [query, value])",
                                   f"{key}.layers", layers))
    return {"rank": rank, "alpha": alpha, "layers": layers}


def parse_ema(value: Any, key: str = "ema") -> dict[str, float] | None:
    """Normalises a stage's ``ema`` to ``{momentum}`` (None: no weight EMA).

    ``ema: true`` is Keras's default momentum (0.99); ``ema: 0.999`` or ``{momentum: 0.999}``
    sets it. false / null: off.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {"momentum": EMA_MOMENTUM}
    if _is_number(value):
        value = {"momentum": value}
    if not isinstance(value, dict):
        raise ConfigError(expected("true, a momentum or a mapping {momentum}", key, value))
    unknown = [k for k in value if k != "momentum"]
    if unknown:
        raise ConfigError(expected(f"a known config key (valid under {key}: momentum)",
                                   "unknown key", f"{key}.{unknown[0]}")
                          + _did_you_mean(str(unknown[0]), ["momentum"]))
    momentum = value.get("momentum", EMA_MOMENTUM)
    if not _is_number(momentum) or not 0.0 < momentum < 1.0:
        raise ConfigError(expected("a momentum in (0, 1)", f"{key}.momentum", momentum))
    return {"momentum": float(momentum)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _enabled(value: Any) -> bool:
    return not (value is None or value is False or (_is_number(value) and value == 0))


def parse_mixing(key: str, value: Any, where: str) -> float | None:
    """``data.augmentation.mixup``: true, an alpha or ``{alpha}`` (the mixing weights are
    Beta(alpha, alpha), keras.layers.MixUp's); ``cutmix``: true, a factor or ``{factor}`` in
    (0, 1] (keras.layers.CutMix's: each batch draws its alpha from [0, factor]). Returns the
    number (None: off)."""
    if not _enabled(value):
        return None
    name = MIXING_PARAMETERS[key]
    if value is True:
        return MIXING_DEFAULTS[key]
    if isinstance(value, dict):
        unknown = [k for k in value if k != name]
        if unknown:
            raise ConfigError(expected(f"a known config key (valid under {where}: {name})",
                                       "unknown key", f"{where}.{unknown[0]}")
                              + _did_you_mean(str(unknown[0]), [name]))
        value = value.get(name, MIXING_DEFAULTS[key])
        where = f"{where}.{name}"
    if key == "cutmix":
        if not _is_number(value) or not 0.0 < value <= 1.0:
            raise ConfigError(expected("true, a factor in (0, 1] or a mapping {factor}", where,
                                       value))
    elif not _is_number(value) or value <= 0:
        raise ConfigError(expected("true, a positive alpha or a mapping {alpha}", where, value))
    return float(value)


def parse_rand_augment(value: Any, where: str) -> dict[str, Any] | None:
    """``data.augmentation.rand_augment``: true or ``{num_ops, factor}`` (None: off)."""
    if not _enabled(value):
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(expected("true or a mapping {num_ops, factor}", where, value))
    unknown = [k for k in value if k not in RAND_AUGMENT_DEFAULTS]
    if unknown:
        raise ConfigError(expected(f"a known config key (valid under {where}: num_ops, factor)",
                                   "unknown key", f"{where}.{unknown[0]}")
                          + _did_you_mean(str(unknown[0]), list(RAND_AUGMENT_DEFAULTS)))
    out = {**RAND_AUGMENT_DEFAULTS, **value}
    ops = out["num_ops"]
    if not isinstance(ops, int) or isinstance(ops, bool) or ops <= 0:
        raise ConfigError(expected("a positive integer", f"{where}.num_ops", ops))
    factor = out["factor"]
    if not _is_number(factor) or not 0.0 < factor <= 1.0:
        raise ConfigError(expected("a factor in (0, 1]", f"{where}.factor", factor))
    return {"num_ops": ops, "factor": float(factor)}


def mixes_labels(augmentation: dict[str, Any] | None) -> bool:
    """Whether ``data.augmentation`` mixes examples (mixup / cutmix): training labels are then
    soft (one-hot, mixed) while evaluation labels stay class ids."""
    return any(_enabled((augmentation or {}).get(k)) for k in MIXING_AUGMENTATIONS)


def check_mixing(cfg: Config, task: str | None) -> None:
    """MixUp / CutMix need image inputs and one-label classification (`task`: the backbone's
    ``text`` / ``image``, or None when unknown)."""
    aug = cfg.data.augmentation
    if not mixes_labels(aug):
        return
    on = [k for k in MIXING_AUGMENTATIONS if _enabled(aug.get(k))]
    key = f"data.augmentation.{on[0]}"
    if len(on) > 1:
        raise ConfigError(expected("mixup or cutmix, not both (each mixes every training "
                                   "batch)", "data.augmentation", ", ".join(on)))
    if task == "text":
        raise ConfigError(expected(f"an image backbone for {on[0]} (it mixes pixels; backbone "
                                   f"{cfg.backbone.name} reads text)", key, aug[on[0]]))
    kind = head_task(cfg.head)
    if kind in ("multi_label", "regression"):
        raise ConfigError(expected(f"head.task classification with {on[0]} (its mixed labels "
                                   "are class probabilities)", "head.task", kind))
DISTILL_KEYS = ("teacher", "temperature", "alpha")
PRUNE_KEYS = ("sparsity", "schedule", "begin_step", "end_step", "frequency")
PRUNE_SCHEDULES = ("polynomial", "constant")


def _mapping(value: Any, keys: typing.Sequence[str], key: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(expected(what, key, value))
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise ConfigError(expected(f"a known config key (valid under {key}: {', '.join(keys)})",
                                   "unknown key", f"{key}.{unknown[0]}")
                          + _did_you_mean(str(unknown[0]), keys))
    return value


def _number(value: Any, key: str, what: str, ok: typing.Callable[[float], bool]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ConfigError(expected(what, key, value))
    return float(value)


def parse_distill(value: Any, key: str = "distill") -> dict[str, Any] | None:
    """Normalises a stage's ``distill`` to ``{teacher, temperature, alpha}`` (None: none).

    ``distill: PATH`` is ``{teacher: PATH}``. ``teacher``: a kerasft run folder (config.yaml,
    labels, weights) or a kerasft export (``saved_model.pb``), relative to where the command
    runs; ``temperature`` (default 2) softens both distributions; ``alpha`` (default 0.5) is the
    weight of the hard-label loss, ``1 - alpha`` that of the soft-label loss.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = {"teacher": value}
    value = _mapping(value, DISTILL_KEYS, key, "a teacher path or a mapping "
                                              "{teacher, temperature, alpha}")
    teacher = value.get("teacher")
    if not isinstance(teacher, str) or not teacher.strip():
        raise ConfigError(expected("a kerasft run folder or export", f"{key}.teacher", teacher))
    temperature = _number(value.get("temperature", 2.0), f"{key}.temperature",
                          "a positive number", lambda v: v > 0)
    alpha = _number(value.get("alpha", 0.5), f"{key}.alpha", "a number in [0, 1]",
                    lambda v: 0.0 <= v <= 1.0)
    return {"teacher": teacher, "temperature": temperature, "alpha": alpha}


def parse_prune(value: Any, key: str = "prune") -> dict[str, Any] | None:
    """Normalises a stage's ``prune`` to ``{sparsity, schedule, begin_step, end_step,
    frequency}`` (None: no pruning).

    ``prune: 0.5`` is ``{sparsity: 0.5}``. Steps count from the stage's first step;
    ``end_step`` None is the stage's last step; ``polynomial`` ramps the sparsity from 0 at
    ``begin_step`` to ``sparsity`` at ``end_step`` (cubic, as tfmot's PolynomialDecay),
    ``constant`` prunes to ``sparsity`` from ``begin_step`` on; masks are recomputed every
    ``frequency`` steps until ``end_step``.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {"sparsity": value}
    value = _mapping(value, PRUNE_KEYS, key, "a sparsity or a mapping "
                                            "{sparsity, schedule, begin_step, end_step, frequency}")
    sparsity = _number(value.get("sparsity"), f"{key}.sparsity", "a fraction in (0, 1)",
                       lambda v: 0.0 < v < 1.0)
    schedule = value.get("schedule", "polynomial")
    _check_choice(schedule, PRUNE_SCHEDULES, f"{key}.schedule")
    steps = {}
    for name, default, low in (("begin_step", 0, 0), ("end_step", None, 1), ("frequency", 100, 1)):
        v = value.get(name, default)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ConfigError(expected(f"an integer >= {low}", f"{key}.{name}", v))
        steps[name] = v
    if steps["end_step"] is not None and steps["end_step"] <= steps["begin_step"]:
        raise ConfigError(expected(f"an end_step after begin_step {steps['begin_step']}",
                                   f"{key}.end_step", steps["end_step"]))
    return {"sparsity": sparsity, "schedule": schedule, **steps}


def head_task(head: HeadConfig) -> str | None:
    """The head's task: ``head.task`` or, unset, multi_label for ``activation: sigmoid``; None
    when it is left to the data (:func:`resolve_task`)."""
    if head.task is not None:
        return head.task
    return "multi_label" if head.activation == "sigmoid" else None


def resolve_task(cfg: Config, regression_labels: bool) -> str:
    """Writes the head's task into `cfg` once the labels are read: regression when
    ``head.task`` is unset and the reader found regression labels
    (kerasft.data.splits.looks_like_regression), else :func:`head_task` or classification; then
    checks what depends on it (regression-only keys, monitors). Returns the task."""
    h = cfg.head
    h.task = head_task(h) or ("regression" if regression_labels else "classification")
    if h.task != "regression" and (h.loss != "mse" or h.target_scaling != "none"):
        raise ConfigError(
            f"head: expected head.loss and head.target_scaling only with head.task regression "
            f"(the labels read as task {h.task}). Received: head.loss={h.loss!r}, "
            f"head.target_scaling={h.target_scaling!r}")
    for i, s in enumerate(cfg.stages):
        _check_monitor(s.early_stopping.monitor, h.task, f"stages[{i}].early_stopping.monitor")
        if h.task == "regression" and s.label_smoothing:
            raise ConfigError(expected("0 with head.task regression (no classes to smooth)",
                                       f"stages[{i}].label_smoothing", s.label_smoothing))
    _check_monitor(cfg.training.monitor, h.task, "training.monitor")
    check_mixing(cfg, None)
    return h.task


def logged_metrics(task: str | None) -> list[str]:
    """What ``model.fit`` logs each epoch for a head of `task` (kerasft.training.stages.
    make_metrics), with the ``val_`` names a run with a validation split adds. `task` None (left
    to the data) is checked as classification, and again by :func:`resolve_task`."""
    names = {"multi_label": ["loss", "accuracy", "auc"],
             "regression": ["loss", "mae"]}.get(task or "", ["loss", "accuracy"])
    return names + [f"val_{n}" for n in names]


def _check_monitor(value: str, task: str | None, key: str) -> None:
    # A monitor that is never logged silently disables best-weight restore / early stopping.
    names = logged_metrics(task)
    if value not in names:
        raise ConfigError(expected(f"a metric the run logs ({', '.join(names)})", key, value)
                          + _did_you_mean(value, names))


def default_batch_norm(weights: str, trainable: Any) -> str:
    """A stage's BatchNorm mode when it sets neither ``batch_norm`` nor ``train_bn``: ``frozen``.

    Over pretrained weights, as Keras's transfer-learning guide says (the moving statistics learnt
    on the pretraining data are kept). From random weights (``weights: none``) too, chosen from
    docs/BENCHMARKS.md "BatchNorm from random weights": after a few hundred steps the moving
    averages of ``train`` still lag far behind the batch statistics it trained with, so
    evaluation and the export (moving statistics) scored at or below ``frozen`` on MobileNetV2,
    ResNet50 and EfficientNetB0, and at chance on two of them. ``batch_norm: train`` is the
    choice for a network that cannot learn without normalisation (MobileNetV2 there) and for
    runs long enough for its moving averages to settle.
    """
    return "frozen"


def resolve_batch_norm(stage: StageConfig, weights: str, key: str = "stage") -> str:
    """Checks and resolves `stage`'s BatchNorm mode in place: ``batch_norm`` holds the mode and
    ``train_bn`` (the older alias) is cleared. Returns the mode."""
    if stage.batch_norm is not None and stage.train_bn is not None:
        raise ConfigError(
            f"{key}: expected batch_norm or its alias train_bn, not both. "
            f"Received: batch_norm={stage.batch_norm!r}, train_bn={stage.train_bn}"
        )
    if stage.train_bn is not None:
        # train_bn: true on a head stage never trained anything (the backbone is frozen there)
        stage.batch_norm = "train" if stage.train_bn and stage.trainable != "head" else "frozen"
        stage.train_bn = None
    elif stage.batch_norm is None:
        stage.batch_norm = default_batch_norm(weights, stage.trainable)
    _check_choice(stage.batch_norm, BATCH_NORM_MODES, f"{key}.batch_norm")
    if stage.batch_norm == "train" and stage.trainable == "head":
        raise ConfigError(expected("frozen for a head stage (the backbone does not train)",
                                   f"{key}.batch_norm", stage.batch_norm))
    return stage.batch_norm


def upgrade_saved_config(data: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config.yaml in today's form: folders written before ``batch_norm`` existed
    hold ``train_bn`` only, which maps as the alias does (the old ``train_bn: false`` run had BN
    frozen in inference mode, as ``batch_norm: frozen`` has); folders written before
    ``head.task`` get the task their activation meant and the regression keys' defaults."""
    data = copy.deepcopy(data)
    head = data.get("head")
    if isinstance(head, dict) and "task" not in head:
        # Before head.task, the activation chose the head, and there was no regression.
        head["task"] = "multi_label" if head.get("activation") == "sigmoid" else "classification"
        for key in ("loss", "huber_delta", "target_scaling"):
            head.setdefault(key, getattr(HeadConfig, key))
    for stage in data.get("stages") or []:
        if isinstance(stage, dict) and "batch_norm" not in stage and "train_bn" in stage:
            train_bn = stage.pop("train_bn")
            stage["batch_norm"] = ("train" if train_bn and stage.get("trainable") != "head"
                                   else "frozen")
            stage["train_bn"] = None
    return data


#: Sources that read a pair of text columns (``data.text_column: [a, b]``).
PAIR_SOURCES = ("csv", "jsonl", "parquet", "arrays")
#: The names of a sentence-pair export's two ``serving_default`` inputs, whatever the columns are
#: called (column names need not be valid TensorFlow input names).
PAIR_INPUTS = ("text_a", "text_b")


def text_columns(d: DataConfig) -> tuple[str, ...]:
    """``data.text_column`` as a tuple: one name, or two for sentence pairs."""
    return (d.text_column,) if isinstance(d.text_column, str) else tuple(d.text_column)


def label_columns(d: DataConfig) -> tuple[str, ...]:
    """``data.label_column`` as a tuple: one name, or a multi-target regression's targets."""
    return (d.label_column,) if isinstance(d.label_column, str) else tuple(d.label_column)


def _check_label_column(cfg: Config) -> None:
    d = cfg.data
    if isinstance(d.label_column, str):
        if not d.label_column.strip():
            raise ConfigError(expected("a column name", "data.label_column", d.label_column))
        return
    names = d.label_column
    if not names or any(not n.strip() for n in names) or len(set(names)) != len(names):
        raise ConfigError(expected("one column name or a list of different ones (the targets of "
                                   "a multi-target regression)", "data.label_column", names))
    if head_task(cfg.head) != "regression":
        raise ConfigError(expected("head.task: regression with a list of label columns (one "
                                   "float target per column)", "data.label_column", names))
    if d.source != "csv":
        raise ConfigError(expected(f"one label column for data.source: {d.source} (regression "
                                   "targets are read from csv)", "data.label_column", names))


def _check_text_column(d: DataConfig) -> None:
    if isinstance(d.text_column, str):
        if not d.text_column.strip():
            raise ConfigError(expected("a column name", "data.text_column", d.text_column))
        return
    names = d.text_column
    if len(names) != 2 or any(not n.strip() for n in names) or names[0] == names[1]:
        raise ConfigError(expected("one column name or a list of two different ones (a sentence "
                                   "pair, e.g. [premise, hypothesis])", "data.text_column", names))
    if d.source not in PAIR_SOURCES:
        raise ConfigError(expected(f"one column name for data.source: {d.source} (pairs are "
                                   f"read from {', '.join(PAIR_SOURCES)})", "data.text_column",
                                   names))


def validate(cfg: Config) -> Config:
    """Checks values and combinations that the types alone do not catch. Returns `cfg`."""
    if not cfg.name or "/" in cfg.name or "\\" in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(expected("a model name without path separators", "name", cfg.name))
    b = cfg.backbone
    if not b.name:
        raise ConfigError(expected("a backbone name (see `kerasft backbones`)", "backbone.name",
                                   ""))
    if b.sequence_length is not None:
        _check_positive(b.sequence_length, "backbone.sequence_length")
    _check_positive(b.num_layers, "backbone.num_layers", allow_none=True)
    if b.input_shape is not None and (
        len(b.input_shape) != 3 or b.input_shape[2] != 3 or min(b.input_shape) <= 0
    ):
        raise ConfigError(expected("[height, width, 3]", "backbone.input_shape", b.input_shape))
    if b.weights not in BACKBONE_WEIGHTS and not b.weights.endswith(".weights.h5"):
        raise ConfigError(
            expected("pretrained (or its alias imagenet), none or a path to a .weights.h5 file",
                     "backbone.weights", b.weights)
        )
    b.weights = WEIGHTS_ALIASES.get(b.weights, b.weights)

    h = cfg.head
    _check_choice(h.activation, HEAD_ACTIVATIONS, "head.activation")
    if h.task is not None:
        _check_choice(h.task, HEAD_TASKS, "head.task")
        if h.activation == "sigmoid" and h.task != "multi_label":
            raise ConfigError(
                f"head: expected head.activation softmax (the default) with head.task {h.task}; "
                f"sigmoid means task multi_label. Received: head.task={h.task!r}, "
                f"head.activation={h.activation!r}")
    _check_choice(h.loss, HEAD_LOSSES, "head.loss")
    _check_choice(h.target_scaling, TARGET_SCALINGS, "head.target_scaling")
    _check_positive(h.huber_delta, "head.huber_delta")
    if head_task(h) not in (None, "regression") and (
            h.loss != "mse" or h.target_scaling != "none"):
        raise ConfigError(
            f"head: expected head.loss and head.target_scaling only with head.task regression. "
            f"Received: head.task={head_task(h)!r}, head.loss={h.loss!r}, "
            f"head.target_scaling={h.target_scaling!r}")
    _check_choice(h.pooling, HEAD_POOLINGS, "head.pooling")
    if not 0.0 <= h.dropout < 1.0:
        raise ConfigError(expected("a dropout rate in [0, 1)", "head.dropout", h.dropout))
    if h.l2 < 0:
        raise ConfigError(expected("a non-negative L2 factor", "head.l2", h.l2))
    if not 0.0 < h.threshold < 1.0:
        raise ConfigError(expected("a probability threshold in (0, 1)", "head.threshold",
                                   h.threshold))
    for i, units in enumerate(h.hidden_units):
        _check_positive(units, f"head.hidden_units[{i}]")

    d = cfg.data
    _check_choice(d.source, DATA_SOURCES, "data.source")
    _check_positive(d.batch_size, "data.batch_size")
    _check_positive(d.max_examples, "data.max_examples", allow_none=True)
    _check_positive(d.shuffle_buffer, "data.shuffle_buffer")
    if d.stream not in (True, False, "auto"):
        raise ConfigError(expected("auto, true or false", "data.stream", d.stream))
    if d.stream is True and d.source != "csv":
        raise ConfigError(expected("data.source csv for data.stream: true (only CSV files are "
                                   "streamed)", "data.source", d.source))
    if d.skip_rows < 0:
        raise ConfigError(expected("0 or more rows", "data.skip_rows", d.skip_rows))
    _check_fraction(d.validation_split, "data.validation_split")
    _check_fraction(d.test_split, "data.test_split")
    if d.validation and d.validation_split is not None:
        raise ConfigError(
            "data: expected either data.validation or data.validation_split, not both. "
            f"Received: data.validation={d.validation!r}, "
            f"data.validation_split={d.validation_split}"
        )
    if d.test and d.test_split is not None:
        raise ConfigError(
            "data: expected either data.test or data.test_split, not both. "
            f"Received: data.test={d.test!r}, data.test_split={d.test_split}"
        )
    if (d.validation_split or 0) + (d.test_split or 0) >= 1.0:
        raise ConfigError(
            "data: expected data.validation_split + data.test_split < 1. "
            f"Received: data.validation_split={d.validation_split}, data.test_split={d.test_split}"
        )
    _check_text_column(d)
    _check_label_column(cfg)
    if d.source == "tfds" and not d.tfds_name:
        raise ConfigError(expected("a tfds dataset name when data.source is tfds",
                                   "data.tfds_name", d.tfds_name))
    for aug in d.augmentation:
        _check_choice(aug, AUGMENTATIONS, f"data.augmentation.{aug}")
        if aug in MIXING_AUGMENTATIONS:
            parse_mixing(aug, d.augmentation[aug], f"data.augmentation.{aug}")
        elif aug == "rand_augment":
            parse_rand_augment(d.augmentation[aug], f"data.augmentation.{aug}")
    check_mixing(cfg, "text" if d.source in ("csv", "jsonl", "parquet", "text_folder") else None)
    _check_class_weight(d.class_weight, cfg.head.activation)
    if h.task == "regression" and d.source not in ("csv", "arrays"):  # arrays: fit() says
        raise ConfigError(expected("csv with head.task regression (the other sources' labels are "
                                   "read as class names)", "data.source", d.source))
    if h.task == TOKEN_TASK:
        _check_token_task(cfg)
    elif d.source == "conll":
        raise ConfigError(expected("head.task token_classification with data.source conll "
                                   "(CoNLL files tag words, not examples)", "head.task", h.task))
    if h.task == "regression" and d.class_weight is not None:
        raise ConfigError(expected("no data.class_weight with head.task regression (class "
                                   "weights need classes)", "data.class_weight", d.class_weight))

    names = set()
    for i, s in enumerate(cfg.stages):
        key = f"stages[{i}]"
        if s.name in names:
            raise ConfigError(expected("unique stage names", f"{key}.name", s.name))
        names.add(s.name)
        parse_trainable(s.trainable, f"{key}.trainable")
        s.lora = parse_lora(s.lora, f"{key}.lora")
        s.ema = parse_ema(s.ema, f"{key}.ema")
        if s.lora is not None and s.trainable == "head":
            raise ConfigError(expected(
                "all, {top_n: N} or {from_layer: NAME} with lora (the backbone layers that get "
                "adapters; a head stage has none)", f"{key}.trainable", s.trainable))
        s.distill = parse_distill(s.distill, f"{key}.distill")
        if s.distill is not None and head_task(cfg.head) not in (None, "classification"):
            raise ConfigError(expected("a classification head with distill (soft labels are "
                                       "class probabilities)", "head.task", cfg.head.task))
        if s.distill is not None and mixes_labels(cfg.data.augmentation):
            raise ConfigError(expected(
                "no mixup / cutmix with a distill stage (the teacher's soft labels are per "
                "example; mixed batches would need mixed teacher answers)", f"{key}.distill",
                s.distill["teacher"]))
        s.prune = parse_prune(s.prune, f"{key}.prune")
        if s.prune is not None and s.lora is not None:
            raise ConfigError(expected("no lora in a prune stage (the adapters are merged into "
                                       "the kernels after the masks)", f"{key}.lora", s.lora))
        _check_positive(s.epochs, f"{key}.epochs")
        if isinstance(s.learning_rate, str):
            if s.learning_rate != "auto":
                raise ConfigError(expected("a positive number or auto", f"{key}.learning_rate",
                                           s.learning_rate))
        else:
            _check_positive(s.learning_rate, f"{key}.learning_rate")
        _check_lr_groups(s, key)
        _check_choice(s.optimizer, OPTIMIZERS, f"{key}.optimizer")
        _check_choice(s.schedule, SCHEDULES, f"{key}.schedule")
        if s.warmup_steps is not None and s.warmup_ratio is not None:
            raise ConfigError(
                f"{key}: expected warmup_steps or warmup_ratio, not both. "
                f"Received: warmup_steps={s.warmup_steps}, warmup_ratio={s.warmup_ratio}"
            )
        if s.warmup_steps is not None and s.warmup_steps < 0:
            raise ConfigError(expected("a non-negative integer", f"{key}.warmup_steps",
                                       s.warmup_steps))
        if s.warmup_ratio is not None and not 0.0 <= s.warmup_ratio < 1.0:
            raise ConfigError(expected("a fraction in [0, 1)", f"{key}.warmup_ratio",
                                       s.warmup_ratio))
        if s.weight_decay < 0:
            raise ConfigError(expected("a non-negative number", f"{key}.weight_decay",
                                       s.weight_decay))
        for j, name in enumerate(s.weight_decay_exclude):
            if not name.strip():
                raise ConfigError(expected(
                    "bias, normalization, embeddings or a variable's short name (e.g. kernel)",
                    f"{key}.weight_decay_exclude[{j}]", name))
        if not 0.0 <= s.label_smoothing < 1.0:
            raise ConfigError(expected("a number in [0, 1)", f"{key}.label_smoothing",
                                       s.label_smoothing))
        _check_positive(s.clipnorm, f"{key}.clipnorm", allow_none=True)
        _check_monitor(s.early_stopping.monitor, head_task(cfg.head),
                       f"{key}.early_stopping.monitor")
        resolve_batch_norm(s, b.weights, key)
        if s.early_stopping.patience < 0:
            raise ConfigError(expected("a non-negative patience", f"{key}.early_stopping.patience",
                                       s.early_stopping.patience))

    t = cfg.training
    _check_choice(t.strategy, STRATEGIES, "training.strategy")
    _check_choice(t.mixed_precision, MIXED_PRECISION, "training.mixed_precision")
    _check_choice(t.lr_scaling, LR_SCALING, "training.lr_scaling")
    _check_positive(t.steps_per_execution, "training.steps_per_execution")
    if t.strategy == "multi_worker":  # auto + multi-worker TF_CONFIG: checked in resolve_strategy
        check_strategy_options(cfg, t.strategy)
    _check_positive(t.gradient_accumulation_steps, "training.gradient_accumulation_steps")
    _check_choice(t.verbose, ("auto", "bar", "epoch", "silent"), "training.verbose")
    _check_choice(t.cache_features, ("auto", "on", "off"), "training.cache_features")
    _check_monitor(t.monitor, head_task(cfg.head), "training.monitor")
    _check_positive(d.bucket_multiple, "data.bucket_multiple")
    f = t.lr_find
    _check_positive(f.min_lr, "training.lr_find.min_lr")
    _check_positive(f.max_lr, "training.lr_find.max_lr")
    if f.max_lr <= f.min_lr:
        raise ConfigError(expected(f"a number above training.lr_find.min_lr ({f.min_lr:g})",
                                   "training.lr_find.max_lr", f.max_lr))
    if f.steps < 5:
        raise ConfigError(expected("at least 5 steps", "training.lr_find.steps", f.steps))
    _check_choice(f.suggestion, LR_FIND_SUGGESTIONS, "training.lr_find.suggestion")

    e = cfg.export
    if e.version != "auto" and not (
        isinstance(e.version, int) and not isinstance(e.version, bool) and e.version > 0
    ):
        raise ConfigError(expected("'auto' or a positive integer", "export.version", e.version))
    check_export_quantize(e.quantize, "export.quantize")
    check_export_precision(e.precision, "export.precision", e.quantize)
    _validate_tune(cfg)
    return cfg


def tune_direction(metric: str, direction: str = "auto") -> str:
    """``tune.direction``, or for ``auto`` the metric's: minimize a loss or an error."""
    if direction != "auto":
        return direction
    lower = ("loss", "mae", "rmse")
    return "minimize" if any(metric.endswith(k) for k in lower) else "maximize"


def _tune_path(cfg: Config, dotted: str) -> None:
    """Checks that the dotted `dotted` (as ``--set`` takes it) names a key of `cfg`."""
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise ConfigError(expected("a dotted config key such as head.dropout", "tune.params",
                                   dotted))
    if parts[0] == "tune":
        raise ConfigError(expected("a key outside tune", "tune.params", dotted))
    node: Any = cfg
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if dataclasses.is_dataclass(node):
            names = [f.name for f in dataclasses.fields(node) if f.name != "tune"]
            if part not in names:
                prefix = f"{where}." if where else ""
                raise ConfigError(
                    expected(f"a known config key (valid{' under ' + where if where else ''}: "
                             f"{', '.join(names)})", "tune.params", dotted)
                    + _did_you_mean(part, names).replace(" '", f" '{prefix}", 1))
            node = getattr(node, part)
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(expected(f"an index below {len(node)} ({where} has "
                                           f"{len(node)})", "tune.params", dotted))
            node = node[int(part)]
        else:  # a free mapping (data.augmentation) or an unset value: the values check it
            return


def _tune_values(spec: Any, key: str) -> list[Any]:
    """The candidate values of one ``tune.params`` entry to check against the config."""
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(expected("{low: A, high: B[, log: true][, step: S]} or "
                                   "{choices: [...]}", key, spec))
    for name in spec:
        if name not in TUNE_SPEC_KEYS:
            raise ConfigError(expected(f"one of {', '.join(TUNE_SPEC_KEYS)}", f"{key}.{name}",
                                       name) + _did_you_mean(str(name), TUNE_SPEC_KEYS))
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise ConfigError(expected("choices alone (or low / high without choices)",
                                       f"{key}.{extra[0]}", spec[extra[0]]))
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(expected("a non-empty list", f"{key}.choices", choices))
        return list(choices)
    low, high = spec.get("low"), spec.get("high")
    for name, value in (("low", low), ("high", high), ("step", spec.get("step", 1))):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(expected("a number", f"{key}.{name}", value))
    if not low < high:
        raise ConfigError(expected("low < high", f"{key}.high", high) + f" (low {low})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(expected("true or false", f"{key}.log", log))
    if log and low <= 0:
        raise ConfigError(expected("low > 0 with log: true", f"{key}.low", low))
    if "step" in spec and (log or spec["step"] <= 0):
        raise ConfigError(expected("a positive step, without log: true", f"{key}.step",
                                   spec["step"]))
    return [low, high]


def _validate_tune(cfg: Config) -> None:
    t = cfg.tune
    _check_choice(t.metric, TUNE_METRICS, "tune.metric")
    _check_choice(t.direction, TUNE_DIRECTIONS, "tune.direction")
    _check_choice(t.pruner, TUNE_PRUNERS, "tune.pruner")
    _check_choice(t.sampler, TUNE_SAMPLERS, "tune.sampler")
    _check_positive(t.trials, "tune.trials")
    if not t.params:
        return
    base = cfg.to_dict()
    base["tune"] = dataclasses.asdict(TuneConfig())  # the candidates are checked without it
    for dotted, spec in t.params.items():
        dotted = str(dotted)
        key = f"tune.params.{dotted}"
        _tune_path(cfg, dotted)
        for value in _tune_values(spec, key):
            data = copy.deepcopy(base)
            apply_override(data, dotted.split("."), value)
            try:
                validate(_build(Config, data, ""))
            except ConfigError as e:
                raise ConfigError(f"{key}: the value {value!r} is not valid: {e}") from None
def _check_token_task(cfg: Config) -> None:
    """What head.task token_classification cannot combine with."""
    d = cfg.data
    if d.source not in TOKEN_SOURCES:
        raise ConfigError(expected(f"one of {', '.join(TOKEN_SOURCES)} with head.task "
                                   "token_classification", "data.source", d.source))
    if d.class_weight is not None:
        raise ConfigError(expected("no data.class_weight with head.task token_classification "
                                   "(Keras weighs examples, not words)", "data.class_weight",
                                   d.class_weight))
    for i, s in enumerate(cfg.stages):
        if s.label_smoothing:
            raise ConfigError(expected("0 with head.task token_classification",
                                       f"stages[{i}].label_smoothing", s.label_smoothing))
    if cfg.head.hidden_units:
        raise ConfigError(expected("[] with head.task token_classification (one Dense per "
                                   "token)", "head.hidden_units", cfg.head.hidden_units))
    if cfg.export.quantize != "none":
        raise ConfigError(expected("none with head.task token_classification",
                                   "export.quantize", cfg.export.quantize))
    if cfg.export.precision != "float32":
        raise ConfigError(expected("float32 with head.task token_classification",
                                   "export.precision", cfg.export.precision))
    for key in ("tokens_column", "tags_column"):
        if not getattr(d, key):
            raise ConfigError(expected("a column name", f"data.{key}", getattr(d, key)))


def refuse_token_task(cfg: Config) -> None:
    """``kerasft tune``, ``cv`` and ``lr-find`` drive ``kerasft.api.FineTuner``; token tagging
    runs through ``kerasft.tagger.TokenTagger``, which none of them knows yet."""
    if head_task(cfg.head) == "token_classification":
        raise ConfigError(expected("head.task classification, multi_label or regression (kerasft "
                                   "tune, cv and lr-find do not support token_classification "
                                   "yet)", "head.task", cfg.head.task))


def check_export_quantize(value: Any, key: str) -> str:
    """``export.quantize`` / ``kerasft export --quantize`` for a SavedModel: none or int8."""
    if value in ("float16", "dynamic"):
        raise ConfigError(expected("one of none, int8 for a SavedModel (float16 and dynamic are "
                                   "TFLite quantisations: kerasft export RUN_DIR --format tflite "
                                   f"--quantize {value})", key, value))
    _check_choice(value, EXPORT_QUANTIZE, key)
    return value


def check_export_precision(value: Any, key: str, quantize: str = "none") -> str:
    """``export.precision`` / ``kerasft export --precision``: float32 or bfloat16 (not with int8
    weights, which Keras serves from a float32 graph)."""
    _check_choice(value, EXPORT_PRECISION, key)
    if value != "float32" and quantize != "none":
        raise ConfigError(expected(f"float32 with export.quantize: {quantize}", key, value))
    return value


# ---------------------------------------------------------------------------------------------
# Loading: defaults < YAML < overrides.


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a YAML mapping with `yaml.safe_load`; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(expected("an existing YAML config file", "config", str(path)))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path}: expected a readable UTF-8 YAML file. Received: error={e}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: expected valid YAML. Received: error={problem!r}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level. "
                          f"Received: top level={type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses ``a.b=value``; the value is read as a YAML scalar or list (``[1, 2]``)."""
    if "=" not in text:
        raise ConfigError(expected("KEY=VALUE (e.g. stages.0.epochs=3)", "--set", text))
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(expected("a dotted key such as data.batch_size", "--set", text))
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Sets `value` at the dotted `path` in a nested dict / list (``stages.1.epochs``)."""
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        dotted = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(expected(f"an index below {len(node)}", "--set " + dotted, part))
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]


def _relative_to(base: str, value: Any) -> Any:
    if not isinstance(value, str) or not value or value.startswith("pkg://") or "://" in value:
        return value
    if os.path.isabs(os.path.expanduser(value)) or value.startswith("~"):
        return value
    return os.path.normpath(os.path.join(base, value))


def _looks_like_preset_path(value: Any, base: str) -> bool:
    """A local preset folder rather than a KerasHub preset name (``bert_base_en_uncased``)."""
    return isinstance(value, str) and "://" not in value and (
        "/" in value or os.sep in value or value.startswith(".")
        or os.path.isdir(os.path.join(base, value)))


def resolve_input_paths(data: dict[str, Any], base: str | os.PathLike) -> dict[str, Any]:
    """Makes a YAML's relative *input* paths relative to the working directory instead of to the
    YAML's folder `base`: data files and folders, ``data.tfds_data_dir``, a local
    ``backbone.preset`` and a ``backbone.weights`` file. ``pkg://``, URLs, absolute paths and
    outputs (``output_dir``, ``export.dir``: where the command runs) are left alone."""
    base = os.fspath(base)
    if base in ("", "."):
        return data
    data = copy.deepcopy(data)
    section = data.get("data")
    if isinstance(section, dict):
        if section.get("source", DataConfig.source) in PATH_SOURCES:
            for key in ("train", "validation", "test"):
                if key in section:
                    section[key] = _relative_to(base, section[key])
        if "tfds_data_dir" in section:
            section["tfds_data_dir"] = _relative_to(base, section["tfds_data_dir"])
    backbone = data.get("backbone")
    if isinstance(backbone, dict):
        if _looks_like_preset_path(backbone.get("preset"), base):
            backbone["preset"] = _relative_to(base, backbone["preset"])
        weights = backbone.get("weights")
        if isinstance(weights, str) and weights.endswith(".weights.h5"):
            backbone["weights"] = _relative_to(base, weights)
    return data


def _default_dict() -> dict[str, Any]:
    return Config().to_dict()


def load_config(
    source: str | os.PathLike | dict[str, Any] | Config | None = None,
    overrides: typing.Sequence[str] = (),
    resolve_paths: bool = True,
    **kwargs: Any,
) -> Config:
    """Builds a validated Config from a YAML path, a dict or a Config, plus overrides.

    Relative input paths in a YAML file are relative to that file's folder (see
    :func:`resolve_input_paths`; off with ``resolve_paths=False``, for a run folder's resolved
    config.yaml, whose paths are relative to where the run was started); `overrides` and
    `kwargs` are relative to the working directory.

    `overrides` are ``key=value`` strings (as given to ``--set``); `kwargs` are Python overrides
    with ``__`` or ``.`` between levels (``data__batch_size=16``), applied after `overrides`.
    """
    if isinstance(source, Config):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    elif source is None:
        data = {}
    else:
        data = read_yaml(source)
        if resolve_paths:
            data = resolve_input_paths(data, os.path.dirname(os.fspath(source)))
    # Overrides of stages.N.x are applied to the YAML's stages list, so make sure one exists.
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "stages" and "stages" not in data:
            data["stages"] = [dataclasses.asdict(s) for s in _default_stages()]
        apply_override(data, path, value)
    for key, value in kwargs.items():
        path = key.replace("__", ".").split(".")
        if path[0] == "stages" and "stages" not in data:
            data["stages"] = [dataclasses.asdict(s) for s in _default_stages()]
        apply_override(data, path, value)
    cfg = _build(Config, data, "")
    return validate(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Writes the resolved config as YAML, atomically."""
    atomic_write(path, cfg.to_yaml())


def check_strategy_options(cfg: Config, kind: str) -> None:
    """Rejects options that the resolved strategy `kind` cannot run (one-line ConfigError)."""
    spe = cfg.training.steps_per_execution
    if kind == "multi_worker" and spe > 1:
        raise ConfigError(expected(
            f"1 with training.strategy multi_worker ({STEPS_PER_EXECUTION_BUG})",
            "training.steps_per_execution", spe))
