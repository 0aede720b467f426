"""Serving-grade exports end to end (issue #4).

A tiny image model (tiny_cnn, image folders) and a tiny BERT (CSV) are trained once per module,
exported once, and then:

- served by the loopback TF Serving stub (``tests/tf_serving_stub.py``) and asked with the
  curl-style JSON bodies printed in the export's model card (row ``instances`` with pixel arrays,
  ``{"b64": ...}`` images on ``serving_bytes``, texts in row and columnar formats);
- checked for the warmup file (parses, replays against the SavedModel), the model card, the op
  check (a failing check or a ``tf.py_function`` leaves no version folder);
- driven through the CLI: ``kerasft serve-config`` (round trip through the TF Serving protos),
  ``kerasft predict --server`` (REST and gRPC), ``kerasft export --format tflite``;
- converted to TFLite (float16, dynamic, int8) and run in ``tf.lite.Interpreter`` against the float
  SavedModel. Tolerances on probabilities: float16 and dynamic 2e-3 (the tiny model's weight
  tensors are under the converter's 1024-element threshold, so dynamic leaves them in float);
  int8 0.05 (activations are 8-bit too), and the top-1 class must agree wherever the float model's
  margin between its two best classes is above twice that.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kerasft.cli import main
from kerasft.errors import ExportError
from kerasft.export.warmup import read_warmup_requests
from kerasft.serving.models_config import ServedModel, read_models_config, write_models_config
from tests.bert_fixtures import write_tiny_bert_preset
from tests.tf_serving_stub import GrpcPredictStub, TFServingStub, post_json

IMAGE_LABELS = ["cat", "dog", "owl"]
GOOD = ["a good movie", "great film", "i loved this book", "very nice", "it was great",
        "liked it", "a great book", "nice film and good"]
BAD = ["a bad movie", "awful film", "i hated this book", "very terrible", "it was bad",
       "not good", "an awful book", "terrible film and bad"]
INT8_TOLERANCE = 0.05
FLOAT_TOLERANCE = 2e-3


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.uniform(0, 80, size=(n, 16, 16, 3)).astype("float32")
    for c in range(3):
        images[labels == c, :, :, c] += 150.0
    return images.astype("uint8"), labels


def _write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> str:
    import tensorflow as tf

    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / IMAGE_LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(image).numpy())
    return str(root)


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    """A trained tiny_cnn FineTuner (image folders) and its export ``<base>/tiny/1``."""
    from kerasft.api import build_finetuner

    tmp = tmp_path_factory.mktemp("image")
    x_train, y_train = _images(48, 0)
    x_test, y_test = _images(15, 1)
    ft = build_finetuner({
        "name": "tiny", "seed": 3, "backbone": {"name": "tiny_cnn", "weights": "none"},
        "data": {"source": "image_folder", "batch_size": 16, "validation_split": 0.25,
                 "train": _write_image_folder(tmp / "train", x_train, y_train),
                 "test": _write_image_folder(tmp / "test", x_test, y_test)},
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
        "stages": [{"name": "head", "trainable": "head", "epochs": 8, "learning_rate": 0.1},
                   {"name": "all", "trainable": "all", "epochs": 4, "learning_rate": 0.02}],
        "output_dir": str(tmp / "runs"),
        "export": {"dir": str(tmp / "saved_models")},
    }, log=lambda s: None)
    ft.fit()
    path = ft.export()
    return {"ft": ft, "path": path, "base": tmp / "saved_models", "x_test": x_test,
            "tmp": tmp}


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    """A trained tiny-BERT FineTuner (CSV) and its export ``<base>/tinybert/1``."""
    import csv

    from kerasft.api import build_finetuner

    tmp = tmp_path_factory.mktemp("text")

    def write(path: Path, rows: list[tuple[str, str]]) -> str:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(("text", "label"))
            writer.writerows(rows)
        return str(path)

    train = write(tmp / "train.csv", [(t, "pos") for t in GOOD] * 3 + [(t, "neg") for t in BAD] * 3)
    test = write(tmp / "test.csv", [(t, "pos") for t in GOOD[:4]] + [(t, "neg") for t in BAD[:4]])
    ft = build_finetuner({
        "name": "tinybert", "seed": 1,
        "backbone": {"name": "bert", "preset": write_tiny_bert_preset(tmp / "kh"),
                     "sequence_length": 16},
        "data": {"source": "csv", "train": train, "test": test, "validation_split": 0.25,
                 "batch_size": 8},
        "stages": [{"name": "all", "trainable": "all", "epochs": 2, "learning_rate": 0.01}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent"},
        "output_dir": str(tmp / "runs"),
        "export": {"dir": str(tmp / "saved_models")},
    }, log=lambda s: None)
    ft.fit()
    path = ft.export()
    return {"ft": ft, "path": path, "base": tmp / "saved_models", "tmp": tmp}




def _card_bodies(card: str) -> list[str]:
    """The ``-d '...'`` / ``-d "..."`` JSON bodies of the card's curl examples."""
    single = re.findall(r"-d '(\{.*\})'", card)
    double = [b.replace('\\"', '"') for b in re.findall(r'-d "(\{.*\})"', card)]
    return single + double


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Image export: stub, warmup, card.


