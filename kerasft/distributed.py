"""Runs past one machine: which strategy, who writes where, how data is sharded, the dry-run plan.

``training.strategy`` picks a ``tf.distribute`` strategy (:func:`select_strategy_kind`; ``auto``
looks at ``training.tpu``, the TPU environment variables and ``TF_CONFIG``). This module holds what
a run on several machines needs around that strategy; :mod:`kerasft.distribute_compat` holds the
Keras 3 workarounds for ``MultiWorkerMirroredStrategy`` itself.

Data sharding
-------------
``data.batch_size`` is the *global* batch. Keras hands the dataset to
``strategy.experimental_distribute_dataset``, which splits every global batch into one piece per
replica of every worker. kerasft sets ``AutoShardPolicy.DATA`` for every source: each worker runs
the same seeded pipeline and keeps its pieces of each global batch. ``FILE`` sharding is not used
because kerasft's splits are lists of example indices over in-memory texts/arrays, over one image
file per example (``from_tensor_slices`` of paths, no reader dataset to shard) or over tfds
records filtered by index, which per-file sharding would break. The price: each worker reads and
preprocesses the whole split (once, with ``data.cache``). Training batches drop the remainder on
``multi_worker`` and ``tpu`` so every worker runs the same number of full steps; evaluation keeps
every example, padded to full global batches with weight-0 rows (:func:`distribute_pipeline`).

Who writes where
----------------
The chief (task ``chief``, else worker 0) writes the run folder and ``saved_models/``. Every other
worker runs exactly the same calls (``fit``, ``evaluate``, ``predict``, saves and the export: they
may run collective ops, which must pair up across workers) but writes into a private local
temporary folder (``tempfile``, honours ``TMPDIR``), removed at the end of ``fit`` / ``export``.

The run folder's name must be the same on all workers although their clocks and start times
differ. It is ``<output_dir>/<name>-<run id>`` when a run id is given (``kerasft train --run-id``
or ``KERASFT_RUN_ID``; e.g. the Kubernetes Job name), otherwise ``<output_dir>/<name>-<chief's
start time>[-<n>]``: the chief picks the name and all workers receive it with one collective
``gather`` over the strategy (which also checks that every worker got the same run id).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import re
import shutil
import socket
import tempfile
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerasft.config import Config, check_strategy_options
from kerasft.distribute_compat import is_chief, is_multi_worker_tf_config, parse_tf_config
from kerasft.errors import ConfigError, KerasftError, expected

RUN_ID_ENV = "KERASFT_RUN_ID"
#: Environment variables that mean "a TPU is attached" for ``training.strategy: auto``.
TPU_ENV_HINTS = ("TPU_NAME", "COLAB_TPU_ADDR", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")
#: Strategies whose training batches drop the remainder (static shapes / equal step counts).
DROP_REMAINDER_KINDS = ("tpu", "multi_worker")
#: Strategies whose input pipelines are sharded over several hosts.
SHARDED_KINDS = ("tpu", "multi_worker")
SHARDING_POLICY = "DATA"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TIME_FORMAT = "%Y%m%d-%H%M%S"

_SHARDING_REASONS = {
    "csv": "texts are read into memory, there are no files to shard",
    "arrays": "in-memory arrays, there are no files to shard",
    "datasets": "user tf.data datasets, filtered by example index",
    "image_folder": "one image file per example, selected by index (no reader dataset to shard); "
                    "each worker decodes every image once (data.cache) and keeps its part",
    "tfds": "tfds records are selected by example index, which FILE sharding would break",
}


# --------------------------------------------------------------------------- strategy choice


def select_strategy_kind(cfg: Config, env: Mapping[str, str],
                         count_gpus: Callable[[], int] = lambda: 0) -> str:
    """The strategy ``training.strategy`` asks for; ``auto``: tpu when ``training.tpu`` or a TPU
    environment variable is set, multi_worker when ``TF_CONFIG`` names several tasks, mirrored
    with ``training.devices`` or more than one GPU (`count_gpus` is only called then), else
    default. Creates nothing."""
    kind = cfg.training.strategy
    if kind != "auto":
        return kind
    if cfg.training.tpu or any(env.get(k) for k in TPU_ENV_HINTS):
        return "tpu"
    if is_multi_worker_tf_config(env):
        return "multi_worker"
    if cfg.training.devices or count_gpus() > 1:
        return "mirrored"
    return "default"


def tpu_address(cfg: Config, env: Mapping[str, str]) -> str | None:
    """What to give ``TPUClusterResolver(tpu=...)``: ``training.tpu`` (a TPU name, a
    ``grpc://host:port`` address or ``local`` on a Cloud TPU VM), else ``COLAB_TPU_ADDR`` or
    ``TPU_NAME``; None lets TensorFlow discover it (``KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS``, GCE
    metadata)."""
    if cfg.training.tpu:
        return cfg.training.tpu
    if env.get("COLAB_TPU_ADDR"):
        return "grpc://" + env["COLAB_TPU_ADDR"]
    return env.get("TPU_NAME") or None


def check_tpu_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """For a ``grpc://host:port`` TPU address, checks that the port accepts connections:
    ``tf.config.experimental_connect_to_cluster`` retries an unreachable address forever."""
    if not address or not address.startswith("grpc://"):
        return
    host, _, port = address[len("grpc://"):].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise KerasftError(expected("a reachable TPU (training.tpu: name, grpc://host:port "
                                    "or 'local')", "training.tpu", address)
                           + f" ({reason})") from None


def check_global_batch(batch: int, replicas: int, kind: str) -> None:
    """``data.batch_size`` is the global batch: at least one example per replica, and a multiple
    of the replicas on TPUs (static per-replica shapes). Elsewhere an uneven split only warns."""
    if batch < replicas:
        raise ConfigError(expected(f"a global batch of at least one example per replica "
                                   f"({replicas} replicas under {kind})", "data.batch_size",
                                   batch))
    if kind == "tpu" and batch % replicas:
        raise ConfigError(expected(f"a multiple of the {replicas} TPU replicas (each replica "
                                   "gets a static share of the global batch)",
                                   "data.batch_size", batch))


def drops_remainder(kind: str) -> bool:
    """Whether training batches drop the last partial batch under strategy `kind`."""
    return kind in DROP_REMAINDER_KINDS


def steps_per_epoch(size: int, global_batch: int, drop_remainder: bool) -> int:
    """Training steps per epoch; with `drop_remainder` at least one full global batch is needed."""
    if drop_remainder:
        if size < global_batch:
            raise KerasftError(expected(
                f"at least one full global batch (data.batch_size={global_batch}) of training "
                "examples: tpu and multi_worker drop the last partial batch", "training examples",
                size))
        return size // global_batch
    return max(1, math.ceil(size / global_batch))


# --------------------------------------------------------------------------- sharding


def sharding_policy(kind: str) -> str | None:
    """The tf.data auto-shard policy kerasft sets for `kind` (None: one input pipeline)."""
    return SHARDING_POLICY if kind in SHARDED_KINDS else None


def sharding_reason(source: str) -> str:
    return _SHARDING_REASONS.get(source, "splits are selected by example index")


def distribution_notes(cfg: Config, kind: str, data: Any) -> list[str]:
    """Log lines on how `kind` changes the input pipeline of `data` (a DataSplits)."""
    notes = []
    policy = sharding_policy(kind)
    if policy:
        source = data.report.get("source", cfg.data.source)
        notes.append(f"data sharding: AutoShardPolicy.{policy} ({sharding_reason(source)})")
    if drops_remainder(kind):
        notes.append(f"{kind}: training batches drop the last partial batch "
                     f"({data.train.size % cfg.data.batch_size} examples per epoch)")
    if kind == "tpu" and data.task == "text" and cfg.data.bucket_by_length:
        notes.append("tpu: data.bucket_by_length is off: text batches keep the backbone's fixed "
                     "sequence length (static shapes)")
    return notes


def distribute_pipeline(ds: Any, kind: str, *, size: int, global_batch: int,
                        training: bool) -> Any:
    """Prepares a batched ``(x, y)`` pipeline of `size` examples for strategy `kind`.

    Multi-host kinds (multi_worker, tpu) get ``AutoShardPolicy.DATA``. Their evaluation
    pipelines (``training=False``) are padded to full global batches: with a short last batch
    ``experimental_distribute_dataset`` hands some replicas an *empty* batch, which Conv2D +
    BatchNormalization graphs reject ("Incompatible shapes: [4] vs. [0,16,16,3]"), and TPUs need
    static shapes anyway. The padding repeats the batch's first example; elements become
    ``(x, y, sample_weight)`` with weight 0 for padding and ``padded_size / size`` for real
    examples, which keeps ``val_loss`` (Keras divides by the padded batch length) and weighted
    metrics exact. ``predict`` ignores y and weights: keep its first `size` rows. Training
    pipelines drop the remainder (:func:`drops_remainder`) and get a static batch dimension
    (KerasHub's tokenizer loses it). Other kinds: unchanged.
    """
    if sharding_policy(kind) is None:
        return ds
    import tensorflow as tf

    if training:  # full batches (drop_remainder): make the batch dimension static too
        def static(*element: Any) -> Any:
            return tf.nest.map_structure(
                lambda t: tf.ensure_shape(t, [global_batch, *t.shape[1:]]), element)

        ds = ds.map(static)
    else:
        ds = pad_to_full_batches(ds, size, global_batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def pad_to_full_batches(ds: Any, size: int, global_batch: int) -> Any:
    """``(x, y)`` batches -> ``(x, y, w)`` batches of exactly `global_batch` rows (see
    :func:`distribute_pipeline`)."""
    import tensorflow as tf

    padded = max(1, math.ceil(size / global_batch)) * global_batch
    weight = padded / max(size, 1)

    def pad(x: Any, y: Any) -> tuple[Any, Any, Any]:
        count = tf.shape(y)[0]
        missing = global_batch - count

        def fill(t: Any) -> Any:
            t = tf.concat([t, tf.repeat(t[:1], missing, axis=0)], axis=0)
            return tf.ensure_shape(t, [global_batch, *t.shape[1:]])

        w = tf.concat([tf.fill([count], tf.constant(weight, tf.float32)),
                       tf.zeros([missing], tf.float32)], axis=0)
        return (tf.nest.map_structure(fill, x), fill(y),
                tf.ensure_shape(w, [global_batch]))

    return ds.map(pad)


# --------------------------------------------------------------------------- this task


@dataclass(frozen=True)
class Placement:
    """This process's place in the cluster."""

    kind: str
    workers: int = 1
    task_type: str | None = None
    task_index: int = 0
    is_chief: bool = True

    @property
    def task(self) -> str:
        return f"{self.task_type} {self.task_index}" if self.task_type else "single process"


def placement(kind: str, env: Mapping[str, str]) -> Placement:
    """Reads ``TF_CONFIG`` for multi_worker (required then); other kinds are one process."""
    if kind != "multi_worker":
        return Placement(kind)
    tf_config = parse_tf_config(env.get("TF_CONFIG", ""))
    cluster, task = tf_config["cluster"], tf_config["task"]
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    return Placement(kind, workers, task["type"], task["index"], is_chief(tf_config))


# --------------------------------------------------------------------------- agreement


def _agree(strategy: Any, mine: list[float], chief: bool) -> tuple[list[float], list[list[float]]]:
    """Gathers one row of numbers from every worker (one collective); returns the chief's row and
    all rows. Every worker must call this at the same point."""
    import numpy as np
    import tensorflow as tf

    row = [1.0 if chief else 0.0, *mine]
    local = len(strategy.extended.worker_devices)

    def value(context: Any) -> Any:
        # Only the first local replica speaks for this worker.
        first = context.replica_id_in_sync_group % local == 0
        return tf.constant([row if first else [-1.0] * len(row)], tf.float64)

    values = strategy.experimental_distribute_values_from_function(value)
    rows = [r for r in np.asarray(strategy.gather(values, axis=0)).tolist() if r[0] >= 0]
    chiefs = [r for r in rows if r[0] == 1.0]
    if len(chiefs) != 1:
        raise KerasftError(expected("exactly one chief task in TF_CONFIG", "chief tasks",
                                    len(chiefs)))
    return chiefs[0][1:], [r[1:] for r in rows]


# --------------------------------------------------------------------------- run folder


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(expected("letters, digits, '.', '_' or '-' (at most 100, not starting "
                                   "with '.', '_' or '-')", "run id", run_id))
    return run_id


def resolve_run_id(run_id: str | None, env: Mapping[str, str]) -> str | None:
    """`run_id`, else ``KERASFT_RUN_ID``, else None (the chief's start time names the run)."""
    value = run_id or env.get(RUN_ID_ENV) or None
    return check_run_id(value) if value else None


def _stamp_name(name: str, date: int, time: int, suffix: int) -> str:
    stamp = f"{date:08d}-{time:06d}"
    return f"{name}-{stamp}" + (f"-{suffix}" if suffix > 1 else "")


class RunFolder:
    """The run folder of one ``fit``: `run_dir` is the real (chief's) folder, `write_dir` where
    this process writes (the same on the chief, a private temporary folder on other workers,
    removed by :meth:`close` or at interpreter exit)."""

    def __init__(self, run_dir: Path, write_dir: Path, temporary: bool) -> None:
        self.run_dir = run_dir
        self.write_dir = write_dir
        self.temporary = temporary
        self._cleanup = (weakref.finalize(self, shutil.rmtree, str(write_dir), True)
                         if temporary else None)

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()

    def describe(self, where: Placement) -> list[str]:
        if not self.temporary:
            return [f"run folder: {self.run_dir}"]
        return [f"run folder: {self.run_dir} (written by the chief)",
                f"{where.task} writes to a temporary folder, removed at the end: "
                f"{self.write_dir}"]


def open_run_folder(base: str | os.PathLike, name: str, run_id: str | None, where: Placement,
                    strategy: Any = None, now: _dt.datetime | None = None) -> RunFolder:
    """Creates the run folder (chief) or a temporary one (other workers); see the module doc.

    With several workers this runs one collective: call it at the same point on every worker.
    """
    base = Path(base)
    date = time = suffix = 0
    problem = ""
    if where.is_chief:
        try:
            if run_id:
                run_dir = base / f"{name}-{run_id}"
                if run_dir.exists():
                    problem = expected("a new run id (its run folder exists)", "run id", run_id)
                else:
                    run_dir.mkdir(parents=True)
            else:
                stamp = (now or _dt.datetime.now()).strftime(_TIME_FORMAT)
                date, time = (int(p) for p in stamp.split("-"))
                suffix = 1
                run_dir = base / _stamp_name(name, date, time, suffix)
                while run_dir.exists():
                    suffix += 1
                    run_dir = base / _stamp_name(name, date, time, suffix)
                run_dir.mkdir(parents=True)
        except OSError as e:
            problem = expected("a writable output folder", "output_dir", str(base)) + \
                f" ({e.strerror})"
    if where.workers > 1:
        # Everyone gathers before anyone raises, so a failing chief does not leave the others
        # waiting in a collective.
        run_hash = float(zlib.crc32(run_id.encode())) if run_id else -1.0
        chief_row, rows = _agree(strategy, [date, time, suffix, run_hash, float(bool(problem))],
                                 where.is_chief)
        if chief_row[4]:
            raise KerasftError(problem or "the chief could not create the run folder (see its "
                               "log). Received: chief error")
        if any(r[3] != chief_row[3] for r in rows):
            raise ConfigError(expected(f"the same run id ({RUN_ID_ENV} / --run-id) on every "
                                       "worker", "run id", run_id))
        date, time, suffix = (int(v) for v in chief_row[:3])
    elif problem:
        raise KerasftError(problem)
    run_dir = base / (f"{name}-{run_id}" if run_id else _stamp_name(name, date, time, suffix))
    if where.is_chief:
        return RunFolder(run_dir, run_dir, temporary=False)
    prefix = f"kerasft-{run_dir.name}-{where.task_type}{where.task_index}-"
    return RunFolder(run_dir, Path(tempfile.mkdtemp(prefix=prefix)), temporary=True)


def resume_run_folder(locate: Callable[[], Path], resume: Callable[[Path], Any],
                      where: Placement, strategy: Any = None,
                      copy: Callable[[Path, Path], None] | None = None) -> tuple[RunFolder, Any]:
    """Reopens an interrupted run on every worker; returns its RunFolder and `resume`'s result.

    `locate()` names the run folder (the same call on every worker). The chief resumes it in
    place: ``resume(run_dir)``. Every other worker reads it too, so multi-worker resume needs the
    output folder on storage all workers read (NFS, a bucket mounted with gcsfuse, a
    ReadWriteMany volume: as for the checkpoints in TensorFlow's multi-worker guide): it copies
    the committed checkpoint into a private temporary folder with ``copy(run_dir, temp)`` and
    resumes that, so its own later checkpoints never touch the real folder. One collective then
    compares what each worker resumed (run folder and run state): every worker raises the same
    one-line error if one of them failed or read another commit, before any training step.
    """
    problem, run_dir, write_dir, result = "", None, None, None
    try:
        run_dir = Path(locate())
        if where.is_chief:
            write_dir = run_dir
        else:
            write_dir = Path(tempfile.mkdtemp(
                prefix=f"kerasft-{run_dir.name}-{where.task_type}{where.task_index}-"))
            if copy is not None:
                copy(run_dir, write_dir)
        result = resume(write_dir)
    except KerasftError as e:
        problem = str(e)
    if where.workers <= 1:
        if problem:
            raise KerasftError(problem)
        return RunFolder(run_dir, run_dir, temporary=False), result
    state = write_dir / "checkpoints" / "state.json" if write_dir is not None else None
    state_hash = float(zlib.crc32(state.read_bytes())) if state and state.is_file() else -1.0
    name_hash = float(zlib.crc32(run_dir.name.encode())) if run_dir is not None else -1.0
    chief_row, rows = _agree(strategy, [float(bool(problem)), name_hash, state_hash,
                                        float(where.task_index)], where.is_chief)
    failed = [int(r[3]) for r in rows if r[0]]
    temporary = write_dir is not None and not where.is_chief
    if problem or failed or any(r[1:3] != chief_row[1:3] for r in rows):
        if temporary:
            shutil.rmtree(write_dir, ignore_errors=True)
        if problem:
            raise KerasftError(problem if where.is_chief else
                               f"{problem} (multi_worker resume: every worker reads the chief's "
                               "run folder; see docs/DISTRIBUTED.md)")
        if failed:
            raise KerasftError(expected("every worker to resume the run (see the failed workers' "
                                        "logs)", "workers that could not resume", failed))
        raise KerasftError(expected(
            "every worker to resume the same run folder at the same commit (output_dir on "
            "storage all workers read)", "run folder", str(run_dir)))
    return RunFolder(run_dir, write_dir, temporary=temporary), result


# --------------------------------------------------------------------------- export


@dataclass
class ExportTarget:
    """Where this process writes an export: `base_dir` and `version` for export_saved_model;
    `path` is the real (chief's) ``<dir>/<name>/<version>``; `verify` False on other workers."""

    base_dir: Path
    version: int | str
    path: Path | None
    verify: bool | None
    temporary: bool


@contextlib.contextmanager
def export_target(base: str | os.PathLike, name: str, version: int | str, where: Placement,
                  strategy: Any = None) -> Iterator[ExportTarget]:
    """The chief exports to `base`; other workers export the same model (saving may run
    collective ops) into a temporary folder removed on exit, without the fresh-process check.

    With several workers this runs two collectives: one before (the chief's version number is
    shared) and one after the export (everyone waits for the chief's check, and every worker
    raises if any worker's export failed, so no worker reports a SavedModel that is missing).
    """
    base = Path(base)
    if where.workers <= 1:
        yield ExportTarget(base, version, None, None, temporary=False)
        return
    from kerasft.export.saved_model import next_version

    mine = 0.0
    if where.is_chief:
        mine = float(next_version(base / name) if version == "auto" else int(version))
    chief_row, _ = _agree(strategy, [mine], where.is_chief)
    agreed = int(chief_row[0])
    path = base / name / str(agreed)
    temp = None if where.is_chief else Path(tempfile.mkdtemp(
        prefix=f"kerasft-export-{name}-{where.task_type}{where.task_index}-"))
    ok = False
    try:
        if temp is None:
            yield ExportTarget(base, agreed, path, None, temporary=False)
        else:
            yield ExportTarget(temp, agreed, path, False, temporary=True)
        ok = True
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        chief_ok, rows = _agree(strategy, [float(ok)], where.is_chief)
    if ok and not all(r[0] for r in rows):
        raise KerasftError(expected("every worker's export to succeed (see the other workers' "
                                    "logs)", "chief export ok", bool(chief_ok[0])))


# --------------------------------------------------------------------------- dry run


def _count_local_gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))  # does not initialise the runtime


