"""Stage-aware resume: per-epoch checkpoints and the run state of a run folder.

Keras's ``BackupAndRestore`` restores only within one ``compile`` (keras#19179, #20712) and
kerasft recompiles at every stage, so kerasft keeps its own state. After every epoch, and at the
end of every stage, ``<run>/checkpoints/`` receives in this order:

1. ``ckpt-<n>.weights.h5``: the whole model's weights, not its optimizer's
   (kerasft/models/weights.py);
2. ``ckpt-<n>.state.npz``: the stage optimizer's variables (iteration count, so the learning-rate
   schedule position, moments, gradient accumulators) with their paths, restored by path (a
   missing, unexpected or reshaped variable is a one-line error), and the random-seed states of
   the model's layers (dropout); arrays only, read with ``allow_pickle=False``;
3. ``state.json``, the commit point: stage index, epoch counter, best-so-far metric and epoch,
   early-stopping counters, the finished stages, the committed length of ``history.csv`` and the
   names of the files above.

During a LoRA stage (kerasft/models/lora.py) an epoch's checkpoint holds only what trains:
``ckpt-<n>.lora.npz``, the adapters and the head (every trainable variable, by path), while
``weights`` keeps naming the full weights the stage started from (committed before the stage's
first epoch when no checkpoint holds them yet); a resumed LoRA stage loads those, enables the
adapters and loads the ``.lora.npz`` into them. An epoch that improves the monitored metric also
writes its full weights (adapters merged: Keras's ``Dense`` / ``EinsumDense`` save merged
kernels), since ``best.weights.h5`` is a model file a user loads. The stage's end commits the
merged model's full weights, as a stage's end always may.

Every file is written through :mod:`kerasft.io` (a temporary name ``.tmp-*``, flushed and
fsynced, renamed with ``os.replace``, its folder fsynced). ``state.json`` only names complete
files, and files it no longer names are deleted after the commit, so a ``kill -9`` at any moment
leaves the previous or the new commit. ``best.weights.h5`` is a hard link (a copy where links
are not supported) to the committed checkpoint of the best epoch, replaced atomically after the
commit that found it.

:meth:`Checkpointer.resume` checks the run before touching it: the run's ``config.yaml`` must equal
the resolved config (``output_dir`` and ``training.verbose`` aside; a one-line error names the
differences, unless ``force``), and the labels and split sizes must be the same. It then truncates
``history.csv`` to the committed length, and training continues at the committed stage and epoch
with the optimizer state, best-so-far value and early-stopping counters of the commit.

Why this module is long: the commit protocol above is one argument (what is written in which
order, what ``state.json`` names, what is deleted after a commit, what a resume checks and
restores), and its writer, its reader and the callbacks that commit at every epoch share the
state's format (file names, 1-based epochs on file): split, a crash-safety change would have to
be checked across modules.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from kerasft.config import WEIGHTS_ALIASES, Config, save_config, upgrade_saved_config
from kerasft.errors import KerasftError, expected
from kerasft.io import TMP_PREFIX, atomic_path, atomic_write
from kerasft.models.weights import load_model_weights, save_model_weights
from kerasft.training.callbacks import higher_is_better

Log = Callable[[str], None]

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
BEST_FILE = "best.weights.h5"
LORA_SUFFIX = ".lora.npz"
# Format 2 numbers epochs from 1, as Keras's progress bar and history.csv do; format 1 (0-based)
# run folders are refused for resuming (their history.csv would mix both numberings).
FORMAT = 2
# Keys that may differ between the run's config.yaml and the resumed config.
IGNORED_KEYS = ("output_dir", "training.verbose", "training.mixed_precision_reason")
# kerasft tune's search space: it never changes what a run trains.
IGNORED_SECTIONS = ("tune.",)
SEED_STATE = "seed_generator_state"
# Test hooks: KERASFT_TEST_PAUSE="<point>@<epoch>" makes the process create the file named by
# KERASFT_TEST_PAUSE_FILE and sleep at that point, so a test can kill it there. Points, with the
# global epoch index: "epoch" (after the epoch's first step), "weights" (the epoch's checkpoint
# weights written under their temporary name), "commit" (the epoch's state.json written under its
# temporary name); with the stage index: "stage_end" (the stage's last epoch committed, its
# stage-end state.json written under its temporary name).
PAUSE_ENV = "KERASFT_TEST_PAUSE"
PAUSE_FILE_ENV = "KERASFT_TEST_PAUSE_FILE"
_MAX_SHOWN = 3


def pause_point(point: str, epoch: int) -> None:
    """The test hook described above (a no-op unless ``KERASFT_TEST_PAUSE`` names this point)."""
    if os.environ.get(PAUSE_ENV) != f"{point}@{epoch}":
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).write_text(f"{point}@{epoch} pid {os.getpid()}\n", encoding="utf-8")
    time.sleep(3600)


# ---------------------------------------------------------------------------------------------
# The run state.


@dataclass
class RunState:
    """What ``state.json`` holds (see the module docstring)."""

    format: int = FORMAT
    status: str = "training"  # "training" until fit() finished, then "finished"
    commit: int = 0
    stage: int = 0  # the stage in progress (or the next one, after a stage-end commit)
    # In memory epochs are 0-based indices (Keras's initial_epoch); state.json stores them
    # 1-based (see _to_file / _from_file).
    stage_first_epoch: int = 0  # global index of that stage's first epoch
    epoch: int = 0  # epochs completed so far = the next epoch's global index
    stopped: bool = False  # the stage in progress was stopped early (it is complete)
    weights: str | None = None
    lora: str | None = None  # during a LoRA stage: the epoch's adapters and head (.lora.npz)
    arrays: str | None = None
    has_optimizer: bool = False  # arrays hold the optimizer of the stage in progress
    best: float | None = None
    best_epoch: int | None = None
    best_source: str | None = None  # checkpoint file of the best epoch
    early_stopping: dict[str, Any] | None = None
    last_logs: dict[str, float] = field(default_factory=dict)
    stages_done: list[dict[str, Any]] = field(default_factory=list)
    history_bytes: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def referenced(self) -> set[str]:
        names = {self.weights, self.lora, self.arrays, self.best_source,
                 (self.early_stopping or {}).get("weights")}
        return {n for n in names if n}


def _shift_epochs(raw: dict[str, Any], by: int) -> dict[str, Any]:
    """Converts the epoch fields between 0-based indices (memory) and 1-based numbers (file).
    ``epoch`` (epochs completed) is the same number in both; an early-stopping
    ``stopped_epoch`` of 0 means "not stopped" in both."""
    out = dict(raw)
    if raw.get("stage_first_epoch") is not None:
        out["stage_first_epoch"] = raw["stage_first_epoch"] + by
    if raw.get("best_epoch") is not None:
        out["best_epoch"] = raw["best_epoch"] + by
    es = raw.get("early_stopping")
    if es:
        es = dict(es)
        if es.get("best_epoch") is not None:
            es["best_epoch"] += by
        if es.get("stopped_epoch"):
            es["stopped_epoch"] += by
        out["early_stopping"] = es
    return out


def _read_state(path: Path) -> RunState:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise KerasftError(f"{path}: expected a readable kerasft run state. Received: "
                           f"{str(e).splitlines()[0]}") from None
    if isinstance(raw, dict) and raw.get("format") == 1:
        raise KerasftError(expected(
            f"a kerasft run state of format {FORMAT} (epochs numbered from 1); this run was "
            "written by an older kerasft, which can resume it (evaluate and export work here)",
            "format", 1, where=str(path)))
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise KerasftError(expected(f"a kerasft run state of format {FORMAT}", "format",
                                    raw.get("format") if isinstance(raw, dict) else None,
                                    where=str(path)))
    unknown = sorted(set(raw) - {f.name for f in fields(RunState)})
    if unknown:
        raise KerasftError(expected("the fields of a kerasft run state", "unknown fields",
                                    unknown, where=str(path)))
    return RunState(**_shift_epochs(raw, -1))


def data_fingerprint(data: Any) -> dict[str, Any]:
    """What must not change between a run and its resumption: labels and split sizes."""
    sizes = {name: getattr(data, name).size for name in ("train", "validation", "test")
             if getattr(data, name) is not None}
    return {"class_names": list(data.class_names), "sizes": sizes}


# ---------------------------------------------------------------------------------------------
# Finding and checking the run to resume.

_STAMP = r"\d{8}-\d{6}(?:-(\d+))?"


def find_latest_run(output_dir: str | os.PathLike, name: str) -> Path:
    """The newest run folder ``<output_dir>/<name>-<timestamp>[-N]`` with a run state."""
    base = Path(output_dir)
    pattern = re.compile(re.escape(name) + "-(" + _STAMP + ")")
    candidates = []
    if base.is_dir():
        for path in base.iterdir():
            match = pattern.fullmatch(path.name)
            if match and (path / CHECKPOINTS / STATE_FILE).is_file():
                stamp = path.name[len(name) + 1:len(name) + 16]
                candidates.append((stamp, int(match.group(2) or 1), path))
    if not candidates:
        raise KerasftError(expected(
            f"a run folder {name}-<timestamp> with {CHECKPOINTS}/{STATE_FILE} to resume "
            "(or --resume RUN_DIR)", "output_dir", str(base)))
    return max(candidates)[2]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key=current (run: saved)`` for every key whose value differs (IGNORED_KEYS aside)."""
    old, new = _flatten(saved), _flatten(current)
    for flat in (old, new):  # a run written with the old name of backbone.weights: pretrained
        weights = flat.get("backbone.weights")
        flat["backbone.weights"] = WEIGHTS_ALIASES.get(weights, weights)
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in IGNORED_KEYS or key.startswith(IGNORED_SECTIONS) or old.get(key) == new.get(key):
            continue
        diffs.append(f"{key}={new.get(key)!r} (run: {old.get(key)!r})")
    return diffs


