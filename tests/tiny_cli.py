"""``python -m tests.tiny_cli ARGS`` runs the ``kerasft`` command with the test backbone
``tiny_cnn`` registered, for tests that must run kerasft in a subprocess (e.g. to kill it)."""

from __future__ import annotations

from tests.tiny_backbone import register_tiny_cnn

if __name__ == "__main__":
    register_tiny_cnn()
    from kerasft.cli import main

    main(prog_name="kerasft")
