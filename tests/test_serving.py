"""Tests of kerasft.serving (models.config, requests, REST and gRPC clients) and of the export
modules it relies on (kerasft.export.signatures, .warmup, .op_check) against hand-built SavedModels
in a TF Serving layout.

The models follow the kerasft export contract without kerasft's training code: a text model
(``serving_default`` on ``text`` strings: case folding with a tensorflow-text op, a string hash,
a dense layer, softmax) and an image model (``serving_default`` on ``image`` float32
``[batch, 8, 8, 3]`` and ``serving_bytes`` on encoded ``image_bytes``). Both answer
``probabilities``, ``class_ids`` and ``labels``. The REST and gRPC clients run against the loopback
stub in ``tests/tf_serving_stub.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_HOME", "/tmp/kh_serving")

import tensorflow as tf  # noqa: E402
import tensorflow_text as tf_text  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from kerasft.errors import ExportError, KerasftError  # noqa: E402
from kerasft.export.op_check import (  # noqa: E402
    PYTHON_OPS,
    check_serving_ops,
    list_graph_ops,
    serving_op_allowlist,
)
from kerasft.export.signatures import read_signatures  # noqa: E402
from kerasft.export.warmup import read_warmup_requests, write_warmup_requests  # noqa: E402
from kerasft.serving.grpc import predict_grpc  # noqa: E402
from kerasft.serving.models_config import (  # noqa: E402
    ServedModel,
    read_models_config,
    update_models_config,
    write_models_config,
)
from kerasft.serving.requests import image_array_instances, image_bytes_instances, text_instances  # noqa: E402
from kerasft.serving.rest import get_model_status_rest, predict_rest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tf_serving_stub import GrpcPredictStub, TFServingStub  # noqa: E402

TEXT_LABELS = ["negative", "neutral", "positive"]
IMAGE_LABELS = ["cat", "dog"]
SIZE = 8
TEXTS = ["A great movie", "terrible plot", "It was fine", "GREAT MOVIE!"]


def _outputs(logits: tf.Tensor, names: list[str]) -> dict[str, tf.Tensor]:
    probabilities = tf.nn.softmax(logits, axis=-1)
    class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
    return {
        "probabilities": probabilities,
        "class_ids": class_ids,
        "labels": tf.gather(tf.constant(names), class_ids),
    }


class TextModel(tf.Module):
    """Text classifier: case fold (tensorflow-text), hash into 16 buckets, dense, softmax."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.kernel = tf.Variable(rng.normal(size=(16, 3)).astype("float32") * 3)
        self.bias = tf.Variable(rng.normal(size=(3,)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        buckets = tf.strings.to_hash_bucket_fast(tf_text.case_fold_utf8(text), 16)
        logits = tf.matmul(tf.one_hot(buckets, 16), self.kernel) + self.bias
        return _outputs(logits, TEXT_LABELS)


class ImageModel(tf.Module):
    """Image classifier on mean channel values; ``serve_bytes`` decodes JPEG/PNG first."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.kernel = tf.Variable(rng.normal(size=(3, 2)).astype("float32") * 5)
        self.bias = tf.Variable(np.zeros(2, "float32"))

    def _classify(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.reduce_mean(image, axis=[1, 2]) / 255.0
        return _outputs(tf.matmul(features, self.kernel) + self.bias, IMAGE_LABELS)

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._classify(image)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        def decode(data: tf.Tensor) -> tf.Tensor:
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image = tf.image.resize(tf.cast(image, tf.float32), [SIZE, SIZE])
            return tf.ensure_shape(image, [SIZE, SIZE, 3])

        images = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32)
        )
        return self._classify(images)


class PyFuncModel(tf.Module):
    """A text model that calls Python (tf.py_function): TF Serving cannot run it."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        lengths = tf.py_function(
            lambda t: np.array([[len(x), 1.0, 0.0] for x in t.numpy()], np.float32),
            [text],
            tf.float32,
        )
        return _outputs(tf.reshape(lengths, [-1, 3]), TEXT_LABELS)


def _save(module: tf.Module, path: Path, **signatures: object) -> Path:
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving")
    base = root / "models"
    text_v1, text_v2 = TextModel(1), TextModel(2)
    image = ImageModel(3)
    paths = {
        "base": base,
        "text_v1": _save(text_v1, base / "text_clf" / "1", serving_default=text_v1.serve),
        "text_v2": _save(text_v2, base / "text_clf" / "2", serving_default=text_v2.serve),
        "image": _save(
            image,
            base / "image_clf" / "1",
            serving_default=image.serve,
            serving_bytes=image.serve_bytes,
        ),
    }
    pyfunc = PyFuncModel()
    paths["pyfunc"] = _save(
        pyfunc, root / "other" / "pyfunc_clf" / "1", serving_default=pyfunc.serve
    )
    (base / "text_clf" / "tmp-3").mkdir()  # an export in progress: not a version
    return paths


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def rest(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> TFServingStub:
    # Versions and labels reach the stand-in only through a models.config, as with TF Serving.
    config = write_models_config(
        tmp_path_factory.mktemp("config") / "models.config",
        [
            ServedModel(
                "text_clf",
                str(exports["base"] / "text_clf"),
                policy="specific",
                versions=(1, 2),
                labels={"stable": 1, "canary": 2},
            ),
            ServedModel("image_clf", str(exports["base"] / "image_clf")),
        ],
    )
    with TFServingStub(config, allow_version_labels_for_unavailable_models=True) as stub:
        yield stub


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def _direct(path: Path, signature: str, **inputs: object) -> dict[str, np.ndarray]:
    fn = tf.saved_model.load(str(path)).signatures[signature]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    assert "expected" in message and "Received:" in message, message
    return message


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------
# Signatures and warmup
# ------------------------------------------------------------------------------------------


def test_read_signatures_follow_the_contract(exports: dict[str, Path]) -> None:
    text = read_signatures(exports["text_v1"])
    assert set(text) == {"serving_default"}
    assert text["serving_default"]["inputs"] == {"text": {"dtype": "string", "shape": [-1]}}
    assert set(text["serving_default"]["outputs"]) == {"probabilities", "class_ids", "labels"}
    image = read_signatures(exports["image"])
    assert image["serving_default"]["inputs"]["image"]["shape"] == [-1, SIZE, SIZE, 3]
    assert image["serving_bytes"]["inputs"] == {"image_bytes": {"dtype": "string", "shape": [-1]}}


def test_warmup_requests_round_trip(exports: dict[str, Path]) -> None:
    texts = np.array(["warm up", "ça chauffe"])
    path = write_warmup_requests(
        exports["text_v1"], "serving_default", {"text": texts}, num_records=3
    )
    assert path == exports["text_v1"] / "assets.extra" / "tf_serving_warmup_requests"
    logs = read_warmup_requests(exports["text_v1"])
    assert len(logs) == 3
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "text_clf"
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == ["text"]
        decoded = tf.make_ndarray(request.inputs["text"])
        assert [t.decode("utf-8") for t in decoded] == list(texts)
    # the warmup request runs on the model as TF Serving would run it
    request = logs[0].predict_log.request
    out = _direct(
        exports["text_v1"], "serving_default", text=tf.make_ndarray(request.inputs["text"])
    )
    assert out["probabilities"].shape == (2, 3)
    assert not list(path.parent.glob(".tf_serving_warmup_requests.*"))  # no temp file left


def test_warmup_requests_for_image_bytes(exports: dict[str, Path], images: np.ndarray) -> None:
    data = np.array([_png(images[0])], dtype=object)
    write_warmup_requests(
        exports["image"], "serving_bytes", {"image_bytes": data}, model_name="image_clf"
    )
    (log,) = read_warmup_requests(
        exports["image"] / "assets.extra" / "tf_serving_warmup_requests"
    )
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_bytes"
    assert tf.make_ndarray(request.inputs["image_bytes"])[0] == data[0]


@pytest.mark.parametrize(
    ("signature", "inputs", "num_records", "match"),
    [
        ("serving_bytes", {"text": np.array(["a"])}, 1, "signature_name='serving_bytes'"),
        ("serving_default", {"texts": np.array(["a"])}, 1, "inputs=['texts']"),
        ("serving_default", {"text": np.array([["a"]])}, 1, "shape"),
        ("serving_default", {"text": np.array([1.5])}, 1, "string"),
        ("serving_default", {"text": np.array(["a"])}, 1001, "num_records=1001"),
        ("serving_default", {"text": np.array(["a"])}, 0, "num_records=0"),
    ],
)
def test_warmup_requests_reject_bad_inputs(
    exports: dict[str, Path], signature: str, inputs: dict, num_records: int, match: str
) -> None:
    with pytest.raises(ExportError) as err:
        write_warmup_requests(
            exports["text_v2"], signature, inputs, num_records=num_records
        )
    assert match in _one_line(err)
    assert not (exports["text_v2"] / "assets.extra" / "tf_serving_warmup_requests").exists()


def test_warmup_requests_need_a_saved_model(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as err:
        write_warmup_requests(tmp_path, "serving_default", {"text": np.array(["a"])})
    assert "saved_model.pb" in _one_line(err)


# ------------------------------------------------------------------------------------------
# models.config
# ------------------------------------------------------------------------------------------


def _parse_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), config)
    return config


def test_models_config_round_trips(exports: dict[str, Path], tmp_path: Path) -> None:
    base = exports["base"]
    path = write_models_config(
        tmp_path / "models.config",
        [
            ServedModel(
                name="text_clf",
                base_path=str(base / "text_clf"),
                policy="specific",
                versions=(1, 2),
                labels={"stable": 1, "canary": 2},
            ),
            {"name": "image_clf", "base_path": str(base / "image_clf")},
        ],
    )
    config = _parse_config(path)
    text, image = config.model_config_list.config
    assert (text.name, text.base_path, text.model_platform) == (
        "text_clf",
        str(base / "text_clf"),
        "tensorflow",
    )
    assert text.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(text.model_version_policy.specific.versions) == [1, 2]
    assert dict(text.version_labels) == {"stable": 1, "canary": 2}
    assert image.name == "image_clf"
    assert image.model_version_policy.latest.num_versions == 1
    assert not image.version_labels
    assert (path.stat().st_mode & 0o777) == 0o644  # readable by a server running as another user
    assert [p.name for p in tmp_path.iterdir()] == ["models.config"]  # no temp file left
    assert read_models_config(path)[0] == ServedModel(
        name="text_clf",
        base_path=str(base / "text_clf"),
        policy="specific",
        versions=(1, 2),
        labels={"stable": 1, "canary": 2},
    )


def test_update_models_config_keeps_other_models(exports: dict[str, Path], tmp_path: Path) -> None:
    base = exports["base"]
    path = tmp_path / "models.config"
    update_models_config(path, "image_clf", str(base / "image_clf"), policy="all")
    update_models_config(
        path, "text_clf", str(base / "text_clf"), num_versions=2, labels={"stable": 1}
    )
    # a hand-edited field of another model survives updates
    config = _parse_config(path)
    config.model_config_list.config[0].logging_config.sampling_config.sampling_rate = 0.5
    path.write_text(text_format.MessageToString(config))
    update_models_config(
        path,
        "text_clf",
        str(base / "text_clf"),
        policy="specific",
        versions=[1, 2],
        labels={"stable": 1, "canary": 2},
    )
    config = _parse_config(path)
    names = [c.name for c in config.model_config_list.config]
    assert names == ["image_clf", "text_clf"]
    image, text = config.model_config_list.config
    assert image.model_version_policy.WhichOneof("policy_choice") == "all"
    assert image.logging_config.sampling_config.sampling_rate == 0.5
    assert list(text.model_version_policy.specific.versions) == [1, 2]
    assert dict(text.version_labels) == {"stable": 1, "canary": 2}


def test_models_config_with_server_side_base_path(exports: dict[str, Path], tmp_path: Path) -> None:
    path = update_models_config(
        tmp_path / "models.config",
        "text_clf",
        "/models/text_clf",
        policy="specific",
        versions=[2],
        labels={"canary": 2},
        local_base_path=str(exports["base"] / "text_clf"),
    )
    (entry,) = _parse_config(path).model_config_list.config
    assert entry.base_path == "/models/text_clf"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy": "specific", "versions": [1, 2], "labels": {"canary": 3}}, "labels['canary']=3"),
        ({"labels": {"stable": 1}}, "TF Serving refuses labels"),  # latest serves only 2
        ({"policy": "specific", "versions": [1, 7]}, "versions=[7]"),
        ({"policy": "specific"}, "versions=[]"),
        ({"policy": "newest"}, "policy='newest'"),
        ({"versions": [1]}, "versions only with policy='specific'"),
        ({"labels": {"2": 2}}, "label='2'"),
        ({"base_path": "/nowhere/text_clf"}, "base_path='/nowhere/text_clf'"),
        ({"base_path": "gs://bucket/text_clf"}, "local_base_path"),
        ({"name": "a/b"}, "name='a/b'"),
    ],
)
def test_models_config_rejects_bad_entries(
    exports: dict[str, Path], tmp_path: Path, kwargs: dict, match: str
) -> None:
    args = {"name": "text_clf", "base_path": str(exports["base"] / "text_clf"), **kwargs}
    path = tmp_path / "models.config"
    with pytest.raises(KerasftError) as err:
        update_models_config(path, **args)
    assert match in _one_line(err)
    assert not path.exists()


