"""Step 9: the Python API that ties the steps together, for Keras users and for the CLI.

    ft = kerasft.build_finetuner("configs/quickstart.yaml", data__batch_size=16)
    ft.fit()                      # data from the config, stages, metrics, run folder
    ft.export()                   # saved_models/<name>/<version>/

    ft = kerasft.build_finetuner({"backbone": {"name": "resnet50", "weights": "none"}, ...})
    ft.fit(x_train, y_train, validation_data=(x_val, y_val))   # numpy arrays or tf.data
    ft.model                      # the Keras model (backbone + head)

Why this module is long: :class:`FineTuner` is the one object a Keras user holds, and each of its
public methods (``fit``, ``plan``, ``lr_find``, ``evaluate``, ``predict``, ``export``,
``from_run``) wires the floors below for one task; the work itself lives in them (kerasft.data,
kerasft.models, kerasft.training, kerasft.evaluation, kerasft.export). What remains here is the
state they share: the model, the class names, the run folder and the cached head features.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.config import (
    TOKEN_TASK,
    Config,
    check_export_precision,
    check_export_quantize,
    check_mixing,
    head_task,
    load_config,
    mixes_labels,
    resolve_task,
    save_config,
    text_columns,
)
from kerasft.errors import ExportError, KerasftError, expected
from kerasft.io import atomic_write

Log = Callable[[str], None]

WEIGHTS_FILE = "model.weights.h5"
LABELS_FILE = "labels.txt"
TARGETS_FILE = "targets.json"  # regression with head.target_scaling: the training split's stats
DATA_FILE = "data.json"  # the fingerprint of the run's splits, checked by evaluate


class _RunLog:
    """Prints a line and appends it to ``<run>/train.log`` once the run folder exists."""

    def __init__(self, echo: Log) -> None:
        self.echo = echo
        self.path: Path | None = None

    def __call__(self, line: str) -> None:
        self.echo(line)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


class FineTuner:
    """A backbone + new head, trained in stages and exported for TF Serving.

    Attributes:
        config: the resolved :class:`kerasft.config.Config`.
        model: the Keras model (built on first access; loads the config's data to learn the
            labels when :meth:`build` was not called).
        backbone: the :class:`kerasft.models.backbone.Backbone` with its data config.
        class_names: the label vocabulary (index = class id).
        run_dir: the run folder of the last :meth:`fit`.
    """

    def __init__(self, config: Config, log: Log = print) -> None:
        from kerasft.models.keras_hub_images import resolve_auto_image

        resolve_auto_image(config.backbone)  # backbone.name: auto with a KerasHub image preset
        self.config = config
        self.log = _RunLog(log)
        self.backbone: Any = None
        self.head: Any = None
        self._model: Any = None
        self.class_names: list[str] | None = None
        self.multi_label = head_task(config.head) == "multi_label"
        # (mean, std) of the training targets under head.target_scaling: standard
        self.target_stats: tuple[float, float] | None = None
        self.data: Any = None
        self.run_dir: Path | None = None
        self.strategy_info: Any = None
        # kerasft.training.precision.Precision, once the runtime is prepared
        self.precision: Any = None
        self.stage_results: list[Any] = []
        self.metrics: dict[str, Any] | None = None

    # -- building ----------------------------------------------------------------------------

    def _prepare_runtime(self, recorded: tuple[str, str | None] | None = None) -> None:
        """Seeds, strategy and mixed-precision policy; `recorded`: the (policy, reason) of the run
        being resumed, which ``auto`` keeps (kerasft/training/precision.py)."""
        import keras
        import tensorflow as tf

        from kerasft.models.registry import get_entry
        from kerasft.training.precision import resolve as resolve_precision
        from kerasft.training.strategy import resolve_strategy

        if self.strategy_info is not None:
            return
        keras.utils.set_random_seed(self.config.seed)
        if self.config.training.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.strategy_info = resolve_strategy(self.config)
        # auto resolves here, once: the config then holds the policy that runs (and why), so the
        # run folder's config.yaml records it and a resume compares concrete policies.
        self.precision = resolve_precision(self.config, self.strategy_info.kind, recorded)
        training = self.config.training
        training.mixed_precision = policy = self.precision.policy
        if self.precision.auto:
            training.mixed_precision_reason = self.precision.reason
        # Always set: a policy left by an earlier mixed-precision FineTuner must not leak in.
        keras.mixed_precision.set_global_policy(self.precision.keras_policy)
        if policy == "mixed_float16" and self.strategy_info.kind != "tpu" and \
                get_entry(self.config.backbone.name).task == "image" and \
                not tf.config.list_logical_devices("GPU"):
            self.log("warning: training.mixed_precision=mixed_float16 without a GPU: float16 "
                     "convolutions have no fast CPU kernels (a ResNet50 train step took 88 s "
                     "instead of 0.7 s, docs/BENCHMARKS.md); use mixed_bfloat16 (faster on CPUs "
                     "with AVX512-BF16 or AMX) or none")

    @property
    def regression(self) -> bool:
        return self.config.head.task == "regression"

    def build(self, class_names: list[str]) -> Any:
        """Builds backbone + head for `class_names` inside the strategy scope; returns the model.

        Regression: `class_names` names the targets (``["value"]``); with
        ``head.target_scaling: standard`` the training split's mean / std (or
        :attr:`target_stats`, set from a run folder) go into the head.
        """
        if self.config.head.task is None:
            resolve_task(self.config, False)  # built before any data was read: classification
        if len(class_names) < (1 if self.regression else 2):
            raise KerasftError(expected("at least 2 classes", "labels", class_names))
        self._prepare_runtime()
        self.class_names = [str(c) for c in class_names]
        if self.regression and self.config.head.target_scaling == "standard" \
                and self.target_stats is None:
            if self.data is None:
                raise KerasftError(expected("training data to compute the target mean / std "
                                            "from (head.target_scaling: standard)", "data", None))
            y = np.asarray(self.data.train.labels, np.float64)
            if y.ndim == 2:  # one mean / std per target column
                std = y.std(0)
                self.target_stats = (y.mean(0).tolist(), np.where(std > 0, std, 1.0).tolist())
            else:
                std = float(y.std())
                self.target_stats = (float(y.mean()), std if std > 0 else 1.0)
        with self.strategy_info.strategy.scope():
            self.backbone, self.head, self._model = self._assemble(self.config.backbone)
        return self._model

    def _assemble(self, backbone_cfg: Any) -> tuple[Any, Any, Any]:
        """Backbone, head and classifier for `backbone_cfg` and this run's head and classes."""
        import keras

        from kerasft.models.heads import build_head_model, keras_model_name
        from kerasft.models.registry import build_backbone

        backbone = build_backbone(backbone_cfg, self.config.head.pooling,
                                  segments=len(text_columns(self.config.data)))
        head = build_head_model(int(backbone.features.shape[-1]), len(self.class_names),
                                self.config.head, self.target_stats)
        model = keras.Model(backbone.inputs, head(backbone.features),
                            name=keras_model_name(self.config.name))
        return backbone, head, model

    @property
    def model(self) -> Any:
        if self._model is None:
            if self.data is None:
                self.data = self.load_data()
            self.build(self.data.class_names)
        return self._model

    def load_data(self, report: bool = True) -> Any:
        """Loads the data named in ``config.data`` (train/validation/test splits)."""
        from kerasft.data.sources import load_data
        from kerasft.data.splits import log_report

        if not self.config.data.train:
            raise KerasftError(expected("a path (or tfds split) for the training data, or arrays "
                                        "passed to fit()", "data.train", None))
        task = head_task(self.config.head)
        data = load_data(self.config.data, seed=self.config.seed, multi_label=self.multi_label,
                         regression=None if task is None else task == "regression")
        resolve_task(self.config, data.regression)
        if report:
            log_report(data, self.log)
        return data

    def _data_from(self, x: Any, y: Any, validation_data: Any, test_data: Any) -> Any:
        import tensorflow as tf

        from kerasft.data.arrays import from_arrays
        from kerasft.data.datasets import from_datasets

        if x is None:
            return self.data if self.data is not None else self.load_data()
        if self.regression:
            raise KerasftError(expected("data from config.data (a CSV) for head.task regression",
                                        "fit x", type(x).__name__))
        resolve_task(self.config, False)
        if isinstance(x, tf.data.Dataset):
            if self.class_names is None:
                raise KerasftError(
                    "fit: expected FineTuner.build(class_names) before fitting a tf.data.Dataset "
                    "(its labels are integer ids). Received: class_names=None"
                )
            return from_datasets(x, validation_data, test_data, class_names=self.class_names,
                                 multi_label=self.multi_label)
        if y is None:
            raise KerasftError(expected("labels y with the arrays x", "y", None))
        x_val, y_val = validation_data if validation_data is not None else (None, None)
        x_test, y_test = test_data if test_data is not None else (None, None)
        split = self.config.data.validation_split
        if x_val is None and split is None:
            split = 0.1
        return from_arrays(
            np.asarray(x), np.asarray(y), x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
            class_names=self.class_names, validation_split=split if x_val is None else None,
            test_split=self.config.data.test_split if x_test is None else None,
            seed=self.config.seed, multi_label=self.multi_label,
            label_separator=self.config.data.label_separator,
        )

    def _trims(self) -> bool:
        """Whether text batches are cut to their longest sequence (``data.bucket_by_length``;
        never on TPUs, which need static shapes)."""
        return (self.backbone.task == "text" and self.config.data.bucket_by_length
                and self.strategy_info.kind != "tpu")

    def _trim(self) -> Callable[[Any], Any]:
        """Per-batch step after tokenization: the padding trim, or nothing."""
        from kerasft.data.pipeline import trim_padding

        multiple = self.config.data.bucket_multiple
        if not self._trims():
            return lambda features: features
        return lambda features: trim_padding(features, multiple)

    def _preprocess(self) -> Callable[[Any], Any]:
        """The backbone's preprocessing, plus per-batch padding trim for text when enabled."""
        preprocess = self.backbone.preprocess
        if not self._trims():
            return preprocess
        trim = self._trim()

        def preprocess_and_trim(texts: Any) -> Any:
            return trim(preprocess(texts))

        return preprocess_and_trim

    def _pipeline(self, split: Any, training: bool, shuffle: bool | None = None,
                  start_epoch: int | None = None) -> Any:
        from kerasft.data.pipeline import make_pipeline
        from kerasft.training.distribution import distribute_pipeline, drops_remainder

        text = self.backbone.task == "text"
        return distribute_pipeline(make_pipeline(
            split,
            batch_size=self.config.data.batch_size,
            training=training if shuffle is None else shuffle,
            seed=self.config.seed,
            # text: tokenized once before the cache, then trimmed per batch
            tokenize=self.backbone.preprocess if text else None,
            preprocess=self._trim() if text else self.backbone.preprocess,
            image_size=self.backbone.image_size,
            augmentation=self.config.data.augmentation if training else None,
            # streamed: no cache, which would hold every text (or its tokens) in memory
            cache=self.config.data.cache and not split.streamed,
            shuffle_buffer=self.config.data.shuffle_buffer,
            drop_remainder=training and drops_remainder(self.strategy_info.kind),
            num_classes=len(self.class_names) if self.multi_label else None,
            mix_classes=len(self.class_names) if training and mixes_labels(
                self.config.data.augmentation) else None,
            start_epoch=start_epoch,
            # trimmed text: training batches also grouped by length
            group_by_length=self.config.data.bucket_multiple if self._trims() else None,
        ), self.strategy_info.kind, size=split.size, global_batch=self.config.data.batch_size,
            training=training, replicas=self.strategy_info.replicas)

    # -- training ----------------------------------------------------------------------------

    def _new_run_dir(self, output_dir: str | os.PathLike | None,
                     run_id: str | None = None) -> Path:
        """Creates the run folder; returns where this process writes (see
        kerasft/training/run_folder.py: a temporary folder on non-chief workers, removed by
        :meth:`_close_run_dir`)."""
        from kerasft.training.run_folder import open_run_folder, resolve_run_id
        from kerasft.training.strategy import placement

        where = placement(self.strategy_info.kind, os.environ)
        self._run_folder = open_run_folder(
            output_dir or self.config.output_dir, self.config.name,
            resolve_run_id(run_id, os.environ), where, self.strategy_info.strategy)
        self._run_folder_lines = self._run_folder.describe(where)
        return self._run_folder.write_dir

    def _close_run_dir(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Reports the real run folder; removes a non-chief worker's temporary folder."""
        folder = getattr(self, "_run_folder", None)
        if folder is not None:
            summary["run_dir"] = str(folder.run_dir)
            if folder.temporary:
                folder.close()
                self.run_dir = self.log.path = None
        return summary

    def _open_run(self, output_dir: str | os.PathLike | None, run_id: str | None,
                  resume: bool | str | os.PathLike, force: bool, data: Any) -> Any:
        """Creates the run folder, or reopens the run to resume; returns its
        :class:`kerasft.training.checkpoints.Checkpointer` (None with
        ``training.checkpoint_every_epoch:
        false``)."""
        from kerasft.training.checkpoints import Checkpointer, find_latest_run

        if resume is False or resume is None:
            self.run_dir = self._new_run_dir(output_dir, run_id)
            self.log.path = self.run_dir / "train.log"
            save_config(self.config, self.run_dir / "config.yaml")
            atomic_write(self.run_dir / LABELS_FILE, "\n".join(self.class_names) + "\n")
            self._write_targets(self.run_dir)
            self._write_fingerprint(data)
            if not self.config.training.checkpoint_every_epoch:
                return None
            return Checkpointer.start(self.run_dir, data, self.log)
        from kerasft.training.checkpoints import copy_committed_run
        from kerasft.training.run_folder import resume_run_folder
        from kerasft.training.strategy import placement

        def locate() -> Path:
            return (find_latest_run(output_dir or self.config.output_dir, self.config.name)
                    if resume is True else Path(resume))

        def reopen(folder: Path) -> Checkpointer:
            from kerasft.training.lr_find import adopt_found_rates

            self.log.path = folder / "train.log"  # what resuming logs goes to the run's log
            adopt_found_rates(self.config, folder / "config.yaml", self.log)
            try:
                return Checkpointer.resume(folder, self.config, data, self.log, force)
            except KerasftError:
                self.log.path = None
                raise

        where = placement(self.strategy_info.kind, os.environ)
        self._run_folder, checkpoint = resume_run_folder(
            locate, reopen, where, self.strategy_info.strategy,
            copy=lambda run, temp: copy_committed_run(run, temp, (LABELS_FILE, DATA_FILE)))
        self._run_folder_lines = [
            f"{line} (resumed)" if line.startswith("run folder:") else line
            for line in self._run_folder.describe(where)]
        self.run_dir = self._run_folder.write_dir
        if not (self.run_dir / DATA_FILE).is_file():  # a run from before data.json existed
            self._write_fingerprint(data)  # resume checked the data is the run's
        return checkpoint

    def _targets_json(self) -> str | None:
        """``targets.json`` (regression with target scaling): the mean / std the head's
        rescaling layer holds, which :meth:`from_run` rebuilds it with; None without scaling."""
        if self.target_stats is None:
            return None
        import json

        mean, std = self.target_stats
        return json.dumps({"target_scaling": "standard", "mean": mean, "std": std},
                          indent=1) + "\n"

    def _write_targets(self, folder: Path) -> None:
        text = self._targets_json()
        if text is not None:
            atomic_write(folder / TARGETS_FILE, text)

    def _write_fingerprint(self, data: Any) -> None:
        import json

        from kerasft.data.splits import fingerprint

        record = fingerprint(data)
        if data.report.get("class_weight"):  # what fit weighed the training loss with
            record["class_weight"] = data.report["class_weight"]
        atomic_write(self.run_dir / DATA_FILE, json.dumps(record, indent=1) + "\n")

    def _recorded_precision(self, output_dir: str | os.PathLike | None,
                            resume: bool | str | os.PathLike) -> tuple[str, str | None] | None:
        """The (policy, reason) recorded by the run that `resume` names, when this config's
        policy is ``auto`` (None otherwise, or when there is no run: resuming reports that)."""
        if resume is False or resume is None:
            return None
        asked_auto = (self.precision.auto if self.precision is not None
                      else self.config.training.mixed_precision == "auto")
        if not asked_auto:
            return None
        from kerasft.training.checkpoints import find_latest_run, recorded_precision

        try:
            run = (find_latest_run(output_dir or self.config.output_dir, self.config.name)
                   if resume is True else Path(resume))
        except KerasftError:
            return None
        return recorded_precision(run)

    def fit(
        self, x: Any = None, y: Any = None, *, validation_data: Any = None, test_data: Any = None,
        output_dir: str | os.PathLike | None = None,
        evaluate: bool = True,
        run_id: str | None = None,
        resume: bool | str | os.PathLike = False,
        force: bool = False,
        callbacks: list[Any] | None = None,
    ) -> dict[str, Any]:
        """Runs every stage; returns a summary (stages, metrics, run folder).

        Without `x`, the data comes from ``config.data``. `x`/`y` may be numpy arrays (strings
        for text, images ``[n, h, w, 3]`` for image backbones; labels as ids or strings) or `x`
        a ``tf.data.Dataset`` of ``(input, label_id)`` (call :meth:`build` first).
        `run_id` (or ``KERASFT_RUN_ID``) names the run folder ``<name>-<run_id>``.
        `resume` continues an interrupted run: a run folder, or True for the newest
        ``<output_dir>/<name>-<timestamp>`` with a run state; its config.yaml must equal this
        config unless `force` (see kerasft/training/checkpoints.py); ``training.mixed_precision:
        auto`` takes
        the run's recorded policy. Nothing is written before the data, the
        backbone and every stage's ``trainable`` were checked. `callbacks`: more Keras
        callbacks for every stage's ``fit`` (epochs are numbered across stages; a head stage on
        cached features fits the head alone).
        """
        from kerasft.training.distribution import (
            check_replica_examples,
            distribution_notes,
            drops_remainder,
        )
        from kerasft.training.distribution import steps_per_epoch as count_steps
        from kerasft.training.loop import run_stages

        recorded = self._recorded_precision(output_dir, resume)
        if recorded is not None and self.precision is not None \
                and self.precision.policy != recorded[0]:
            raise KerasftError(expected(
                f"the resumed run's recorded policy {recorded[0]} (the model was built under "
                f"auto's {self.precision.policy} before fit: resume without calling build() "
                "first)", "training.mixed_precision", self.precision.policy))
        # multi_worker: the strategy must exist before any TF op
        self._prepare_runtime(recorded)
        report = x is None and self.data is None  # logged once the run folder exists
        if report:
            from kerasft.validate import check_data_source

            check_data_source(self.config)
        data = self.load_data(report=False) if report else self._data_from(
            x, y, validation_data, test_data)
        self.data = data
        if self._model is None:
            self.build(data.class_names)
        elif list(data.class_names) != list(self.class_names):
            raise KerasftError(expected(f"the labels the model was built for {self.class_names}",
                                        "labels", data.class_names))
        if data.task != self.backbone.task:
            raise KerasftError(expected(f"{self.backbone.task} data for backbone "
                                        f"{self.backbone.name}", "data task", data.task))
        if data.task == "text":
            shape = data.train.dataset.element_spec[0].shape
            rank = shape.rank
            segments = self.backbone.segments
            if rank != (0 if segments == 1 else 1):
                raise KerasftError(expected(
                    "one text per example" if segments == 1 else
                    "a pair of texts per example ([n, 2]; data.text_column names two columns)",
                    "data.text_column", self.config.data.text_column,
                    where="fit") + f" (examples of shape {shape})")
        from kerasft.data.class_weights import class_weight_line, class_weights
        from kerasft.training.stages import check_stages

        check_mixing(self.config, self.backbone.task)
        check_stages(self.backbone, self.config)
        for i, stage in enumerate(self.config.stages):  # before any stage trains
            if stage.distill is not None:
                _teacher_kind(stage.distill["teacher"], f"stages[{i}].distill.teacher")
        weights = class_weights(self.config.data.class_weight, self.class_names,
                                data.train.labels)
        if weights is not None:  # in the data report, train.log and data.json
            data.report["class_weight"] = {
                "setting": self.config.data.class_weight,
                "weights": {self.class_names[i]: w for i, w in weights.items()}}
        batch = self.config.data.batch_size
        check_replica_examples(data.train.size, self.strategy_info.replicas)
        checkpoint = self._open_run(output_dir, run_id, resume, force, data)
        for line in self._run_folder_lines:
            self.log(line)
        if report:
            from kerasft.data.splits import log_report

            log_report(data, self.log)
        if weights is not None:
            self.log(class_weight_line(self.config.data.class_weight, weights, self.class_names))
        self.log(self.strategy_info.describe(batch))
        self.log(self.precision.line())
        if self.precision.note:
            self.log(self.precision.note)
        for line in distribution_notes(self.config, self.strategy_info.kind, data):
            self.log(line)
        info = self.backbone.info
        self.log(f"backbone: {self.backbone.name} ({info.get('architecture')}, "
                 f"{info.get('parameters', 0):,} parameters, pooling {info.get('pooling')}), "
                 + (f"regression of {', '.join(self.class_names)}"
                    + (f" (targets standardised: mean {_numbers(self.target_stats[0])}, "
                       f"std {_numbers(self.target_stats[1])})" if self.target_stats
                       else "") if self.regression
                    else f"{len(self.class_names)} classes"))
        def train_ds(start_epoch: int) -> Any:  # epoch-keyed: resumed runs see the same orders
            return self._pipeline(data.train, training=True, start_epoch=start_epoch)

        val_ds = self._pipeline(data.validation, training=False) if data.validation else None
        steps = count_steps(data.train.size, batch, drops_remainder(self.strategy_info.kind),
                            self.strategy_info.replicas)
        self.stage_results = run_stages(
            self.model, self.backbone, self.config, train_ds, val_ds, max(steps, 1),
            self.run_dir, self.strategy_info, len(self.class_names), self.log,
            head=self.head, cached_features=self._feature_cache(data), checkpoint=checkpoint,
            class_weight=weights, distill_data=self._distill_data(data),
            extra_callbacks=callbacks or (),
        )
        from kerasft.models.weights import save_model_weights

        save_model_weights(self._model, self.run_dir / WEIGHTS_FILE)
        if checkpoint is not None:
            checkpoint.finish()
        from kerasft.evaluation.metrics import plot_history

        if plot_history(self.run_dir / "history.csv", self.run_dir / "training_curves.png"):
            self.log(f"training curves: {self.run_dir / 'training_curves.png'}")
        summary: dict[str, Any] = {"run_dir": str(self.run_dir),
                                   "stages": [asdict(r) for r in self.stage_results]}
        if evaluate and data.test is None and data.validation is None:
            # A Keras fit without validation data is ordinary: the trained run is kept and
            # reported; only the held-out metrics are missing.
            summary["metrics"] = None
            self.log("no test or validation split: final metrics skipped (pass validation_data "
                     "or test_data to fit, or call evaluate(x, y))")
        elif evaluate:
            summary["metrics"] = self.evaluate()
        return self._close_run_dir(summary)

    def plan(
        self, x: Any = None, y: Any = None, *, validation_data: Any = None, test_data: Any = None,
        output_dir: str | os.PathLike | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """What :meth:`fit` would do, without training (``kerasft train --dry-run``).

        Loads the data (same arguments as :meth:`fit`) but creates no strategy unless one exists
        already: no port is bound, no device initialised, nothing written. Returns strategy,
        workers, replicas, batches, data sizes, steps per stage, run folder and export path;
        ``plan["lines"]`` is the printable summary. Multi-worker: fit in a fresh process (the
        strategy must be created before the data is loaded).
        """
        from kerasft.models.registry import get_entry
        from kerasft.plan import make_plan, plan_lines

        get_entry(self.config.backbone.name)  # an unknown backbone fails here, not at fit
        data = self._data_from(x, y, validation_data, test_data)
        self.data = data
        plan = make_plan(self.config, data, run_id=run_id, output_dir=output_dir,
                         strategy_info=self.strategy_info)
        plan["lines"] = plan_lines(plan)
        return plan

    def _distill_data(self, data: Any) -> Callable[[int, Any], Callable[[int], Any]]:
        """For a distill stage: the epoch-keyed training pipeline with the teacher's
        probabilities in the labels (kerasft/training/distill.py). The teacher predicts the
        training split once per teacher path, also after a resume (its path is in config.yaml)."""
        from kerasft.training.distill import check_teacher, packed_split

        teachers: dict[str, Any] = {}

        def for_stage(i: int, stage: Any) -> Callable[[int], Any]:
            path = stage.distill["teacher"]
            if path not in teachers:
                key = f"stages[{i}].distill.teacher"
                probs = check_teacher(self._teacher_predictions(path, data.train, key),
                                      len(self.class_names), key)
                teachers[path] = packed_split(data.train, probs)
            split = teachers[path]
            return lambda epoch: self._pipeline(split, training=True, start_epoch=epoch)

        return for_stage

    def _teacher_predictions(self, path: str, split: Any, key: str) -> np.ndarray:
        """The probabilities of the teacher at `path` (a kerasft export or run folder) for
        every example of `split`, in order."""
        import keras
        import tensorflow as tf

        folder = Path(path)
        if _teacher_kind(path, key) == "export":
            try:
                import tensorflow_text  # noqa: F401 - registers the ops of text exports
            except ImportError:
                pass
            serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
            (name,) = serve.structured_input_signature[1]
            self.log(f"distill: the teacher export {folder} predicts {split.size} examples")
            return np.concatenate([serve(**{name: tf.cast(x, serve.structured_input_signature[
                1][name].dtype)})["probabilities"].numpy()
                for x, _ in split.dataset.batch(256)])
        teacher = FineTuner.from_run(folder, log=lambda line: None)
        if teacher.class_names != self.class_names:
            raise KerasftError(expected(f"a teacher trained on the labels {self.class_names}",
                                        key, f"{path} (labels {teacher.class_names})"))
        self.log(f"distill: the teacher run {folder} predicts {split.size} examples")
        try:
            return teacher._predict_split(teacher.model, split)
        finally:  # the teacher set the global policy (and seeds) for itself
            keras.mixed_precision.set_global_policy(self.precision.keras_policy)
    def lr_find(self, stage: int | None = None, x: Any = None, y: Any = None,
                output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """Sweeps the learning rate of stage `stage` (numbered from 1, as the logs number
        stages; default: the first with ``learning_rate: auto``, else the first) and suggests
        one (kerasft/training/lr_find.py); ``kerasft lr-find``.

        The sweep starts from the backbone's starting weights (earlier stages do not train
        first; ``learning_rate: auto`` in a run sweeps at the stage's real start instead) with
        the stage's ``trainable``, optimizer and LR multipliers, and restores every weight
        afterwards. Writes config.yaml, lr_find.csv, lr_find.png and lr_find.log into a new
        folder ``<output_dir>/<name>-lr-find-<time>``. Returns suggestion, rule, steepest,
        minimum_over_10, steps, seconds, stage and run_dir.
        """
        import time

        from kerasft.data.class_weights import class_weights
        from kerasft.training.distribution import drops_remainder
        from kerasft.training.distribution import steps_per_epoch as count_steps
        from kerasft.training.loop import compile_stage
        from kerasft.training.lr_find import run_sweep, write_sweep
        from kerasft.training.lr_groups import stage_multipliers
        from kerasft.training.run_folder import open_run_folder
        from kerasft.training.stages import apply_trainable, check_stages
        from kerasft.training.strategy import placement

        stages = self.config.stages
        if stage is None:
            stage = next((n for n, s in enumerate(stages, 1) if s.learning_rate == "auto"), 1)
        if isinstance(stage, bool) or not isinstance(stage, int) \
                or not 1 <= stage <= len(stages):
            raise KerasftError(expected(f"a stage number from 1 to {len(stages)} (as the logs "
                                        "number stages)", "--stage", stage))
        i, st = stage - 1, stages[stage - 1]
        self._prepare_runtime()
        if x is None and self.data is None:
            from kerasft.validate import check_data_source

            check_data_source(self.config)
            data = self.load_data(report=False)
        else:
            data = self.data if x is None else self._data_from(x, y, None, None)
        self.data = data
        if self._model is None:
            self.build(data.class_names)
        check_stages(self.backbone, self.config)
        where = placement(self.strategy_info.kind, os.environ)
        self._run_folder = open_run_folder(output_dir or self.config.output_dir,
                                           f"{self.config.name}-lr-find", None, where,
                                           self.strategy_info.strategy)
        self.run_dir = folder = self._run_folder.write_dir
        self.log.path = folder / "lr_find.log"
        save_config(self.config, folder / "config.yaml")
        for line in self._run_folder.describe(where):
            self.log(line)
        strategy = self.strategy_info.strategy
        with strategy.scope():
            unfrozen = apply_trainable(self.backbone, st, key=f"stages[{i}].trainable")
            if unfrozen.get("lora") is not None:
                from kerasft.models.lora import enable_lora

                enable_lora(self.backbone.network, unfrozen["lora_targets"], unfrozen["lora"])
            multipliers, summary = stage_multipliers(self.model, self.backbone, st,
                                                     f"stages[{i}]")
        steps = max(1, count_steps(data.train.size, self.config.data.batch_size,
                                   drops_remainder(self.strategy_info.kind),
                                   self.strategy_info.replicas))
        self.log(f"lr-find: stage {stage} '{st.name}' (trainable={st.trainable}, "
                 f"{st.optimizer}), learning rate {self.config.training.lr_find.min_lr:g} to "
                 f"{self.config.training.lr_find.max_lr:g} over at most "
                 f"{min(steps, self.config.training.lr_find.steps)} steps"
                 + (f"; multipliers: {', '.join(summary)}" if summary else ""))
        started = time.perf_counter()
        try:
            result = run_sweep(
                self.model,
                lambda schedule: compile_stage(self.model, st, self.config, steps,
                                               len(self.class_names), self.strategy_info.replicas,
                                               multipliers, sweep=schedule),
                self._pipeline(data.train, training=True, start_epoch=0), steps,
                self.config.training.lr_find, strategy,
                class_weights(self.config.data.class_weight, self.class_names,
                              data.train.labels))
        finally:
            if unfrozen.get("lora") is not None:  # adapters restored to their start: no-op merge
                from kerasft.models.lora import merge_lora

                with strategy.scope():
                    merge_lora(self.model)
            check_stages(self.backbone, self.config)  # frozen again, inference mode
        written = write_sweep(result, folder)
        for note in result.notes:
            self.log(note)
        self.log(result.line())
        self.log(f"lr-find: {', '.join(str(p) for p in written)} "
                 f"({time.perf_counter() - started:.1f} s in all)")
        out = {"suggestion": result.suggestion, "rule": result.rule,
               "steepest": result.steepest, "minimum_over_10": result.minimum_over_10,
               "steps": len(result.lrs), "seconds": result.seconds, "stage": stage,
               "run_dir": str(self._run_folder.run_dir)}
        if self._run_folder.temporary:
            self._run_folder.close()
        return out

    def _feature_cache(self, data: Any) -> Callable[..., dict[str, Any]] | None:
        """Features of the frozen backbone for head-only stages, computed on first use and again
        when called with ``refresh=True`` (run_stages does after a stage that trained the
        backbone, so ``[head, all, head]``'s last stage sees the fine-tuned backbone).

        Off when augmentation makes every epoch's inputs different, when the training data is
        streamed (``data.stream``: the features of every row would be held), or when
        ``training.cache_features: off``. The cached features are computed in inference mode, so
        dropout inside the backbone (BERT's) is not applied to them: the head trains on clean
        features (as fastai's and Keras's "extract features, then train a classifier" recipes).
        """
        setting = self.config.training.cache_features
        if setting == "off" or (setting == "auto" and self.config.data.augmentation
                                and self.backbone.task == "image"):
            return None
        if setting == "auto" and self.strategy_info.kind == "multi_worker":
            return None
        if setting == "auto" and data.train.streamed:  # features of every row in memory
            return None
        cache: dict[str, Any] = {}

        def compute(refresh: bool = False) -> dict[str, Any]:
            import keras

            if refresh:
                cache.clear()
            if not cache:
                extractor = keras.Model(self.backbone.inputs, self.backbone.features)
                self.log("computing the frozen backbone's features for head-only stages"
                         + (" (the backbone changed since they were last computed)"
                            if refresh else ""))
                cache["x"] = self._predict_split(extractor, data.train)
                cache["y"] = data.train.labels
                if data.validation is not None:
                    cache["val"] = (self._predict_split(extractor, data.validation),
                                    data.validation.labels)
            return cache

        return compute

    def _predict_split(self, model: Any, split: Any) -> np.ndarray:
        """``model.predict`` over `split`; rows in the split's order.

        Trimmed text is predicted in order of token length (batches of similar lengths carry
        little padding, while a random batch of tweets nearly always holds one long text), then
        put back in the split's order. Rows past ``split.size`` (tpu/multi_worker padding) are cut.
        """
        from kerasft.data.pipeline import length_order, reordered

        order = None
        if self._trims() and not split.streamed:  # reordered() holds the split's texts
            order = length_order(split, self.backbone.preprocess)
            split = reordered(split, order)
        out = np.asarray(model.predict(self._pipeline(split, training=False),
                                       verbose=0))[: split.size]
        if order is None:
            return out
        restored = np.empty_like(out)
        restored[order] = out
        return restored

    # -- evaluation and prediction -----------------------------------------------------------

    def evaluate(self, x: Any = None, y: Any = None, split: str | None = None) -> dict[str, Any]:
        """Scores the model on `x`/`y`, or on the test split (else validation) of the data.

        Prints a table and, when a run folder exists, writes the results there, each split
        apart: the run's held-out split (test, else validation) to ``metrics.json``,
        ``metrics.txt`` and ``confusion_matrix.png`` (what an export's model card reports),
        another split to ``metrics-<split>.json`` / ``.txt`` / ``confusion_matrix-<split>.png``
        and `x`/`y` to ``metrics-given.*``. Only the held-out split's results become
        :attr:`metrics`. A split of the config's data is first checked against the fingerprint
        the run saved in ``data.json`` (sizes and labels): evaluating on other data is refused.
        """
        from kerasft.evaluation.metrics import (
            classification_report,
            format_report,
            plot_confusion_matrix,
            plot_predictions,
            regression_report,
            write_json,
        )

        held_out = None
        if x is not None:
            probabilities = self.predict(x)
            one = 0 if self.regression and len(self.class_names) == 1 else 1
            if probabilities.ndim == one:  # one example
                probabilities, y = probabilities[np.newaxis], [y]
            labels = self._label_ids(y)
            split_name, suffix = "given data", "-given"
        else:
            if self.data is None:
                self.data = self.load_data()
            held_out = "test" if self.data.test is not None else "validation"
            split_name = split or held_out
            chosen = getattr(self.data, split_name, None)
            if chosen is None:
                raise KerasftError(expected("a test or validation split to evaluate on",
                                            "split", split_name))
            self._check_fingerprint(split_name, chosen)
            probabilities = self._predict_split(self.model, chosen)
            labels = chosen.labels
            suffix = "" if split_name == held_out else f"-{split_name}"
        if self.regression:
            report = regression_report(labels, probabilities, self.class_names)
        else:
            report = classification_report(labels, probabilities, self.class_names,
                                           multi_label=self.multi_label,
                                           threshold=self.config.head.threshold)
        report["split"] = split_name
        if split_name == held_out:
            self.metrics = report
        self.log(format_report(report, title=f"metrics on {split_name} "
                                             f"({report['examples']} examples)"))
        if self.run_dir is not None:
            write_json(report, self.run_dir / f"metrics{suffix}.json")
            atomic_write(self.run_dir / f"metrics{suffix}.txt", format_report(report) + "\n",
                         durable=False)
            if self.regression:
                image = self.run_dir / f"predictions_vs_true{suffix}.png"
                if plot_predictions(labels, probabilities, report, image):
                    self.log(f"predicted vs true: {image}")
            else:
                image = self.run_dir / f"confusion_matrix{suffix}.png"
                if plot_confusion_matrix(report, image):
                    self.log(f"confusion matrix: {image}")
        return report

    def _check_fingerprint(self, split_name: str, split: Any) -> None:
        """Refuses to score a split that is not the one the run saved in ``data.json``."""
        import json

        from kerasft.data.splits import fingerprint

        if self.run_dir is None:
            return
        path = self.run_dir / DATA_FILE
        if not path.is_file():
            self.log(f"warning: {path} not found (a run from an older kerasft): cannot check "
                     f"that the {split_name} split is the one the run held out")
            return
        saved = json.loads(path.read_text(encoding="utf-8"))
        now = fingerprint(self.data)
        if saved.get("class_names") != now["class_names"]:
            raise KerasftError(f"{path}: expected the run's labels. Received: "
                               f"class_names={now['class_names'][:10]} "
                               f"(run: {saved.get('class_names', [])[:10]})")
        was, got = saved.get("splits", {}).get(split_name), now["splits"].get(split_name)
        if was != got:
            raise KerasftError(
                f"{path}: expected the {split_name} split the run held out (the data files or "
                f"data.* settings changed). Received: {split_name}={got} (run: {was})")

    def _label_ids(self, y: Any) -> np.ndarray:
        """`y` as class ids: label names are looked up, integers are ids (as in fit)."""
        from kerasft.data.splits import check_integer_labels, integer_values

        if self.regression:
            k = len(self.class_names)
            try:
                y = np.asarray(y, np.float64)
                return y.reshape(-1) if k == 1 else y.reshape(len(y), k)
            except ValueError:
                raise KerasftError(expected("numbers (head.task is regression)", "y",
                                            np.asarray(y).ravel()[:5].tolist(),
                                            where="evaluate")) from None
        y = np.asarray(y)
        if self.multi_label:
            return y
        ids = integer_values(y) if y.ndim == 1 else None
        if ids is not None and len(ids) == len(y):
            check_integer_labels(y, self.class_names, "evaluate y")
            bad = np.flatnonzero((ids < 0) | (ids >= len(self.class_names)))
            if len(bad):
                raise KerasftError(expected(
                    f"class ids 0..{len(self.class_names) - 1} (or labels among "
                    f"{self.class_names[:10]})", f"y[{bad[0]}]", int(ids[bad[0]]),
                    where="evaluate"))
            return ids
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted({str(v) for v in y} - set(index))
        if unknown:
            raise KerasftError(expected(f"labels among {self.class_names}", "y", unknown[:5]))
        return np.array([index[str(v)] for v in y])

    def _predict_rows(self, inputs: Any) -> tuple[np.ndarray, bool]:
        """`inputs` as a batch for the backbone, and whether they were one example."""
        if self.backbone.task == "text" and self.backbone.segments == 2:
            return self._predict_pairs(inputs)
        if self.backbone.task == "text":
            if isinstance(inputs, (str, bytes)):
                inputs, single = [inputs], True
            else:
                single = False
            try:
                rows = np.asarray(inputs, dtype=object)
            except ValueError:
                rows = np.empty(0)
            if rows.ndim != 1 or not len(rows) or not all(isinstance(v, (str, bytes))
                                                          for v in rows):
                raise KerasftError(expected(
                    "one string or a non-empty list of strings", "inputs shape",
                    tuple(rows.shape), where="predict") + f" ({type(inputs).__name__})")
            return np.array([v.decode("utf-8") if isinstance(v, bytes) else v
                             for v in rows], dtype=object), single
        try:
            rows = np.asarray(inputs)
        except ValueError:  # ragged
            rows = np.empty(0, dtype=object)
        problem = rows.dtype.kind not in "biuf" or rows.ndim not in (2, 3, 4) or not rows.size
        # [h, w] and [h, w, c] with c in 1, 3, 4 are one image; [n, h, w] a grayscale batch.
        single = rows.ndim == 2 or (rows.ndim == 3 and rows.shape[-1] in (1, 3, 4))
        if not problem:
            if single:
                rows = rows[np.newaxis]
            if rows.ndim == 3:
                rows = rows[..., np.newaxis]
            problem = rows.shape[-1] not in (1, 3, 4)
        if problem:
            raise KerasftError(expected(
                "one image [h, w, 3] or a batch [n, h, w, 3] of pixel values 0..255",
                "inputs shape", tuple(rows.shape), where="predict") + f" (dtype {rows.dtype})")
        if rows.shape[-1] == 1:
            rows = np.repeat(rows, 3, axis=-1)
        elif rows.shape[-1] == 4:
            rows = rows[..., :3]
        return rows, single

    @staticmethod
    def _predict_pairs(inputs: Any) -> tuple[np.ndarray, bool]:
        """Sentence pairs as a ``[n, 2]`` batch: one pair ``(a, b)`` or a list of pairs."""
        def text(v: Any) -> bool:
            return isinstance(v, (str, bytes))

        single = isinstance(inputs, tuple) and len(inputs) == 2 and all(map(text, inputs))
        rows = [inputs] if single else inputs
        try:
            rows = np.asarray(rows, dtype=object)
        except ValueError:
            rows = np.empty(0)
        if rows.ndim != 2 or rows.shape[1] != 2 or not len(rows) or not all(
                text(v) for v in rows.ravel()):
            raise KerasftError(expected(
                "one pair of strings (a, b) or a non-empty list of pairs", "inputs shape",
                tuple(rows.shape), where="predict") + f" ({type(inputs).__name__})")
        decoded = [v.decode("utf-8") if isinstance(v, bytes) else v for v in rows.ravel()]
        return np.array(decoded, dtype=object).reshape(rows.shape), single

    def predict(self, inputs: Any, batch_size: int | None = None,
                return_labels: bool = False) -> Any:
        """Probabilities for raw inputs: one example (a string, a pair ``(a, b)`` of strings
        for a sentence-pair model, or an image ``[h, w, 3]`` of any size, pixels 0..255) gives
        ``[num_classes]``, a batch (strings, pairs, images ``[n, h, w, 3]``) gives
        ``[n, num_classes]``.

        With `return_labels`, returns ``(probabilities, labels)``: the class name (multi-label:
        the list of names above the threshold) of the example, or a list of them for a batch.
        """
        import tensorflow as tf

        from kerasft.data.pipeline import resize_images
        from kerasft.training.distribution import distribute_pipeline

        model = self.model
        batch_size = batch_size or self.config.data.batch_size
        if self.strategy_info is not None and self.strategy_info.replicas > 1:
            # a multiple of the replicas: padded batches then split evenly, none is empty
            replicas = self.strategy_info.replicas
            batch_size = -(-batch_size // replicas) * replicas
        rows, single = self._predict_rows(inputs)
        if self.backbone.task == "text":
            rows = rows.astype(str)
            ds = tf.data.Dataset.from_tensor_slices(rows)
            ds = ds.batch(batch_size).map(self._preprocess())
        else:
            rows = resize_images(rows, self.backbone.image_size)
            ds = tf.data.Dataset.from_tensor_slices(rows).batch(batch_size)
            ds = ds.map(self.backbone.preprocess)
        count = len(rows)
        if self.strategy_info is not None:
            # several replicas: padded to full global batches (a short last batch would hand
            # some replica an unequal or empty piece); the padding rows are cut below.
            labelled = ds.map(lambda x: (x, tf.zeros(tf.shape(tf.nest.flatten(x)[0])[:1],
                                                       tf.int32)))
            padded = distribute_pipeline(labelled, self.strategy_info.kind, size=count,
                                         global_batch=batch_size, training=False,
                                         replicas=self.strategy_info.replicas)
            if padded is not labelled:
                ds = padded
        probabilities = np.asarray(model.predict(ds, verbose=0))[:count]
        if self.regression and probabilities.ndim == 2 and probabilities.shape[1] == 1:
            probabilities = probabilities[:, 0]  # one target: [n], as the export's `value`
        if not return_labels:
            return probabilities[0] if single else probabilities
        labels = self._labels_of(probabilities)
        return (probabilities[0], labels[0]) if single else (probabilities, labels)

    def _labels_of(self, probabilities: np.ndarray) -> list[Any]:
        """Class names per row: the argmax, or (multi-label) every class above the threshold."""
        names = self.class_names
        if self.regression:
            return [row.tolist() for row in probabilities]
        if self.multi_label:
            threshold = float(getattr(self.config.head, "threshold", 0.5))
            return [[names[j] for j in np.flatnonzero(row > threshold)] for row in probabilities]
        return [names[int(i)] for i in probabilities.argmax(-1)]

    # -- export ------------------------------------------------------------------------------

    def _sample_inputs(self, count: int = 8) -> np.ndarray | None:
        if self.data is None:
            return None
        split = self.data.test or self.data.validation or self.data.train
        xs = [x.numpy() for x, _ in split.dataset.take(count)]
        if not xs:
            return None
        if self.backbone.task == "text":
            return np.array(xs)
        from kerasft.data.pipeline import resize_images

        shape = xs[0].shape[:2]
        return np.stack([resize_images(x, shape).numpy() for x in xs])

    def export(self, dir: str | os.PathLike | None = None, version: int | str | None = None,
               verify: bool | None = None, quantize: str | None = None,
               precision: str | None = None) -> Path:
        """Writes the TF Serving SavedModel; returns ``<dir>/<name>/<version>``.

        `quantize` (default ``export.quantize``): ``int8`` serves a copy of the model quantized
        by Keras (kerasft.export.quantize); the run's own model stays float. `precision`
        (default ``export.precision``): ``bfloat16`` serves a graph that computes in bfloat16
        (Keras's ``mixed_bfloat16``; inputs and outputs as in float32). Multi-worker: every
        worker runs the export (saving may run collective ops); only the chief's is kept, the
        others go to a temporary folder (kerasft.export.target.export_target).
        """
        from kerasft.evaluation.metrics import format_report
        from kerasft.export.model_card import model_card_hook
        from kerasft.export.saved_model import (
            BF16_TOLERANCE,
            OutputSpec,
            export_saved_model,
            reference_probabilities,
        )
        from kerasft.export.target import export_target
        from kerasft.training.strategy import placement

        exported = self.config  # what assets.extra/config.yaml says, quantize included
        if quantize is not None and quantize != exported.export.quantize:
            exported = copy.deepcopy(exported)  # this export only; the run's config stays
            exported.export.quantize = check_export_quantize(quantize, "quantize")
        quantize = exported.export.quantize
        if precision is not None and precision != exported.export.precision:
            if exported is self.config:
                exported = copy.deepcopy(exported)
            exported.export.precision = precision
        precision = check_export_precision(exported.export.precision, "precision", quantize)
        model, backbone = self._serving_model(copy_always=quantize != "none",
                                              precision=precision)
        sample_inputs = self._sample_inputs()
        quantized = None
        if quantize == "int8":
            from kerasft.export.quantize import INT8_TOLERANCE, quantize_int8

            quantized = quantize_int8(model)
            if sample_inputs is not None and len(sample_inputs):
                float_answers = reference_probabilities(self.model, self.backbone, sample_inputs)
                int8_answers = reference_probabilities(model, backbone, sample_inputs)
                quantized.max_diff = float(np.max(np.abs(int8_answers - float_answers)))
                quantized.examples = len(sample_inputs)
            for line in quantized.lines():
                self.log(line)
        extra: dict[str, str | bytes] = {"config.yaml": exported.to_yaml()}
        if self.target_stats is not None:
            extra[TARGETS_FILE] = self._targets_json()
        if self.metrics is not None:
            import json

            extra["metrics.json"] = json.dumps(self.metrics, indent=2)
            extra["metrics.txt"] = format_report(self.metrics) + "\n"
        with export_target(dir or self.config.export.dir, self.config.name,
                           version if version is not None else self.config.export.version,
                           placement(self.strategy_info.kind, os.environ),
                           self.strategy_info.strategy) as target:
            written = export_saved_model(
                model, backbone, self.class_names,
                base_dir=target.base_dir,
                name=self.config.name,
                version=target.version,
                sample_inputs=sample_inputs,
                extra_files=extra,
                verify=(self.config.export.verify if verify is None else verify)
                if target.verify is None else target.verify,
                after_write=model_card_hook(self, quantized),  # assets.extra/README.md
                log=self.log,
                outputs=OutputSpec(tuple(self.class_names), multi_label=self.multi_label,
                                   threshold=self.config.head.threshold,
                                   separator=self.config.data.label_separator,
                                   task=self.config.head.task or "classification"),
                **({"tolerance": INT8_TOLERANCE} if quantized is not None else
                   {"tolerance": BF16_TOLERANCE} if precision == "bfloat16" else {}),
            )
        if target.temporary:
            self.log(f"this worker's export copy was removed; the chief writes {target.path}")
            return target.path
        return written

    def _serving_model(self, copy_always: bool = False,
                       precision: str = "float32") -> tuple[Any, Any]:
        """The model and backbone an export serves: float32 whatever the training policy, or
        Keras's ``mixed_bfloat16`` for ``precision="bfloat16"``; a copy when `copy_always` (one
        the export may quantize) or when the training policy is another.

        A mixed-precision model computes in 16 bits; served in float32, the export answers within
        1e-5 of a float32 reference under both loaders. bfloat16 serving is opt-in: faster for
        batches only, and its answers move (docs/BENCHMARKS.md, "Serving in bfloat16"). The copy
        is rebuilt by the same builders (so the variables come in the same order) and takes the
        trained weights, which are float32 under every policy.
        """
        import keras

        from kerasft.models.lora import lora_layers, merge_lora

        model = self.model
        if lora_layers(model):  # a plain export: the adapters folded into the kernels
            self.log(f"export: merged the LoRA adapters of {merge_lora(model)} layers into "
                     "their kernels")
        mixed = self.config.training.mixed_precision != "none"
        policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
        trained = self.config.training.mixed_precision if mixed else "float32"
        if trained == policy and not copy_always:
            return model, self.backbone
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(policy)
        try:
            cfg = copy.deepcopy(self.config.backbone)
            cfg.weights = "none"  # the trained weights follow
            backbone, _, copy_model = self._assemble(cfg)
            weights = model.get_weights()
            shapes = [tuple(w.shape) for w in copy_model.weights]
            if shapes != [tuple(w.shape) for w in weights]:
                raise ExportError(expected("the float32 serving copy to have the trained "
                                           "model's weights", "weights",
                                           f"{len(shapes)} vs {len(weights)} arrays"))
            copy_model.set_weights(weights)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        if policy != "float32":
            self.log("export: serving in bfloat16 (export.precision: bfloat16)")
        elif mixed:
            self.log(f"export: serving in float32 (trained under "
                     f"{self.config.training.mixed_precision})")
        return copy_model, backbone

    # -- runs --------------------------------------------------------------------------------

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, log: Log = print,
                 weights: str = WEIGHTS_FILE) -> FineTuner:
        """Rebuilds a trained model from a run folder (config, labels, weights)."""
        run_dir = Path(run_dir)
        for required in ("config.yaml", LABELS_FILE, weights):
            if not (run_dir / required).is_file():
                raise KerasftError(expected(f"a kerasft run folder with {required}", "run_dir",
                                            str(run_dir)))
        # Its paths are relative to where the run started, not to the run folder.
        config = load_config(run_dir / "config.yaml", resolve_paths=False)
        if config.head.task == TOKEN_TASK:
            from kerasft.tagger import TokenTagger

            return TokenTagger.from_run(run_dir, log=log, weights=weights)
        # The trained weights replace the pretrained ones: no download needed to rebuild.
        config.backbone.weights = "none"
        ft = cls(config, log=log)
        if (run_dir / TARGETS_FILE).is_file():
            import json

            stats = json.loads((run_dir / TARGETS_FILE).read_text(encoding="utf-8"))
            ft.target_stats = ((float(stats["mean"]), float(stats["std"]))
                               if not isinstance(stats["mean"], list)
                               else (list(stats["mean"]), list(stats["std"])))
        labels = (run_dir / LABELS_FILE).read_text(encoding="utf-8").splitlines()
        ft.build(labels)
        ft._model.load_weights(run_dir / weights)
        ft.run_dir = run_dir
        return ft


def _teacher_kind(path: str, key: str) -> str:
    """``export`` or ``run`` for a distill stage's teacher; a one-line error otherwise."""
    folder = Path(path)
    if (folder / "saved_model.pb").is_file():
        return "export"
    if (folder / "config.yaml").is_file() and (folder / WEIGHTS_FILE).is_file():
        return "run"
    raise KerasftError(expected("a kerasft export (saved_model.pb) or a finished run folder "
                                f"(config.yaml, {WEIGHTS_FILE})", key, path))


def _numbers(value: Any) -> str:
    """A target statistic for a log line: one number, or one per target column."""
    return ", ".join(f"{v:.4g}" for v in np.atleast_1d(value))


def build_finetuner(config: str | os.PathLike | dict[str, Any] | Config | None = None,
                    log: Log = print, **overrides: Any) -> FineTuner:
    """A :class:`FineTuner` from a YAML path, a dict or a Config; keyword overrides use ``__``
    between levels (``build_finetuner("x.yaml", data__batch_size=16)``)."""
    cfg = load_config(config, **overrides)
    if cfg.head.task == TOKEN_TASK:  # a tag per word: kerasft/tagger.py
        from kerasft.tagger import TokenTagger

        return TokenTagger(cfg, log=log)
    return FineTuner(cfg, log=log)