def recorded_precision(run_dir: str | os.PathLike) -> tuple[str, str | None] | None:
    """The mixed-precision policy and reason that a run folder's config.yaml records (None when
    it records none: resuming reports an unreadable config itself)."""
    from kerasft.config import MIXED_PRECISION, read_yaml

    try:
        training = read_yaml(Path(run_dir) / "config.yaml").get("training") or {}
    except KerasftError:
        return None
    policy = training.get("mixed_precision") if isinstance(training, dict) else None
    if policy not in MIXED_PRECISION or policy == "auto":
        return None
    reason = training.get("mixed_precision_reason")
    return policy, reason if isinstance(reason, str) else None


def _truncate(path: Path, size: int) -> None:
    if path.is_file() and path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())


def copy_committed_run(run_dir: Path, dest: Path, extra_files: tuple[str, ...] = ()) -> None:
    """Copies what resuming `run_dir` reads (config.yaml, history.csv, `extra_files`, state.json
    and the checkpoint files it names) into `dest`: a non-chief worker resumes from this private
    copy and writes its own checkpoints there (kerasft.training.run_folder.resume_run_folder)."""
    run_dir, dest = Path(run_dir), Path(dest)
    state_path = run_dir / CHECKPOINTS / STATE_FILE
    if not state_path.is_file() or not (run_dir / "config.yaml").is_file():
        raise KerasftError(expected(f"a kerasft run folder with config.yaml and "
                                    f"{CHECKPOINTS}/{STATE_FILE}", "resume", str(run_dir)))
    state = _read_state(state_path)
    (dest / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "history.csv", *extra_files):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, dest / name)
    for name in sorted(state.referenced()):
        if (run_dir / CHECKPOINTS / name).is_file():  # a missing one fails in resume()
            shutil.copyfile(run_dir / CHECKPOINTS / name, dest / CHECKPOINTS / name)
    shutil.copyfile(state_path, dest / CHECKPOINTS / STATE_FILE)


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def _optimizer_key(path: str) -> str:
    """An optimizer variable's path without the optimizer's name (``adam_1/head_kernel_momentum``
    -> ``head_kernel_momentum``)."""
    return path.split("/", 1)[-1]


