"""Tagged words for ``head.task: token_classification`` (NER, POS, chunking).

Two sources:

- ``data.source: conll``: one word per line, its tag in the last column (columns split on tabs
  or spaces, so ``EU B-ORG`` and CoNLL-2003's ``EU NNP B-NP B-ORG`` both work), a blank line
  between sentences, ``-DOCSTART-`` lines skipped.
- ``data.source: jsonl``: one sentence per line, ``{"tokens": [...], "tags": [...]}``; the keys are
  ``data.tokens_column`` / ``data.tags_column`` (defaults ``tokens`` / ``tags``, the spelling of
  Hugging Face's token-classification datasets).

The tag set is the training split's (sorted, ``O`` first); a validation or test tag that training
never saw is an error naming the file and line. :func:`align` maps words to the backbone's
sub-word tokens: every word is tokenized on its own with the KerasHub tokenizer (the export does
the same in its graph), the tag goes on the word's FIRST sub-word and every other position
(other sub-words, ``[CLS]``, ``[SEP]``, padding, and words cut by ``backbone.sequence_length``)
has sample weight 0, so the loss and the logged accuracy count each kept word once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasft.config import DataConfig
from kerasft.errors import DataError, expected
from kerasft.io import resolve_pkg_path

OUTSIDE = "O"


@dataclass
class TaggedSplit:
    """Sentences (lists of words) and their tags (one per word)."""

    words: list[list[str]]
    tags: list[list[str]]

    @property
    def size(self) -> int:
        return len(self.words)


@dataclass
class TokenData:
    train: TaggedSplit
    validation: TaggedSplit | None
    test: TaggedSplit | None
    tag_names: list[str]
    report: dict[str, Any] = field(default_factory=dict)


def read_conll(path: str, encoding: str = "utf-8") -> TaggedSplit:
    """Reads a CoNLL/IOB file: ``word ... tag`` per line, blank line between sentences."""
    words: list[list[str]] = []
    tags: list[list[str]] = []
    sentence: list[str] = []
    labels: list[str] = []
    try:
        with open(path, encoding=encoding) as f:
            for number, line in enumerate(f, 1):
                parts = line.split()
                if not parts or parts[0] == "-DOCSTART-":
                    if sentence:
                        words.append(sentence)
                        tags.append(labels)
                    sentence, labels = [], []
                    continue
                if len(parts) < 2:
                    raise DataError(f"{path}:{number}: expected 'word tag' (tag in the last "
                                    f"column). Received: {line.strip()!r}")
                sentence.append(parts[0])
                labels.append(parts[-1])
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(expected(f"a readable {encoding} CoNLL file", "data file", path)
                        + f" ({e})") from None
    if sentence:
        words.append(sentence)
        tags.append(labels)
    return TaggedSplit(words, tags)


def read_token_jsonl(path: str, tokens_column: str = "tokens", tags_column: str = "tags",
                     encoding: str = "utf-8") -> TaggedSplit:
    """Reads one ``{tokens_column: [...], tags_column: [...]}`` object per line."""
    words: list[list[str]] = []
    tags: list[list[str]] = []
    try:
        with open(path, encoding=encoding) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: expected a JSON object. Received: {e}") from None
                if not isinstance(row, dict) or tokens_column not in row \
                        or tags_column not in row:
                    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                    raise DataError(f"{where}: expected keys {tokens_column!r} and "
                                    f"{tags_column!r} (data.tokens_column / data.tags_column). "
                                    f"Received: {keys}")
                w, t = row[tokens_column], row[tags_column]
                if not isinstance(w, list) or not isinstance(t, list) or len(w) != len(t):
                    raise DataError(f"{where}: expected two lists of the same length. Received: "
                                    f"{tokens_column}={str(w)[:60]}, {tags_column}={str(t)[:60]}")
                if w:
                    words.append([str(x) for x in w])
                    tags.append([str(x) for x in t])
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(expected(f"a readable {encoding} JSONL file", "data file", path)
                        + f" ({e})") from None
    return TaggedSplit(words, tags)


def read_split(cfg: DataConfig, path: str) -> TaggedSplit:
    path = resolve_pkg_path(path, "data.train")
    if cfg.source == "conll":
        return read_conll(path, cfg.encoding)
    return read_token_jsonl(path, cfg.tokens_column, cfg.tags_column, cfg.encoding)


def tag_vocabulary(split: TaggedSplit) -> list[str]:
    """The training split's tags: ``O`` first (when present), then sorted."""
    found = {t for row in split.tags for t in row}
    return ([OUTSIDE] if OUTSIDE in found else []) + sorted(found - {OUTSIDE})


def _take(split: TaggedSplit, index: np.ndarray) -> TaggedSplit:
    return TaggedSplit([split.words[i] for i in index], [split.tags[i] for i in index])


