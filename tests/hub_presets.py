"""Tiny random KerasHub presets of every text family kerasft registers (no network).

:func:`write_tiny_hub_preset` writes ``<Family>Backbone.save_to_preset`` + the family's
preprocessor (or, for ``electra``, which has no text-classifier preprocessor in KerasHub, its
tokenizer) into a directory: a 2-layer backbone with ``hidden_dim=16`` and a tokenizer whose
vocabulary, BPE merges or SentencePiece proto is built here from :data:`CORPUS`:

- WordPiece (bert, distil_bert, electra, roformer_v2): :data:`WORDPIECE_VOCAB`;
- byte-level BPE (roberta): the 256 byte symbols, a few merges and their results;
- SentencePiece (deberta_v3, albert, xlm_roberta, f_net): a ``model_type="word"`` proto trained
  on :data:`CORPUS` with the family's special pieces.

Weights come from a seeded numpy generator, so the same arguments give the same model. The
preprocessor is saved with `sequence_length` so loading it does not fall back to 512. Sentence
pair tests can reuse the same presets (every tokenizer here takes any text).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from tests.bert_fixtures import randomize_weights

CORPUS = (
    "a good movie", "great film", "i loved this book", "very nice", "it was great",
    "liked it", "a great book", "nice film and good", "a bad movie", "awful film",
    "i hated this book", "very terrible", "it was bad", "not good", "an awful book",
    "terrible film and bad", "the movie is good", "that book was bad", "you liked it",
)
WORDPIECE_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(
    {w for text in CORPUS for w in text.split()}), "##s", "##ly", "##ing", "##ed", ".", ",",
    "!", "?")
#: SentencePiece special pieces per family: (pad piece, user-defined symbols, id settings).
_SENTENCEPIECE = {
    "deberta_v3": ("[PAD]", ["[CLS]", "[SEP]", "[MASK]"], dict(pad_id=0, unk_id=1, bos_id=-1,
                                                                eos_id=-1)),
    "albert": ("<pad>", ["[CLS]", "[SEP]", "[MASK]"], dict(pad_id=0, unk_id=1, bos_id=-1,
                                                            eos_id=-1)),
    "f_net": ("<pad>", ["[CLS]", "[SEP]", "[MASK]"], dict(pad_id=0, unk_id=1, bos_id=-1,
                                                           eos_id=-1)),
    # XLM-R's own layout: <unk>=0, <s>=1, </s>=2 (KerasHub shifts these by one).
    "xlm_roberta": ("<pad>", [], dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)),
}
TOKENIZER_KINDS = {
    "bert": "WordPiece", "distil_bert": "WordPiece", "electra": "WordPiece",
    "roformer_v2": "WordPiece", "roberta": "BPE", "deberta_v3": "SentencePiece",
    "albert": "SentencePiece", "xlm_roberta": "SentencePiece", "f_net": "SentencePiece",
}


def sentencepiece_proto(family: str) -> bytes:
    """A word-level SentencePiece model of :data:`CORPUS` with `family`'s special pieces."""
    import sentencepiece

    pad_piece, symbols, ids = _SENTENCEPIECE[family]
    words = {w for text in CORPUS for w in text.split()}
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, model_type="word",
        vocab_size=len(words) + len(symbols) + 3, pad_piece=pad_piece,
        user_defined_symbols=symbols, hard_vocab_limit=False, minloglevel=2, **ids)
    return model.getvalue()


