"""Keeps TensorFlow's C++ start-up lines off the ``kerasft`` command's stderr.

TensorFlow 2.21 writes ``oneDNN custom operations are on``, ``Could not find cuda drivers`` (once
per shared library it loads) and, when it enumerates devices, ``failed call to cuInit`` straight
to file descriptor 2, before absl logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot
silence them and Python's ``sys.stderr`` never sees them. The CLI therefore points fd 2 at a
temporary file while TensorFlow is imported (and lists its devices), then replays what was
written there: everything with ``--debug``; otherwise only what is not a TensorFlow log line
(Python warnings, anything else a user must see). Errors raised by the import itself propagate
after fd 2 is restored, so their traceback reaches the terminal. Without ``--debug`` it also sets
``TF_CPP_MIN_LOG_LEVEL=3`` for the rest of the run (absl honours it once initialised).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

# absl's prefix: severity, MMDD, time, thread id, file:line]; and the line absl prints first.
_TF_LOG = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]\s]+:\d+\]"
                     rb"|WARNING: All log messages before absl::InitializeLog\(\))")
# A TF log message can run over several lines (cpu_feature_guard's does); a Python warning or
# traceback after it is not part of it.
_NOT_CONTINUATION = re.compile(rb"^(?:\S.*:\d+: \w*(?:Warning|Error): |Traceback |\w+Error: )")


def filter_lines(data: bytes, debug: bool) -> bytes:
    """The part of captured stderr a user sees: all of it with ``debug``, else the non-TF lines."""
    if debug:
        return data
    kept: list[bytes] = []
    in_tf_message = False
    for line in data.splitlines(keepends=True):
        if _TF_LOG.match(line):
            in_tf_message = True
        elif in_tf_message and not _NOT_CONTINUATION.match(line):
            continue
        else:
            in_tf_message = False
            kept.append(line)
    return b"".join(kept)


@contextlib.contextmanager
def captured_stderr_fd(debug: Callable[[], bool]) -> Iterator[None]:
    """Points fd 2 at a temporary file for the block, then replays it (see filter_lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            shown = filter_lines(tmp.read(), debug())
            if shown:
                os.write(2, shown)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner: Any, debug: Callable[[], bool]) -> None:
        self._inner = inner
        self._debug = debug

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if not self._debug():
            # After start-up, absl honours the level: E-level lines such as "oneDNN supports
            # DT_INT64 only on platforms with AVX-512" are noise to a CLI user, and real errors
            # reach them as Python exceptions. FATAL lines (an abort) still print.
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        try:
            with captured_stderr_fd(self._debug):
                self._inner.exec_module(module)
                # Device enumeration prints "failed call to cuInit" on machines without a GPU
                # driver (an E-level line TF_CPP_MIN_LOG_LEVEL=2 lets through): do it here.
                with contextlib.suppress(Exception):
                    module.config.list_physical_devices()
        finally:
            module.__loader__ = self._inner
            if module.__spec__ is not None:
                module.__spec__.loader = self._inner


class _QuietFinder(importlib.abc.MetaPathFinder):
    def __init__(self, debug: Callable[[], bool]) -> None:
        self._debug = debug

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # once: later imports find the loaded module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader, self._debug)
        return spec


def quiet_tensorflow_import(debug: Callable[[], bool]) -> None:
    """Routes the first ``import tensorflow`` of this process through :func:`captured_stderr_fd`.

    Does nothing once TensorFlow is imported (e.g. under a test runner that imported it first).
    """
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder(debug))
