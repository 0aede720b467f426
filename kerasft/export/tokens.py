"""The SavedModel of a token-classification run: raw text in, a tag per word and the entities out.

``serving_default`` takes ``text`` (``tf.string [batch]``, one sentence or tweet per example)
and does everything in its graph: words are split on whitespace (``tf.strings.split``, as
:meth:`kerasft.tagger.TokenTagger.predict` splits them), each word is tokenized by the
backbone's KerasHub tokenizer, pieces are joined per example with ``[CLS]`` / ``[SEP]`` and cut to
``backbone.sequence_length`` exactly as training aligned them (kerasft.data.tokens.align), and
each word takes the tag predicted on its first piece. Outputs, readable without kerasft:

- ``words``: ``string [batch, max words]``, the split words, padded with ``""``;
- ``tags``: ``string [batch, max words]``, one tag per word, padded with ``""``; a word cut by the
  sequence length gets ``O``;
- ``tag_scores``: ``float32 [batch, max words]``, the probability of each word's tag (0 on pads);
- ``entity_text`` / ``entity_type``: ``string [batch, max entities]`` (padded with ``""``),
  ``entity_start`` / ``entity_end``: ``int64 [batch, max entities]``, WORD indices into
  ``words``, end exclusive (padded with -1). Entities are the chunks of ``tags`` by seqeval's
  default rules (kerasft.evaluation.entities.chunks: IOB2, IOB1 and IOBES tags).

As every kerasft export: the variables are tracked as plain ``tf.Variable`` objects (TF
Serving's session loader restores them), the op check, the warmup file, and a check in a fresh
process (session loader, warmup replay, object loader) whose tags and entities must equal the
in-memory tagger's before the version folder is renamed into place.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.data.tokens import unknown_id
from kerasft.errors import ExportError
from kerasft.export.saved_model import (
    check_and_log_ops,
    log_exported,
    new_version_dir,
    verify_in_fresh_process,
    write_extras,
)
from kerasft.export.warmup import as_bytes, write_warmup
from kerasft.io import publish_dir

TOKEN_OUTPUTS = ("words", "tags", "tag_scores", "entity_text", "entity_type", "entity_start",
                 "entity_end")


def entity_masks(tags: Any) -> tuple[Any, Any, Any]:
    """seqeval's chunk rules over ``[batch, words]`` tags (``""`` pads read as ``O``): whether a
    chunk starts at each word, whether one ends at each word, and each word's type."""
    import tensorflow as tf

    tags = tf.where(tf.equal(tags, ""), "O", tags)
    batch = tf.shape(tags)[0]
    outside = tf.fill([batch, 1], "O")
    cur = tf.concat([tags, outside], axis=1)  # the final O closes any open chunk
    prev = tf.concat([outside, tags], axis=1)
    prefix, prev_prefix = tf.strings.substr(cur, 0, 1), tf.strings.substr(prev, 0, 1)

    def kind(t: Any) -> Any:
        rest = tf.strings.regex_replace(tf.strings.substr(t, 1, 1 << 20), "^[^-]*-", "")
        return tf.where(tf.equal(rest, ""), "_", rest)

    type_ = kind(cur)
    prev_type = tf.concat([tf.fill([batch, 1], ""), kind(tags)], axis=1)

    def isin(t: Any, values: tuple[str, ...]) -> Any:
        return tf.reduce_any(tf.stack([tf.equal(t, v) for v in values]), axis=0)

    changed = tf.not_equal(prev_type, type_)
    ends = (isin(prev_prefix, ("E", "S"))
            | (isin(prev_prefix, ("B", "I")) & isin(prefix, ("B", "S", "O")))
            | (~isin(prev_prefix, ("O", ".")) & changed))
    starts = (isin(prefix, ("B", "S")) | (isin(prev_prefix, ("E", "S", "O"))
                                          & isin(prefix, ("E", "I")))
              | (~isin(prefix, ("O", ".")) & changed))
    # ends[:, i] closes a chunk whose last word is i - 1
    return starts[:, :-1], ends[:, 1:], type_[:, :-1]


