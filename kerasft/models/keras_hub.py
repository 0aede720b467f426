"""``bert``: KerasHub's ``BertBackbone`` as a backbone, from a KerasHub preset name, a local
KerasHub preset directory, a Hugging Face-format directory, or ``pkg://<package>/<path>``.

:func:`describe_preset` classifies a preset without loading it (``kerasft validate`` uses it);
:data:`KERAS_HUB_ENTRIES` is what kerasft/models/registry.py registers (this module does not
import the registry, which imports it). :func:`trim_padding` cuts a tokenized batch to its
longest sequence.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from kerasft.config import BACKBONE_WEIGHTS, BackboneConfig, ConfigError
from kerasft.errors import KerasftError, expected
from kerasft.io import resolve_pkg_path
from kerasft.models.backbone import Backbone, BackboneEntry, check_weights_file

SENTENCE_TRANSFORMERS_FILES = ("sentence_bert_config.json", "modules.json")
KERASHUB_PRESET_FILES = ("config.json", "tokenizer.json")
HF_BERT_FILES = ("config.json", "vocab.txt")


def describe_preset(preset: str) -> dict[str, Any]:
    """Classifies a BERT preset without loading it.

    Returns ``{"kind": "kerashub_dir" | "hf_dir" | "kerashub_name", "path": ...,
    "sentence_transformers": bool}``; raises a one-line error for a directory that is neither.
    """
    path = resolve_pkg_path(preset, "backbone.preset")
    if preset.startswith("pkg://") or os.path.isabs(path) or os.path.exists(path) or (
        os.sep in preset or preset.startswith(".")
    ):
        root = Path(path)
        if not root.is_dir():
            raise ConfigError(expected("an existing preset directory", "backbone.preset", preset))
        config_file = root / "config.json"
        if not config_file.is_file():
            raise ConfigError(
                expected("a KerasHub preset or Hugging Face directory with config.json",
                         "backbone.preset", preset)
            )
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{config_file}: expected valid JSON. Received: {e}") from None
        sentence = any((root / f).is_file() for f in SENTENCE_TRANSFORMERS_FILES)
        if "model_type" in config:
            if config["model_type"] != "bert":
                raise ConfigError(
                    expected("a Hugging Face BERT checkpoint (model_type: bert)",
                             f"{config_file} model_type", config["model_type"])
                )
            missing = [f for f in HF_BERT_FILES if not (root / f).is_file()]
            weights = [f for f in ("model.safetensors", "model.safetensors.index.json")
                       if (root / f).is_file()]
            if not weights:
                missing.append("model.safetensors")
            if missing:
                raise ConfigError(
                    expected(f"a Hugging Face BERT directory with {', '.join(missing)}",
                             "backbone.preset", preset)
                )
            return {"kind": "hf_dir", "path": str(root), "sentence_transformers": sentence}
        missing = [f for f in KERASHUB_PRESET_FILES if not (root / f).is_file()]
        if missing:
            raise ConfigError(
                expected(f"a KerasHub preset directory with {', '.join(missing)}",
                         "backbone.preset", preset)
            )
        class_name = str(config.get("class_name", ""))
        if class_name and "Bert" not in class_name:
            raise ConfigError(
                expected("a KerasHub BERT preset (class_name BertBackbone)",
                         f"{config_file} class_name", class_name)
            )
        return {"kind": "kerashub_dir", "path": str(root), "sentence_transformers": sentence}
    import keras_hub

    names = sorted(keras_hub.models.BertBackbone.presets)
    if preset not in names:
        raise ConfigError(
            expected(f"a KerasHub BERT preset name ({', '.join(names)}) or a directory",
                     "backbone.preset", preset)
        )
    return {"kind": "kerashub_name", "path": preset, "sentence_transformers": False}


@functools.cache
def masked_mean_pooling_class() -> type:
    """The ``MaskedMeanPooling`` Keras layer class (defined on first use: keeps Keras out of
    ``import kerasft.models.keras_hub``)."""
    import keras

    @keras.saving.register_keras_serializable(package="kerasft")
    class MaskedMeanPooling(keras.layers.Layer):
        """Mean of token states over positions where ``padding_mask`` is 1."""

        def call(self, sequence: Any, padding_mask: Any) -> Any:
            from keras import ops

            mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence.dtype)
            total = ops.sum(sequence * mask, axis=1)
            count = ops.maximum(ops.sum(mask, axis=1), 1.0)
            return total / count

    return MaskedMeanPooling


def _build_bert(cfg: BackboneConfig, pooling: str) -> Backbone:
    if not cfg.preset:
        raise ConfigError(expected("a preset (name, directory or pkg://) for bert",
                                   "backbone.preset", cfg.preset))
    source = describe_preset(cfg.preset)
    import keras
    import keras_hub
    import tensorflow as tf

    path = source["path"]
    load_weights = cfg.weights != "none"
    weights_path = None
    if cfg.weights not in BACKBONE_WEIGHTS:
        weights_path = check_weights_file(cfg.weights)
        load_weights = False
    try:
        network = keras_hub.models.BertBackbone.from_preset(path, load_weights=load_weights)
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(path)
    except (OSError, ValueError, KeyError) as e:
        raise KerasftError(
            f"backbone.preset: expected a loadable BERT preset. Received: {cfg.preset} "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from e
    except Exception as e:  # noqa: BLE001 - network errors of preset downloads are one line.
        if source["kind"] == "kerashub_name":
            raise KerasftError(
                f"backbone.preset: expected to download the KerasHub preset '{cfg.preset}', which "
                "needs internet access (or give a local preset directory). "
                f"Received: error={str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        raise
    if weights_path:
        network.load_weights(weights_path)
    max_len = int(network.max_sequence_length)
    # KerasHub's preprocessor defaults to 512 when a preset does not say: never above the max.
    seq_len = int(cfg.sequence_length or min(preprocessor.sequence_length or 128, max_len))
    if seq_len > max_len:
        raise ConfigError(
            expected(f"a sequence length of at most {max_len} (the model's maximum)",
                     "backbone.sequence_length", seq_len)
        )
    preprocessor.sequence_length = seq_len
    if pooling == "auto":
        pooling = "mean" if source["sentence_transformers"] else "cls"
    if pooling not in ("cls", "mean"):
        raise ConfigError(expected("auto, cls or mean for bert", "head.pooling", pooling))

    inputs = {
        "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input(shape=(None,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
    }
    outputs = network(inputs)
    if pooling == "mean":
        features = masked_mean_pooling_class()(name="mean_pool")(
            outputs["sequence_output"], inputs["padding_mask"]
        )
    else:
        features = outputs["pooled_output"]

    def preprocess(texts: Any) -> dict[str, Any]:
        x = preprocessor(texts)
        return {k: tf.cast(v, tf.int32) for k, v in x.items()}

    return Backbone(
        name="bert",
        task="text",
        network=network,
        inputs=inputs,
        features=features,
        preprocess=preprocess,
        sequence_length=seq_len,
        preprocessor=preprocessor,
        unused_layers=["pooled_dense"] if pooling == "mean" else [],
        info={"architecture": "BertBackbone", "preset": cfg.preset, "preset_kind": source["kind"],
              "pooling": pooling, "sequence_length": seq_len, "max_sequence_length": max_len,
              "num_layers": int(network.num_layers), "hidden_dim": int(network.hidden_dim),
              "parameters": int(network.count_params())},
    )


KERAS_HUB_ENTRIES: list[BackboneEntry] = [
    BackboneEntry(
        name="bert",
        task="text",
        build=_build_bert,
        description="KerasHub BertBackbone (preset name, KerasHub or Hugging Face directory)",
    )
]
