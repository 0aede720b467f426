"""Files that never appear half-written, and ``pkg://`` resources: the one place for both.

Every file kerasft writes for a person or a program to read (config.yaml, metrics, checkpoints,
models.config, warmup records, model cards, TFLite files) goes through :func:`atomic_path` or
:func:`atomic_write`: written under a temporary name in the same folder (``.tmp-<pid>-<name>``,
so the name keeps its suffix, which Keras's ``save_weights`` checks) and renamed over the target
with ``os.replace``. A reader (TF Serving polling ``models.config``, a resumed run reading
``state.json``) sees the old file or the new one, never a part; a failure removes the temporary
file and leaves the target as it was. Files that a crash recovery or a server relies on
(checkpoints, ``state.json``, best weights, the run's config.yaml, labels.txt and data.json
that resuming checks, ``models.config``, warmup records, TFLite models) are also ``durable``: the
file and its folder are fsynced around the rename, so a power loss cannot leave an empty file
under the final name. Reports (metrics, plots, the model card) skip the
fsyncs (``durable=False``): a rename is enough for them, and each fsync costs milliseconds.

May import: the standard library and :mod:`kerasft.errors` only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from kerasft.errors import ConfigError, expected

TMP_PREFIX = ".tmp-"
# Files are read by other users (TF Serving often runs as its own user); mkstemp's 0600 is not.
DEFAULT_MODE = 0o644


def fsync_path(path: str | os.PathLike) -> None:
    """fsyncs a file or a folder (folders: best effort; not every platform allows it)."""
    path = Path(path)
    if path.is_dir():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
        return
    with open(path, "r+b") as f:
        os.fsync(f.fileno())


def temporary_name(path: str | os.PathLike) -> Path:
    """The temporary sibling :func:`atomic_path` writes `path` under."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None, durable: bool = True,
                before_rename: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yields a temporary path to write `path`'s whole content to; publishes it on success.

    For writers that want a file name (``tf.io.TFRecordWriter``, ``save_weights``, h5py). The
    published file gets `mode` (default: the replaced file's mode, else 0644). `before_rename`
    runs after the content is durable and before the rename (tests use it to stop a process
    there). On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = (path.stat().st_mode & 0o777) if path.exists() else DEFAULT_MODE
    tmp = temporary_name(path)
    try:
        yield tmp
        os.chmod(tmp, mode)
        if durable:
            fsync_path(tmp)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes, *, mode: int | None = None,
                 durable: bool = True, before_rename: Callable[[], None] | None = None) -> Path:
    """Writes `data` (text as UTF-8) to `path` atomically; returns `path`."""
    path = Path(path)
    with atomic_path(path, mode=mode, durable=durable, before_rename=before_rename) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def publish_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Renames the complete folder `tmp_dir` to `final_dir`, which must not exist (a version
    folder TF Serving may load the moment it appears); ``os.rename`` refuses to replace it."""
    os.rename(tmp_dir, final_dir)
    fsync_path(Path(final_dir).parent)


def resolve_pkg_path(uri: str, key: str = "path") -> str:
    """Resolves ``pkg://<package>/<path inside it>`` without importing the package.

    Only files inside the installed package are reachable: ``..`` and absolute paths are refused.
    Other strings are returned unchanged (with ``~`` expanded).
    """
    if not uri.startswith("pkg://"):
        return os.path.expanduser(uri)
    rest = uri[len("pkg://"):]
    package, _, inner = rest.partition("/")
    if not package:
        raise ConfigError(expected("pkg://<package>/<path>", key, uri))
    parts = Path(inner).parts
    if Path(inner).is_absolute() or ".." in parts:
        raise ConfigError(expected("a path inside the package (no '..')", key, uri))
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            expected(f"an installed Python package named '{package}' "
                     f"(pip install {package.replace('_', '-')})", key, uri)
        )
    base = Path(list(spec.submodule_search_locations)[0]).resolve()
    target = (base / inner).resolve()
    if base != target and base not in target.parents:
        raise ConfigError(expected("a path inside the package", key, uri))
    return str(target)