def test_models_config_rejects_duplicates(exports: dict[str, Path], tmp_path: Path) -> None:
    model = ServedModel("text_clf", str(exports["base"] / "text_clf"))
    with pytest.raises(KerasftError) as err:
        write_models_config(tmp_path / "models.config", [model, model])
    assert "duplicates=['text_clf']" in _one_line(err)


# ------------------------------------------------------------------------------------------
# Op check
# ------------------------------------------------------------------------------------------


def test_op_check_passes_for_clean_models(exports: dict[str, Path]) -> None:
    text_ops = check_serving_ops(exports["text_v1"])
    assert {"CaseFoldUTF8", "StringToHashBucketFast", "MatMul", "Softmax"} <= text_ops
    assert not any(op.startswith("__inference") for op in text_ops)
    image_ops = check_serving_ops(exports["image"])
    assert "DecodeImage" in image_ops or "DecodePng" in image_ops
    assert text_ops == list_graph_ops(exports["text_v1"])


def test_op_allowlist() -> None:
    allowed = serving_op_allowlist()
    assert {
        "MatMul",
        "StatefulPartitionedCall",
        "RestoreV2",
        "CaseFoldUTF8",
        "FastWordpieceTokenizeWithOffsets",
        "TFText>RoundRobinTrim",
    } <= allowed
    assert not allowed & PYTHON_OPS
    assert "Foo1" not in allowed  # a test op TensorFlow registers, not a serving op


