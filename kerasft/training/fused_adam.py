"""Adam and AdamW whose per-variable update is TensorFlow's fused ``ResourceApplyAdam`` kernel.

Keras 3's Adam builds each variable's update from about twenty ``keras.ops`` calls (casts, the
bias corrections, two moment updates, a square root, a division, three assignments), each a
separate op, most reading and writing whole tensors; TensorFlow's ``ResourceApplyAdam`` computes
the same formula in one kernel. The formula is Keras's term for term (TensorFlow's
``training_ops.cc``, ``ApplyAdamNonCuda``: ``m += (g - m)(1 - beta_1)``, ``v += (g^2 - v)(1 -
beta_2)``, ``var -= m * alpha / (sqrt(v) + epsilon)``, ``alpha = lr * sqrt(1 - beta_2^t) / (1 -
beta_1^t)``); the optimizer variables are the same (checkpoints and resume are unchanged) and
everything around the update (weight decay, clipping, gradient accumulation, EMA, loss scaling,
layer-wise learning rates) stays Keras's. Keras's own update stays where the kernel would not
give Keras's answer or does not apply: sparse (``IndexedSlices``) gradients, an embedding's, for
which Keras squares each occurrence's slice before repeated ids are summed (the kernel would
square the sum); ``amsgrad``; and variables a distribution strategy mirrors (the kernel takes one
variable's handle; Keras's ``assign_*`` route mirrored updates).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _mixin() -> type:
    import keras
    import tensorflow as tf

    class FusedAdamUpdate:
        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
            index = self._get_variable_index(variable)
            m, v = self._momentums[index].value, self._velocities[index].value
            # Keras hands over the tf.Variable (TFOptimizer._backend_update_step); a direct call may
            # pass the Keras variable.
            var = variable.value if isinstance(variable, keras.Variable) else variable
            mirrored = any(isinstance(t, tf.distribute.DistributedValues) for t in (var, m, v))
            if self.amsgrad or mirrored or isinstance(gradient, tf.IndexedSlices):
                return super().update_step(gradient, variable, learning_rate)
            dtype = var.dtype
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            grad = tf.cast(gradient, dtype)
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle, m=m.handle, v=v.handle,
                beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                epsilon=tf.cast(self.epsilon, dtype), grad=grad)

    return FusedAdamUpdate


@functools.cache
def fused_class(base: type) -> type:
    """`base` (``keras.optimizers.Adam`` or ``AdamW``) with the fused update; registered for
    Keras serialization under ``kerasft>Fused<name>``."""
    import keras

    cls = type(f"Fused{base.__name__}", (_mixin(), base), {})
    return keras.saving.register_keras_serializable(package="kerasft")(cls)
