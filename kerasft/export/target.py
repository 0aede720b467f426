"""Where each process writes an export: the chief to ``<dir>/<name>/<version>``, other workers
to a temporary folder.

Under multi_worker every worker runs the same export (saving may run collective ops, which must
pair up across workers), as for the run folder (kerasft/training/run_folder.py); only the chief's
copy is kept and checked in a fresh process. The workers agree on the version number and on the
outcome through :func:`kerasft.training.strategy.agree`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerasft.errors import KerasftError, expected
from kerasft.export.saved_model import next_version
from kerasft.training.strategy import Placement, agree


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
    mine = 0.0
    if where.is_chief:
        mine = float(next_version(base / name) if version == "auto" else int(version))
    chief_row, _ = agree(strategy, [mine], where.is_chief)
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
        chief_ok, rows = agree(strategy, [float(ok)], where.is_chief)
    if ok and not all(r[0] for r in rows):
        raise KerasftError(expected("every worker's export to succeed (see the other workers' "
                                    "logs)", "chief export ok", bool(chief_ok[0])))