def make_plan(cfg: Config, data: Any, *, env: Mapping[str, str] | None = None,
              run_id: str | None = None, output_dir: str | os.PathLike | None = None,
              strategy_info: Any = None,
              count_gpus: Callable[[], int] = _count_local_gpus) -> dict[str, Any]:
    """What ``fit`` would do with `cfg` on `data` (a :class:`kerasft.data.splits.DataSplits`),
    without creating the strategy: no port is bound, no device is initialised, nothing is written.

    With `strategy_info` (an already created strategy) its real replica count is used; otherwise
    replicas are counted from the config and environment (TPU cores: unknown before connecting).
    """
    from kerasft.export.saved_model import next_version

    env = os.environ if env is None else env
    if strategy_info is not None:
        kind = strategy_info.kind
    else:
        kind = select_strategy_kind(cfg, env, count_gpus)
    check_strategy_options(cfg, kind)
    where = placement(kind, env)
    if strategy_info is not None:
        replicas: int | None = strategy_info.replicas
        strategy_name = type(strategy_info.strategy).__name__
    elif kind == "default":
        replicas, strategy_name = 1, "default strategy"
    elif kind == "mirrored":
        replicas = len(cfg.training.devices) if cfg.training.devices else max(1, count_gpus())
        strategy_name = "MirroredStrategy"
    elif kind == "multi_worker":
        replicas = where.workers * max(1, count_gpus())
        strategy_name = "MultiWorkerMirroredStrategy"
    else:
        replicas, strategy_name = None, "TPUStrategy"
    batch = cfg.data.batch_size
    drop = drops_remainder(kind)
    sizes = {"train": data.train.size,
             "validation": data.validation.size if data.validation is not None else 0,
             "test": data.test.size if data.test is not None else 0}
    steps = steps_per_epoch(sizes["train"], batch, drop)
    lr_scale = (replicas or 0) if cfg.training.lr_scaling == "linear" else 1
    stages = [{"name": s.name, "epochs": s.epochs, "steps": s.epochs * steps,
               "learning_rate": s.learning_rate,
               "effective_learning_rate": s.learning_rate * lr_scale if lr_scale else None}
              for s in cfg.stages]
    run_id = resolve_run_id(run_id, env)
    base = Path(output_dir or cfg.output_dir)
    if run_id:
        run_dir = str(base / f"{cfg.name}-{run_id}")
    else:
        run_dir = str(base / f"{cfg.name}-<start time YYYYmmdd-HHMMSS>")
    export = None
    if cfg.export.enabled:
        model_dir = Path(cfg.export.dir) / cfg.name
        version = next_version(model_dir) if cfg.export.version == "auto" else cfg.export.version
        export = {"path": str(model_dir / str(version)), "version": version,
                  "exists": (model_dir / str(version)).exists()}
    from kerasft.training.precision import resolve as resolve_precision

    precision = resolve_precision(cfg, kind)
    source = data.report.get("source", cfg.data.source)
    return {
        "strategy": kind,
        "strategy_class": strategy_name,
        "workers": where.workers,
        "task": where.task,
        "chief": where.is_chief,
        "replicas": replicas,
        "global_batch": batch,
        "per_replica_batch": batch / replicas if replicas else None,
        "drop_remainder": drop,
        "sharding": sharding_policy(kind),
        "sharding_reason": sharding_reason(source) if sharding_policy(kind) else None,
        "data": {"source": source, "task": data.task, "classes": len(data.class_names), **sizes},
        "steps_per_epoch": steps,
        "validation_steps": math.ceil(sizes["validation"] / batch) if sizes["validation"] else 0,
        "stages": stages,
        "total_epochs": sum(s.epochs for s in cfg.stages),
        "total_steps": sum(s["steps"] for s in stages),
        "lr_scaling": cfg.training.lr_scaling,
        "run_dir": run_dir,
        "run_id": run_id,
        "export": export,
        "steps_per_execution": cfg.training.steps_per_execution,
        "mixed_precision": {"policy": precision.policy, "reason": precision.reason},
        "notes": distribution_notes(cfg, kind, data),
    }


