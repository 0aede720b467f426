"""Exports as their real consumers load them: the session-based SavedModel loader, as TF
Serving's C++ ``LoadSavedModel`` uses it, and TensorFlow's ``saved_model_cli run``.

Written independently of kerasft's own export check so that tests do not verify an export with
the code that wrote it: ``tf.compat.v1.saved_model.loader.load`` into a fresh ``Session`` and
``Graph``, inputs fed and outputs fetched by the tensor names in the ``signature_def`` (what
``saved_model_cli run`` and TF Serving do), never through ``tf.saved_model.load``'s restored
Python functions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

try:  # text exports use tensorflow-text ops; TF Serving's build links them
    import tensorflow_text  # noqa: F401
except ImportError:  # pragma: no cover - a kerasft dependency
    pass


class SessionModel:
    """One SavedModel loaded with the session loader; ``run(signature, **inputs)``."""

    def __init__(self, path: str) -> None:
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))
        # `__saved_model_init_op` is a signature_def entry too; TF Serving does not serve it.
        self.signatures = {k: v for k, v in meta_graph.signature_def.items()
                           if not k.startswith("__")}

    def run(self, signature: str, **inputs: Any) -> dict[str, np.ndarray]:
        sig = self.signatures[signature]
        if set(inputs) != set(sig.inputs):
            raise KeyError(f"{signature} takes {sorted(sig.inputs)}, got {sorted(inputs)}")
        feeds = {sig.inputs[k].name: v for k, v in inputs.items()}
        fetches = {k: v.name for k, v in sig.outputs.items()}
        return self.session.run(fetches, feeds)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> SessionModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def saved_model_cli_run(args: list[str], tmp_path: Path, text_ops: bool = False) -> Path:
    """Runs TensorFlow's ``saved_model_cli run ... --outdir`` in a new process."""
    outdir = tmp_path / "cli_out"
    full = ["run", "--tag_set", "serve", "--outdir", str(outdir), "--overwrite", *args]
    if text_ops:  # the tensorflow-text ops must be registered, as TF Serving's build links them
        cmd = [sys.executable, "-c",
               "import sys, tensorflow_text\n"
               "from tensorflow.python.tools import saved_model_cli\n"
               "sys.argv = ['saved_model_cli'] + sys.argv[1:]\n"
               "saved_model_cli.main()", *full]
    else:
        cmd = [str(Path(sys.executable).parent / "saved_model_cli"), *full]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return outdir
