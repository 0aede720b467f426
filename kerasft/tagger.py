"""``head.task: token_classification``: one tag per word (NER, POS, chunking) on a text backbone.

KerasHub has no token-classification task class, so the model is assembled here: the backbone's
``sequence_output`` (kerasft.models.keras_hub) -> Dropout -> one softmax Dense per token
(kerasft.models.heads.build_token_head). Words are aligned to WordPiece sub-words in Python
(kerasft.data.tokens.align: tag on each word's first piece, sample weight 0 elsewhere), so
``fit``'s loss and ``accuracy`` are per kept word. Training runs the config's stages through the
same loop as every other task (kerasft.training.loop.run_stages); held-out metrics are entity
precision / recall / F1 as seqeval reports them plus token accuracy
(kerasft.evaluation.entities), written to the run folder's ``metrics.json`` / ``metrics.txt``.
The export (kerasft.export.tokens) takes raw text and splits words, tokenizes and finds entities
in its graph.

Not here yet: resuming an interrupted run (``--resume``; the run keeps its best-epoch weights
but no per-epoch run state), cached head features, multi-worker training, TFLite.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.config import Config, ConfigError, save_config
from kerasft.errors import KerasftError, expected
from kerasft.io import atomic_write

Log = Callable[[str], None]
WEIGHTS_FILE = "model.weights.h5"
LABELS_FILE = "labels.txt"


class TokenTagger:
    """Backbone + per-token head for ``head.task: token_classification``; the same methods as
    :class:`kerasft.api.FineTuner` (``fit``, ``evaluate``, ``predict``, ``export``,
    ``from_run``), on tagged words instead of labelled examples."""

    def __init__(self, config: Config, log: Log = print) -> None:
        self.config = config
        self.log = log
        self.backbone: Any = None
        self._model: Any = None
        self.class_names: list[str] | None = None  # the tags
        self.data: Any = None
        self.run_dir: Path | None = None
        self.strategy_info: Any = None
        self.precision: Any = None
        self.metrics: dict[str, Any] | None = None
        self.stage_results: list[Any] = []
        self._pieces: dict[str, list[int]] = {}

    # -- building ----------------------------------------------------------------------------

    def _prepare_runtime(self) -> None:
        import keras

        from kerasft.training.precision import resolve as resolve_precision
        from kerasft.training.strategy import resolve_strategy

        if self.strategy_info is not None:
            return
        keras.utils.set_random_seed(self.config.seed)
        self.strategy_info = resolve_strategy(self.config)
        if self.strategy_info.kind in ("multi_worker", "tpu"):
            raise ConfigError(expected("auto, default or mirrored with head.task "
                                       "token_classification", "training.strategy",
                                       self.strategy_info.kind))
        self.precision = resolve_precision(self.config, self.strategy_info.kind, None)
        self.config.training.mixed_precision = self.precision.policy
        if self.precision.auto:
            self.config.training.mixed_precision_reason = self.precision.reason
        keras.mixed_precision.set_global_policy(self.precision.keras_policy)

    def build(self, tag_names: list[str]) -> Any:
        """Builds backbone + token head for `tag_names` in the strategy scope."""
        if len(tag_names) < 2:
            raise KerasftError(expected("at least 2 tags", "tags", tag_names))
        self._prepare_runtime()
        self.class_names = [str(t) for t in tag_names]
        with self.strategy_info.strategy.scope():
            self.backbone, self._model = self._assemble(self.config.backbone)
        return self._model

    def _assemble(self, backbone_cfg: Any) -> tuple[Any, Any]:
        import keras

        from kerasft.models.heads import build_token_head, keras_model_name
        from kerasft.models.registry import build_backbone

        backbone = build_backbone(backbone_cfg, "cls")
        if backbone.task != "text" or backbone.sequence is None:
            raise ConfigError(expected("a KerasHub text backbone with head.task "
                                       "token_classification", "backbone.name",
                                       self.config.backbone.name))
        if backbone.info.get("tokenizer") != "WordPiece" or \
                "padding_mask" not in backbone.inputs:
            raise ConfigError(expected(
                "a WordPiece family with a padding mask (bert, distil_bert, electra) with "
                "head.task token_classification (words are tokenized one by one)",
                "backbone.name", f"{backbone.name} ({backbone.info.get('tokenizer')})"))
        # The pooler feeds nothing here: stages never unfreeze it (no gradient reaches it).
        backbone.unused_layers = [layer.name for layer in backbone.network.layers
                                  if layer.name == "pooled_dense"]
        backbone.info["pooling"] = "none (per token)"
        probabilities = build_token_head(backbone.sequence, len(self.class_names),
                                         self.config.head)
        model = keras.Model(backbone.inputs, probabilities,
                            name=keras_model_name(self.config.name))
        return backbone, model

    def _serving_model(self) -> tuple[Any, Any]:
        """The model the export serves: float32 whatever the training policy (a copy with the
        trained weights under mixed precision, as kerasft.api.FineTuner exports)."""
        import copy

        import keras

        if self.config.training.mixed_precision == "none":
            return self.model, self.backbone
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            cfg = copy.deepcopy(self.config.backbone)
            cfg.weights = "none"
            backbone, model = self._assemble(cfg)
            model.set_weights(self.model.get_weights())
        finally:
            keras.mixed_precision.set_global_policy(previous)
        self.log(f"export: serving in float32 (trained under "
                 f"{self.config.training.mixed_precision})")
        return model, backbone

    @property
    def model(self) -> Any:
        if self._model is None:
            if self.data is None:
                self.data = self.load_data()
            self.build(self.data.tag_names)
        return self._model

    def load_data(self) -> Any:
        from kerasft.data.tokens import load_token_data

        return load_token_data(self.config.data, self.config.seed)

    # -- alignment ---------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        return self.backbone.preprocessor.tokenizer

    def _special_ids(self) -> tuple[int, int, int]:
        tok = self.tokenizer
        return int(tok.cls_token_id), int(tok.sep_token_id), int(tok.pad_token_id)

    def _piece(self, word: str) -> list[int]:
        return self._pieces[word]

    def align(self, words: list[list[str]], tags: list[list[str]] | None = None) -> Any:
        """`words` (and `tags`) as model inputs, labels and weights (kerasft.data.tokens.align)."""
        from kerasft.data.tokens import align, word_pieces

        new = {w for row in words for w in row} - set(self._pieces)
        if new:
            self._pieces.update(word_pieces(self.tokenizer, sorted(new)))
        cls_id, sep_id, pad_id = self._special_ids()
        index = {t: i for i, t in enumerate(self.class_names)}
        return align(words, tags, self._piece, index, self.backbone.sequence_length,
                     cls_id, sep_id, pad_id, segment_ids="segment_ids" in self.backbone.inputs)

    def _dataset(self, split: Any, training: bool) -> Any:
        import tensorflow as tf

        from kerasft.training.distribution import distribute_pipeline, sharding_policy

        a = self.align(split.words, split.tags)
        inputs = {k: v for k, v in a.inputs.items() if k in self.backbone.inputs}
        ds = tf.data.Dataset.from_tensor_slices((inputs, a.labels, a.weights))
        if training:
            ds = ds.shuffle(split.size, seed=self.config.seed, reshuffle_each_iteration=True)
        ds = ds.batch(self.config.data.batch_size)
        if self.config.data.bucket_by_length:
            multiple = self.config.data.bucket_multiple
            ds = ds.map(lambda x, y, w: _trim(x, y, w, multiple))
        kind, replicas = self.strategy_info.kind, self.strategy_info.replicas
        if sharding_policy(kind) is None:  # mirrored: the classifier's replica rule
            ds = distribute_pipeline(ds, kind, size=split.size,
                                     global_batch=self.config.data.batch_size,
                                     training=training, replicas=replicas)
        return ds.prefetch(tf.data.AUTOTUNE)

    # -- training ----------------------------------------------------------------------------

    def fit(self, output_dir: str | os.PathLike | None = None, evaluate: bool = True,
            run_id: str | None = None, resume: Any = False, force: bool = False,
            **unused: Any) -> dict[str, Any]:
        """Runs every stage on ``config.data``; returns a summary (stages, metrics, run folder)."""
        from kerasft.models.weights import save_model_weights
        from kerasft.training.distribution import check_replica_examples, steps_per_epoch
        from kerasft.training.loop import run_stages
        from kerasft.training.run_folder import open_run_folder, resolve_run_id
        from kerasft.training.stages import check_stages
        from kerasft.training.strategy import placement

        if resume:
            raise KerasftError(expected("a fresh run (resuming is not supported for head.task "
                                        "token_classification yet)", "--resume", resume))
        if any(v is not None for v in unused.values()):
            raise KerasftError(expected("data from config.data with head.task "
                                        "token_classification", "fit arguments", sorted(unused)))
        self._prepare_runtime()
        data = self.data = self.data or self.load_data()
        model = self.model
        check_stages(self.backbone, self.config)
        check_replica_examples(data.train.size, self.strategy_info.replicas)
        where = placement(self.strategy_info.kind, os.environ)
        folder = open_run_folder(output_dir or self.config.output_dir, self.config.name,
                                 resolve_run_id(run_id, os.environ), where,
                                 self.strategy_info.strategy)
        self.run_dir = folder.write_dir
        self.config.training.checkpoint_every_epoch = False  # no run state: see module doc
        save_config(self.config, self.run_dir / "config.yaml")
        atomic_write(self.run_dir / LABELS_FILE, "\n".join(self.class_names) + "\n")
        log = self._run_log()
        sizes = ", ".join(f"{k} {v}" for k, v in data.report["sentences"].items())
        log(f"run folder: {folder.run_dir}")
        log(f"data: {self.config.data.source}, {len(self.class_names)} tags "
            f"({', '.join(self.class_names[:12])}); sentences: {sizes}")
        info = self.backbone.info
        log(f"backbone: {self.backbone.name} ({info.get('architecture')}, "
            f"{info.get('parameters', 0):,} parameters), token classification, sequence length "
            f"{self.backbone.sequence_length}")
        log(self.precision.line())
        train_ds = self._dataset(data.train, training=True)
        val_ds = self._dataset(data.validation, training=False) if data.validation else None
        steps = steps_per_epoch(data.train.size, self.config.data.batch_size, False,
                                self.strategy_info.replicas)
        self.stage_results = run_stages(
            model, self.backbone, self.config, train_ds, val_ds, steps, self.run_dir,
            self.strategy_info, len(self.class_names), log)
        save_model_weights(model, self.run_dir / WEIGHTS_FILE)
        summary: dict[str, Any] = {"run_dir": str(folder.run_dir),
                                   "stages": [asdict(r) for r in self.stage_results]}
        if evaluate and (data.test or data.validation):
            summary["metrics"] = self.evaluate()
        return summary

    def plan(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KerasftError(expected("a run without --dry-run (no plan for head.task "
                                    "token_classification yet)", "--dry-run", True))

    def _run_log(self) -> Log:
        def log(line: str) -> None:
            self.log(line)
            if self.run_dir is not None:
                with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
                    f.write(line + "\n")

        return log

    # -- prediction and evaluation -----------------------------------------------------------

    def predict_words(self, words: list[list[str]], model: Any = None) -> list[list[str]]:
        """A tag per word (by `model`, default :attr:`model`); a word cut by
        ``backbone.sequence_length`` gets ``O``."""
        model = model or self.model
        out: list[list[str]] = []
        size = self.config.data.batch_size
        for start in range(0, len(words), size):
            chunk = words[start:start + size]
            a = self.align(chunk)
            length = int(a.inputs["padding_mask"].sum(1).max())
            if self.config.data.bucket_by_length:  # rounded: few traced shapes
                multiple = self.config.data.bucket_multiple
                length = min(-(-length // multiple) * multiple, self.backbone.sequence_length)
            else:
                length = self.backbone.sequence_length
            x = {k: v[:, :length] for k, v in a.inputs.items() if k in self.backbone.inputs}
            ids = np.asarray(model.predict_on_batch(x)).argmax(-1)
            for i, row in enumerate(chunk):
                pos = a.first_token[i, : len(row)]
                out.append([self.class_names[ids[i, p]] if p >= 0 else "O" for p in pos])
        return out

    def predict(self, inputs: Any, batch_size: int | None = None) -> Any:
        """Tags for one text (a list of tags), texts (a list of lists; words split on
        whitespace, as the export does) or pre-split sentences (lists of words)."""
        single = isinstance(inputs, (str, bytes))
        rows = [inputs] if single else list(inputs)
        words = [r.decode("utf-8").split() if isinstance(r, bytes) else
                 r.split() if isinstance(r, str) else [str(w) for w in r] for r in rows]
        tags = self.predict_words(words)
        return tags[0] if single else tags

    def evaluate(self, split: str | None = None, **unused: Any) -> dict[str, Any]:
        """Entity scores and token accuracy on the test split (else validation); written to the
        run folder (``metrics.json``, ``metrics.txt``; another split: ``metrics-<split>.*``)."""
        from kerasft.evaluation.entities import entity_report, format_entity_report
        from kerasft.evaluation.metrics import write_json

        if self.data is None:
            self.data = self.load_data()
        held_out = "test" if self.data.test is not None else "validation"
        name = split or held_out
        chosen = getattr(self.data, name, None)
        if chosen is None:
            raise KerasftError(expected("a test or validation split to evaluate on", "split",
                                        name))
        report = entity_report(chosen.tags, self.predict_words(chosen.words))
        report["split"] = name
        report["tag_names"] = list(self.class_names)
        if name == held_out:
            self.metrics = report
        self._run_log()(format_entity_report(report, title=f"metrics on {name} "
                                             f"({report['examples']} sentences)"))
        if self.run_dir is not None:
            suffix = "" if name == held_out else f"-{name}"
            write_json(report, self.run_dir / f"metrics{suffix}.json")
            atomic_write(self.run_dir / f"metrics{suffix}.txt",
                         format_entity_report(report) + "\n", durable=False)
        return report

    # -- export and runs ---------------------------------------------------------------------

    def export(self, dir: str | os.PathLike | None = None, version: int | str | None = None,
               verify: bool | None = None, quantize: str | None = None) -> Path:
        """Writes the TF Serving SavedModel (kerasft.export.tokens); returns its folder."""
        import json

        from kerasft.evaluation.entities import format_entity_report
        from kerasft.export.target import export_target
        from kerasft.export.tokens import export_token_model
        from kerasft.training.strategy import placement

        if quantize not in (None, "none"):
            raise KerasftError(expected("none with head.task token_classification",
                                        "quantize", quantize))
        self._prepare_runtime()
        model, backbone = self._serving_model()
        samples = None
        if self.data is not None:
            split = self.data.test or self.data.validation or self.data.train
            samples = [" ".join(w) for w in split.words[:8]]
        extra: dict[str, str | bytes] = {"config.yaml": self.config.to_yaml()}
        if self.metrics is not None:
            extra["metrics.json"] = json.dumps(self.metrics, indent=2)
            extra["metrics.txt"] = format_entity_report(self.metrics) + "\n"
        with export_target(dir or self.config.export.dir, self.config.name,
                           version if version is not None else self.config.export.version,
                           placement(self.strategy_info.kind, os.environ),
                           self.strategy_info.strategy) as target:
            return export_token_model(
                model, backbone, self.class_names, base_dir=target.base_dir,
                name=self.config.name, version=target.version, sample_texts=samples,
                reference=lambda texts: self.predict_words([t.split() for t in texts], model),
                extra_files=extra,
                verify=self.config.export.verify if verify is None else verify, log=self.log)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, log: Log = print,
                 weights: str = WEIGHTS_FILE) -> TokenTagger:
        """Rebuilds a trained tagger from its run folder (config, tags, weights)."""
        from kerasft.config import load_config

        run_dir = Path(run_dir)
        config = load_config(run_dir / "config.yaml", resolve_paths=False)
        config.backbone.weights = "none"
        tagger = cls(config, log=log)
        tags = (run_dir / LABELS_FILE).read_text(encoding="utf-8").splitlines()
        tagger.build(tags)
        tagger._model.load_weights(run_dir / weights)
        tagger.run_dir = run_dir
        return tagger


def _trim(x: Any, y: Any, w: Any, multiple: int) -> Any:
    """A batch cut to its longest sentence rounded up to `multiple` (few traced shapes, as
    kerasft.data.pipeline.trim_padding): the cut padding has weight 0 and is masked anyway."""
    import tensorflow as tf

    from kerasft.data.pipeline import trim_padding

    x = trim_padding(x, multiple)
    length = tf.shape(x["token_ids"])[1]
    return x, y[:, :length], w[:, :length]
