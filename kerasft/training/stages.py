"""Step 5 of a run: stages, each a small freeze/unfreeze template plus its optimizer.

A stage says which backbone weights train (``trainable``), how its BatchNormalization layers
behave (``batch_norm``), for how many epochs, and with which optimizer, learning rate and
schedule. A stage always recompiles the model: Keras only picks up a change of ``trainable``
(and of the backbone's call mode) at compile time.

``batch_norm`` values (``train_bn: true`` / ``false`` is the older spelling of train / frozen):
- ``frozen``: BN layers do not train and the backbone is called in inference mode, so BN
  normalises with its moving statistics and never updates them (Keras's transfer-learning
  guide). The default, over pretrained and random weights alike (docs/BENCHMARKS.md, "BatchNorm
  from random weights"); ``head`` stages are always frozen.
- ``train``: the BN layers among the layers the stage unfreezes train (gamma/beta), and during
  ``fit`` the backbone runs in training mode: those layers normalise with batch statistics and
  update their moving averages, and the backbone's own dropout (EfficientNet's) is active, as in
  a plain Keras ``model.fit``. Evaluation, prediction and the export still run in inference mode
  (moving statistics), which with a BN momentum of 0.99-0.999 take many steps to catch up with
  the batch statistics the weights were trained with.
  BN layers outside the unfrozen ones stay in inference mode (Keras 3 runs a BN layer with
  ``trainable = False`` in inference mode whatever ``training`` says).

``trainable`` values:
- ``head``: the backbone is frozen; only the head trains.
- ``all``: every backbone layer trains (BN layers only with ``batch_norm: train``).
- ``{top_n: N}``: the top N backbone layers *that will train* train: layers that own weights,
  minus BatchNorm layers when BN is frozen in the stage and minus layers the features do not use
  (BERT's ``pooled_dense`` under mean pooling); see ``kerasft backbones --layers NAME``.
- ``{from_layer: NAME}``: layer NAME and every layer above it train.

With ``lora`` (``{rank, alpha, layers}``), ``trainable`` picks backbone layers as above, but they
do not train: their Dense / EinsumDense sublayers named in ``lora.layers`` (default: KerasHub's
query / value projections) get LoRA adapters, and only the adapters and the head train. ``top_n``
then counts the layers that will get adapters (BERT's transformer blocks): ``top_n: 2`` puts
adapters into the top two blocks
(kerasft/models/lora.py). run_stages enables them after :func:`apply_trainable` and merges them
into the kernels at the stage's end, so a later stage starts from plain, merged weights.
"""

from __future__ import annotations

import math
from typing import Any

from kerasft.config import (
    ConfigError,
    HeadConfig,
    StageConfig,
    head_task,
    parse_ema,
    parse_lora,
    parse_trainable,
    resolve_batch_norm,
)
from kerasft.errors import expected
from kerasft.models.backbone import Backbone, set_batch_statistics
from kerasft.models.layers import unfreeze_units