def _seed_variables(model: Any) -> list[Any]:
    return [v for v in model.variables if v.name == SEED_STATE]


def _is_better(monitor: str, value: float, best: float | None) -> bool:
    return best is None or (value > best if higher_is_better(monitor) else value < best)


class Checkpointer:
    """Writes and reads the checkpoints and run state of one run folder (module docstring)."""

    def __init__(self, run_dir: Path, state: RunState, log: Log, force: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINTS
        self.state = state
        self.log = log
        self.force = force
        self.resumed = state.commit > 0 or state.epoch > 0
        self.write_seconds = 0.0  # total time spent writing checkpoints (for the log)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def start(cls, run_dir: Path, data: Any, log: Log) -> Checkpointer:
        """A new run: writes the initial state (nothing trained yet)."""
        ckpt = cls(run_dir, RunState(data=data_fingerprint(data)), log)
        ckpt.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(ckpt.dir / STATE_FILE, ckpt._state_json(ckpt.state))
        return ckpt

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, cfg: Config, data: Any, log: Log,
               force: bool = False) -> Checkpointer:
        """Checks that `run_dir` can be resumed with `cfg` and `data` (one-line errors, nothing
        written before every check passed), then prepares it; returns the checkpointer."""
        run_dir = Path(run_dir)
        state_path = run_dir / CHECKPOINTS / STATE_FILE
        config_path = run_dir / "config.yaml"
        if not state_path.is_file() or not config_path.is_file():
            raise KerasftError(expected(f"a kerasft run folder with config.yaml and "
                                        f"{CHECKPOINTS}/{STATE_FILE}", "resume", str(run_dir)))
        state = _read_state(state_path)
        if state.status == "finished":
            raise KerasftError(expected(
                "an interrupted run (this one finished training; use `kerasft evaluate` or "
                "`kerasft export` on it)", "resume", str(run_dir)))
        try:
            saved = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise KerasftError(f"{config_path}: expected the run's resolved config. Received: "
                               f"error={str(e).splitlines()[0]!r}") from None
        diffs = config_differences(upgrade_saved_config(saved), cfg.to_dict())
        if diffs and not force:
            shown = "; ".join(diffs[:_MAX_SHOWN])
            more = f" (and {len(diffs) - _MAX_SHOWN} more)" if len(diffs) > _MAX_SHOWN else ""
            raise KerasftError(f"{config_path}: expected the same resolved config to resume the "
                               f"run (or --force). Received: {shown}{more}")
        fingerprint = data_fingerprint(data)
        if state.data and state.data != fingerprint:
            old, new = state.data, fingerprint
            key, was, now = (("labels", old.get("class_names"), new["class_names"])
                             if old.get("class_names") != new["class_names"]
                             else ("split sizes", old.get("sizes"), new["sizes"]))
            raise KerasftError(f"{run_dir}: expected the same data to resume the run. Received: "
                               f"{key}={now} (run: {was})")
        missing = [n for n in sorted(state.referenced())
                   if not (run_dir / CHECKPOINTS / n).is_file()]
        if missing:
            raise KerasftError(expected("the checkpoint files named by the run state",
                                        "missing", missing, where=str(state_path)))
        ckpt = cls(run_dir, state, log, force)
        ckpt.resumed = True
        # Checks passed: now the run folder may change.
        for leftover in ckpt.dir.glob(TMP_PREFIX + "*"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        _truncate(run_dir / "history.csv", state.history_bytes)
        if diffs:
            log(f"resuming with a changed config (--force): {'; '.join(diffs)}")
            save_config(cfg, config_path)
        ckpt._link_best()
        ckpt._cleanup()
        return ckpt

    def describe(self, stage_names: list[str]) -> str:
        s = self.state
        if s.stage >= len(stage_names):
            where = "all stages done"
        else:
            where = (f"stage {s.stage + 1}/{len(stage_names)} '{stage_names[s.stage]}', "
                     f"epoch {s.epoch + 1}")
        best = (f", best {s.best:.4f} at epoch {s.best_epoch + 1}" if s.best is not None
                and s.best_epoch is not None else "")
        return f"resuming {self.run_dir} at {where} (commit {s.commit}{best})"

    # -- writing -----------------------------------------------------------------------------

    @staticmethod
    def _state_json(state: RunState) -> str:
        return json.dumps(_shift_epochs(asdict(state), +1), indent=1, sort_keys=True) + "\n"

    def _write_weights(self, model: Any, n: int, epoch: int | None = None) -> str:
        name = f"ckpt-{n:06d}.weights.h5"
        hook = (lambda: pause_point("weights", epoch)) if epoch is not None else None
        with atomic_path(self.dir / name, before_rename=hook) as tmp:
            save_model_weights(model, tmp)  # the optimizer goes to the .state.npz only
        return name

    def _write_lora(self, model: Any, n: int, epoch: int) -> str:
        """What trains in a LoRA stage (adapters and head), by variable path."""
        import numpy as np

        variables = model.trainable_variables
        arrays = {f"w_{i}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
        arrays["paths"] = np.array([str(v.path) for v in variables])
        name = f"ckpt-{n:06d}{LORA_SUFFIX}"
        with atomic_path(self.dir / name, before_rename=lambda: pause_point("weights", epoch)) \
                as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return name

    def _write_arrays(self, model: Any, optimizer: Any, n: int) -> str:
        import numpy as np

        arrays: dict[str, Any] = {}
        for i, v in enumerate(_seed_variables(model)):
            arrays[f"seed_{i}"] = np.asarray(v.numpy())
        if optimizer is not None:
            for i, v in enumerate(optimizer.variables):
                arrays[f"opt_{i}"] = np.asarray(v.numpy())
            arrays["opt_paths"] = np.array([str(v.path) for v in optimizer.variables])
        name = f"ckpt-{n:06d}.state.npz"
        with atomic_path(self.dir / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return name

    def _commit(self, hook: tuple[str, int], **changes: Any) -> None:
        history = self.run_dir / "history.csv"
        new = replace(self.state, commit=self.state.commit + 1,
                      history_bytes=history.stat().st_size if history.is_file() else 0,
                      **changes)
        atomic_write(self.dir / STATE_FILE, self._state_json(new),
                     before_rename=lambda: pause_point(*hook))
        improved = new.best_source != self.state.best_source
        self.state = new
        if improved:
            self._link_best()
        self._cleanup()

    def _link_best(self) -> None:
        """Points best.weights.h5 at the best epoch's checkpoint (atomic; idempotent)."""
        source = self.state.best_source
        if not source or not (self.dir / source).is_file():
            return
        with atomic_path(self.dir / BEST_FILE) as tmp:
            tmp.unlink(missing_ok=True)
            try:
                os.link(self.dir / source, tmp)
            except OSError:
                shutil.copyfile(self.dir / source, tmp)

    def _cleanup(self) -> None:
        keep = self.state.referenced()
        for path in self.dir.glob("ckpt-*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def commit_epoch(self, model: Any, optimizer: Any, *, stage: int, stage_first_epoch: int,
                     epoch: int, logs: dict[str, Any], monitor: str, early_stopping: Any,
                     stopped: bool) -> None:
        """Checkpoints the end of global epoch `epoch` of stage `stage`."""
        from kerasft.models.lora import lora_layers

        started = time.perf_counter()
        n = self.state.commit + 1
        lora = None
        if lora_layers(model):  # the stage's starting weights stay in `weights`
            lora = self._write_lora(model, n, epoch)
            weights = self.state.weights
        else:
            weights = self._write_weights(model, n, epoch)
        arrays = self._write_arrays(model, optimizer, n)
        best, best_epoch, best_source = self.state.best, self.state.best_epoch, \
            self.state.best_source
        value = logs.get(monitor)
        if value is not None and math.isfinite(float(value)) and _is_better(monitor,
                                                                           float(value), best):
            best, best_epoch = float(value), epoch
            best_source = weights if lora is None else self._write_weights(model, n)
        es_state = None
        if early_stopping is not None:
            es = early_stopping
            previous = (self.state.early_stopping or {}).get("weights")
            es_weights = (lora or weights) if (es.best_weights is not None
                                               and es.best_epoch == epoch) else previous
            es_state = {"wait": int(es.wait), "best": None if es.best is None else float(es.best),
                        "best_epoch": int(es.best_epoch), "stopped_epoch": int(es.stopped_epoch),
                        "weights": es_weights}
        self._commit(("commit", epoch), stage=stage, stage_first_epoch=stage_first_epoch,
                     epoch=epoch + 1,
                     stopped=stopped, weights=weights, lora=lora, arrays=arrays,
                     has_optimizer=optimizer is not None, best=best, best_epoch=best_epoch,
                     best_source=best_source, early_stopping=es_state,
                     last_logs={k: float(v) for k, v in logs.items()})
        self.write_seconds += time.perf_counter() - started

    def commit_stage_end(self, model: Any, *, stage: int, result: dict[str, Any],
                         weights_changed: bool) -> None:
        """Checkpoints the end of stage `stage` (the next one starts at the current epoch)."""
        started = time.perf_counter()
        n = self.state.commit + 1
        weights = self.state.weights
        if weights_changed or weights is None:
            weights = self._write_weights(model, n)
        arrays = self._write_arrays(model, None, n)
        self._commit(("stage_end", stage), stage=stage + 1, stage_first_epoch=self.state.epoch,
                     stopped=False, weights=weights, lora=None, arrays=arrays,
                     has_optimizer=False,
                     early_stopping=None, last_logs={},
                     stages_done=[*self.state.stages_done, result])
        self.write_seconds += time.perf_counter() - started

    def commit_base(self, model: Any, stage: int) -> None:
        """Commits `model`'s full weights before LoRA stage `stage` starts (its epochs
        checkpoint only the adapters and the head on top of these)."""
        started = time.perf_counter()
        weights = self._write_weights(model, self.state.commit + 1)
        self._commit(("lora_base", stage), weights=weights)
        self.write_seconds += time.perf_counter() - started

    def finish(self) -> None:
        """Marks the run as finished (a later resume is refused)."""
        self._commit(("finish", 0), status="finished")

    # -- reading -----------------------------------------------------------------------------

    def _arrays(self) -> dict[str, Any]:
        import numpy as np

        if not self.state.arrays:
            return {}
        path = self.dir / self.state.arrays
        try:
            with np.load(path, allow_pickle=False) as npz:  # arrays only, never pickles
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as e:
            raise KerasftError(f"{path}: expected a kerasft checkpoint of plain arrays. "
                               f"Received: error={str(e).splitlines()[0]!r}") from None

    def restore_model(self, model: Any) -> None:
        """Loads the committed weights and random-seed states into `model`."""
        if not self.state.weights:
            return
        path = self.dir / self.state.weights
        try:
            load_model_weights(model, path)
        except (OSError, ValueError) as e:
            raise KerasftError(f"{path}: expected the weights of this model. Received: "
                               f"error={str(e).splitlines()[0]!r}") from None
        arrays = self._arrays()
        seeds = _seed_variables(model)
        saved = sorted((k for k in arrays if k.startswith("seed_")), key=lambda k: int(k[5:]))
        if len(saved) != len(seeds):
            message = expected(f"{len(seeds)} random-seed states (the model's)",
                               "checkpoint seed states", len(saved),
                               where=str(self.dir / str(self.state.arrays)))
            if not self.force:
                raise KerasftError(message)
            self.log(f"warning: {message}; the random seeds start fresh")
            return
        for v, key in zip(seeds, saved, strict=True):
            v.assign(arrays[key])

    def load_weights_file(self, model: Any, name: str) -> None:
        """Loads checkpoint file `name` into `model`: full weights (``.weights.h5``) or, into a
        model with this LoRA stage's adapters enabled, its adapters and head (``.lora.npz``,
        matched by variable path; a mismatch is a one-line error)."""
        path = self.dir / name
        if not name.endswith(LORA_SUFFIX):
            load_model_weights(model, path)
            return
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as e:
            raise KerasftError(f"{path}: expected a kerasft LoRA checkpoint of plain arrays. "
                               f"Received: error={str(e).splitlines()[0]!r}") from None
        saved = {str(p): i for i, p in enumerate(arrays.get("paths", []))}
        variables = model.trainable_variables
        current = [str(v.path) for v in variables]
        problems = _path_mismatch(current, variables, saved, arrays, "w_")
        if problems:
            raise KerasftError(f"{path}: expected the adapters and head of this LoRA stage's "
                               f"{len(variables)} trainable variables, matched by path. "
                               f"Received: {problems}")
        for key, v in zip(current, variables, strict=True):
            v.assign(arrays[f"w_{saved[key]}"])

    def restore_lora(self, model: Any) -> bool:
        """Loads the committed adapters and head of the LoRA stage in progress into `model`
        (its adapters enabled); returns whether there were any."""
        if not self.state.lora:
            return False
        self.load_weights_file(model, self.state.lora)
        return True

    def restore_optimizer(self, fit_model: Any) -> bool:
        """Loads the committed optimizer state into `fit_model`'s optimizer (call inside the
        strategy scope, after ``compile_stage``, which builds it). Returns whether it did."""
        if not self.state.has_optimizer:
            return False
        arrays = self._arrays()
        optimizer = fit_model.optimizer
        variables = list(optimizer.variables)
        saved_paths = [str(p) for p in arrays.get("opt_paths", [])]
        # The optimizer's own name leads each path and is made unique per process ("adam",
        # "adam_1", ...): a resumed process that skips finished stages numbers it differently.
        saved = {_optimizer_key(p): i for i, p in enumerate(saved_paths)}
        current = [_optimizer_key(v.path) for v in variables]
        problems = _path_mismatch(current, variables, saved, arrays, "opt_")
        if problems:
            message = (f"{self.dir / str(self.state.arrays)}: expected the optimizer state of "
                       f"this stage's {len(variables)} variables, matched by path. Received: "
                       f"{problems}")
            if not self.force:
                raise KerasftError(message)
            self.log(f"warning: {message}; the optimizer starts fresh")
            return False
        for key, v in zip(current, variables, strict=True):
            v.assign(arrays[f"opt_{saved[key]}"])
        return True

    def early_stopping_weights(self, model: Any, fit_model: Any) -> list[Any] | None:
        """The committed early-stopping best weights of the stage in progress, as
        ``fit_model.get_weights()`` returns them (None when there are none)."""
        name = (self.state.early_stopping or {}).get("weights")
        if not name or not self.state.weights:
            return None
        self.load_weights_file(model, name)
        weights = fit_model.get_weights()
        self.load_weights_file(model, self.state.lora if name.endswith(LORA_SUFFIX)
                               else self.state.weights)
        return weights


# ---------------------------------------------------------------------------------------------
# Keras callbacks (built on first use, so importing this module needs no Keras).


@functools.cache
def callbacks() -> dict[str, type]:
    """``EpochCheckpoint``, ``ResumableEarlyStopping`` and ``Pause`` callback classes."""
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        """Commits a checkpoint at the end of every epoch that ended without a NaN/Inf loss.

        Must come after the CSV logger and early stopping in the callback list: the commit records
        the CSV's length and the early-stopping counters of the epoch.
        """

        def __init__(self, checkpointer: Checkpointer, model_to_save: Any, *, stage: int,
                     stage_first_epoch: int, monitor: str, nan_state: dict,
                     early_stopping: Any = None) -> None:
            super().__init__()
            self.checkpointer = checkpointer
            self.model_to_save = model_to_save
            self.stage = stage
            self.stage_first_epoch = stage_first_epoch
            self.monitor = monitor
            self.nan_state = nan_state
            self.early_stopping = early_stopping

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if self.nan_state:
                return  # a diverged epoch is never committed
            self.checkpointer.commit_epoch(
                self.model_to_save, self.model.optimizer, stage=self.stage,
                stage_first_epoch=self.stage_first_epoch, epoch=epoch, logs=dict(logs or {}),
                monitor=self.monitor, early_stopping=self.early_stopping,
                stopped=bool(self.model.stop_training))

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        """EarlyStopping whose counters (and best weights) continue from a committed state."""

        def __init__(self, resume_state: dict[str, Any] | None = None,
                     best_weights: list[Any] | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.resume_state = resume_state
            self.resume_weights = best_weights

        def on_train_begin(self, logs: dict | None = None) -> None:
            super().on_train_begin(logs)
            state, self.resume_state = self.resume_state, None
            if state:
                self.wait = state["wait"]
                self.best = state["best"]
                self.best_epoch = state["best_epoch"]
                self.stopped_epoch = state["stopped_epoch"]
                self.best_weights = self.resume_weights

    class Pause(keras.callbacks.Callback):
        """The ``epoch`` test hook (see :func:`pause_point`)."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch == 0:
                pause_point("epoch", self.epoch)

    return dict(EpochCheckpoint=EpochCheckpoint,
                    ResumableEarlyStopping=ResumableEarlyStopping, Pause=Pause)


def pause_requested() -> bool:
    return bool(os.environ.get(PAUSE_ENV, "").startswith("epoch@"))


def _path_mismatch(current: list[str], variables: list[Any], saved: dict[str, int],
                   arrays: Any, prefix: str) -> str:
    """How saved arrays (``<prefix><i>``, index by path in `saved`) fail to match `variables`
    (paths `current`): ``missing=[...], unexpected=[...], wrong_shape=[...]``, or ""."""
    missing = [k for k in current if k not in saved]
    unexpected = sorted(set(saved) - set(current))
    wrong_shape = [k for k, v in zip(current, variables, strict=True) if k in saved
                   and tuple(arrays[f"{prefix}{saved[k]}"].shape) != tuple(v.shape)]
    return ", ".join(f"{label}={items[:_MAX_SHOWN]}" for label, items in (
        ("missing", missing), ("unexpected", unexpected), ("wrong_shape", wrong_shape)) if items)
