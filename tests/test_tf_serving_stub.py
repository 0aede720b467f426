"""The TF Serving stand-in (``tests/tf_serving_stub.py``) against TF Serving's own test cases and
server rules.

The model is saved here, after TF Serving's ``saved_model_half_plus_two.py``: ``serving_default``
computes ``y = 0.5 * x + 2`` on float ``x`` of any shape (version 123; version 124 adds 3, so the
version that answers is visible). ``echo`` (float ``f``, string ``s`` -> ``f``, ``s``,
``s_bytes``), ``length`` (string ``s`` -> int32 ``n`` and ``s_bytes``) and ``with_scalar`` (a
batch output and a scalar one) mirror the tensors that the ported ``json_tensor_test.cc`` cases
use. Each ported test names the TF Serving test it comes from.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from kerasft.serving.models_config import ServedModel, write_models_config
from tests.session_loader import SessionModel
from tests.tf_serving_stub import StubStartError, TFServingStub, format_decimal

NAME = "saved_model_half_plus_two_2_versions"  # http_rest_api_handler_test.cc kTestModelName
LABEL = "Version_Label"  # kTestModelVersionLabel


class HalfPlusTwo(tf.Module):
    def __init__(self, b: float) -> None:
        super().__init__()
        self.a = tf.Variable(0.5)
        self.b = tf.Variable(b)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.a * x + self.b}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="f"),
                                  tf.TensorSpec(None, tf.string, name="s")])
    def echo(self, f: tf.Tensor, s: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"f": tf.identity(f), "s": tf.identity(s), "s_bytes": tf.identity(s)}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="s")])
    def length(self, s: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"n": tf.strings.length(s), "s_bytes": tf.identity(s)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def with_scalar(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.a * x + self.b, "count": tf.size(x)}


def _save(b: float, path: Path) -> Path:
    module = HalfPlusTwo(b)
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.predict, "echo": module.echo, "length": module.length,
        "with_scalar": module.with_scalar})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tfs")
    base = root / NAME
    v123 = _save(2.0, base / "00000123")
    _save(3.0, base / "00000124")
    single = root / "half_plus_two"  # tensorflow_model_server_test.py: one version, 123
    shutil.copytree(v123, single / "00000123")
    return {"root": root, "base": base, "v123": v123, "single": single}


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.config"
    path.write_text(text)
    return path


def _entry(name: str, base: Path, policy: str = "", labels: dict[str, int] | None = None) -> str:
    label_text = "".join(f" version_labels {{ key: '{k}' value: {v} }}"
                         for k, v in (labels or {}).items())
    return (f"config {{ name: '{name}' base_path: '{base}' model_platform: 'tensorflow' "
            f"{policy}{label_text} }}")


@pytest.fixture(scope="module")
def handler_server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """http_rest_api_handler_test.cc ``CreateServerCore``: version 123 by a specific policy,
    then a config reload that adds the label (labels only name versions already loaded)."""
    tmp = tmp_path_factory.mktemp("handler")
    policy = "model_version_policy { specific { versions: 123 } }"
    first = _config(tmp, f"model_config_list {{ {_entry(NAME, models['base'], policy)} }}")
    with TFServingStub(first) as stub:
        second = tmp / "models2.config"
        second.write_text(
            f"model_config_list {{ {_entry(NAME, models['base'], policy, {LABEL: 123})} }}")
        stub.reload_config(second)
        yield stub


def _call(stub: TFServingStub, method: str, path: str,
          body: str | bytes | None = None) -> tuple[int, str]:
    data = body.encode() if isinstance(body, str) else body
    if method == "POST" and data is None:
        data = b""
    request = urllib.request.Request(stub.url + path, data=data, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _json(stub: TFServingStub, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    status, answer = _call(stub, method, path, text)
    return status, json.loads(answer) if answer else None


def _error(stub: TFServingStub, method: str, path: str, body: Any = None) -> tuple[int, str]:
    status, answer = _json(stub, method, path, body)
    assert status != 200, answer
    assert set(answer) == {"error"}, answer  # json_tensor.cc MakeJsonFromStatus
    return status, answer["error"]


# ------------------------------------------------------------------------------------------
# tensorflow_model_server_test.py
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_server(models: dict[str, Path]):
    """``RunServer('default', model_path)``: --model_name=default --model_base_path=..."""
    with TFServingStub(models["single"]) as stub:
        yield stub


def test_predict_rest(default_server: TFServingStub) -> None:  # testPredictREST
    status, answer = _json(default_server, "POST", "/v1/models/default:predict",
                           {"instances": [2.0, 3.0, 4.0]})
    assert (status, answer) == (200, {"predictions": [3.0, 3.5, 4.0]})


def test_predict_columnar_rest(default_server: TFServingStub) -> None:  # testPredictColumnarREST
    status, answer = _json(default_server, "POST", "/v1/models/default:predict",
                           {"inputs": [2.0, 3.0, 4.0]})
    assert (status, answer) == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_get_status_rest(default_server: TFServingStub) -> None:  # testGetStatusREST
    status, answer = _json(default_server, "GET", "/v1/models/default")
    assert status == 200
    assert answer == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                            "error_message": ""}}]}


def test_good_model_config(models: dict[str, Path], tmp_path: Path) -> None:
    # testGoodModelConfig: two models from one models.config, each answering its own values.
    config = _config(tmp_path, "model_config_list { "
                     + _entry("half_plus_two", models["single"])
                     + _entry("half_plus_three", models["base"]) + " }")
    with TFServingStub(config) as stub:
        assert _json(stub, "POST", "/v1/models/half_plus_two:predict",
                     {"instances": [2.0]})[1] == {"predictions": [3.0]}
        assert _json(stub, "POST", "/v1/models/half_plus_three:predict",
                     {"instances": [2.0]})[1] == {"predictions": [4.0]}  # latest: 124


def test_bad_model_config(tmp_path: Path) -> None:  # testBadModelConfig
    config = _config(tmp_path, "model_config_list { config { name: 'x' bogus: 1 } }")
    with pytest.raises(StubStartError, match="Error parsing text-format "
                                             "tensorflow.serving.ModelServerConfig"):
        TFServingStub(config)


def test_model_config_reload(models: dict[str, Path], tmp_path: Path) -> None:
    # testModelConfigReload: a polled config change adds a model without a restart.
    config = _config(tmp_path, f"model_config_list {{ {_entry('one', models['single'])} }}")
    with TFServingStub(config) as stub:
        assert _error(stub, "POST", "/v1/models/two:predict", {"instances": [1.0]}) == (
            404, "Servable not found for request: Latest(two)")
        (tmp_path / "b.config").write_text("model_config_list { " + _entry("one", models["single"])
                                           + _entry("two", models["base"]) + " }")
        stub.reload_config(tmp_path / "b.config")
        assert _json(stub, "POST", "/v1/models/two:predict",
                     {"instances": [1.0]})[1] == {"predictions": [3.5]}


# ------------------------------------------------------------------------------------------
# http_rest_api_handler_test.cc
# ------------------------------------------------------------------------------------------


def test_path_regex(handler_server: TFServingStub) -> None:  # kPathRegex
    assert _error(handler_server, "GET", "/v1/models")[0] == 400  # handled (and refused)
    for path in ("/statuspage", "/index"):
        assert _call(handler_server, "GET", path)[0] == 404  # no handler at all


def test_cors_preflight(handler_server: TFServingStub) -> None:
    # http_server.cc RestApiRequestDispatcher::ProcessRequest: OPTIONS needs an http(s) Origin.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"{handler_server.url}/v1/models/{NAME}", method="OPTIONS",
                                     headers={"Origin": "https://example.org"})
    with opener.open(request, timeout=30) as response:
        assert response.status == 200
    assert _call(handler_server, "OPTIONS", f"/v1/models/{NAME}")[0] == 400


@pytest.mark.parametrize(("method", "path", "message"), [  # UnsupportedApiCalls
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "Malformed request"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
    ("POST", "/v1/models/foo/metadata", "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
])
def test_unsupported_api_calls(handler_server: TFServingStub, method: str, path: str,
                               message: str) -> None:
    status, error = _error(handler_server, method, path)
    assert status == 400  # INVALID_ARGUMENT (http_server.cc ToHTTPStatusCode)
    assert message in error
    if message == "Malformed request":
        assert error == f"Malformed request: {method} {path}"


def test_predict_model_name_version_errors(handler_server: TFServingStub) -> None:
    # PredictModelNameVersionErrors: NOT_FOUND (404) for an unknown model or version.
    body = {"instances": [1]}
    assert _error(handler_server, "POST", "/v1/models/foo:predict", body) == (
        404, "Servable not found for request: Latest(foo)")
    assert _error(handler_server, "POST", "/v1/models/foo/versions/50:predict", body) == (
        404, "Servable not found for request: Specific(foo, 50)")
    assert _error(handler_server, "POST", f"/v1/models/{NAME}99:predict", body)[0] == 404
    # version 124 exists on disk, but the specific policy does not load it
    assert _error(handler_server, "POST", f"/v1/models/{NAME}/versions/124:predict", body) == (
        404, f"Servable not found for request: Specific({NAME}, 124)")


def test_predict_request_errors(handler_server: TFServingStub) -> None:  # PredictRequestErrors
    path = f"/v1/models/{NAME}:predict"
    assert _error(handler_server, "POST", path, "") == (
        400, "JSON Parse error: The document is empty")
    status, error = _error(handler_server, "POST", path, "instances = [1, 2]")
    assert status == 400 and error.startswith("JSON Parse error: Invalid value")
    status, error = _error(handler_server, "POST", path, {"instances": ["x", "y"]})
    assert status == 400 and "not of expected type: float" in error
    status, error = _error(handler_server, "POST", f"/v1/models/{NAME}/labels/nope:predict",
                           {"instances": ["x", "y"]})
    assert (status, error) == (400, "Unrecognized servable version label: nope")
    status, error = _error(handler_server, "POST", path, {"signature_name": 100})
    assert status == 400 and "'signature_name' key must be a string value." in error


def test_predict(handler_server: TFServingStub) -> None:  # Predict
    def predict(path: str, body: Any) -> Any:
        status, answer = _json(handler_server, "POST", path, body)
        assert status == 200, answer
        return answer

    base = f"/v1/models/{NAME}"
    assert predict(f"{base}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}) == {
        "predictions": [[2.5, 3.0], [3.5, 4.0]]}
    assert predict(f"{base}/versions/123:predict", {"instances": [1.0, 2.0]}) == {
        "predictions": [2.5, 3.0]}
    assert predict(f"{base}/labels/{LABEL}:predict", {"instances": [1.0, 2.0]}) == {
        "predictions": [2.5, 3.0]}
    assert predict(f"{base}/versions/123:predict",
                   {"signature_name": "serving_default", "instances": [3.0, 4.0]}) == {
        "predictions": [3.5, 4.0]}
    assert predict(f"{base}/versions/123:predict",
                   {"signature_name": "serving_default", "inputs": [3.0, 4.0]}) == {
        "outputs": [3.5, 4.0]}


def test_get_status(handler_server: TFServingStub) -> None:  # GetStatus
    want = {"model_version_status": [{"version": "123", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
    for path in (f"/v1/models/{NAME}", f"/v1/models/{NAME}/versions/123",
                 f"/v1/models/{NAME}/labels/{LABEL}"):
        assert _json(handler_server, "GET", path) == (200, want)


def test_routes_are_case_insensitive_but_not_the_verb(handler_server: TFServingStub) -> None:
    # http_rest_api_util.cc: both path regexes start with (?i); ProcessRequest then compares
    # the captured verb with "predict" exactly.
    status, answer = _json(handler_server, "POST", f"/V1/MODELS/{NAME}/VERSIONS/123:predict",
                           {"instances": [1.0]})
    assert (status, answer) == (200, {"predictions": [2.5]})
    assert _json(handler_server, "GET", f"/v1/Models/{NAME}/Labels/{LABEL}")[0] == 200
    path = f"/v1/models/{NAME}:PREDICT"
    assert _error(handler_server, "POST", path, {"instances": [1.0]}) == (
        400, f"Malformed request: POST {path}")
    assert _error(handler_server, "POST", f"/v1/models/{NAME.upper()}:predict",
                  {"instances": [1.0]})[0] == 404  # model names are not folded


def test_unknown_signature(handler_server: TFServingStub) -> None:  # GetInfoMap
    assert _error(handler_server, "POST", f"/v1/models/{NAME}:predict",
                  {"signature_name": "nope", "instances": [1.0]}) == (
        400, 'Serving signature name: "nope" not found in signature def')


# ------------------------------------------------------------------------------------------
# json_tensor_test.cc (requests and answers through the REST API)
# ------------------------------------------------------------------------------------------


def _predict(stub: TFServingStub, body: Any) -> tuple[int, Any]:
    return _json(stub, "POST", f"/v1/models/{NAME}/versions/123:predict", body)


def _predict_error(stub: TFServingStub, body: Any) -> tuple[int, str]:
    return _error(stub, "POST", f"/v1/models/{NAME}/versions/123:predict", body)


def test_mixed_input_for_float_tensor(handler_server: TFServingStub) -> None:
    # MixedInputForFloatTensor: integers and decimals both fill a float tensor.
    status, answer = _predict(handler_server, {"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]})
    assert status == 200
    want = (np.float32([1, 2, 3, 4, 5.003, 0.007, 0]) * np.float32(0.5) + np.float32(2)).tolist()
    np.testing.assert_array_equal(np.float32(answer["predictions"]), np.float32(want))


def test_float_tensor_that_exceeds_max_returns_inf(handler_server: TFServingStub) -> None:
    # FloatTensorThatExceedsMaxReturnsInf / ...MinReturnsZero; answers as in
    # FromJsonSingleFloatTensorNonFinite (Infinity is written bare).
    big, tiny = float(np.finfo(np.float64).max), float(np.finfo(np.float64).tiny)
    body = f'{{"instances": [{big!r}, {-big!r}, {tiny!r}]}}'
    status, text = _call(handler_server, "POST", f"/v1/models/{NAME}/versions/123:predict", body)
    assert status == 200
    assert json.loads(text) == {"predictions": [float("inf"), float("-inf"), 2.0]}
    assert "[Infinity, -Infinity, 2.0]" in text


def test_base64_scalars_lists_and_named(handler_server: TFServingStub) -> None:
    # SingleUnnamedTensorBase64Scalars, SingleUnnamedTensorBase64Lists, SingleNamedTensorBase64;
    # the "_bytes" output is written back as b64 (FromJsonSingleBytesTensor).
    hello, world = {"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}
    assert _predict(handler_server, {"signature_name": "length",
                                     "instances": [hello, {"b64": "dGY="}]}) == (200, {
        "predictions": [{"n": 5, "s_bytes": hello}, {"n": 2, "s_bytes": {"b64": "dGY="}}]})
    assert _predict(handler_server, {"signature_name": "length",
                                     "instances": [[hello], [world]]}) == (200, {
        "predictions": [{"n": [5], "s_bytes": [hello]}, {"n": [5], "s_bytes": [world]}]})
    status, answer = _predict(handler_server, {"signature_name": "length",
                                               "instances": [{"s": [[hello], [world]]}]})
    assert status == 200
    assert answer == {"predictions": [{"n": [[5], [5]], "s_bytes": [[hello], [world]]}]}


def test_base64_errors(handler_server: TFServingStub) -> None:
    status, error = _predict_error(handler_server, {"signature_name": "length",
                                              "instances": [{"b64": "%%%"}]})
    assert (status, "Unable to base64 decode" in error) == (400, True)
    status, error = _predict_error(handler_server, {"instances": [{"b64": "aGVsbG8="}]})
    assert status == 400 and "is not of expected type: float" in error  # b64 for a float


def test_multiple_named_tensors_row_and_columnar(handler_server: TFServingStub) -> None:
    # MultipleNamedTensor / MultipleNamedTensorColumnarFormat, and string outputs as text
    # except for the "_bytes" one.
    rows = [{"f": [1.0, 2.0], "s": ["foo", "bar"]}, {"f": [3.0, 4.0], "s": ["baz", "bat"]}]
    status, answer = _predict(handler_server, {"signature_name": "echo", "instances": rows})
    assert status == 200
    assert answer["predictions"][1] == {"f": [3.0, 4.0], "s": ["baz", "bat"],
                                        "s_bytes": [{"b64": "YmF6"}, {"b64": "YmF0"}]}
    status, answer = _predict(handler_server, {"signature_name": "echo",
                                               "inputs": {"f": [[1.0]], "s": [["a"]]}})
    assert (status, answer) == (200, {"outputs": {"f": [[1.0]], "s": [["a"]],
                                                  "s_bytes": [[{"b64": "YQ=="}]]}})


@pytest.mark.parametrize(("body", "message"), [  # SingleUnnamedTensorErrors
    ({"instances": [[1, 2], [3, 4], [5, 6, 7]], "inputs": [[1, 2]]}, "Not formatted correctly"),
    ({"instances": [[1, 2], [3, 4], [5, 6, 7]]}, "Expecting tensor size"),
    ({"instances": [[1, 2], [3, 4], [[5, 6]]]}, "Expecting shape"),
    ({"instances": [1, [1]]}, "Expecting shape"),
    ({"instances": [[1, 2], ["a", "b"]]}, "not of expected type"),
    ({"signature_name": 5, "instances": [[1, 2]]}, "must be a string value"),
    ({"instances": []}, "No values in 'instances' array"),
    ({"instances": {"x": 1}}, "Expecting 'instances' to be an list/array"),
    ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key"),
    ({"instances": [[[1]], [1]]}, "Expecting shape"),
])
def test_single_unnamed_tensor_errors(handler_server: TFServingStub, body: Any,
                                      message: str) -> None:
    status, error = _predict_error(handler_server, body)
    assert status == 400 and message in error, error


@pytest.mark.parametrize(("instances", "message"), [  # MultipleNamedTensorErrors
    ([{"f": [1.0], "s": ["a"]}, [1, 20, 30]], "Expecting object but got list"),
    ([{"f": [1.0], "s": ["a"]}, {"f": [[1.0]], "s": ["b"]}], "Expecting shape"),
    ([{"f": [1.0], "s": ["a"]}, {"f": [1.0, 2.0], "s": ["b"]}], "Expecting tensor size"),
    ([{"f": [1.0]}], "keys must be equal to: f,s"),
    ([{"f": [1.0], "s": ["a"], "t": 1}], "does not have named input: t"),
    ([[1.0], [2.0]], "instances is a plain list, but expecting list of objects"),
])
def test_multiple_named_tensor_errors(handler_server: TFServingStub, instances: Any,
                                      message: str) -> None:
    body = {"signature_name": "echo", "instances": instances}
    status, error = _predict_error(handler_server, body)
    assert status == 400 and message in error, error


def test_value_list_then_object(handler_server: TFServingStub) -> None:
    # MultipleNamedTensorErrors, last case: the first element decides.
    status, error = _predict_error(handler_server, {"signature_name": "length",
                                              "instances": [["baz", "bar"], {"s": ["baz"]}]})
    assert status == 400 and "Expecting value/list but got object" in error


def test_columnar_errors(handler_server: TFServingStub) -> None:
    status, error = _predict_error(handler_server, {"signature_name": "echo", "inputs": [1.0]})
    assert status == 400 and "inputs is a plain value/list, but expecting an object" in error
    body = {"signature_name": "echo", "inputs": {"f": [1.0]}}
    status, error = _predict_error(handler_server, body)
    assert (status, error) == (400, "Missing named input: s in 'inputs' object.")


def test_float_six_digit_precision_and_non_finite(handler_server: TFServingStub) -> None:
    # FromJsonSingleFloatTensorSixDigitPrecision and ...NonFinite, on the answer's raw text.
    values = "[[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]]"
    status, text = _call(handler_server, "POST", f"/v1/models/{NAME}/versions/123:predict",
                         f'{{"signature_name": "echo", "inputs": {{"f": {values}, "s": "x"}}}}')
    assert status == 200, text
    assert "[[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]" in text
    status, text = _call(handler_server, "POST", f"/v1/models/{NAME}/versions/123:predict",
                         '{"signature_name": "echo", "instances": '
                         '[{"f": NaN, "s": "a"}, {"f": Infinity, "s": "b"}, '
                         '{"f": 3, "s": "c"}, {"f": -Infinity, "s": "d"}]}')
    assert status == 200, text
    rows = json.loads(text)["predictions"]
    assert [str(r["f"]) for r in rows] == ["nan", "inf", "3.0", "-inf"]
    for token in ('"f": NaN', '"f": Infinity', '"f": 3.0', '"f": -Infinity'):
        assert token in text


def test_format_decimal() -> None:
    # WriteDecimal: six significant digits when they round-trip, else max_digits10.
    f32 = np.dtype(np.float32)
    assert format_decimal(float(np.float32(0.1)), f32) == "0.1"
    assert format_decimal(float(np.float32(1 / 3)), f32) == "0.333333343"
    assert format_decimal(3.0, f32) == "3.0"
    assert format_decimal(-0.0, f32) == "-0.0"
    assert format_decimal(1 / 3, np.dtype(np.float64)) == "0.33333333333333331"


def test_row_answer_needs_a_batch_dimension(handler_server: TFServingStub) -> None:
    # FromJsonSingleTensorErrors "no shape information": a scalar output has no rows; the
    # columnar answer carries it.
    assert _error(handler_server, "POST", f"/v1/models/{NAME}/versions/123:predict",
                  {"signature_name": "with_scalar", "instances": [1.0, 2.0]}) == (
        400, "Tensor name: count has no shape information ")
    status, answer = _predict(handler_server, {"signature_name": "with_scalar",
                                               "inputs": [1.0, 2.0]})
    assert (status, answer) == (200, {"outputs": {"count": 2, "y": [2.5, 3.0]}})


def test_json_parsing_edges(handler_server: TFServingStub) -> None:
    path = f"/v1/models/{NAME}/versions/123:predict"
    status, error = _error(handler_server, "POST", path, "[1, 2]")
    assert status == 400 and error.endswith("Is not object")
    # rapidjson's kParseStopWhenDoneFlag: what follows the document is not read
    assert _call(handler_server, "POST", path, '{"instances": [1.0]} trailing')[0] == 200


# ------------------------------------------------------------------------------------------
# Server rules (server_core.cc, get_model_status_impl.cc, file_system_storage_path_source)
# ------------------------------------------------------------------------------------------


def test_default_policy_serves_only_the_latest(models: dict[str, Path]) -> None:
    with TFServingStub(models["base"], model_name="m") as stub:
        assert _json(stub, "GET", "/v1/models/m")[1]["model_version_status"][0]["version"] == "124"
        assert len(_json(stub, "GET", "/v1/models/m")[1]["model_version_status"]) == 1
        assert _error(stub, "POST", "/v1/models/m/versions/123:predict",
                      {"instances": [1.0]}) == (404, "Servable not found for request: "
                                                     "Specific(m, 123)")
        assert _error(stub, "GET", "/v1/models/m/versions/123") == (
            404, "Could not find version 123 of model m")
        assert _error(stub, "GET", "/v1/models/nope") == (
            404, "Could not find any versions of model nope")


def test_status_ignores_labels_and_lists_newest_first(models: dict[str, Path],
                                                      tmp_path: Path) -> None:
    policy = "model_version_policy { all {} }"
    config = _config(tmp_path, "model_config_list { "
                     + _entry("m", models["base"], policy, {"stable": 123}) + " }")
    with TFServingStub(config, allow_version_labels_for_unavailable_models=True) as stub:
        everything = _json(stub, "GET", "/v1/models/m")[1]
        assert [s["version"] for s in everything["model_version_status"]] == ["124", "123"]
        assert _json(stub, "GET", "/v1/models/m/labels/stable")[1] == everything
        assert _json(stub, "GET", "/v1/models/m/labels/no_such_label")[1] == everything
        assert _json(stub, "POST", "/v1/models/m/labels/stable:predict",
                     {"instances": [0.0]})[1] == {"predictions": [2.0]}


def test_labels_at_start_need_the_flag(models: dict[str, Path], tmp_path: Path) -> None:
    # server_core.cc ReloadConfig runs UpdateModelVersionLabelMap before any version loads.
    policy = "model_version_policy { specific { versions: 123 versions: 124 } }"
    config = _config(tmp_path, "model_config_list { "
                     + _entry("m", models["base"], policy, {"stable": 123, "canary": 124}) + " }")
    with pytest.raises(StubStartError) as err:
        TFServingStub(config)
    assert str(err.value) in {
        f"Request to assign label to version {v} of model m, which is not currently available "
        "for inference" for v in (123, 124)}
    with TFServingStub(config, allow_version_labels_for_unavailable_models=True) as stub:
        assert _json(stub, "POST", "/v1/models/m/labels/canary:predict",
                     {"instances": [0.0]})[1] == {"predictions": [3.0]}


def test_moving_a_label_needs_the_version_loaded_first(models: dict[str, Path],
                                                       tmp_path: Path) -> None:
    only_123 = "model_version_policy { specific { versions: 123 } }"
    both = "model_version_policy { specific { versions: 123 versions: 124 } }"
    start = _config(tmp_path, "model_config_list { "
                    + _entry("m", models["base"], only_123, {"canary": 123}) + " }")
    moved = tmp_path / "moved.config"
    moved.write_text("model_config_list { " + _entry("m", models["base"], both, {"canary": 124})
                     + " }")
    with TFServingStub(start, allow_version_labels_for_unavailable_models=True) as stub:
        # one step: refused even with the flag, and nothing changes
        with pytest.raises(StubStartError, match="assign label to version 124 of model m"):
            stub.reload_config(moved)
        assert _json(stub, "POST", "/v1/models/m/labels/canary:predict",
                     {"instances": [0.0]})[1] == {"predictions": [2.0]}
        # two steps: serve 124 with the label unchanged, then move the label
        step1 = tmp_path / "step1.config"
        step1.write_text("model_config_list { "
                         + _entry("m", models["base"], both, {"canary": 123}) + " }")
        stub.reload_config(step1)
        stub.reload_config(moved)
        assert _json(stub, "POST", "/v1/models/m/labels/canary:predict",
                     {"instances": [0.0]})[1] == {"predictions": [3.0]}


def test_dropped_versions_show_as_end(models: dict[str, Path], tmp_path: Path) -> None:
    both = "model_version_policy { specific { versions: 123 versions: 124 } }"
    config = _config(tmp_path, f"model_config_list {{ {_entry('m', models['base'], both)} }}")
    with TFServingStub(config) as stub:
        (tmp_path / "b.config").write_text(
            "model_config_list { " + _entry("m", models["base"],
                                            "model_version_policy { specific { versions: 124 } }")
            + " }")
        stub.reload_config(tmp_path / "b.config")
        states = {s["version"]: s["state"] for s in
                  _json(stub, "GET", "/v1/models/m")[1]["model_version_status"]}
        assert states == {"124": "AVAILABLE", "123": "END"}
        assert _error(stub, "POST", "/v1/models/m/versions/123:predict",
                      {"instances": [1.0]})[0] == 404


@pytest.mark.parametrize(("entries", "message"), [
    (lambda b: _entry("m", "models/m"), "Expected model m to have an absolute path or URI; "
                                        "got base_path()=models/m"),
    (lambda b: _entry("m", b) + _entry("m", b), "Illegal to list model m multiple times"),
    (lambda b: f"config {{ name: 'm' base_path: '{b}' }}", "Illegal setting neither"),
])
def test_config_list_validation(models: dict[str, Path], tmp_path: Path, entries: Any,
                                message: str) -> None:
    # server_core.cc ValidateModelConfigList and GetPlatform
    config = _config(tmp_path, f"model_config_list {{ {entries(models['base'])} }}")
    with pytest.raises(StubStartError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TFServingStub(config)


def test_relative_single_model_path_is_refused(models: dict[str, Path]) -> None:
    with pytest.raises(StubStartError, match="absolute path or URI"):
        TFServingStub("relative/half_plus_two")


def test_version_folders_are_int64_names(models: dict[str, Path], tmp_path: Path) -> None:
    base = tmp_path / "m"
    shutil.copytree(models["v123"], base / "7")
    (base / "tmp-99").mkdir()  # an export in progress: not a version
    with TFServingStub(base, model_name="m") as stub:
        assert _json(stub, "GET", "/v1/models/m")[1]["model_version_status"][0]["version"] == "7"
    (base / "99").mkdir()  # an integer folder without a SavedModel is a version that fails
    with pytest.raises(StubStartError, match=r"1 model\(s\) did not become available: "
                                             r"\{\{name: m version: 99\} due to error"):
        TFServingStub(base, model_name="m")


# ------------------------------------------------------------------------------------------
# Loading: the session loader and the warmup replay
# ------------------------------------------------------------------------------------------


def _warmup(version_dir: Path, records: list[bytes]) -> None:
    folder = version_dir / "assets.extra"
    folder.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(folder / "tf_serving_warmup_requests")) as writer:
        for record in records:
            writer.write(record)


def _record(signature: str, **inputs: Any) -> bytes:
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString()


def _one_version(models: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(models["v123"], tmp_path / "m" / "1"))


def test_warmup_records_replay_at_load(models: dict[str, Path], tmp_path: Path) -> None:
    version = _one_version(models, tmp_path)
    _warmup(version, [_record("serving_default", x=np.float32([1, 2])),
                      _record("echo", f=np.float32([1]), s=np.array([b"a"], dtype=object))])
    with TFServingStub(version.parent, model_name="m") as stub:
        assert _json(stub, "GET", "/v1/models/m")[1]["model_version_status"][0]["state"] == \
            "AVAILABLE"


@pytest.mark.parametrize(("record", "message"), [
    (lambda: _record("nope", x=np.float32([1])),
     'FAILED_PRECONDITION: Serving signature key "nope" not found.'),
    (lambda: _record("serving_default", z=np.float32([1])),
     "INVALID_ARGUMENT: input size does not match signature"),
    (lambda: _record("serving_default", x=np.array([b"text"], dtype=object)), "INVALID_ARGUMENT"),
    (lambda: b"not a PredictionLog", "Failed to parse warmup record"),
])
def test_one_failing_warmup_record_fails_the_version(models: dict[str, Path], tmp_path: Path,
                                                     record: Any, message: str) -> None:
    version = _one_version(models, tmp_path)
    _warmup(version, [_record("serving_default", x=np.float32([1])), record()])
    with pytest.raises(StubStartError) as err:
        TFServingStub(version.parent, model_name="m")
    assert "1 model(s) did not become available: {{name: m version: 1} due to error: " \
        in str(err.value)
    assert message in str(err.value)


def test_warmup_record_limit_and_format(models: dict[str, Path], tmp_path: Path) -> None:
    version = _one_version(models, tmp_path)
    _warmup(version, [_record("serving_default", x=np.float32([1]))] * 1001)
    with pytest.raises(StubStartError, match=r"Number of warmup records exceeds the maximum "
                                             r"\(1000\)"):
        TFServingStub(version.parent, model_name="m")
    (version / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"\x00" * 40)
    with pytest.raises(StubStartError, match="Please verify your warmup data is in TFRecord"):
        TFServingStub(version.parent, model_name="m")


def test_failed_version_is_reported_by_status(models: dict[str, Path], tmp_path: Path) -> None:
    # A reload that adds a failing version: the server keeps serving the others and the
    # model status says why the new one is not available.
    base = tmp_path / "m"
    shutil.copytree(models["v123"], base / "1")
    bad = Path(shutil.copytree(models["v123"], base / "2"))
    _warmup(bad, [_record("nope", x=np.float32([1]))])
    first = _config(tmp_path, "model_config_list { "
                    + _entry("m", base, "model_version_policy { specific { versions: 1 } }")
                    + " }")
    with TFServingStub(first) as stub:
        (tmp_path / "b.config").write_text("model_config_list { " + _entry(
            "m", base, "model_version_policy { specific { versions: 1 versions: 2 } }") + " }")
        stub.reload_config(tmp_path / "b.config")
        status = _json(stub, "GET", "/v1/models/m")[1]["model_version_status"]
        assert [(s["version"], s["state"], s["status"]["error_code"]) for s in status] == [
            ("2", "END", "FAILED_PRECONDITION"), ("1", "AVAILABLE", "OK")]
        assert 'Serving signature key "nope" not found.' in status[0]["status"]["error_message"]
        assert _json(stub, "POST", "/v1/models/m:predict", {"instances": [0.0]})[1] == {
            "predictions": [2.0]}


def test_what_only_the_object_loader_accepts_fails_here(tmp_path: Path) -> None:
    # A tf.Module holding Keras 3 variable wrappers (list(model.variables)) saves two handles
    # per weight: tf.saved_model.load answers, the session loader TF Serving uses does not.
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
    module = tf.Module()
    module.variables_ = list(model.variables)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": model(x)}

    module.serve = serve
    version = tmp_path / "m" / "1"
    tf.saved_model.save(module, str(version), signatures={"serving_default": serve})
    x = np.ones((1, 3), np.float32)
    loaded = tf.saved_model.load(str(version)).signatures["serving_default"]
    np.testing.assert_allclose(loaded(x=tf.constant(x))["y"].numpy(), model(x).numpy(), atol=1e-6)

    with TFServingStub(version.parent, model_name="m") as stub:  # no warmup: fails on request
        status, error = _error(stub, "POST", "/v1/models/m:predict", {"instances": x.tolist()})
        assert status == 400 and "Could not find variable" in error
    _warmup(version, [_record("serving_default", x=x)])  # with warmup: fails at load
    with pytest.raises(StubStartError, match="(?s)FAILED_PRECONDITION: .*Could not find variable"):
        TFServingStub(version.parent, model_name="m")
    with pytest.raises(tf.errors.FailedPreconditionError):  # the loader itself, independently
        SessionModel(str(version)).run("serving_default", x=x)


def test_written_models_config_parses_as_tf_serving_reads_it(models: dict[str, Path],
                                                            tmp_path: Path) -> None:
    path = write_models_config(tmp_path / "models.config", [ServedModel(
        NAME, str(models["base"]), policy="specific", versions=(123, 124),
        labels={"stable": 123})])
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), config)
    with TFServingStub(path, allow_version_labels_for_unavailable_models=True) as stub:
        assert _json(stub, "POST", f"/v1/models/{NAME}/labels/stable:predict",
                     {"instances": [0.0]})[1] == {"predictions": [2.0]}