def load_token_data(cfg: DataConfig, seed: int = 42) -> TokenData:
    """Train / validation / test from ``data.*``; the ``*_split`` fractions are seeded random
    samples of the training file; ``data.max_examples`` caps the training sentences."""
    if not cfg.train:
        raise DataError(expected("a CoNLL or JSONL file", "data.train", cfg.train))
    train = read_split(cfg, cfg.train)
    if not train.size:
        raise DataError(expected("at least one tagged sentence", "data.train", cfg.train))
    validation = read_split(cfg, cfg.validation) if cfg.validation else None
    test = read_split(cfg, cfg.test) if cfg.test else None
    rng = np.random.default_rng(seed)
    order = rng.permutation(train.size)
    held = {}
    for name, fraction in (("test", cfg.test_split), ("validation", cfg.validation_split)):
        if fraction:
            count = max(1, int(round(fraction * train.size)))
            held[name], order = order[:count], order[count:]
    if cfg.max_examples:
        order = order[: cfg.max_examples]
    if "test" in held:
        test = _take(train, np.sort(held["test"]))
    if "validation" in held:
        validation = _take(train, np.sort(held["validation"]))
    train = _take(train, np.sort(order))
    names = tag_vocabulary(train)
    known = set(names)
    for split_name, split in (("validation", validation), ("test", test)):
        if split is None:
            continue
        unseen = sorted({t for row in split.tags for t in row} - known)
        if unseen:
            raise DataError(expected(f"tags the training split has ({', '.join(names[:12])})",
                                     f"data.{split_name} tags", unseen[:5]))
    report = {"tags": len(names), "sentences": {
        n: s.size for n, s in (("train", train), ("validation", validation), ("test", test))
        if s is not None}}
    return TokenData(train, validation, test, names, report)


@dataclass
class Aligned:
    """Model inputs and per-token targets of a batch of sentences, ``[n, sequence_length]``.

    ``first_token[i, j]`` is the position of word ``j``'s first sub-word (-1: the word was cut by
    the sequence length, or sentence ``i`` has fewer words).
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    weights: np.ndarray
    first_token: np.ndarray


def unknown_id(tokenizer: Any) -> int:
    """The id of a WordPiece tokenizer's out-of-vocabulary token (``[UNK]``)."""
    return int(tokenizer.token_to_id(tokenizer.oov_token))


def word_pieces(tokenizer: Any, words: Sequence[str]) -> dict[str, list[int]]:
    """Sub-word ids of each distinct word, tokenized by `tokenizer` one word at a time (a word
    it gives no piece, e.g. a lone control character, becomes the unknown token)."""
    import tensorflow as tf

    distinct = sorted(set(words))
    if not distinct:
        return {}
    unk = unknown_id(tokenizer)
    pieces: dict[str, list[int]] = {}
    for start in range(0, len(distinct), 4096):
        chunk = distinct[start:start + 4096]
        ids = tokenizer(tf.constant(chunk))  # eager: KerasHub may hand back Python lists
        rows = ids.to_list() if hasattr(ids, "to_list") else ids
        for word, row in zip(chunk, rows, strict=True):
            pieces[word] = [int(i) for i in row] or [unk]
    return pieces


def align(words: Sequence[Sequence[str]], tags: Sequence[Sequence[str]] | None,
          pieces: Callable[[str], list[int]], tag_index: dict[str, int], sequence_length: int,
          cls_id: int, sep_id: int, pad_id: int, segment_ids: bool = True) -> Aligned:
    """Word -> sub-word alignment: ``[CLS] pieces... [SEP] pad...``; the tag of each word on its
    first piece; weight 1 only there. `tags` None: inputs and positions only (predictions)."""
    n = len(words)
    mask = np.zeros((n, sequence_length), np.int32)
    max_words = max((len(w) for w in words), default=0)
    token_ids = np.full((n, sequence_length), pad_id, np.int32)
    labels = np.zeros((n, sequence_length), np.int32)
    weights = np.zeros((n, sequence_length), np.float32)
    first = np.full((n, max(max_words, 1)), -1, np.int32)
    room = sequence_length - 1  # the last position is [SEP]
    for i, sentence in enumerate(words):
        ids = [cls_id]
        for j, word in enumerate(sentence):
            word_ids = pieces(word)
            if len(ids) + 1 > room:
                break
            first[i, j] = len(ids)
            if tags is not None:
                labels[i, len(ids)] = tag_index[tags[i][j]]
                weights[i, len(ids)] = 1.0
            ids.extend(word_ids[: room - len(ids)])
        ids.append(sep_id)
        token_ids[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    inputs = {"token_ids": token_ids, "padding_mask": mask}
    if segment_ids:
        inputs["segment_ids"] = np.zeros_like(token_ids)
    return Aligned(inputs, labels, weights, first)
