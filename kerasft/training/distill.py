"""Distillation stages: a teacher's soft labels mixed with the hard labels (``stages[].distill``).

The teacher (a kerasft run folder or export) predicts every training example once, before the
stage's first epoch; its probabilities travel with the labels through the training pipeline
(``y`` becomes ``[class id, p_1 .. p_C]``, float32), so the shuffling, the length-grouped
batches and a resumed run's epoch orders carry them without a teacher forward pass per step.
The stage's loss per example is

    alpha * CE(y, p_student) + (1 - alpha) * T^2 * KL(p_teacher^(1/T) || p_student^(1/T))

(softmax at temperature T of the log-probabilities, Hinton et al.; the T^2 keeps the soft
term's gradients on the scale of the hard one's). Validation batches keep plain labels, so
``val_loss`` stays the hard-label cross-entropy that every other stage monitors.

Not ``keras.distillation.Distiller``: it wraps the student in a new model whose ``fit`` runs the
teacher on every step (the teacher must then be a Keras model taking the student's inputs, not an
export), ignores sample weights (``data.class_weight``; the weight-0 padding rows of tpu and
multi-worker evaluation) and averages over the batch before weighting; ``LogitsDistillation``
also expects logits where kerasft heads return probabilities. The formula is the same as its
``LogitsDistillation(temperature)`` with ``kl_divergence`` and ``student_loss_weight=alpha``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kerasft.data.splits import Split
from kerasft.errors import KerasftError, expected

TeacherPredict = Callable[[Split], np.ndarray]


def packed_split(split: Split, teacher_probabilities: np.ndarray) -> Split:
    """`split` with each label ``y`` replaced by ``[y, teacher probabilities...]`` (float32)."""
    import tensorflow as tf

    probs = np.asarray(teacher_probabilities, np.float32)
    if probs.ndim != 2 or probs.shape[0] != split.size:
        raise KerasftError(expected(f"teacher probabilities of shape [{split.size}, classes]",
                                    "distill.teacher", f"shape {list(probs.shape)}"))
    soft = tf.data.Dataset.from_tensor_slices(probs)

    def pack(example: Any, teacher: Any) -> Any:
        x, y = example
        return x, tf.concat([tf.reshape(tf.cast(y, tf.float32), [1]), teacher], axis=0)

    dataset = tf.data.Dataset.zip((split.dataset, soft)).map(pack)
    return Split(dataset=dataset, labels=split.labels, size=split.size)


def _unpack(y_true: Any, num_classes: int) -> tuple[Any, Any | None]:
    """(class ids, teacher probabilities or None): packed labels come from training batches,
    plain ones from validation and evaluation."""
    from keras import ops

    shape = y_true.shape
    if len(shape) >= 2 and shape[-1] == num_classes + 1:
        return ops.cast(y_true[..., 0], "int32"), ops.cast(y_true[..., 1:], "float32")
    return ops.cast(ops.reshape(y_true, (-1,)), "int32"), None


def soft_targets(probabilities: Any, temperature: float) -> Any:
    """Probabilities at `temperature`: softmax(log(p) / T)."""
    from keras import ops

    logits = ops.log(ops.clip(ops.cast(probabilities, "float32"), 1e-7, 1.0))
    return ops.softmax(logits / temperature, axis=-1)


def distill_loss(temperature: float, alpha: float, num_classes: int,
                 label_smoothing: float = 0.0) -> Callable[[Any, Any], Any]:
    """The per-example loss of a distill stage (Keras weights and averages it)."""
    import keras
    from keras import ops

    def kerasft_distillation(y_true: Any, y_pred: Any) -> Any:
        labels, teacher = _unpack(y_true, num_classes)
        y_pred = ops.cast(y_pred, "float32")
        if label_smoothing:
            hard = keras.losses.categorical_crossentropy(
                ops.one_hot(labels, num_classes), y_pred, label_smoothing=label_smoothing)
        else:
            hard = keras.losses.sparse_categorical_crossentropy(labels, y_pred)
        if teacher is None:
            return hard
        soft = keras.losses.kl_divergence(soft_targets(teacher, temperature),
                                          soft_targets(y_pred, temperature))
        return alpha * hard + (1.0 - alpha) * (temperature ** 2) * soft

    return kerasft_distillation


def distill_metrics(num_classes: int) -> list[Any]:
    """Accuracy on the class ids of packed or plain labels (named as make_metrics names it)."""
    import keras

    def accuracy(y_true: Any, y_pred: Any) -> Any:
        labels, _ = _unpack(y_true, num_classes)
        return keras.metrics.sparse_categorical_accuracy(labels, y_pred)

    return [keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")]


def check_teacher(probabilities: np.ndarray, num_classes: int, key: str) -> np.ndarray:
    """The teacher's probabilities, checked against the student's classes."""
    probs = np.asarray(probabilities, np.float32)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise KerasftError(expected(f"a teacher with {num_classes} classes (the student's)",
                                    key, f"{probs.shape[-1] if probs.ndim else 0} classes"))
    return probs
