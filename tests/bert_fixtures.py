"""Writers for tiny BERT checkpoints used by the tests (no network, no downloads).

Two on-disk formats that ``keras_hub.models.*.from_preset`` understands:

* :func:`write_tiny_bert_preset` writes a **KerasHub preset directory** (what
  ``backbone.save_to_preset(dir)`` + ``preprocessor.save_to_preset(dir)`` produce):
  ``config.json`` (with ``registered_name``), ``model.weights.h5``, ``tokenizer.json``,
  ``preprocessor.json``, ``metadata.json`` and ``assets/tokenizer/vocabulary.txt``.
  The preprocessor is saved with a small ``sequence_length`` so loading it does not
  fall back to the 512 default.
* :func:`write_tiny_hf_bert_dir` writes a **Hugging Face directory** (``config.json``
  with ``model_type: bert``, ``model.safetensors``, ``vocab.txt``,
  ``tokenizer_config.json``), optionally with the sentence-transformers files
  (``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json``).
  The safetensors file is written by hand (8-byte little-endian header length, JSON
  header, raw little-endian bytes), so writing needs only numpy. *Loading* it through
  KerasHub still needs the ``safetensors`` package.

Both load in well under a second with ``from_preset``. Weights are drawn from a
seeded numpy generator, so two calls with the same arguments give identical models.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

DEFAULT_VOCAB = (
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "a",
    "an",
    "is",
    "was",
    "it",
    "this",
    "that",
    "movie",
    "film",
    "book",
    "good",
    "great",
    "bad",
    "awful",
    "terrible",
    "nice",
    "very",
    "not",
    "i",
    "you",
    "liked",
    "loved",
    "hated",
    "and",
    "but",
    "of",
    "to",
    "in",
    "##s",
    "##ly",
    "##ing",
    "##ed",
    ".",
    ",",
    "!",
    "?",
    "'",
)

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _check_vocab(vocab):
    vocab = list(DEFAULT_VOCAB if vocab is None else vocab)
    missing = [t for t in _SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"vocabulary lacks special tokens {missing}")
    seen: set = set()
    dupes = sorted({t for t in vocab if t in seen or seen.add(t)})
    if dupes:
        raise ValueError(f"vocabulary entries must be unique; repeated: {dupes}")
    if vocab[0] != "[PAD]":
        raise ValueError("[PAD] must be entry 0 (BERT's padding id)")
    return vocab


def _check_dims(hidden_dim, num_heads):
    if hidden_dim % num_heads:
        raise ValueError(f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}")


def write_tiny_bert_preset(
    path,
    vocab=None,
    num_layers=2,
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    max_sequence_length=64,
    sequence_length=16,
    lowercase=True,
    strip_accents=False,
    dropout=0.0,
    seed=0,
) -> str:
    """Write a tiny KerasHub BERT preset directory and return its path.

    The directory holds the backbone, the tokenizer and a
    ``BertTextClassifierPreprocessor`` saved with ``sequence_length`` (so
    ``BertTextClassifierPreprocessor.from_preset(path)`` pads to it).
    ``BertBackbone.from_preset(path)``, ``BertTokenizer.from_preset(path)`` and
    ``BertTextClassifier.from_preset(path, num_classes=N)`` all work on it.
    Weights are deterministic for a given ``seed``. Imports keras_hub lazily.
    ``strip_accents`` is stored in the tokenizer config (KerasHub's default is False,
    unlike Hugging Face's uncased BERT, which strips accents when lowercasing).
    """
    import keras_hub

    vocab = _check_vocab(vocab)
    _check_dims(hidden_dim, num_heads)
    if sequence_length > max_sequence_length:
        raise ValueError("sequence_length must not exceed max_sequence_length")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        max_sequence_length=max_sequence_length,
        dropout=dropout,
    )
    randomize_weights(backbone, seed)

    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=vocab, lowercase=lowercase, strip_accents=strip_accents
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    backbone.save_to_preset(path)
    preprocessor.save_to_preset(path)  # also writes tokenizer.json + assets/
    return path


# --------------------------------------------------------------------------------------
# Hugging Face format


def _write_safetensors(filename, tensors, metadata=None):
    """Write ``{name: np.ndarray}`` as a .safetensors file without the safetensors package.

    Format: u64 little-endian header size N, N bytes of UTF-8 JSON
    (``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``,
    offsets relative to the end of the header), then the raw C-order little-endian bytes.
    """
    dtypes = {
        np.dtype("<f4"): "F32",
        np.dtype("<f2"): "F16",
        np.dtype("<i8"): "I64",
        np.dtype("<i4"): "I32",
    }
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        if arr.dtype not in dtypes:
            raise ValueError(f"unsupported dtype {arr.dtype} for {name}")
        data = arr.tobytes()
        header[name] = {
            "dtype": dtypes[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # pad so the data is 8-byte aligned
    with open(filename, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for data in chunks:
            f.write(data)


def _hf_bert_tensors(vocab_size, num_layers, hidden_dim, intermediate_dim, max_pos, rng):
    """Tensors named and shaped as Hugging Face ``BertModel`` (torch Linear: [out, in])."""

    def normal(*shape):
        return rng.normal(0.0, 0.2, size=shape).astype("float32")

    def zeros(*shape):
        return np.zeros(shape, "float32")

    def ones(*shape):
        return np.ones(shape, "float32")

    t = {
        "embeddings.word_embeddings.weight": normal(vocab_size, hidden_dim),
        "embeddings.position_embeddings.weight": normal(max_pos, hidden_dim),
        "embeddings.token_type_embeddings.weight": normal(2, hidden_dim),
        "embeddings.LayerNorm.weight": ones(hidden_dim),
        "embeddings.LayerNorm.bias": zeros(hidden_dim),
        "embeddings.position_ids": np.arange(max_pos, dtype="int64")[None, :],
        "pooler.dense.weight": normal(hidden_dim, hidden_dim),
        "pooler.dense.bias": normal(hidden_dim),
    }
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            t[f"{p}attention.self.{n}.weight"] = normal(hidden_dim, hidden_dim)
            t[f"{p}attention.self.{n}.bias"] = normal(hidden_dim)
        t[f"{p}attention.output.dense.weight"] = normal(hidden_dim, hidden_dim)
        t[f"{p}attention.output.dense.bias"] = normal(hidden_dim)
        t[f"{p}attention.output.LayerNorm.weight"] = ones(hidden_dim)
        t[f"{p}attention.output.LayerNorm.bias"] = zeros(hidden_dim)
        t[f"{p}intermediate.dense.weight"] = normal(intermediate_dim, hidden_dim)
        t[f"{p}intermediate.dense.bias"] = normal(intermediate_dim)
        t[f"{p}output.dense.weight"] = normal(hidden_dim, intermediate_dim)
        t[f"{p}output.dense.bias"] = normal(hidden_dim)
        t[f"{p}output.LayerNorm.weight"] = ones(hidden_dim)
        t[f"{p}output.LayerNorm.bias"] = zeros(hidden_dim)
    return t


def _dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def write_tiny_hf_bert_dir(
    path,
    vocab=None,
    num_layers=2,
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    max_position_embeddings=512,
    do_lower_case=True,
    sentence_transformers=False,
    st_max_seq_length=16,
    pooling="mean",
    normalize=True,
    model_type="bert",
    seed=0,
) -> str:
    """Write a tiny Hugging Face-format BERT directory and return its path.

    Files: ``config.json`` (``model_type`` = ``model_type``, default ``"bert"``; pass
    e.g. ``"roberta"`` to get an unsupported-architecture fixture), ``model.safetensors``
    (unprefixed ``BertModel`` names, LayerNorm ``weight``/``bias``, plus the int64
    ``embeddings.position_ids`` buffer that real checkpoints carry), ``vocab.txt``,
    ``tokenizer_config.json`` (``do_lower_case`` is what KerasHub reads) and
    ``special_tokens_map.json``.

    With ``sentence_transformers=True`` it also writes ``modules.json``
    (Transformer, Pooling and, if ``normalize``, Normalize),
    ``sentence_bert_config.json`` (``max_seq_length`` = ``st_max_seq_length``; KerasHub's
    preprocessor uses it as its default ``sequence_length``) and ``1_Pooling/config.json``
    (``pooling`` in ``"mean"``, ``"cls"``, ``"max"``).
    Loading it with KerasHub needs the ``safetensors`` package.

    Without the sentence-transformers files KerasHub's preprocessor defaults to
    ``sequence_length=512`` whatever ``max_position_embeddings`` says, so a smaller
    ``max_position_embeddings`` reproduces that trap (the model then fails at call time
    in ``position_embedding``); real BERT checkpoints use 512, hence the default.
    """
    vocab = _check_vocab(vocab)
    _check_dims(hidden_dim, num_heads)
    if pooling not in ("mean", "cls", "max"):
        raise ValueError(f"pooling must be 'mean', 'cls' or 'max', got {pooling!r}")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)

    _dump_json(
        os.path.join(path, "config.json"),
        {
            "architectures": ["BertModel"],
            "model_type": model_type,
            "vocab_size": len(vocab),
            "hidden_size": hidden_dim,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "intermediate_size": intermediate_dim,
            "max_position_embeddings": max_position_embeddings,
            "type_vocab_size": 2,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "layer_norm_eps": 1e-12,
            "initializer_range": 0.02,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
        },
    )
    tensors = _hf_bert_tensors(
        len(vocab), num_layers, hidden_dim, intermediate_dim, max_position_embeddings, rng
    )
    _write_safetensors(os.path.join(path, "model.safetensors"), tensors)
    with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    special = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    _dump_json(
        os.path.join(path, "tokenizer_config.json"),
        {
            "do_lower_case": do_lower_case,
            "tokenizer_class": "BertTokenizer",
            "model_max_length": max_position_embeddings,
            **special,
        },
    )
    _dump_json(os.path.join(path, "special_tokens_map.json"), special)

    if sentence_transformers:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        if normalize:
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
        _dump_json(os.path.join(path, "modules.json"), modules)
        _dump_json(
            os.path.join(path, "sentence_bert_config.json"),
            {"max_seq_length": st_max_seq_length, "do_lower_case": False},
        )
        os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
        _dump_json(
            os.path.join(path, "1_Pooling", "config.json"),
            {
                "word_embedding_dimension": hidden_dim,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": pooling == "max",
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
        )
    return path


def randomize_weights(backbone, seed: int) -> None:
    """Seeded tiny-backbone weights: gamma 1, beta and biases 0, the rest N(0, 0.2)."""
    rng = np.random.default_rng(seed)
    for var in backbone.weights:
        name = var.path.rsplit("/", 1)[-1]
        if name == "gamma":
            value = np.ones(var.shape)
        elif name in ("beta", "bias"):
            value = np.zeros(var.shape)
        else:
            value = rng.normal(0.0, 0.2, size=var.shape)
        var.assign(value.astype("float32"))

