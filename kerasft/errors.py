"""Errors a user can act on.

Every error kerasft raises for bad input is a :class:`KerasftError` whose message is one line in
the form ``<where>: expected <what>. Received: <key>=<value>``. The CLI prints that line and exits
with code 2, without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

from typing import Any


class KerasftError(ValueError):
    """Bad input (config, data, preset, export target) described in one line."""


class ConfigError(KerasftError):
    """A config key has a wrong name, type or value."""


class DataError(KerasftError):
    """A data file, folder, row or label is unusable."""


class ExportError(KerasftError):
    """An export cannot be written or does not match the model."""


def expected(what: str, key: str, value: Any, where: str | None = None) -> str:
    """Formats the standard one-line message: ``where: expected what. Received: key=value``."""
    received = repr(value) if isinstance(value, str) else value
    prefix = f"{where}: " if where else ""
    return f"{prefix}expected {what}. Received: {key}={received}"


def one_line(text: object, limit: int = 300) -> str:
    """Collapses whitespace (newlines included) and cuts long texts, for one-line messages."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
