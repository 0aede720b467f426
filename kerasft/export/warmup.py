"""Warmup records: ``<version>/assets.extra/tf_serving_warmup_requests``, a TFRecord of
``PredictionLog`` protos that TF Serving replays before it serves a version (at most
:data:`MAX_WARMUP_RECORDS`; a record that fails fails the version's load).

:func:`write_warmup_requests` / :func:`read_warmup_requests` work for any SavedModel that follows
the export contract: each request is checked against the signatures read from
``saved_model.pb``. :func:`warmup_requests` and :func:`write_warmup` are what an export writes:
per signature a batch of one and a batch of a few sample inputs, all in one file. The export
check sends the same arrays (:func:`as_bytes`, :func:`pngs`) and compares with the in-memory model
on what those PNGs decode to (:func:`png_pixels`).
TensorFlow and the TF Serving protos are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kerasft.config import PAIR_INPUTS
from kerasft.errors import ExportError, expected, one_line
from kerasft.export.signatures import read_signatures
from kerasft.io import DEFAULT_MODE, atomic_path

WARMUP_DIRNAME = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
#: TF Serving reads at most this many warmup records per model version.
MAX_WARMUP_RECORDS = 1000


def _shape_matches(want: list[int] | None, shape: list[int]) -> bool:
    if want is None:
        return True
    if len(want) != len(shape):
        return False
    return all(w in (-1, s) for w, s in zip(want, shape, strict=True))


def write_warmup_requests(
    export_dir: str | os.PathLike[str],
    signature_name: str,
    inputs: Mapping[str, np.ndarray | Sequence[Any]],
    model_name: str | None = None,
    num_records: int = 1,
) -> Path:
    """Writes ``<export_dir>/assets.extra/tf_serving_warmup_requests`` and returns its path.

    ``export_dir`` is one version folder (``<base>/<name>/<version>``). Each of the
    ``num_records`` records (1 to 1000) is a ``PredictionLog`` holding the same ``PredictRequest``
    for ``signature_name`` with ``inputs`` (signature input name -> batch array, e.g.
    ``{"text": np.array(["a review"])}``). The inputs are checked against the signature read from
    ``saved_model.pb``: same names, convertible dtypes, matching ranks and fixed sizes, one batch
    size. ``model_name`` defaults to the name of the parent folder. The file is written to a
    temporary name and renamed, so TF Serving never reads half of it.
    """
    where = "write_warmup_requests"
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    if (
        isinstance(num_records, bool)
        or not isinstance(num_records, int)
        or not 1 <= num_records <= MAX_WARMUP_RECORDS
    ):
        raise ExportError(
            expected(
                f"an integer from 1 to {MAX_WARMUP_RECORDS} (TF Serving's limit)",
                "num_records",
                num_records,
                where,
            )
        )
    signatures = read_signatures(export_dir)
    if signature_name not in signatures:
        raise ExportError(
            expected(
                f"one of the SavedModel's signatures {sorted(signatures)}",
                "signature_name",
                signature_name,
                where,
            )
        )
    spec = signatures[signature_name]["inputs"]
    if not isinstance(inputs, Mapping) or set(inputs) != set(spec):
        got = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
        raise ExportError(
            expected(
                f"inputs keyed by the signature's input names {sorted(spec)}",
                "inputs",
                got,
                where,
            )
        )
    if model_name is None:
        model_name = Path(export_dir).resolve().parent.name
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
    )
    batch_sizes = set()
    for key, value in inputs.items():
        dtype = tf.dtypes.as_dtype(spec[key]["dtype"])
        try:
            proto = tf.make_tensor_proto(value, dtype=dtype)
        except (TypeError, ValueError) as err:
            raise ExportError(
                expected(
                    f"values convertible to {dtype.name}", f"inputs[{key!r}]", one_line(err), where
                )
            ) from err
        shape = [d.size for d in proto.tensor_shape.dim]
        want = spec[key]["shape"]
        if not shape or not _shape_matches(want, shape):
            raise ExportError(
                expected(
                    f"a batch array of shape {want} (-1: any size)",
                    f"inputs[{key!r}].shape",
                    shape,
                    where,
                )
            )
        batch_sizes.add(shape[0])
        request.inputs[key].CopyFrom(proto)
    if len(batch_sizes) != 1 or 0 in batch_sizes:
        raise ExportError(
            expected(
                "one non-zero batch size for all inputs", "batch_sizes", sorted(batch_sizes), where
            )
        )
    record = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    ).SerializeToString()

    target_dir = Path(export_dir) / WARMUP_DIRNAME
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / WARMUP_FILENAME
    with atomic_path(target, mode=DEFAULT_MODE) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for _ in range(num_records):
            writer.write(record)
    return target


def read_warmup_requests(path: str | os.PathLike[str]) -> list[Any]:
    """Reads a warmup file (or the one under a version folder) into ``PredictionLog`` protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    file = Path(path)
    if file.is_dir():
        file = file / WARMUP_DIRNAME / WARMUP_FILENAME
    if not file.is_file():
        raise ExportError(
            expected("a TF Serving warmup file", "path", str(file), "read_warmup_requests")
        )
    logs = []
    try:
        for raw in tf.data.TFRecordDataset(str(file)):
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(raw.numpy())
            logs.append(log)
    except tf.errors.DataLossError as err:
        raise ExportError(
            expected(
                "a valid TFRecord file",
                "error",
                one_line(err.message),
                f"read_warmup_requests {file}",
            )
        ) from err
    return logs


