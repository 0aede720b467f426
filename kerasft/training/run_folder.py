"""Run ids and the run folder of one ``fit``, on one machine or on several.

Who writes where
----------------
The chief (task ``chief``, else worker 0) writes the run folder and ``saved_models/``. Every other
worker runs exactly the same calls (``fit``, ``evaluate``, ``predict``, saves and the export: they
may run collective ops, which must pair up across workers) but writes into a private local
temporary folder (``tempfile``, honours ``TMPDIR``), removed at the end of ``fit`` / ``export``
(the export's: kerasft/export/target.py).

The run folder's name must be the same on all workers although their clocks and start times
differ. It is ``<output_dir>/<name>-<run id>`` when a run id is given (``kerasft train --run-id``
or ``KERASFT_RUN_ID``; e.g. the Kubernetes Job name), otherwise ``<output_dir>/<name>-<chief's
start time>[-<n>]``: the chief picks the name and all workers receive it with one collective
``gather`` over the strategy (:func:`kerasft.training.strategy.agree`, which also checks that
every worker got the same run id).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
import weakref
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kerasft.errors import ConfigError, KerasftError, expected
from kerasft.training.strategy import Placement, agree

RUN_ID_ENV = "KERASFT_RUN_ID"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TIME_FORMAT = "%Y%m%d-%H%M%S"


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
        chief_row, rows = agree(strategy, [date, time, suffix, run_hash, float(bool(problem))],
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
    chief_row, rows = agree(strategy, [float(bool(problem)), name_hash, state_hash,
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
