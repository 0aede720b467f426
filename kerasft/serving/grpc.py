"""TF Serving's gRPC API: :func:`predict_grpc` calls ``PredictionService/Predict``.

Needs ``grpcio`` (not a kerasft dependency) and ``tensorflow-serving-api``'s stubs, both imported
inside the call, as TensorFlow is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kerasft.errors import KerasftError, expected, one_line
from kerasft.serving.models_config import NAME_RE


def predict_grpc(
    server_address: str,
    model: str,
    inputs: Mapping[str, np.ndarray | Sequence[Any]],
    *,
    signature_name: str = "serving_default",
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
) -> dict[str, np.ndarray]:
    """Calls ``PredictionService/Predict`` on ``server_address`` (``host:8500``, insecure channel).

    ``inputs`` maps signature input names to batch arrays (``{"text": ["a", "b"]}``; image bytes
    as Python ``bytes``). Returns the outputs as NumPy arrays (``labels`` as bytes). Needs
    ``grpcio`` (not a kerasft dependency). Errors (unreachable server, deadline, unknown model or
    signature) are one-line :class:`KerasftError`.
    """
    where = "predict_grpc"
    try:
        import grpc
    except ImportError:
        raise KerasftError(
            expected(
                "grpcio installed for gRPC (pip install grpcio), or use predict_rest",
                "module",
                "grpc",
                where,
            )
        ) from None
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    if not isinstance(server_address, str) or ":" not in server_address or "/" in server_address:
        raise KerasftError(
            expected("host:port (no scheme)", "server_address", server_address, where)
        )
    if not isinstance(model, str) or not NAME_RE.match(model):
        raise KerasftError(expected("a model name", "model", model, where))
    if version is not None and label is not None:
        raise KerasftError(expected("either version or label, not both", "label", label, where))
    if not isinstance(inputs, Mapping) or not inputs:
        raise KerasftError(
            expected(
                "a non-empty dict of input name -> batch array",
                "inputs",
                type(inputs).__name__,
                where,
            )
        )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    elif label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        try:
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        except (TypeError, ValueError) as err:
            raise KerasftError(
                expected("an array-like value", f"inputs[{key!r}]", one_line(err), where)
            ) from None
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    where = f"{where} {server_address} model={model}"
    with grpc.insecure_channel(server_address, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            name = code.name if code is not None else "UNKNOWN"
            details = err.details() if hasattr(err, "details") else str(err)
            what = {
                "UNAVAILABLE": "a reachable TF Serving gRPC server",
                "DEADLINE_EXCEEDED": f"an answer within timeout={timeout} s",
            }.get(name, "a successful TF Serving answer")
            raise KerasftError(
                expected(what, "error", f"{name}: {one_line(details)}", where)
            ) from None
    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