def _byte_level_bpe() -> tuple[dict[str, int], list[str]]:
    """RoBERTa's byte-level symbols (GPT-2's bytes_to_unicode), a few merges and their results:
    every text tokenizes (unmerged bytes are tokens of their own)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    merges = ["Ġ g", "o o", "Ġg oo", "Ġgoo d", "Ġ b", "a d", "Ġb ad", "i l", "Ġ f", "Ġf il",
              "Ġfil m"]
    vocab = ["<s>", "<pad>", "</s>", "<unk>", *symbols]
    for merge in merges:
        merged = merge.replace(" ", "")
        if merged not in vocab:
            vocab.append(merged)
    vocab.append("<mask>")
    return {token: i for i, token in enumerate(vocab)}, merges


def _tokenizer(family: str) -> Any:
    import keras_hub

    m = keras_hub.models
    if family == "roberta":
        vocabulary, merges = _byte_level_bpe()
        return m.RobertaTokenizer(vocabulary=vocabulary, merges=merges)
    if family in _SENTENCEPIECE:
        cls = {"deberta_v3": m.DebertaV3Tokenizer, "albert": m.AlbertTokenizer,
               "f_net": m.FNetTokenizer, "xlm_roberta": m.XLMRobertaTokenizer}[family]
        return cls(proto=sentencepiece_proto(family))
    cls = {"bert": m.BertTokenizer, "distil_bert": m.DistilBertTokenizer,
           "electra": m.ElectraTokenizer, "roformer_v2": m.RoformerV2Tokenizer}[family]
    return cls(vocabulary=list(WORDPIECE_VOCAB))


def _backbone(family: str, vocabulary_size: int, max_sequence_length: int) -> Any:
    import keras_hub

    m = keras_hub.models
    common = dict(num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, dropout=0.0)
    if family == "electra":
        return m.ElectraBackbone(vocab_size=vocabulary_size, embedding_dim=16,
                                 max_sequence_length=max_sequence_length, **common)
    if family == "albert":
        return m.AlbertBackbone(vocabulary_size=vocabulary_size, embedding_dim=8,
                                max_sequence_length=max_sequence_length, **common)
    if family == "f_net":
        return m.FNetBackbone(vocabulary_size=vocabulary_size, num_layers=2, hidden_dim=16,
                              intermediate_dim=32, dropout=0.0,
                              max_sequence_length=max_sequence_length)
    if family == "roformer_v2":  # rotary positions: no maximum length
        return m.RoformerV2Backbone(vocabulary_size=vocabulary_size, head_size=8, **common)
    if family == "deberta_v3":
        return m.DebertaV3Backbone(vocabulary_size=vocabulary_size, bucket_size=8,
                                   max_sequence_length=max_sequence_length, **common)
    cls = {"bert": m.BertBackbone, "distil_bert": m.DistilBertBackbone,
           "roberta": m.RobertaBackbone, "xlm_roberta": m.XLMRobertaBackbone}[family]
    return cls(vocabulary_size=vocabulary_size, max_sequence_length=max_sequence_length,
               **common)


def write_tiny_hub_preset(path: str | os.PathLike, family: str, *, sequence_length: int = 16,
                          max_sequence_length: int = 64, seed: int = 0) -> str:
    """Writes a tiny KerasHub preset of `family` (a key of :data:`TOKENIZER_KINDS`) at `path`
    and returns its path; ``<Family>Backbone.from_preset(path)`` and the family's
    ``TextClassifierPreprocessor.from_preset(path)`` load it."""
    import keras_hub

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tokenizer = _tokenizer(family)
    backbone = _backbone(family, int(tokenizer.vocabulary_size()), max_sequence_length)
    randomize_weights(backbone, seed)
    backbone.save_to_preset(path)
    if family == "electra":  # KerasHub 0.32 has no ElectraTextClassifierPreprocessor
        tokenizer.save_to_preset(path)
        return path
    preprocessor_cls = {
        "bert": "BertTextClassifierPreprocessor",
        "distil_bert": "DistilBertTextClassifierPreprocessor",
        "roberta": "RobertaTextClassifierPreprocessor",
        "deberta_v3": "DebertaV3TextClassifierPreprocessor",
        "albert": "AlbertTextClassifierPreprocessor",
        "xlm_roberta": "XLMRobertaTextClassifierPreprocessor",
        "f_net": "FNetTextClassifierPreprocessor",
        "roformer_v2": "RoformerV2TextClassifierPreprocessor",
    }[family]
    preprocessor = getattr(keras_hub.models, preprocessor_cls)(
        tokenizer=tokenizer, sequence_length=sequence_length)
    preprocessor.save_to_preset(path)
    return path


# MobileNet's ImageNet mean/std as scale/offset: per-channel preprocessing read from the preset.
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def tiny_vit_preset(path: str | os.PathLike) -> str | os.PathLike:
    """A 1-layer ViT preset (16x16 images) with its image converter, at `path`."""
    import keras_hub

    keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=1,
                                 num_heads=2, hidden_dim=16, mlp_dim=32).save_to_preset(path)
    keras_hub.layers.ViTImageConverter(image_size=(16, 16), scale=1 / 127.5,
                                       offset=-1.0).save_to_preset(path)
    return path


def tiny_mobilenet_v3_preset(path: str | os.PathLike) -> str | os.PathLike:
    """A one-block MobileNetV3 preset (16x16 images, ImageNet mean/std), at `path`."""
    import keras_hub

    keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[16]], stackwise_num_blocks=[1], stackwise_num_filters=[[8]],
        stackwise_kernel_size=[[3]], stackwise_num_strides=[[2]], stackwise_se_ratio=[[0.25]],
        stackwise_activation=[["hard_swish"]], stackwise_padding=[[1]],
        output_num_filters=16, depthwise_filters=8, depthwise_stride=1,
        depthwise_residual=False, last_layer_filter=16, squeeze_and_excite=0.5,
    ).save_to_preset(path)
    keras_hub.layers.MobileNetImageConverter(
        image_size=(16, 16), scale=list(1 / (255 * IMAGENET_STD)),
        offset=list(-IMAGENET_MEAN / IMAGENET_STD),
    ).save_to_preset(path)
    return path