def test_op_check_rejects_python_ops(exports: dict[str, Path]) -> None:
    assert "EagerPyFunc" in list_graph_ops(exports["pyfunc"])
    with pytest.raises(ExportError) as err:
        check_serving_ops(exports["pyfunc"], extra_allowed_ops=["EagerPyFunc"])
    message = _one_line(err)
    assert "ops=['EagerPyFunc']" in message
    assert "TF Serving's standard build links core TensorFlow ops and TensorFlow Text" in message
    assert "tf.py_function" in message


def test_op_check_needs_a_saved_model(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as err:
        check_serving_ops(tmp_path)
    assert _one_line(err).startswith("check_serving_ops: expected a SavedModel folder")


def test_op_check_rejects_unknown_ops(exports: dict[str, Path], tmp_path: Path) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    copy = shutil.copytree(exports["text_v1"], tmp_path / "1")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((copy / "saved_model.pb").read_bytes())
    renamed = 0
    for function in proto.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "StringToHashBucketFast":
                node.op = "MyCustomHashOp"
                renamed += 1
    assert renamed
    (copy / "saved_model.pb").write_bytes(proto.SerializeToString())
    with pytest.raises(ExportError) as err:
        check_serving_ops(copy)
    assert "ops=['MyCustomHashOp']" in _one_line(err)
    assert check_serving_ops(copy, extra_allowed_ops={"MyCustomHashOp"})


# ------------------------------------------------------------------------------------------
# REST client against the stub
# ------------------------------------------------------------------------------------------


def _assert_rows_equal(rows: list[dict], ref: dict[str, np.ndarray]) -> None:
    assert len(rows) == len(ref["class_ids"])
    np.testing.assert_array_equal(
        np.array([r["probabilities"] for r in rows], np.float32), ref["probabilities"]
    )
    assert [r["class_ids"] for r in rows] == ref["class_ids"].tolist()
    assert [r["labels"] for r in rows] == [x.decode() for x in ref["labels"]]


def test_rest_row_format_text_equals_direct_call(
    rest: TFServingStub, exports: dict[str, Path]
) -> None:
    answer = predict_rest(rest.url, "text_clf", text_instances(TEXTS))
    assert set(answer) == {"predictions"}
    ref = _direct(exports["text_v2"], "serving_default", text=TEXTS)  # v2: highest version
    _assert_rows_equal(answer["predictions"], ref)
    assert answer["predictions"][0]["labels"] in TEXT_LABELS
    # the object form of a row is the same request for TF Serving
    as_objects = predict_rest(rest.url, "text_clf", [{"text": t} for t in TEXTS])
    assert as_objects == answer


def test_rest_columnar_format_text(rest: TFServingStub, exports: dict[str, Path]) -> None:
    answer = predict_rest(rest.url, "text_clf", inputs={"text": np.array(TEXTS)})
    assert set(answer) == {"outputs"}
    outputs = answer["outputs"]
    ref = _direct(exports["text_v2"], "serving_default", text=TEXTS)
    np.testing.assert_array_equal(
        np.array(outputs["probabilities"], np.float32), ref["probabilities"]
    )
    assert outputs["class_ids"] == ref["class_ids"].tolist()
    assert outputs["labels"] == [x.decode() for x in ref["labels"]]
    bare = predict_rest(rest.url, "text_clf", inputs=TEXTS)  # single input: bare value
    assert bare == answer


def test_rest_image_bytes_and_arrays(
    rest: TFServingStub, exports: dict[str, Path], images: np.ndarray, tmp_path: Path
) -> None:
    (tmp_path / "0.png").write_bytes(_png(images[0]))
    instances = image_bytes_instances(
        [tmp_path / "0.png"] + [_png(image) for image in images[1:]]
    )
    assert set(instances[0]) == {"b64"}
    by_bytes = predict_rest(
        rest.url, "image_clf", instances, signature_name="serving_bytes"
    )
    by_array = predict_rest(
        rest.url, "image_clf", image_array_instances(images.astype(np.float32))
    )
    ref = _direct(exports["image"], "serving_default", image=images.astype(np.float32))
    _assert_rows_equal(by_array["predictions"], ref)
    np.testing.assert_allclose(
        [r["probabilities"] for r in by_bytes["predictions"]], ref["probabilities"], atol=1e-6
    )
    assert [r["labels"] for r in by_bytes["predictions"]] == [x.decode() for x in ref["labels"]]
    ref_bytes = _direct(
        exports["image"], "serving_bytes", image_bytes=[_png(image) for image in images]
    )
    _assert_rows_equal(by_bytes["predictions"], ref_bytes)


def test_rest_versions_and_labels(rest: TFServingStub, exports: dict[str, Path]) -> None:
    latest = predict_rest(rest.url, "text_clf", TEXTS)
    v1 = predict_rest(rest.url, "text_clf", TEXTS, version=1)
    v2 = predict_rest(rest.url, "text_clf", TEXTS, version=2)
    stable = predict_rest(rest.url, "text_clf", TEXTS, label="stable")
    canary = predict_rest(rest.url, "text_clf", TEXTS, label="canary")
    assert latest == v2 == canary
    assert stable == v1
    assert v1 != v2
    _assert_rows_equal(
        v1["predictions"], _direct(exports["text_v1"], "serving_default", text=TEXTS)
    )
    status = get_model_status_rest(rest.url, "text_clf")
    assert [s["version"] for s in status["model_version_status"]] == ["2", "1"]  # newest first
    # get_model_status_impl.cc does not look at a label: every version is listed
    assert get_model_status_rest(rest.url, "text_clf", label="stable") == status
    assert {s["state"] for s in status["model_version_status"]} == {"AVAILABLE"}


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        ("nope", {}, "HTTP 404: Servable not found for request: Latest(nope)"),
        (
            "text_clf",
            {"version": 9},
            "HTTP 404: Servable not found for request: Specific(text_clf, 9)",
        ),
        ("text_clf", {"label": "beta"}, "HTTP 400: Unrecognized servable version label: beta"),
        ("text_clf", {"signature_name": "serving_bytes"}, "HTTP 400: Serving signature name"),
    ],
)
def test_rest_errors_are_one_line(
    rest: TFServingStub, model: str, kwargs: dict, match: str
) -> None:
    before = rest.requests
    with pytest.raises(KerasftError) as err:
        predict_rest(rest.url, model, ["x"], backoff=0.01, **kwargs)
    assert match in _one_line(err)
    assert rest.requests == before + 1  # 4xx: not retried


