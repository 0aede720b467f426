"""Row-format instances for TF Serving's REST predict API: :func:`text_instances` for
``serving_default`` on ``text``, :func:`image_bytes_instances` for ``serving_bytes`` on
``image_bytes`` (base64) and :func:`image_array_instances` for ``serving_default`` on ``image``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.errors import KerasftError, expected


def text_instances(texts: Iterable[str]) -> list[str]:
    """Row-format instances for a text signature (one input ``text``): a list of bare strings.

    For a signature with a single named input TF Serving's row format accepts bare values
    (``["a", "b"]``) as well as objects (``[{"text": "a"}, ...]``); bare values are sent here.
    """
    out = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise KerasftError(
                expected("strings", f"texts[{index}]", type(text).__name__, "text_instances")
            )
        out.append(text)
    return out


def pair_instances(pairs: Iterable[Any], names: tuple[str, str] = ("text_a", "text_b"),
                   ) -> list[dict[str, str]]:
    """Row-format instances for a sentence-pair signature (inputs `names`): one object per
    pair, ``{"text_a": a, "text_b": b}``."""
    out = []
    for index, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                and all(isinstance(t, str) for t in pair)):
            raise KerasftError(expected("pairs of two strings", f"pairs[{index}]", pair,
                                        "pair_instances"))
        out.append(dict(zip(names, pair)))
    return out


def image_bytes_instances(
    images: Iterable[bytes | str | os.PathLike[str]],
) -> list[dict[str, str]]:
    """Row-format instances for ``serving_bytes`` (one input ``image_bytes``).

    Each image (encoded JPEG/PNG bytes, or a path to such a file) becomes ``{"b64": base64}``,
    TF Serving's JSON form for binary strings; as the signature has a single input the b64
    objects are sent bare, not as ``{"image_bytes": {"b64": ...}}``.
    """
    out = []
    for index, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise KerasftError(
                    expected(
                        "an image file", f"images[{index}]", str(path), "image_bytes_instances"
                    )
                )
            data = path.read_bytes()
        elif isinstance(image, (bytes, bytearray)):
            data = bytes(image)
        else:
            raise KerasftError(
                expected(
                    "encoded image bytes or a file path",
                    f"images[{index}]",
                    type(image).__name__,
                    "image_bytes_instances",
                )
            )
        out.append({"b64": base64.b64encode(data).decode("ascii")})
    return out


def image_array_instances(images: np.ndarray) -> list[Any]:
    """Row-format instances for an ``image`` signature: a ``[batch, h, w, 3]`` array as lists."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise KerasftError(
            expected(
                "an array of shape [batch, height, width, 3]",
                "images.shape",
                list(array.shape),
                "image_array_instances",
            )
        )
    return array.tolist()