def _serving_module(model: Any, backbone: Any, tag_names: list[str]) -> Any:
    import tensorflow as tf

    tokenizer = backbone.preprocessor.tokenizer
    cls_id, sep_id = int(tokenizer.cls_token_id), int(tokenizer.sep_token_id)
    pad_id = int(tokenizer.pad_token_id)
    unk_id = unknown_id(tokenizer)
    room = int(backbone.sequence_length) - 2
    segments = "segment_ids" in backbone.inputs

    class TokenServing(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="kerasft_serving")
            # plain tf.Variables: see kerasft/export/saved_model.py
            self.model_variables = [getattr(v, "value", v) for v in model.variables]
            self.preprocessor = backbone.preprocessor
            self.tag_vocab = tf.constant(list(tag_names), dtype=tf.string)

    module = TokenServing()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text: Any) -> dict[str, Any]:
        words = tf.strings.split(text)  # ragged [batch, words]
        pieces = tf.cast(tokenizer(words.flat_values), tf.int64)  # ragged [all words, pieces]
        empty = tf.cast(tf.equal(pieces.row_lengths(), 0), tf.int64)
        pieces = tf.concat([pieces, tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(empty)], tf.constant(unk_id, tf.int64)), empty)], axis=1)
        counts = pieces.row_lengths()
        before = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(counts)], axis=0)
        first_of_row = tf.gather(before, words.row_splits[:-1])
        start = before[:-1] - tf.gather(first_of_row, words.value_rowids())
        tokens = tf.RaggedTensor.from_row_splits(pieces, words.row_splits).merge_dims(1, 2)
        tokens = tokens[:, :room]
        batch = tf.shape(text, out_type=tf.int64)[0]
        token_ids = tf.concat([tf.fill([batch, 1], tf.constant(cls_id, tf.int64)), tokens,
                               tf.fill([batch, 1], tf.constant(sep_id, tf.int64))], axis=1)
        lengths = token_ids.row_lengths()
        ids = token_ids.to_tensor(pad_id)
        inputs = {"token_ids": tf.cast(ids, tf.int32),
                  "padding_mask": tf.sequence_mask(lengths, tf.shape(ids)[1], tf.int32)}
        if segments:
            inputs["segment_ids"] = tf.zeros_like(inputs["token_ids"])
        probabilities = tf.cast(model(inputs, training=False), tf.float32)

        kept = words.with_flat_values(start < room).to_tensor(False)
        position = words.with_flat_values(start + 1).to_tensor(0)
        present = tf.sequence_mask(words.row_lengths(), tf.shape(position)[1])
        best = tf.gather(tf.argmax(probabilities, -1), position, batch_dims=1)
        score = tf.gather(tf.reduce_max(probabilities, -1), position, batch_dims=1)
        tags = tf.where(kept, tf.gather(module.tag_vocab, best), "O")
        tags = tf.where(present, tags, "")
        score = tf.where(kept & present, score, 0.0)
        word_grid = words.to_tensor("")

        starts, ends, type_ = entity_masks(tags)
        first = tf.where(starts)  # [entities, 2] (row, word), row-major like `last`
        last = tf.where(ends)
        rows = first[:, 0]
        width = tf.shape(word_grid, out_type=tf.int64)[1]
        spans = tf.ragged.range(rows * width + first[:, 1], rows * width + last[:, 1] + 1)
        text_out = tf.strings.reduce_join(
            tf.gather(tf.reshape(word_grid, [-1]), spans), axis=1, separator=" ")

        def per_example(values: Any, pad: Any) -> Any:
            return tf.RaggedTensor.from_value_rowids(values, rows, nrows=batch).to_tensor(pad)

        return {"words": word_grid, "tags": tags, "tag_scores": score,
                "entity_text": per_example(text_out, ""),
                "entity_type": per_example(tf.gather_nd(type_, first), ""),
                "entity_start": per_example(first[:, 1], tf.constant(-1, tf.int64)),
                "entity_end": per_example(last[:, 1] + 1, tf.constant(-1, tf.int64))}

    module.serve = serve
    return module, {"serving_default": serve}


def _compare(path: Path, answers: dict[str, np.ndarray], texts: list[str],
             reference: Callable[[list[str]], list[list[str]]]) -> None:
    """The export's tags and entities must be the in-memory tagger's."""
    from kerasft.evaluation.entities import chunks

    want = reference(texts)
    got = [[t.decode("utf-8") for t in row if t] for row in answers["serving_default/tags"]]
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if w != g:
            raise ExportError(f"{path} (not written): expected the export's tags to equal the "
                              f"in-memory model's. Received: example {i}: {g[:8]} (model: "
                              f"{w[:8]})")
        spans = [(t.decode("utf-8"), int(s), int(e) - 1) for t, s, e in zip(
            answers["serving_default/entity_type"][i], answers["serving_default/entity_start"][i],
            answers["serving_default/entity_end"][i], strict=True) if s >= 0]
        if spans != chunks(w):
            raise ExportError(f"{path} (not written): expected the export's entities to equal "
                              f"seqeval's chunks of its tags. Received: example {i}: {spans} "
                              f"(expected {chunks(w)})")


def export_token_model(model: Any, backbone: Any, tag_names: list[str], base_dir: Any,
                       name: str, version: int | str = "auto",
                       sample_texts: list[str] | None = None,
                       reference: Callable[[list[str]], list[list[str]]] | None = None,
                       extra_files: dict[str, str | bytes] | None = None, verify: bool = True,
                       log: Callable[[str], None] = print) -> Path:
    """Writes ``<base_dir>/<name>/<version>/`` atomically and returns its path; with `verify`
    and samples, checked in a fresh process and against `reference` (texts -> tags)."""
    import tensorflow as tf

    model_dir, version, final = new_version_dir(base_dir, name, version)
    texts = list(sample_texts or ["a short example text"])
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        module, signatures = _serving_module(model, backbone, tag_names)
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extras = tmp / "assets.extra"
        extras.mkdir(exist_ok=True)
        write_extras(extras, {"labels.txt": "\n".join(tag_names) + "\n", **(extra_files or {})})
        check_and_log_ops(tmp, backbone, log)
        count = write_warmup(tmp, name, backbone, np.array(texts, dtype=object))
        log(f"warmup: {count} requests in assets.extra/tf_serving_warmup_requests")
        if verify:
            result = verify_in_fresh_process(tmp, {"serving_default/text": as_bytes(texts)},
                                             where=final, outputs=TOKEN_OUTPUTS)
            if reference is not None:
                _compare(final, result.answers, texts, reference)
            log(f"export checked in a fresh process: session loader, warmup replay, object "
                f"loader; tags and entities equal the in-memory model's on {len(texts)} texts")
        publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log_exported(final, log)
    return final
