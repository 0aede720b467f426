"""The session-based SavedModel loader, as TF Serving's C++ ``LoadSavedModel`` uses it.

Written independently of kerasft's own export check so that tests do not verify an export with
the code that wrote it: ``tf.compat.v1.saved_model.loader.load`` into a fresh ``Session`` and
``Graph``, inputs fed and outputs fetched by the tensor names in the ``signature_def`` (what
``saved_model_cli run`` and TF Serving do), never through ``tf.saved_model.load``'s restored
Python functions.
"""

from __future__ import annotations

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