def test_rest_bad_tensor_is_a_400(rest: TFServingStub) -> None:
    with pytest.raises(KerasftError) as err:
        predict_rest(rest.url, "image_clf", [[1.0, 2.0]])
    assert "HTTP 400" in _one_line(err)


@pytest.mark.parametrize(
    ("status", "retried"),
    [(503, True), (429, True), (504, False), (500, False), (404, False), (400, False)],
)
def test_rest_retry_policy_follows_tf_serving_status_codes(
    rest: TFServingStub, status: int, retried: bool
) -> None:
    # 503 (UNAVAILABLE) and 429 (RESOURCE_EXHAUSTED: batch queue full) pass; 504 is TF
    # Serving's own deadline and would only be waited for again; other codes repeat.
    rest.fail_next(2 if retried else 1, status=status)
    before = rest.requests
    if retried:
        answer = predict_rest(rest.url, "text_clf", TEXTS[:1], retries=2, backoff=0.01)
        assert len(answer["predictions"]) == 1
        assert rest.requests == before + 3
        return
    with pytest.raises(KerasftError) as err:
        predict_rest(rest.url, "text_clf", TEXTS[:1], retries=2, backoff=0.01)
    message = _one_line(err)
    assert f"HTTP {status}" in message and "Injected failure" in message
    assert rest.requests == before + 1
    if status == 504:
        assert "deadline" in message and "not retried" in message


