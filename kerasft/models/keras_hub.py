"""KerasHub's text backbones: every family with a text-classifier task, as data plus one builder.

:data:`TEXT_FAMILIES` holds one :class:`TextFamily` row per family (``bert``, ``distil_bert``,
``roberta``, ``deberta_v3``, ``albert``, ``xlm_roberta``, ``f_net``, ``roformer_v2``,
``electra``): its KerasHub classes, tokenizer kind, the inputs its backbone takes, whether it
has a pooled output, its Hugging Face ``model_type`` and the files KerasHub's converter reads
(only for the families KerasHub 0.32 converts). :func:`build_text_backbone` builds any of them
from a KerasHub preset name, a local KerasHub preset directory, ``pkg://<package>/<path>`` or a
Hugging Face-format directory; ``backbone.name: auto`` reads the family from the preset itself.

:func:`describe_preset` classifies a preset without loading it (``kerasft validate`` uses it);
:data:`KERAS_HUB_ENTRIES` is what kerasft/models/registry.py registers (this module does not
import the registry, which imports it).
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerasft.config import BACKBONE_WEIGHTS, BackboneConfig, ConfigError
from kerasft.errors import KerasftError, expected
from kerasft.io import resolve_pkg_path
from kerasft.models.backbone import Backbone, BackboneEntry, check_weights_file

SENTENCE_TRANSFORMERS_FILES = ("sentence_bert_config.json", "modules.json")
KERASHUB_PRESET_FILES = ("config.json", "tokenizer.json")
AUTO = "auto"


@dataclass(frozen=True)
class TextFamily:
    """One KerasHub text family, as data.

    Attributes:
        name: ``backbone.name`` (KerasHub's own spelling of the family).
        title: the family's name in messages.
        backbone: the ``keras_hub.models`` backbone class.
        preprocessor: its ``TextClassifierPreprocessor`` class (None: KerasHub has none, so the
            generic ``TextClassifierPreprocessor`` is built on the family's tokenizer).
        tokenizer: its tokenizer class.
        kind: tokenizer kind, ``WordPiece``, ``BPE`` (byte-level) or ``SentencePiece``.
        inputs: what the backbone takes.
        pooled: whether the backbone has a ``pooled_output`` (a dense layer on the first token).
        masked: whether padding positions are masked everywhere, so a batch cut to its longest
            sequence gives the same outputs (FNet mixes every position, padding included).
        hf_model_type: the Hugging Face ``model_type`` of the architecture.
        hf_files: the files KerasHub's converter reads from a Hugging Face directory besides
            ``config.json`` and the weights; empty when KerasHub 0.32 does not convert it.
        hf_position_offset: position rows Hugging Face reserves (RoBERTa's padding offset).
    """

    name: str
    title: str
    backbone: str
    preprocessor: str | None
    tokenizer: str
    kind: str
    inputs: tuple[str, ...]
    pooled: bool
    masked: bool
    hf_model_type: str
    hf_files: tuple[str, ...] = ()
    hf_position_offset: int = 0


_MASKED = ("token_ids", "padding_mask")
TEXT_FAMILIES: dict[str, TextFamily] = {f.name: f for f in (
    TextFamily("bert", "BERT", "BertBackbone", "BertTextClassifierPreprocessor", "BertTokenizer",
               "WordPiece", ("token_ids", "segment_ids", "padding_mask"), True, True, "bert",
               ("vocab.txt",)),
    TextFamily("distil_bert", "DistilBERT", "DistilBertBackbone",
               "DistilBertTextClassifierPreprocessor", "DistilBertTokenizer", "WordPiece",
               _MASKED, False, True, "distilbert", ("vocab.txt",)),
    TextFamily("roberta", "RoBERTa", "RobertaBackbone", "RobertaTextClassifierPreprocessor",
               "RobertaTokenizer", "BPE", _MASKED, False, True, "roberta",
               ("vocab.json", "merges.txt"), 2),
    TextFamily("deberta_v3", "DeBERTaV3", "DebertaV3Backbone",
               "DebertaV3TextClassifierPreprocessor", "DebertaV3Tokenizer", "SentencePiece",
               _MASKED, False, True, "deberta-v2"),
    TextFamily("albert", "ALBERT", "AlbertBackbone", "AlbertTextClassifierPreprocessor",
               "AlbertTokenizer", "SentencePiece", ("token_ids", "segment_ids", "padding_mask"),
               True, True, "albert", ("spiece.model",)),
    TextFamily("xlm_roberta", "XLM-RoBERTa", "XLMRobertaBackbone",
               "XLMRobertaTextClassifierPreprocessor", "XLMRobertaTokenizer", "SentencePiece",
               _MASKED, False, True, "xlm-roberta", ("sentencepiece.bpe.model",), 2),
    TextFamily("f_net", "FNet", "FNetBackbone", "FNetTextClassifierPreprocessor",
               "FNetTokenizer", "SentencePiece", ("token_ids", "segment_ids"), True, False,
               "fnet"),
    # RoFormerV2 masks token id 0 itself; its preprocessor returns no padding_mask.
    TextFamily("roformer_v2", "RoFormerV2", "RoformerV2Backbone",
               "RoformerV2TextClassifierPreprocessor", "RoformerV2Tokenizer", "WordPiece",
               ("token_ids", "segment_ids"), False, True, "roformer"),
    TextFamily("electra", "ELECTRA", "ElectraBackbone", None, "ElectraTokenizer", "WordPiece",
               ("token_ids", "segment_ids", "padding_mask"), True, True, "electra"),
)}
HF_CONVERTED = tuple(f.name for f in TEXT_FAMILIES.values() if f.hf_files)


def _family(name: str) -> TextFamily:
    if name not in TEXT_FAMILIES:
        raise ConfigError(expected(f"a KerasHub text family ({', '.join(TEXT_FAMILIES)}) or auto",
                                   "backbone.name", name))
    return TEXT_FAMILIES[name]


def _hf_family(model_type: str, config_file: Path, requested: str) -> TextFamily:
    """The family of a Hugging Face ``model_type``; one line when KerasHub cannot convert it."""
    supported = ", ".join(f"{f.name} ({f.hf_model_type})" for f in TEXT_FAMILIES.values()
                          if f.hf_files)
    family = next((f for f in TEXT_FAMILIES.values() if f.hf_model_type == model_type), None)
    if requested != AUTO and (family is None or family.name != requested):
        wanted = TEXT_FAMILIES[requested]
        raise ConfigError(expected(
            f"a Hugging Face {wanted.title} checkpoint (model_type: {wanted.hf_model_type}) for "
            f"backbone.name {requested}", f"{config_file} model_type", model_type))
    if family is None or not family.hf_files:
        raise ConfigError(expected(
            "a Hugging Face checkpoint of a family KerasHub 0.32 converts: " + supported,
            f"{config_file} model_type", model_type))
    return family


def _kerashub_family(config: dict[str, Any], config_file: Path, requested: str) -> TextFamily:
    """The family of a KerasHub preset's ``config.json`` (``registered_name``
    ``keras_hub>RobertaBackbone``, or ``class_name``)."""
    class_name = str(config.get("registered_name") or config.get("class_name") or "")
    class_name = class_name.rpartition(">")[2]
    family = next((f for f in TEXT_FAMILIES.values() if f.backbone == class_name), None)
    if requested != AUTO:
        wanted = TEXT_FAMILIES[requested]
        if class_name and (family is None or family.name != requested):
            raise ConfigError(expected(
                f"a KerasHub {wanted.title} preset (class_name {wanted.backbone}) for "
                f"backbone.name {requested}", f"{config_file} class_name", class_name))
        return wanted
    if family is None:
        raise ConfigError(expected(
            "a KerasHub text backbone preset (class_name one of "
            f"{', '.join(f.backbone for f in TEXT_FAMILIES.values())})",
            f"{config_file} class_name", class_name or None))
    return family


def preset_names(family: TextFamily) -> list[str]:
    """KerasHub's built-in preset names of `family` (a subclass family's own names left out:
    ``RobertaBackbone.presets`` also lists XLM-RoBERTa's)."""
    import keras_hub

    cls = getattr(keras_hub.models, family.backbone)
    names = set(cls.presets)
    for other in TEXT_FAMILIES.values():
        sub = getattr(keras_hub.models, other.backbone)
        if sub is not cls and issubclass(sub, cls):
            names -= set(sub.presets)
    return sorted(names)


def describe_preset(preset: str, family: str = "bert") -> dict[str, Any]:
    """Classifies a preset of `family` (a :data:`TEXT_FAMILIES` name or ``auto``) without
    loading it.

    Returns ``{"kind": "kerashub_dir" | "hf_dir" | "kerashub_name", "path": ...,
    "family": name, "sentence_transformers": bool, "max_sequence_length": int | None}``; raises
    a one-line error for a directory that is neither, a family that does not match, or a name
    KerasHub does not list.
    """
    if family != AUTO:
        _family(family)
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
            found = _hf_family(str(config["model_type"]), config_file, family)
            missing = [f for f in found.hf_files if not (root / f).is_file()]
            weights = [f for f in ("model.safetensors", "model.safetensors.index.json")
                       if (root / f).is_file()]
            if not weights:
                missing.append("model.safetensors")
            if missing:
                raise ConfigError(
                    expected(f"a Hugging Face {found.title} directory with {', '.join(missing)}",
                             "backbone.preset", preset)
                )
            max_len = config.get("max_position_embeddings")
            if max_len is not None:
                max_len = int(max_len) - found.hf_position_offset
            return {"kind": "hf_dir", "path": str(root), "family": found.name,
                    "sentence_transformers": sentence, "max_sequence_length": max_len}
        missing = [f for f in KERASHUB_PRESET_FILES if not (root / f).is_file()]
        if missing:
            raise ConfigError(
                expected(f"a KerasHub preset directory with {', '.join(missing)}",
                         "backbone.preset", preset)
            )
        found = _kerashub_family(config, config_file, family)
        max_len = (config.get("config") or {}).get("max_sequence_length")
        return {"kind": "kerashub_dir", "path": str(root), "family": found.name,
                "sentence_transformers": sentence, "max_sequence_length": max_len}
    candidates = list(TEXT_FAMILIES.values()) if family == AUTO else [TEXT_FAMILIES[family]]
    for candidate in candidates:
        if preset in preset_names(candidate):
            return {"kind": "kerashub_name", "path": preset, "family": candidate.name,
                    "sentence_transformers": False, "max_sequence_length": None}
    if family == AUTO:
        raise ConfigError(expected("a KerasHub text preset name (kerasft backbones lists the "
                                   "families; each family's names are in KerasHub's "
                                   "<Family>Backbone.presets) or a directory",
                                   "backbone.preset", preset))
    names = preset_names(TEXT_FAMILIES[family]) or ["none built into KerasHub 0.32"]
    raise ConfigError(
        expected(f"a KerasHub {TEXT_FAMILIES[family].title} preset name ({', '.join(names)}) or "
                 "a directory", "backbone.preset", preset)
    )


@functools.cache
def masked_mean_pooling_class() -> type:
    """The ``MaskedMeanPooling`` Keras layer class (defined on first use: keeps Keras out of
    ``import kerasft.models.keras_hub``)."""
    import keras

    @keras.saving.register_keras_serializable(package="kerasft")
    class MaskedMeanPooling(keras.layers.Layer):
        """Mean of token states over the positions that are not padding: where ``padding_mask``
        is 1, or (with `pad_token_id`, for a family without a mask) where the token id differs
        from the padding id."""

        def __init__(self, pad_token_id: int | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.pad_token_id = pad_token_id

        def call(self, sequence: Any, padding_mask: Any) -> Any:
            from keras import ops

            if self.pad_token_id is not None:  # `padding_mask` holds the token ids
                padding_mask = ops.not_equal(padding_mask, self.pad_token_id)
            mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence.dtype)
            total = ops.sum(sequence * mask, axis=1)
            count = ops.maximum(ops.sum(mask, axis=1), 1.0)
            return total / count

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "pad_token_id": self.pad_token_id}

    return MaskedMeanPooling


def _load(family: TextFamily, path: str, load_weights: bool, seq_len: int | None,
          preset: str, kind: str) -> tuple[Any, Any]:
    """``<Family>Backbone.from_preset`` and the family's preprocessor; errors in one line."""
    import keras_hub

    models = keras_hub.models
    try:
        network = getattr(models, family.backbone).from_preset(path, load_weights=load_weights)
        if family.preprocessor is not None:
            preprocessor = getattr(models, family.preprocessor).from_preset(path)
        else:  # ELECTRA: KerasHub's generic preprocessor on the family's tokenizer
            tokenizer = getattr(models, family.tokenizer).from_preset(path)
            max_len = int(getattr(network, "max_sequence_length", 512) or 512)
            preprocessor = models.TextClassifierPreprocessor(
                tokenizer=tokenizer, sequence_length=seq_len or min(512, max_len))
    except (OSError, ValueError, KeyError) as e:
        raise KerasftError(
            f"backbone.preset: expected a loadable {family.title} preset. Received: {preset} "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from e
    except Exception as e:  # noqa: BLE001 - network errors of preset downloads are one line.
        if kind == "kerashub_name":
            raise KerasftError(
                f"backbone.preset: expected to download the KerasHub preset '{preset}', which "
                "needs internet access (or give a local preset directory). "
                f"Received: error={str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        raise
    return network, preprocessor


def lower_layers(network: Any, num_layers: int) -> Any:
    """A copy of the KerasHub backbone `network` with only its lower `num_layers` transformer
    layers, each weight copied from `network` by layer name (embeddings, those layers, the
    pooler): a distillation student that starts from the teacher's own lower layers. KerasHub
    rebuilds a backbone from its config; a preset's weights file cannot be loaded into fewer
    layers."""
    have = int(getattr(network, "num_layers", 0) or 0)
    if not 0 < num_layers <= have:
        raise ConfigError(expected(f"1 to {have} (the preset's transformer layers)",
                                   "backbone.num_layers", num_layers))
    if num_layers == have:
        return network
    config = dict(network.get_config(), num_layers=num_layers)
    small = type(network).from_config(config)
    source = {layer.name: layer for layer in network.layers}
    for layer in small.layers:
        if layer.weights:
            layer.set_weights(source[layer.name].get_weights())
    return small


def build_text_backbone(cfg: BackboneConfig, pooling: str, family: str = AUTO,
                        segments: int = 1) -> Backbone:
    """Builds a KerasHub text backbone of `family` (or the preset's own family for ``auto``)
    with pooled features: ``cls`` (the pooled output where the family has one, else the first
    token's state), ``mean`` (masked mean of token states) or ``auto`` (mean for
    sentence-transformers checkpoints, else cls).

    `segments` 2 (sentence pairs): ``preprocess`` takes ``[batch, 2]`` strings and hands the two
    columns to the family's own preprocessor as a tuple, whose ``MultiSegmentPacker`` packs them
    with the family's separators (``[SEP]``, RoBERTa's ``</s></s>``), trims them round-robin to
    the sequence length, and numbers them in ``segment_ids`` where the backbone takes them.
    """
    if not cfg.preset:
        raise ConfigError(expected(f"a preset (name, directory or pkg://) for {cfg.name}",
                                   "backbone.preset", cfg.preset))
    source = describe_preset(cfg.preset, family)
    fam = TEXT_FAMILIES[source["family"]]
    import keras
    import tensorflow as tf

    load_weights = cfg.weights != "none"
    weights_path = None
    if cfg.weights not in BACKBONE_WEIGHTS:
        weights_path = check_weights_file(cfg.weights)
        load_weights = False
    network, preprocessor = _load(fam, source["path"], load_weights, cfg.sequence_length,
                                  cfg.preset, source["kind"])
    if weights_path:
        network.load_weights(weights_path)
    if cfg.num_layers is not None:
        network = lower_layers(network, int(cfg.num_layers))
    max_len = getattr(network, "max_sequence_length", None)  # RoFormerV2: rotary, no maximum
    max_len = int(max_len) if max_len else None
    # KerasHub's preprocessor defaults to 512 when a preset does not say: never above the max.
    seq_len = int(cfg.sequence_length or min(preprocessor.sequence_length or 128,
                                             max_len or math.inf))
    if max_len and seq_len > max_len:
        raise ConfigError(
            expected(f"a sequence length of at most {max_len} (the model's maximum)",
                     "backbone.sequence_length", seq_len)
        )
    preprocessor.sequence_length = seq_len
    if pooling == "auto":
        pooling = "mean" if source["sentence_transformers"] else "cls"
    if pooling not in ("cls", "mean"):
        raise ConfigError(expected(f"auto, cls or mean for {fam.name}", "head.pooling", pooling))

    # The backbone's own inputs, plus a padding mask wherever padding is masked (the data
    # pipeline trims padding by it and mean pooling averages over it).
    names = [i.name for i in network.inputs]
    if fam.masked and "padding_mask" not in names:
        names.append("padding_mask")
    inputs = {n: keras.Input(shape=(None,), dtype="int32", name=n) for n in sorted(names)}
    outputs = network({n: inputs[n] for n in (i.name for i in network.inputs)})
    sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    pad_id = int(preprocessor.tokenizer.pad_token_id)
    if pooling == "mean":
        if "padding_mask" in inputs:
            features = masked_mean_pooling_class()(name="mean_pool")(
                sequence, inputs["padding_mask"])
        else:
            features = masked_mean_pooling_class()(pad_token_id=pad_id, name="mean_pool")(
                sequence, inputs["token_ids"])
    elif isinstance(outputs, dict) and "pooled_output" in outputs:
        features = outputs["pooled_output"]
    else:
        features = sequence[:, 0, :]
    unused = [layer.name for layer in network.layers
              if layer.name == "pooled_dense" and pooling == "mean"]

    if segments not in (1, 2):
        raise ConfigError(expected("1 or 2 text segments", "data.text_column", segments))
    shape = [None] if segments == 1 else [None, segments]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.string)])
    def preprocess(texts: Any) -> dict[str, Any]:
        # Always KerasHub's TensorFlow path (eager calls would take its Python path): training,
        # predictions and the export tokenize with the same ops.
        # A pair goes in as `x=`: positionally, KerasHub reads a 2-tuple as (x, y).
        x = preprocessor(texts) if segments == 1 else preprocessor(x=(texts[:, 0], texts[:, 1]))
        if "padding_mask" in inputs and "padding_mask" not in x:
            x["padding_mask"] = tf.not_equal(x["token_ids"], pad_id)
        return {k: tf.cast(x[k], tf.int32) for k in inputs}

    return Backbone(
        name=fam.name,
        task="text",
        network=network,
        inputs=inputs,
        features=features,
        preprocess=preprocess,
        sequence_length=seq_len,
        segments=segments,
        preprocessor=preprocessor,
        unused_layers=unused,
        sequence=sequence,
        info={"architecture": fam.backbone, "family": fam.name, "tokenizer": fam.kind,
              "preset": cfg.preset, "preset_kind": source["kind"], "pooling": pooling,
              "sequence_length": seq_len, "max_sequence_length": max_len,
              "segments": segments,
              "inputs": sorted(inputs), "pad_token_id": pad_id,
              "num_layers": int(network.num_layers), "hidden_dim": int(network.hidden_dim),
              "parameters": int(network.count_params())},
    )


def _description(family: TextFamily) -> str:
    sources = "preset name, KerasHub or Hugging Face directory" if family.hf_files else \
        "preset name or KerasHub directory"
    return f"KerasHub {family.backbone}, {family.kind} tokenizer ({sources})"


KERAS_HUB_ENTRIES: list[BackboneEntry] = [
    *(BackboneEntry(name=f.name, task="text",
                    build=functools.partial(build_text_backbone, family=f.name),
                    description=_description(f))
      for f in TEXT_FAMILIES.values()),
    BackboneEntry(name=AUTO, task="text", build=build_text_backbone,
                  description="the KerasHub text family named by the preset itself "
                              "(config.json class_name or Hugging Face model_type)"),
]