def _is_batch_norm(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def will_train(layer: Any, backbone: Backbone, bn_trains: bool) -> bool:
    """Whether `layer` trains when a stage unfreezes it: it owns weights, the features use it
    (not BERT's ``pooled_dense`` under mean pooling) and it is not a frozen BatchNorm."""
    return (bool(layer.weights) and layer.name not in backbone.unused_layers
            and (bn_trains or not _is_batch_norm(layer)))


def trainable_units(backbone: Backbone, bn_trains: bool) -> list[Any]:
    """The backbone layers ``top_n`` counts, bottom to top: the ones that will train, so
    ``top_n: N`` trains N layers (a frozen BatchNorm or an unused layer is never counted)."""
    return [layer for layer in unfreeze_units(backbone.network)
            if will_train(layer, backbone, bn_trains)]


def apply_trainable(
    backbone: Backbone, stage: StageConfig, key: str = "trainable",
    bn_trains: bool | None = None,
) -> dict[str, Any]:
    """Sets ``trainable`` on the backbone's layers and the backbone's call mode for `stage`;
    returns what was unfrozen and the BatchNorm mode.

    `bn_trains` (default: whether the stage's ``batch_norm`` is ``train``) says whether
    BatchNormalization layers train in this stage; ``top_n`` counts only layers that will train.
    A stage that would unfreeze no backbone layer (other than ``head``) is a one-line error
    naming the stage.
    """
    kind, arg = parse_trainable(stage.trainable, key)
    batch_norm = batch_norm_mode(backbone, stage, key)
    set_batch_statistics(backbone, batch_norm == "train")
    network = backbone.network
    if bn_trains is None:
        bn_trains = batch_norm == "train"
    if kind == "head":
        network.trainable = False
        return {"trainable": "head", "unfrozen_layers": [], "batch_norm": batch_norm}

    lora_key = key.removesuffix(".trainable") + ".lora" if key != "trainable" else "lora"
    lora = parse_lora(stage.lora, lora_key)
    if lora is not None:
        return _lora_units(backbone, stage, kind, arg, lora, key, lora_key, batch_norm)
    network.trainable = True
    if kind == "all":
        chosen = list(network.layers)
    elif kind == "top_n":
        units = trainable_units(backbone, bn_trains)
        if arg > len(units):
            bn = "" if bn_trains else ", BatchNorm frozen"
            raise ConfigError(
                expected(f"at most {len(units)} (the layers of {backbone.name} that can train"
                         f"{bn})", f"{key}.top_n", arg)
            )
        chosen = units[-arg:]
    else:
        names = [layer.name for layer in network.layers]
        if arg not in names:
            import difflib

            close = difflib.get_close_matches(arg, names, n=3)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ConfigError(
                expected(f"a layer of {backbone.name} "
                         f"(`kerasft backbones --layers {backbone.name}` lists them)",
                         f"{key}.from_layer", arg) + hint
            )
        chosen = list(network.layers[names.index(arg):])
    chosen_ids = {id(layer) for layer in chosen}
    for layer in network.layers:
        layer.trainable = id(layer) in chosen_ids and (
            not layer.weights or will_train(layer, backbone, bn_trains))
    unfrozen = [layer.name for layer in network.layers if layer.trainable and layer.weights]
    if not unfrozen:
        network.trainable = False
        raise ConfigError(expected(
            "a stage that unfreezes at least one backbone layer with weights (BatchNorm layers "
            "train only with batch_norm: train; use trainable: head to train the head alone)",
            key, stage.trainable, where=f"stage '{stage.name}'"))
    return {"trainable": stage.trainable, "unfrozen_layers": unfrozen, "batch_norm": batch_norm}


def _lora_units(backbone: Backbone, stage: StageConfig, kind: str, arg: Any,
                lora: dict[str, Any], key: str, lora_key: str, batch_norm: str) -> dict[str, Any]:
    """apply_trainable for a LoRA stage: the backbone layers `trainable` picks among those that
    can hold adapters (``top_n`` counts only those) and their adapter targets; the backbone
    stays frozen until run_stages enables the adapters."""
    from kerasft.models.lora import adapter_units

    units = adapter_units(backbone, lora, lora_key)
    backbone.network.trainable = False
    if kind == "top_n":
        if arg > len(units):
            raise ConfigError(expected(
                f"at most {len(units)} (the layers of {backbone.name} with LoRA targets)",
                f"{key}.top_n", arg))
        units = units[-arg:]
    elif kind == "from_layer":
        names = [layer.name for layer in backbone.network.layers]
        if arg not in names:
            raise ConfigError(expected(f"a layer of {backbone.name} (`kerasft backbones "
                                       f"--layers {backbone.name}` lists them)",
                                       f"{key}.from_layer", arg))
        first = names.index(arg)
        units = [(u, t) for u, t in units if names.index(u.name) >= first]
        if not units:
            raise ConfigError(expected("a layer at or below a layer with LoRA targets",
                                       f"{key}.from_layer", arg))
    return {"trainable": stage.trainable, "unfrozen_layers": [u.name for u, _ in units],
            "batch_norm": batch_norm, "lora": lora,
            "lora_targets": [t for _, targets in units for t in targets]}


def batch_norm_mode(backbone: Backbone, stage: StageConfig, key: str = "trainable") -> str:
    """`stage`'s BatchNorm mode, ``frozen`` or ``train``: resolved by config validation, and
    checked (or, for a StageConfig built in code, resolved) again here."""
    prefix = key.removesuffix(".trainable") if key != "trainable" else "stage"
    return resolve_batch_norm(stage, str(backbone.info.get("weights", "imagenet")), prefix)


def check_stages(backbone: Backbone, cfg: Any) -> None:
    """Checks every stage's ``trainable`` against `backbone` (``top_n`` in range, ``from_layer``
    found) before training starts; leaves the backbone frozen, in inference mode."""
    for i, stage in enumerate(cfg.stages):
        apply_trainable(backbone, stage, key=f"stages[{i}].trainable")
    backbone.network.trainable = False
    set_batch_statistics(backbone, False)


def count_params(weights: list[Any]) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules and optimizers.


def _schedule_class() -> type:
    import keras

    @keras.saving.register_keras_serializable(package="kerasft")
    class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warmup to `peak`, then constant / cosine / linear / exponential decay.

        Decays reach 0 (cosine, linear) or 1% of the peak (exponential) at `total_steps`.
        """

        def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0,
                     decay: str = "constant") -> None:
            self.peak = float(peak)
            self.total_steps = int(total_steps)
            self.warmup_steps = int(warmup_steps)
            self.decay = decay

        def __call__(self, step: Any) -> Any:
            from keras import ops

            step = ops.cast(step, "float32")
            peak = ops.cast(self.peak, "float32")
            warmup = float(max(self.warmup_steps, 0))
            span = float(max(self.total_steps - self.warmup_steps, 1))
            progress = ops.clip((step - warmup) / span, 0.0, 1.0)
            if self.decay == "cosine":
                decayed = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
            elif self.decay == "linear":
                decayed = peak * (1.0 - progress)
            elif self.decay == "exponential":
                decayed = peak * ops.power(0.01, progress)
            else:
                decayed = peak * ops.ones_like(progress)
            if warmup <= 0:
                return decayed
            warm = peak * (step + 1.0) / warmup
            return ops.where(step < warmup, warm, decayed)

        def get_config(self) -> dict[str, Any]:
            return {"peak": self.peak, "total_steps": self.total_steps,
                    "warmup_steps": self.warmup_steps, "decay": self.decay}

    return WarmupSchedule


_SCHEDULE: type | None = None


def make_schedule(stage: StageConfig, steps_per_epoch: int, lr_scale: float = 1.0) -> Any:
    """The stage's learning rate: a float (constant, no warmup) or a schedule (``auto`` must
    have been resolved to a number first: kerasft/training/lr_find.py)."""
    if not isinstance(stage.learning_rate, (int, float)):
        raise ValueError(f"stage '{stage.name}': learning_rate {stage.learning_rate!r} is not "
                         "resolved to a number")
    global _SCHEDULE
    total = max(1, steps_per_epoch * stage.epochs)
    warmup = stage.warmup_steps
    if warmup is None:
        warmup = int(round((stage.warmup_ratio or 0.0) * total))
    peak = stage.learning_rate * lr_scale
    if stage.schedule == "constant" and warmup == 0:
        return peak
    if _SCHEDULE is None:
        _SCHEDULE = _schedule_class()
    return _SCHEDULE(peak=peak, total_steps=total, warmup_steps=warmup, decay=stage.schedule)


def make_optimizer(stage: StageConfig, steps_per_epoch: int, lr_scale: float = 1.0,
                   gradient_accumulation_steps: int | None = None,
                   multipliers: dict[int, float] | None = None,
                   learning_rate: Any = None) -> Any:
    """A fresh Keras optimizer for `stage` (one per stage: state does not leak across).

    With `multipliers` (``id(variable) -> factor``, kerasft/training/lr_groups.py) each
    variable's updates use the learning rate times its factor; `learning_rate` (a float or a
    schedule) replaces the stage's own (the LR sweep's schedule). Adam and AdamW take their
    per-variable update from one fused TensorFlow kernel (kerasft/training/fused_adam.py)."""
    import keras

    kwargs: dict[str, Any] = {
        "learning_rate": learning_rate if learning_rate is not None
        else make_schedule(stage, steps_per_epoch, lr_scale),
        "clipnorm": stage.clipnorm,
    }
    if gradient_accumulation_steps and gradient_accumulation_steps > 1:
        kwargs["gradient_accumulation_steps"] = gradient_accumulation_steps
    ema = parse_ema(stage.ema)
    if ema is not None:  # run_stages swaps the averages in for evaluation and saving
        kwargs.update(use_ema=True, ema_momentum=ema["momentum"])
    from kerasft.training.fused_adam import fused_class

    if stage.optimizer == "adamw":
        cls, kwargs["weight_decay"] = fused_class(keras.optimizers.AdamW), stage.weight_decay or 0.0
    elif stage.optimizer == "sgd":
        cls, kwargs["momentum"] = keras.optimizers.SGD, stage.momentum
    else:
        cls = fused_class(keras.optimizers.Adam)
    if stage.weight_decay and stage.optimizer != "adamw":
        kwargs["weight_decay"] = stage.weight_decay
    if not multipliers:
        return cls(**kwargs)
    from kerasft.training.lr_groups import layerwise_class

    optimizer = layerwise_class(cls)(**kwargs)
    optimizer.set_lr_multipliers(multipliers)
    return optimizer


def weight_decay_excluded(model: Any, exclude: list[str]) -> list[Any]:
    """The variables of `model` that weight decay must leave alone, picked by layer type or by
    short name (Keras's ``exclude_from_weight_decay(var_names=...)`` matches short names such as
    ``gamma`` or ``bias`` as regular expressions, never paths, so kerasft passes a ``var_list``).

    Entries of `exclude`: ``bias`` (every variable named ``bias``), ``normalization`` (all weights
    of LayerNormalization, BatchNormalization, GroupNormalization and RMSNormalization layers:
    gamma/beta), ``embeddings`` (Embedding layers and variables named ``embeddings``, e.g.
    KerasHub's position embeddings); anything else is a variable short name (``kernel``).
    BERT's own recipe excludes ``LayerNorm``, ``layer_norm`` and ``bias``: the default
    ``[bias, normalization]`` is that, and embeddings keep their decay unless listed.
    """
    import keras

    groups = set(exclude)
    norm_types = tuple(getattr(keras.layers, n) for n in (
        "LayerNormalization", "BatchNormalization", "GroupNormalization", "RMSNormalization")
        if hasattr(keras.layers, n))
    chosen: dict[int, Any] = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if ("normalization" in groups and isinstance(layer, norm_types)) or (
                "embeddings" in groups and isinstance(layer, keras.layers.Embedding)):
            chosen.update((id(v), v) for v in layer.weights)
    names = groups - {"normalization"}
    chosen.update((id(v), v) for v in model.weights if v.name in names)
    return list(chosen.values())


def make_loss(head: HeadConfig, num_classes: int, label_smoothing: float,
              soft_labels: bool = False) -> Any:
    """Cross-entropy for integer labels (classification) or multi-hot labels (multi_label);
    ``head.loss`` (mean squared error or Huber) for regression targets.

    With `soft_labels` (MixUp / CutMix: training batches carry class probabilities, evaluation
    batches class ids) the loss takes both: rows of `num_classes` probabilities as they are,
    class ids one-hot encoded, then categorical cross-entropy (with `label_smoothing`).
    """
    import keras

    task = head_task(head) or "classification"
    if task == "regression":
        if head.loss == "huber":
            return keras.losses.Huber(delta=head.huber_delta)
        return keras.losses.MeanSquaredError()
    if task == "multi_label":
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    if not label_smoothing and not soft_labels:
        return keras.losses.SparseCategoricalCrossentropy()
    smoothed = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)

    def sparse_categorical_crossentropy_smoothed(y_true: Any, y_pred: Any) -> Any:
        return smoothed(class_probabilities(y_true, num_classes), y_pred)

    return sparse_categorical_crossentropy_smoothed


def class_probabilities(y_true: Any, num_classes: int) -> Any:
    """Labels as rows of class probabilities: soft labels (``[batch, num_classes]``, floats)
    as they are, class ids (``[batch]`` or ``[batch, 1]``) one-hot. Decided on the static
    shape, so a train step (soft) and a test step (ids) each trace their own branch."""
    from keras import ops

    shape = tuple(y_true.shape)
    if len(shape) == 2 and shape[-1] == num_classes and num_classes > 1:
        return ops.cast(y_true, "float32")
    return ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), num_classes)


def make_metrics(head: HeadConfig, num_classes: int | None = None,
                 soft_labels: bool = False) -> list[Any]:
    """What ``fit`` logs besides the loss (kerasft.config.logged_metrics names them).

    With `soft_labels` (and `num_classes`), accuracy on a mixed training batch counts a
    prediction right when it is the label's largest class (the example that got the larger
    share); evaluation batches hold class ids, so validation accuracy is the usual one."""
    import keras

    task = head_task(head) or "classification"
    if task == "regression":  # no accuracy: the held-out report adds RMSE, R², correlations
        return [keras.metrics.MeanAbsoluteError(name="mae")]
    if task == "multi_label":  # Keras compares `y_pred > threshold`, as metrics and exports do
        return [keras.metrics.BinaryAccuracy(name="accuracy", threshold=head.threshold),
                keras.metrics.AUC(name="auc", multi_label=True)]
    if soft_labels and num_classes:
        def accuracy(y_true: Any, y_pred: Any) -> Any:
            return keras.metrics.categorical_accuracy(
                class_probabilities(y_true, num_classes), y_pred)

        return [keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