def test_rest_retries_run_out(rest: TFServingStub) -> None:
    rest.fail_next(3, status=429)
    before = rest.requests
    start = time.monotonic()
    with pytest.raises(KerasftError) as err:
        predict_rest(rest.url, "text_clf", TEXTS[:1], retries=2, backoff=0.05)
    assert time.monotonic() - start >= 0.05 + 0.1  # backoff * 2**attempt between attempts
    assert "HTTP 429 after 3 attempts" in _one_line(err)
    assert rest.requests == before + 3


def test_predict_help_states_the_retry_policy() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "kerasft.cli", "predict", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "503 (unavailable) and 429 (batch queue full)" in text
    assert "Never retried: 504 (the server's deadline), other 4xx and 5xx" in text


def test_predict_cli_retry_policy_as_a_terminal_shows_it(rest: TFServingStub) -> None:
    import subprocess

    def predict() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kerasft.cli", "predict", "--server", rest.url, "--model",
             "text_clf", "--text", "great", "--retries", "2"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )

    rest.fail_next(2, status=429)  # batch queue full twice, then an answer
    result = predict()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\t")[0] in TEXT_LABELS
    rest.fail_next(1, status=504)
    before = rest.requests
    result = predict()
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"Error: predict_rest POST {rest.url}/v1/models/text_clf:predict: expected a successful "
        "TF Serving answer. Received: error=\"HTTP 504 (the server's deadline, "
        "--rest_api_timeout_in_ms; not retried): Injected failure (test hook)\"")
    assert rest.requests == before + 1