@pytest.mark.slow
def test_image_export_answers_curl_json_through_the_stub(image_export):
    ft, path = image_export["ft"], image_export["path"]
    x = image_export["x_test"][:3]
    expected = ft.predict(x)
    card = (path / "assets.extra" / "README.md").read_text()
    bodies = _card_bodies(card)
    assert len(bodies) == 2, bodies  # pixels on serving_default, b64 on serving_bytes
    with TFServingStub(image_export["base"] / "tiny", model_name="tiny") as stub:
        url = f"{stub.url}/v1/models/tiny:predict"
        # The card's own examples, as printed (a 2x2 image; b64 of a real PNG in place of the
        # shell substitution).
        answer = post_json(url, bodies[0])
        assert set(answer["predictions"][0]) == {"probabilities", "class_ids", "labels"}
        png = (next((image_export["tmp"] / "test" / "cat").iterdir())).read_bytes()
        b64_body = bodies[1].replace("$(base64 -w0 photo.jpg)",
                                     base64.b64encode(png).decode("ascii"))
        assert post_json(url, b64_body)["predictions"][0]["labels"] in IMAGE_LABELS

        # Row format with pixel arrays: the same probabilities as the in-memory model.
        rows = post_json(url, json.dumps({"instances": x.astype(int).tolist()}))["predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-5)
        assert [r["labels"] for r in rows] == [IMAGE_LABELS[i] for i in expected.argmax(-1)]
        assert [r["class_ids"] for r in rows] == expected.argmax(-1).tolist()

        # b64-encoded PNGs on serving_bytes.
        import tensorflow as tf

        pngs = [base64.b64encode(tf.io.encode_png(im).numpy()).decode() for im in x]
        body = json.dumps({"signature_name": "serving_bytes",
                           "instances": [{"b64": p} for p in pngs]})
        rows = post_json(url, body)["predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-5)


@pytest.mark.slow
def test_image_warmup_file_parses_and_replays(image_export):
    import tensorflow as tf

    path = image_export["path"]
    logs = read_warmup_requests(path)
    requests = [log.predict_log.request for log in logs]
    seen = sorted((r.model_spec.signature_name, list(r.inputs),
                   r.inputs[next(iter(r.inputs))].tensor_shape.dim[0].size) for r in requests)
    assert seen == [("serving_bytes", ["image_bytes"], 1), ("serving_bytes", ["image_bytes"], 4),
                    ("serving_default", ["image"], 1), ("serving_default", ["image"], 4)]
    assert all(r.model_spec.name == "tiny" for r in requests)
    loaded = tf.saved_model.load(str(path))
    for request in requests:
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        out = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert out["probabilities"].shape[0] == inputs[next(iter(inputs))].shape[0]


@pytest.mark.slow
def test_image_model_card_names_labels_signatures_and_data(image_export):
    card = (image_export["path"] / "assets.extra" / "README.md").read_text()
    assert card.startswith("# tiny: model card")
    for label in IMAGE_LABELS:
        assert f"| {label} |" in card
    for word in ("`serving_default`", "`serving_bytes`", "| input | image | float32 | "
                 "[batch, any, any, 3] |", "| input | image_bytes | string | [batch] |",
                 "| output | probabilities | float32 | [batch, 3] |", "tiny_cnn",
                 "| train examples | 36 |", "| test examples | 15 |", "| head | head | 8/8 |",
                 "On the test split (15 examples)", "| kerasft | 0.1.0 |",
                 'docker run -p 8501:8501 -v "$PWD/saved_models/tiny:/models/tiny"',
                 "- session loader (tf.compat.v1.saved_model.loader.load",
                 "- object loader (tf.saved_model.load) gives the same outputs"):
        assert word in card, word
    # The bytes example's answer is the export's own: a distribution whose argmax is the label.
    answer = json.loads(re.search(r"```json\n(.*?)\n```", card, re.S).group(1))
    row = answer["predictions"][0]
    assert abs(sum(row["probabilities"]) - 1) < 1e-3
    assert row["labels"] == IMAGE_LABELS[int(np.argmax(row["probabilities"]))]
    assert row["class_ids"] == int(np.argmax(row["probabilities"]))
    assert "0.9, 0.0" not in card  # no invented probabilities


# ---------------------------------------------------------------------------------------------
# Text export: stub in row and columnar formats, warmup, card.


@pytest.mark.slow
def test_text_export_answers_row_and_columnar_json(text_export):
    ft, path = text_export["ft"], text_export["path"]
    card = (path / "assets.extra" / "README.md").read_text()
    row_body, columnar_body = _card_bodies(card)
    card_texts = json.loads(row_body)["instances"]
    assert len(card_texts) == 2 and all(t in GOOD + BAD for t in card_texts)  # test split
    texts = card_texts + ["very bad film"]
    expected = ft.predict(texts)
    names = ft.class_names
    # The card's answer is the export's own, not an invented one.
    card_answer = json.loads(re.search(r"```json\n(.*?)\n```", card, re.S).group(1))
    with TFServingStub(text_export["base"] / "tinybert", model_name="tinybert") as stub:
        url = f"{stub.url}/v1/models/tinybert:predict"
        rows = post_json(url, row_body)["predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows], expected[:2], atol=1e-5)
        assert [r["labels"] for r in card_answer["predictions"]] == [r["labels"] for r in rows]
        np.testing.assert_allclose([r["probabilities"] for r in card_answer["predictions"]],
                                   expected[:2], atol=1e-4)
        outputs = post_json(url, columnar_body)["outputs"]
        np.testing.assert_allclose(outputs["probabilities"], expected[:2], atol=1e-5)
        assert outputs["labels"] == [names[i] for i in expected[:2].argmax(-1)]

        # Row objects and a bare columnar list map onto the same `text` input.
        rows = post_json(url, json.dumps({"instances": [{"text": t} for t in texts]}))[
            "predictions"]
        np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-5)
        outputs = post_json(url, json.dumps({"inputs": texts}))["outputs"]
        assert outputs["class_ids"] == expected.argmax(-1).tolist()


@pytest.mark.slow
def test_text_warmup_and_card(text_export):
    path = text_export["path"]
    requests = [log.predict_log.request for log in read_warmup_requests(path)]
    assert [(r.model_spec.signature_name, r.inputs["text"].tensor_shape.dim[0].size)
            for r in requests] == [("serving_default", 1), ("serving_default", 4)]
    sample = requests[1].inputs["text"].string_val
    assert all(s.decode() in GOOD + BAD for s in sample)  # taken from the test split
    card = (path / "assets.extra" / "README.md").read_text()
    for word in ("| 0 | neg |", "| 1 | pos |", "| input | text | string | [batch] |",
                 "import tensorflow_text", "| preset |", "| sequence_length | 16 |",
                 "| train examples | 36 |", "| test examples | 8 |",
                 "- session loader (tf.compat.v1.saved_model.loader.load",
                 "- warmup records replayed through the session"):
        assert word in card, word


# ---------------------------------------------------------------------------------------------
# The op check runs before the rename.


@pytest.mark.slow
def test_failing_op_check_leaves_no_version(image_export, monkeypatch):
    ft = image_export["ft"]
    base = image_export["tmp"] / "opcheck"

    def bad(export_dir, extra_allowed_ops=(), **_):
        raise ExportError(f"check_serving_ops {export_dir}: expected only ops TF Serving can "
                          "run. Received: ops=['MyCustomOp']")

    monkeypatch.setattr("kerasft.export.saved_model.check_serving_ops", bad)
    with pytest.raises(ExportError, match=r"Received: ops=\['MyCustomOp'\]"):
        ft.export(dir=base, verify=False)
    assert list((base / "tiny").iterdir()) == []


@pytest.mark.slow
def test_py_function_model_fails_the_export(image_export):
    import keras
    import tensorflow as tf

    from kerasft.export.saved_model import export_saved_model

    ft = image_export["ft"]

    class PyIdentity(keras.layers.Layer):
        def call(self, x):
            y = tf.py_function(lambda t: t, [x], tf.float32)
            y.set_shape(x.shape)
            return y

        def compute_output_shape(self, shape):
            return shape

    bad = keras.Model(ft.model.inputs, PyIdentity()(ft.model.outputs[0]))
    base = image_export["tmp"] / "pyfunc"
    with pytest.raises(ExportError, match=r"only ops TF Serving can run.*EagerPyFunc.*"
                                          r"tf.py_function"):
        export_saved_model(bad, ft.backbone, ft.class_names, base, "pybad", verify=False,
                           log=lambda s: None)
    assert list((base / "pybad").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# CLI: serve-config and predict --server.


def test_serve_config_cli_round_trips(tmp_path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    for name, versions in (("tiny", (1, 2)), ("other", (1, 2, 3))):
        for v in versions:
            (tmp_path / "models" / name / str(v)).mkdir(parents=True)
            (tmp_path / "models" / name / str(v) / "saved_model.pb").write_bytes(b"")
    config = str(tmp_path / "models.config")
    runner = CliRunner()
    common = ["--local-base-path", str(tmp_path / "models" / "tiny")]
    result = runner.invoke(main, ["serve-config", config, "--name", "tiny", "--base-path",
                                  "/models/tiny", "--policy", "specific", "--versions", "1,2",
                                  "--label", "stable=1", "--label", "canary=2", *common])
    assert result.exit_code == 0, result.output
    assert "tiny: base_path /models/tiny, versions: specific 1,2, labels: canary=2, stable=1" \
        in result.output
    result = runner.invoke(main, ["serve-config", config, "--name", "other", "--base-path",
                                  str(tmp_path / "models" / "other"), "--num-versions", "2"])
    assert result.exit_code == 0, result.output

    parsed = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(Path(config).read_text(), parsed)
    entries = {c.name: c for c in parsed.model_config_list.config}
    assert list(entries) == ["tiny", "other"]
    tiny = entries["tiny"]
    assert tiny.base_path == "/models/tiny" and tiny.model_platform == "tensorflow"
    assert list(tiny.model_version_policy.specific.versions) == [1, 2]
    assert dict(tiny.version_labels) == {"stable": 1, "canary": 2}
    assert entries["other"].model_version_policy.latest.num_versions == 2

    # Updating one entry keeps the other; bad values are one-line errors with exit code 2.
    result = runner.invoke(main, ["serve-config", config, "--name", "tiny", "--base-path",
                                  "/models/tiny", "--label", "stable=2", *common])
    assert result.exit_code == 0, result.output
    models = {m.name: m for m in read_models_config(config)}
    assert models["tiny"].policy == "latest" and dict(models["tiny"].labels) == {"stable": 2}
    assert models["other"].num_versions == 2
    before = Path(config).read_text()
    for args, message in (
        (["--versions", "1,x", "--policy", "specific"], "comma-separated integer versions"),
        (["--label", "stable"], "NAME=VERSION like stable=1"),
        (["--num-versions", "2", "--policy", "all"], "--num-versions only with --policy latest"),
        (["--label", "canary=7"], "expected a version that exists as a SavedModel folder"),
        (["--policy", "specific"], "non-empty list of distinct integer versions"),
    ):
        result = runner.invoke(main, ["serve-config", config, "--name", "tiny", "--base-path",
                                      "/models/tiny", *common, *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert Path(config).read_text() == before


@pytest.mark.slow
def test_predict_cli_against_the_stub(image_export, text_export, tmp_path):
    import tensorflow as tf

    ft = image_export["ft"]
    x = image_export["x_test"][:2]
    files = []
    for i, image in enumerate(x):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(tf.io.encode_png(image).numpy())
    expected = [IMAGE_LABELS[i] for i in ft.predict(x).argmax(-1)]
    runner = CliRunner()
    config = write_models_config(tmp_path / "models.config", [ServedModel(
        "tiny", str(image_export["base"] / "tiny"), labels={"stable": 1})])
    with TFServingStub(config, allow_version_labels_for_unavailable_models=True) as stub:
        image_args = ["--image", str(files[0]), "--image", str(files[1])]
        for extra in ([], ["--label", "stable"], ["--version", "1"]):
            result = runner.invoke(main, ["predict", "--server", stub.url, "--model", "tiny",
                                          *extra, *image_args])
            assert result.exit_code == 0, result.output
            lines = result.output.strip().splitlines()
            assert [line.split("\t")[0] for line in lines] == expected
            label, top, shown = lines[0].split("\t")
            assert top.startswith(f"[{label} 0.") and top.count(",") == 2  # top-3
            assert str(files[0]).startswith(shown.removesuffix("..."))
        result = runner.invoke(main, ["predict", "--server", stub.url, "--model", "tiny",
                                      "--version", "9", *image_args])
        assert result.exit_code == 2
        assert "Servable not found for request: Specific(tiny, 9)" in result.output
        result = runner.invoke(main, ["predict", "--server", stub.url, "--model", "tiny",
                                      "--version", "1", "--label", "stable", *image_args])
        assert result.exit_code == 2 and "--version or --label, not both" in result.output

    result = runner.invoke(main, ["predict", "--server", f"http://127.0.0.1:{_free_port()}",
                                  "--model", "tiny", "--retries", "0", "--timeout", "5",
                                  "--text", "x"])
    assert result.exit_code == 2
    assert "expected a reachable TF Serving REST server" in result.output
    assert len(result.output.strip().splitlines()) == 1

    # Text over REST and gRPC; the local EXPORT_DIR form still works.
    tft = text_export["ft"]
    texts = ["great movie", "very bad film"]
    want = [tft.class_names[i] for i in tft.predict(texts).argmax(-1)]
    text_args = ["--model", "tinybert", "--text", texts[0], "--text", texts[1]]
    with TFServingStub(text_export["base"] / "tinybert", model_name="tinybert") as stub:
        result = runner.invoke(main, ["predict", "--server", stub.url, *text_args])
        assert result.exit_code == 0, result.output
        assert [line.split("\t")[0] for line in result.output.strip().splitlines()] == want
    with GrpcPredictStub(text_export["base"] / "tinybert", model_name="tinybert") as grpc_stub:
        result = runner.invoke(main, ["predict", "--server", grpc_stub.address, "--grpc",
                                      *text_args])
        assert result.exit_code == 0, result.output
        assert [line.split("\t")[0] for line in result.output.strip().splitlines()] == want
    result = runner.invoke(main, ["predict", str(text_export["path"]), "--text", texts[0]])
    assert result.exit_code == 0, result.output
    assert result.output.split("\t")[0] == want[0]
    result = runner.invoke(main, ["predict", "--model", "tinybert", "--text", "x"])
    assert result.exit_code == 2 and "expected --server with" in result.output


# ---------------------------------------------------------------------------------------------
# TFLite.


@pytest.mark.slow
def test_tflite_quantised_image_models_agree_with_the_saved_model(image_export):
    import tensorflow as tf

    from kerasft.export.tflite import run_tflite

    ft, path = image_export["ft"], image_export["path"]
    out_dir = image_export["tmp"] / "tflite"
    runner = CliRunner()
    for quantize in ("float16", "dynamic", "int8"):
        result = runner.invoke(main, ["export", str(ft.run_dir), "--format", "tflite",
                                      "--quantize", quantize, "--dir", str(out_dir),
                                      "--saved-model", str(path)])
        assert result.exit_code == 0, result.output
        assert f"tflite {quantize}:" in result.output
    result = runner.invoke(main, ["export", str(ft.run_dir), "--quantize", "float16"])
    assert result.exit_code == 2 and "are TFLite quantisations" in result.output

    report = json.loads((out_dir / "tflite_report.json").read_text())
    assert sorted(report) == ["dynamic", "float16", "int8"]
    x = image_export["x_test"].astype("float32")
    reference = tf.saved_model.load(str(path)).signatures["serving_default"](
        image=tf.constant(x))["probabilities"].numpy()
    top2 = np.sort(reference, axis=-1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > 2 * INT8_TOLERANCE
    assert confident.mean() >= 0.8  # a trained model: the agreement check below means something
    for quantize, entry in report.items():
        file = out_dir / entry["file"]
        assert file.stat().st_size == entry["size_bytes"] > 0
        assert entry["inputs"] == {"image": {"dtype": "float32", "shape": [-1, 16, 16, 3]}}
        assert entry["split"] == "test" and entry["examples"] == 15
        assert entry["reference"].startswith("SavedModel")
        assert entry["accuracy"]["delta"] == pytest.approx(
            entry["accuracy"]["tflite"] - entry["accuracy"]["reference"])
        probabilities = run_tflite(file, x, batch_size=4)
        tolerance = INT8_TOLERANCE if quantize == "int8" else FLOAT_TOLERANCE
        np.testing.assert_allclose(probabilities, reference, atol=tolerance, err_msg=quantize)
        assert entry["max_abs_probability_diff"] <= tolerance
        np.testing.assert_array_equal(probabilities.argmax(-1)[confident],
                                      reference.argmax(-1)[confident])
    assert report["int8"]["ops"] == "int8 builtins only"
    assert report["int8"]["calibration_examples"] == 36
    assert (out_dir / "labels.txt").read_text().split() == IMAGE_LABELS


@pytest.mark.slow
def test_tflite_text_model_takes_token_ids(text_export):
    import tensorflow as tf

    from kerasft.export.tflite import export_tflite, run_tflite, tokenize

    ft, path = text_export["ft"], text_export["path"]
    out_dir = text_export["tmp"] / "tflite"
    entry = export_tflite(ft, out_dir, "dynamic", log=lambda s: None)
    assert sorted(entry["inputs"]) == ["padding_mask", "segment_ids", "token_ids"]
    assert entry["inputs"]["token_ids"] == {"dtype": "int32", "shape": [-1, 16]}
    texts = ["great movie", "very bad film", "i loved this book"]
    features = tokenize(texts, out_dir)  # from vocab.txt + tokenizer_config.json alone
    import tensorflow_text  # noqa: F401

    reference = tf.saved_model.load(str(path)).signatures["serving_default"](
        text=tf.constant(texts))["probabilities"].numpy()
    np.testing.assert_allclose(run_tflite(out_dir / entry["file"], features), reference,
                               atol=FLOAT_TOLERANCE)
    vocab = (out_dir / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# ---------------------------------------------------------------------------------------------
# int8 SavedModels (export.quantize: int8): Keras's weight quantization, served as any export.


def _int8_export(ft, out_dir: Path) -> tuple[Path, list[str]]:
    """``ft.export(quantize="int8")`` with kerasft's export check run here, not in a fresh process
    (the same checks: session loader, warmup replay, every signature, object loader; the fresh
    process costs an extra TensorFlow import that other export tests already pay)."""
    from kerasft.export.check import check
    from kerasft.export.saved_model import sample_requests

    lines: list[str] = []
    ft.log, log = lines.append, ft.log
    try:
        path = ft.export(dir=out_dir, quantize="int8", verify=False)
    finally:
        ft.log = log
    check(str(path), sample_requests(ft.backbone, ft._sample_inputs()))
    return path, lines


def _session_probabilities(path: Path, **inputs) -> np.ndarray:
    from tests.session_loader import SessionModel

    with SessionModel(str(path)) as session:
        return session.run("serving_default", **inputs)["probabilities"]


def _summary(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("quantize int8: ") and "%" in line)


@pytest.mark.slow
def test_int8_text_export_passes_both_loaders_and_stays_close_to_float(text_export):
    import yaml

    ft = text_export["ft"]
    texts = np.array(GOOD[:4] + BAD[:4], dtype=object)
    before = ft.predict(list(texts))
    path, lines = _int8_export(ft, text_export["tmp"] / "int8")
    # The run's own model is untouched: still float, same answers.
    assert all(str(v.dtype) != "int8" for v in ft.model.weights)
    np.testing.assert_array_equal(ft.predict(list(texts)), before)
    summary = _summary(lines)
    share = float(re.search(r"([\d.]+)% of the weights", summary).group(1))
    assert share > 50 and "EinsumDense" in summary and "Embedding" in summary, summary
    assert not any(line.startswith("warning: int8") for line in lines)
    # TF Serving's loader answers close to the float model (observed ~4e-3 on this tiny BERT).
    int8 = _session_probabilities(path, text=texts)
    assert np.abs(int8 - before).max() < INT8_TOLERANCE
    assert (int8.argmax(-1) == before.argmax(-1)).mean() >= 0.75
    size = sum(p.stat().st_size for p in (path / "variables").glob("*"))
    float_size = sum(p.stat().st_size for p in (text_export["path"] / "variables").glob("*"))
    assert size < 0.75 * float_size  # tiny BERT; the position embeddings stay float
    extras = path / "assets.extra"
    assert yaml.safe_load((extras / "config.yaml").read_text())["export"]["quantize"] == "int8"
    assert ft.config.export.quantize == "none"  # quantize= applies to that export only
    card = (extras / "README.md").read_text()
    assert "| quantize | int8 |" in card and "| max abs difference to float32 |" in card


@pytest.mark.slow
def test_int8_cnn_quantizes_only_the_head_and_says_so(image_export):
    ft = image_export["ft"]
    path, lines = _int8_export(ft, image_export["tmp"] / "int8")
    # Only the head's Dense kernel: convolutions have no quantize() in Keras.
    assert "(1 Dense;" in _summary(lines), lines
    assert any(line.startswith("warning: int8 quantized only") and "--format tflite" in line
               for line in lines), lines
    x = image_export["x_test"].astype("float32")
    int8 = _session_probabilities(path, image=x)
    float_answers = _session_probabilities(image_export["path"], image=x)
    assert np.abs(int8 - float_answers).max() < INT8_TOLERANCE
    assert "| quantize | int8 |" in (path / "assets.extra" / "README.md").read_text()


def test_savedmodel_quantize_float16_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--quantize", "float16"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "Error: Invalid value for --quantize: expected one of none, int8 for a SavedModel "
        "(float16 and dynamic are TFLite quantisations: kerasft export RUN_DIR --format tflite "
        "--quantize float16). Received: --quantize='float16' ('main export --help' shows the "
        "usage)"]


def _matmul_dtypes(path: Path) -> set[str]:
    """The dtypes of the serving graph's matrix products, as TF Serving's loader sees them."""
    import tensorflow as tf

    from tests.session_loader import SessionModel

    with SessionModel(str(path)) as served:
        graph_def = served.graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return {tf.dtypes.as_dtype(n.attr["T"].type).name for n in nodes
            if n.op in ("MatMul", "BatchMatMulV2", "Einsum") and "T" in n.attr}


@pytest.mark.slow
def test_bfloat16_text_export_computes_in_bfloat16_under_the_session_loader(text_export):
    import yaml

    from tests.session_loader import SessionModel

    ft = text_export["ft"]
    texts = np.array(GOOD[:4] + BAD[:4], dtype=object)
    lines: list[str] = []
    ft.log, log = lines.append, ft.log
    try:  # the fresh-process check runs (session loader, warmup replay, both loaders)
        path = ft.export(dir=text_export["tmp"] / "bf16", precision="bfloat16")
    finally:
        ft.log = log
    assert "export: serving in bfloat16 (export.precision: bfloat16)" in lines
    assert "bfloat16" in _matmul_dtypes(path)  # the encoder's; the output layer stays float32
    assert _matmul_dtypes(text_export["path"]) == {"float32"}  # the default export
    with SessionModel(str(path)) as served:
        out = served.run("serving_default", text=texts)
    assert out["probabilities"].dtype == np.float32 and out["class_ids"].dtype == np.int64
    float32 = _session_probabilities(text_export["path"], text=texts)
    assert np.abs(out["probabilities"] - float32).max() < 0.02
    assert not np.array_equal(out["probabilities"], float32)
    extras = path / "assets.extra"
    assert yaml.safe_load((extras / "config.yaml").read_text())["export"]["precision"] == "bfloat16"
    assert ft.config.export.precision == "float32"  # precision= applies to that export only


def test_export_precision_is_float32_or_bfloat16_and_not_with_int8():
    from kerasft.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"^expected one of float32, bfloat16\. Received: "
                                          r"export\.precision='float16'"):
        load_config({"export": {"precision": "float16"}})
    with pytest.raises(ConfigError, match=r"^expected float32 with export\.quantize: int8\. "
                                          r"Received: export\.precision='bfloat16'"):
        load_config({"export": {"precision": "bfloat16", "quantize": "int8"}})


def test_bfloat16_with_int8_is_a_one_line_cli_error(tmp_path):
    result = CliRunner().invoke(main, ["export", str(tmp_path), "--quantize", "int8",
                                       "--precision", "bfloat16"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "Error: Invalid value for --precision: expected float32 with export.quantize: int8. "
        "Received: --precision='bfloat16' ('main export --help' shows the usage)"]