def plan_lines(plan: Mapping[str, Any]) -> list[str]:
    """The plan as the lines ``kerasft train --dry-run`` prints."""
    replicas = plan["replicas"]
    per_replica = plan["per_replica_batch"]
    if replicas is None:
        rep_text, per_text = "unknown until the TPU is connected (8 on a v3-8)", "global / cores"
    else:
        rep_text = str(replicas)
        per_text = f"{per_replica:g}" + ("" if float(per_replica).is_integer() else
                                         " (not divisible: replicas get uneven batches)")
    d = plan["data"]
    lines = [
        f"strategy: {plan['strategy']} ({plan['strategy_class']})",
        f"workers: {plan['workers']} (this process: {plan['task']}"
        + (", chief" if plan["chief"] and plan["workers"] > 1 else "") + ")",
        f"replicas: {rep_text}",
        f"global batch: {plan['global_batch']}, per-replica batch: {per_text}"
        + (", last partial training batch dropped" if plan["drop_remainder"] else ""),
        f"data: {d['source']} ({d['task']}, {d['classes']} classes): train {d['train']}, "
        f"validation {d['validation']}, test {d['test']} examples",
    ]
    precision = plan["mixed_precision"]
    lines.append(f"mixed precision: {precision['policy']} ({precision['reason']})")
    lines.extend(plan["notes"])
    lines.append(f"steps per epoch: {plan['steps_per_epoch']} training, "
                 f"{plan['validation_steps']} validation")
    for s in plan["stages"]:
        lr = f"lr {s['learning_rate']:g}"
        if plan["lr_scaling"] == "linear":
            eff = s["effective_learning_rate"]
            lr += f" x replicas = {eff:g}" if eff is not None else " x replicas (linear)"
        lines.append(f"stage '{s['name']}': {s['epochs']} epochs x {plan['steps_per_epoch']} "
                     f"steps = {s['steps']} steps, {lr}")
    lines.append(f"total: {plan['total_epochs']} epochs, {plan['total_steps']} steps")
    if plan["workers"] > 1 and not plan["run_id"]:
        lines.append(f"run folder: {plan['run_dir']} (named by the chief, shared with all "
                     "workers; --run-id or KERASFT_RUN_ID fixes it)")
    else:
        lines.append(f"run folder: {plan['run_dir']}")
    export = plan["export"]
    if export is None:
        lines.append("export: disabled (export.enabled: false)")
    else:
        lines.append(f"export: {export['path']} (version {export['version']}"
                     + (", exists: the export would fail" if export["exists"] else "") + ")")
    if plan["workers"] > 1 and not plan["chief"]:
        lines.append("this worker writes its checkpoints, logs and export to temporary folders "
                     "that are removed at the end; only the chief writes the outputs above")
    return lines