def test_rest_timeout_is_one_line(rest: TFServingStub) -> None:
    rest.delay_s = 1.0
    try:
        start = time.monotonic()
        with pytest.raises(KerasftError) as err:
            predict_rest(rest.url, "text_clf", TEXTS[:1], timeout=0.2, retries=2)
        assert time.monotonic() - start < 0.9  # timeouts are not retried
    finally:
        rest.delay_s = 0.0
    assert "timeout=0.2" in _one_line(err)


def test_rest_closed_port_fails_fast() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(KerasftError) as err:
        predict_rest(url, "text_clf", ["x"], timeout=1.0, retries=0)
    assert time.monotonic() - start < 2
    message = _one_line(err)
    assert "reachable TF Serving REST server" in message and "refused" in message.lower()
    assert "after 1 attempt" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"instances": ["x"], "inputs": {"text": ["x"]}}, "exactly one of"),
        ({}, "exactly one of"),
        ({"instances": []}, "non-empty list"),
        ({"instances": ["x"], "version": 1, "label": "stable"}, "either version or label"),
        ({"instances": ["x"], "version": -1}, "version=-1"),
        ({"instances": [object()]}, "JSON-serializable"),
    ],
)
def test_rest_argument_checks(kwargs: dict, match: str) -> None:
    with pytest.raises(KerasftError) as err:
        predict_rest("127.0.0.1:1", "text_clf", **kwargs)
    assert match in _one_line(err)