def as_bytes(texts: Any) -> np.ndarray:
    """Texts as a 1-D object array of UTF-8 bytes: a ``tf.string`` batch."""
    return np.array([t if isinstance(t, bytes) else str(t).encode("utf-8") for t in texts],
                    dtype=object)


def png_pixels(images: np.ndarray) -> np.ndarray:
    """The pixels a PNG of `images` decodes to (rounded, clipped to 0..255)."""
    return np.clip(np.round(np.asarray(images, np.float32)), 0, 255)


def pngs(images: np.ndarray) -> np.ndarray:
    """`images` PNG-encoded (at :func:`png_pixels`), as a 1-D object array of bytes."""
    import tensorflow as tf

    return np.array([tf.io.encode_png(im.astype(np.uint8)).numpy()
                     for im in png_pixels(images)], dtype=object)


def warmup_requests(backbone: Any, sample_inputs: np.ndarray | None,
                    max_batch: int = 4) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Representative requests ``(signature, inputs)``: per signature, a batch of one and a batch
    of up to `max_batch` sample inputs (a neutral text or a grey image when there are none)."""
    from kerasft.data.pipeline import resize_images

    have = sample_inputs is not None and len(sample_inputs) > 0
    if backbone.task == "text" and getattr(backbone, "segments", 1) == 2:
        pairs = np.asarray(sample_inputs[:max_batch] if have else
                           [["a short example text", "another short text"]], dtype=object)
        batches = [pairs[:1]] + ([pairs] if len(pairs) > 1 else [])
        return [("serving_default", {name: as_bytes(b[:, i]) for i, name in
                                     enumerate(PAIR_INPUTS)}) for b in batches]
    if backbone.task == "text":
        batch = as_bytes(sample_inputs[:max_batch] if have else ["a short example text"])
        batches = [batch[:1]] + ([batch] if len(batch) > 1 else [])
        return [("serving_default", {"text": b}) for b in batches]
    if have:  # at the model's input size: a few photos at full size would weigh megabytes
        images = resize_images(np.asarray(sample_inputs[:max_batch], dtype=np.float32),
                               backbone.image_size).numpy()
    else:
        images = np.full((1, *backbone.image_size, 3), 127.0, dtype=np.float32)
    encoded = pngs(images)
    sizes = [1] + ([len(images)] if len(images) > 1 else [])
    return ([("serving_default", {"image": images[:n]}) for n in sizes]
            + [("serving_bytes", {"image_bytes": encoded[:n]}) for n in sizes])


def write_warmup(export_dir: str | os.PathLike, model_name: str, backbone: Any,
                 sample_inputs: np.ndarray | None) -> int:
    """Writes ``assets.extra/tf_serving_warmup_requests`` with :func:`warmup_requests` (each
    built and checked against the signatures by :func:`write_warmup_requests`); returns the
    number of records."""
    import tensorflow as tf

    records = []
    target = None
    for signature, inputs in warmup_requests(backbone, sample_inputs):
        target = write_warmup_requests(export_dir, signature, inputs, model_name=model_name)
        records += [r.SerializeToString() for r in read_warmup_requests(target)]
    assert target is not None
    with atomic_path(target) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for record in records:  # one file holding every request
            writer.write(record)
    return len(records)
