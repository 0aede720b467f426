"""Backbones (keras.applications, KerasHub), the heads put on them and model-only weights.

- ``registry``: the backbone registry (``get_entry``, ``build_backbone``, ``list_backbones``,
  ``register_backbone``); importing it registers the built-in entries.
- ``backbone``: ``BackboneEntry``, the built ``Backbone`` and what every builder shares.
- ``keras_applications``, ``keras_hub``, ``keras_hub_images``: the built-in entries as data, and
  their builders (``keras_hub_images``: the ``hub_*`` KerasHub image families).
- ``layers``: the inference-mode wrapper (BatchNorm call mode) and the layers stages unfreeze.
- ``heads``, ``weights``: the new head; weights files without the optimizer.
- ``lora``: LoRA adapters on KerasHub backbones (targets, enabling, merging).

Lazy imports: every module here imports without TensorFlow, Keras or KerasHub. They are
imported inside the function that uses them, and a Keras class is defined on first use by a
``functools.cache``d ``*_class()`` factory (``masked_mean_pooling_class``).

May import: kerasft.config, kerasft.errors, kerasft.io.
"""