def test_request_builders() -> None:
    assert text_instances(("a", "b")) == ["a", "b"]
    assert image_bytes_instances([b"\x89PNG"]) == [{"b64": "iVBORw=="}]
    with pytest.raises(KerasftError):
        text_instances([b"bytes"])
    with pytest.raises(KerasftError):
        image_array_instances(np.zeros((2, 8, 8)))


# ------------------------------------------------------------------------------------------
# gRPC client
# ------------------------------------------------------------------------------------------


def test_grpc_predict(rest: TFServingStub, exports: dict[str, Path], images: np.ndarray) -> None:
    pytest.importorskip("grpc")
    with GrpcPredictStub(core=rest.core) as stub:
        out = predict_grpc(stub.address, "text_clf", {"text": TEXTS}, label="stable")
        ref = _direct(exports["text_v1"], "serving_default", text=TEXTS)
        np.testing.assert_array_equal(out["probabilities"], ref["probabilities"])
        np.testing.assert_array_equal(out["labels"], ref["labels"])
        out = predict_grpc(
            stub.address,
            "image_clf",
            {"image_bytes": [_png(images[0])]},
            signature_name="serving_bytes",
        )
        assert out["class_ids"].shape == (1,)
        with pytest.raises(KerasftError) as err:
            predict_grpc(stub.address, "nope", {"text": ["x"]})
        assert "NOT_FOUND" in _one_line(err)


def test_grpc_closed_port_fails_fast() -> None:
    pytest.importorskip("grpc")
    start = time.monotonic()
    with pytest.raises(KerasftError) as err:
        predict_grpc(
            f"127.0.0.1:{_closed_port()}", "text_clf", {"text": ["x"]}, timeout=1.0
        )
    assert time.monotonic() - start < 3
    assert "UNAVAILABLE" in _one_line(err) or "DEADLINE_EXCEEDED" in _one_line(err)
