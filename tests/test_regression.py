"""Regression heads (``head.task: regression``): config, defaults from the data, metrics, and one
tiny BERT run end to end (CSV of float ratings -> fit -> evaluate -> export -> session loader,
TF Serving stub and kerasft's client answer ``value`` in the targets' own units)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from kerasft.config import ConfigError, head_task, load_config, resolve_task
from kerasft.evaluation.metrics import format_report, regression_report

GOOD = ["a good movie", "great film", "i loved this book", "very nice", "it was great",
        "liked it", "a great book", "nice film and good"]
BAD = ["a bad movie", "awful film", "i hated this book", "very terrible", "it was bad",
       "not good", "an awful book", "terrible film and bad"]


def _csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "rating"])
        writer.writerows(rows)
    return str(path)


def _base(**head):
    return {"backbone": {"name": "bert"}, "head": head,
            "data": {"label_column": "rating"}}


def test_head_task_aliases_contradictions_and_checks():
    assert head_task(load_config(_base()).head) is None  # left to the data
    assert head_task(load_config(_base(activation="sigmoid")).head) == "multi_label"
    assert head_task(load_config(_base(task="multi_label")).head) == "multi_label"
    assert load_config(_base(task="regression", loss="huber", huber_delta=0.5,
                             target_scaling="standard")).head.loss == "huber"
    for task in ("regression", "classification"):
        with pytest.raises(ConfigError, match=rf"^head: expected head.activation softmax .* "
                                              rf"head.task {task}; .*Received: head.task="
                                              rf"'{task}', head.activation='sigmoid'$"):
            load_config(_base(task=task, activation="sigmoid"))
    with pytest.raises(ConfigError, match=r"one of classification, multi_label, regression, "
                                          r"token_classification\. "
                                          r"Received: head.task='regresion' Did you mean "
                                          r"'regression'\?"):
        load_config(_base(task="regresion"))
    with pytest.raises(ConfigError, match=r"only with head.task regression.*head.loss='huber'"):
        load_config(_base(task="classification", loss="huber"))
    with pytest.raises(ConfigError, match=r"one of mse, huber\. Received: head.loss='mae'"):
        load_config(_base(task="regression", loss="mae"))
    with pytest.raises(ConfigError, match=r"csv with head.task regression"):
        load_config({**_base(task="regression"), "data": {"source": "image_folder"}})
    # Monitors: regression logs loss and mae, no accuracy.
    assert load_config(_base(task="regression"), ["training.monitor=val_mae"])
    with pytest.raises(ConfigError, match=r"\(loss, mae, val_loss, val_mae\)\. Received: "
                                          r"training.monitor='val_accuracy'"):
        load_config(_base(task="regression"), ["training.monitor=val_accuracy"])
    # Unset task: what depends on it is checked again once the data says regression.
    cfg = load_config(_base(), ["training.monitor=val_accuracy"])
    with pytest.raises(ConfigError, match=r"Received: training.monitor='val_accuracy'"):
        resolve_task(cfg, regression_labels=True)
    cfg = load_config(_base(loss="huber"))
    with pytest.raises(ConfigError, match=r"labels read as task classification"):
        resolve_task(cfg, regression_labels=False)


def test_runs_saved_before_head_task_resume_without_differences():
    from kerasft.config import upgrade_saved_config
    from kerasft.training.checkpoints import config_differences

    for activation, task in (("softmax", "classification"), ("sigmoid", "multi_label")):
        cfg = load_config(_base(activation=activation))
        resolve_task(cfg, regression_labels=False)  # what a run writes to its config.yaml
        saved = cfg.to_dict()
        for key in ("task", "loss", "huber_delta", "target_scaling"):  # an older run folder
            del saved["head"][key]
        assert cfg.head.task == task
        assert config_differences(upgrade_saved_config(saved), cfg.to_dict()) == []


def test_task_defaults_from_the_labels(tmp_path):
    from kerasft.data.sources import load_data
    from kerasft.data.targets import looks_like_regression

    assert looks_like_regression(["1.5", "3", "-2e-1"])
    assert not looks_like_regression(["1", "2", "5"])  # whole numbers: class names (stars)
    assert not looks_like_regression(["1.5", "good"])
    assert not looks_like_regression(["1.5", "nan"])

    rows = [(f"text {i}", f"{i % 7 * 0.5:.1f}") for i in range(38)]
    rows += [("text 0", "0.0"), ("text 1", "2.5")]  # a repeat, and a repeat with another target
    cfg = load_config({**_base(), "data": {"train": _csv(tmp_path / "r.csv", rows),
                                           "label_column": "rating",
                                           "validation_split": 0.25, "max_examples": 20}})
    data = load_data(cfg.data, seed=0, regression=None)
    assert data.regression and data.class_names == ["value"]
    assert data.train.labels.dtype == np.float32 and data.train.size == 20
    assert data.validation.size == 10  # no stratification over float targets: a random 25%
    assert "random" in data.report["split"]["validation"]
    assert set(data.report["targets"]["train"]) == {"mean", "std", "min", "max"}
    assert data.report["duplicates"]["train"] == {"count": 2, "conflicting": 1,
                                                  "examples": [40, 41]}
    assert resolve_task(cfg, data.regression) == "regression"

    stars = [(f"text {i}", str(1 + i % 5)) for i in range(20)]
    data = load_data(load_config({**_base(), "data": {
        "train": _csv(tmp_path / "s.csv", stars), "label_column": "rating"}}).data, seed=0,
        regression=None)
    assert not data.regression and data.class_names == ["1", "2", "3", "4", "5"]
    # A label that is not a number under head.task regression names its line.
    bad = rows[:5] + [("text x", "n/a")]
    with pytest.raises(Exception, match=r"b.csv:7: expected a number \(head.task is regression"
                                        r"\)\. Received: train label='n/a'"):
        load_data(load_config({**_base(task="regression"), "data": {
            "train": _csv(tmp_path / "b.csv", bad), "label_column": "rating"}}).data, seed=0,
            regression=True)


def test_regression_metrics_match_hand_computed_values():
    y = np.array([1.0, 2.0, 3.0, 4.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 5.0, 3.0])
    r = regression_report(y, p[:, None])  # [n, 1] as the model predicts
    err = p - y
    assert r["mae"] == pytest.approx(np.abs(err).mean())  # 0.7
    assert r["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()))
    assert r["r2"] == pytest.approx(1 - (err ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert r["pearson"] == pytest.approx(np.corrcoef(y, p)[0, 1])
    # Spearman with ties: average ranks y = [1, 2, 3, 4.5, 4.5], p = [1, 2.5, 2.5, 5, 4].
    assert r["spearman"] == pytest.approx(np.corrcoef([1, 2, 3, 4.5, 4.5],
                                                      [1, 2.5, 2.5, 5, 4])[0, 1])
    constant = regression_report(np.ones(3), np.array([1.0, 2.0, 3.0]))
    assert constant["r2"] is None and constant["pearson"] is None
    assert "n/a (constant)" in format_report(constant)
    assert "MAE" in format_report(r, title="t") and "Spearman" in format_report(r)


def test_regression_head_is_linear_float32_under_mixed_precision():
    import keras

    from kerasft.models.heads import build_head_model

    cfg = load_config(_base(task="regression")).head
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        head = build_head_model(4, 1, cfg, target_stats=(10.0, 2.0))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert head.output.dtype == "float32"
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    dense = keras.Model(head.input, head.get_layer("head_predictions").output)
    np.testing.assert_allclose(head(x).numpy(), dense(x).numpy() * 2.0 + 10.0, rtol=1e-6)


def test_regression_export_check_and_client_read_value():
    from kerasft.errors import ExportError, KerasftError
    from kerasft.export.saved_model import (
        CheckResult,
        OutputSpec,
        compare_with_model,
        signature_outputs,
    )
    from kerasft.serving.client import _rows_from_grpc, _rows_from_rest, format_rows

    spec = OutputSpec(("value",), task="regression")
    assert signature_outputs(spec.task) == ("value",) and spec.main_output == "value"
    reference = np.array([[61.5], [40.25]], np.float32)  # the Keras model's [n, 1]
    result = CheckResult(answers={"serving_default/value": reference[:, 0] + 1e-4})
    assert compare_with_model("x", result, {"serving_default": reference}, "value") < 1e-5
    result.answers["serving_default/value"] = reference[:, 0] + 0.1
    with pytest.raises(ExportError, match="expected the export .* to match the in-memory"):
        compare_with_model("x", result, {"serving_default": reference}, "value")

    # TF Serving's row format writes a single output's values bare; gRPC keeps the name.
    rows = _rows_from_rest({"predictions": [61.5, 40.25]}, 2, "w")
    assert rows == [{"value": 61.5}, {"value": 40.25}]
    assert _rows_from_grpc({"value": np.array([61.5, 40.25])}, 2, "w") == rows
    assert format_rows(["good", "bad"], rows) == ["61.5\tgood", "40.25\tbad"]
    with pytest.raises(KerasftError, match="a TF Serving answer with 3 predictions"):
        _rows_from_rest({"predictions": [1.0, 2.0]}, 3, "w")


def test_regression_refuses_arrays_for_now():
    from kerasft.api import build_finetuner
    from kerasft.errors import KerasftError

    ft = build_finetuner({**_base(task="regression"), "data": {"source": "arrays"}},
                         log=lambda s: None)
    with pytest.raises(KerasftError, match=r"data from config.data \(a CSV\) for head.task "
                                           r"regression\. Received: fit x="):
        ft.plan(np.array(["a", "b"]), np.array([1.5, 2.5]))


@pytest.mark.slow
def test_regression_end_to_end_export_answers_value_in_original_units(tmp_path):
    from click.testing import CliRunner

    from kerasft.api import FineTuner, build_finetuner
    from kerasft.cli import main
    from tests.bert_fixtures import write_tiny_bert_preset
    from tests.session_loader import SessionModel
    from tests.tf_serving_stub import TFServingStub

    rng = np.random.default_rng(0)
    # Ratings far from 0 (mean ~60): only a head that undoes the scaling answers near them.
    rows = ([(t, f"{80 + rng.normal(0, 3):.2f}") for t in GOOD] * 2
            + [(t, f"{40 + rng.normal(0, 3):.2f}") for t in BAD] * 2)
    train = _csv(tmp_path / "train.csv", rows)
    test = _csv(tmp_path / "test.csv", rows[::4])
    preset = write_tiny_bert_preset(tmp_path / "kh")
    ft = build_finetuner({
        "name": "tinyreg", "seed": 1,
        "backbone": {"name": "bert", "preset": preset, "sequence_length": 16},
        "head": {"target_scaling": "standard", "loss": "huber"},  # task from the data
        "data": {"source": "csv", "train": train, "test": test, "label_column": "rating",
                 "validation_split": 0.25, "batch_size": 8},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.01}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "mixed_precision": "none"},
        "output_dir": str(tmp_path / "runs"), "export": {"dir": str(tmp_path / "saved")},
    }, log=lambda s: None)
    summary = ft.fit()
    assert ft.config.head.task == "regression"  # resolved from the float ratings
    assert set(summary["stages"][0]["final_logs"]) >= {"loss", "mae", "val_loss", "val_mae"}
    train_y = ft.data.train.labels
    assert ft.target_stats == pytest.approx((train_y.mean(), train_y.std()), rel=1e-5)
    metrics = json.loads((ft.run_dir / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["split"] == "test"
    assert {"mae", "rmse", "r2", "pearson", "spearman"} <= set(metrics)
    assert "accuracy" not in metrics and "RMSE" in (ft.run_dir / "metrics.txt").read_text()

    texts = ["a great movie", "terrible and awful", "", "unknownword zzz"]
    values = ft.predict(texts)
    assert values.shape == (4,) and values.dtype == np.float32
    assert np.all(np.abs(values - 60) < 40)  # original units, not standardised ones

    # verify=False: the fresh-process export check costs a TensorFlow start-up; the session
    # loader below and the stub (which replays the warmup file at load) check the same things.
    path = ft.export(verify=False)
    assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()
    extras = path / "assets.extra"
    assert not (extras / "labels.txt").exists()
    assert json.loads((extras / "targets.json").read_text())["mean"] == pytest.approx(
        ft.target_stats[0])
    card = (extras / "README.md").read_text()
    assert "regression" in card and "`value`" in card and "| rmse |" in card
    # kerasft's export check, in this process: session loader, warmup replay, object loader.
    from kerasft.export.check import check
    from kerasft.export.saved_model import CheckResult, compare_with_model

    answers = check(str(path), {"serving_default/text": np.array(texts, dtype=object)})
    assert set(answers) == {"serving_default/value"}
    assert compare_with_model(path, CheckResult(answers=answers),
                              {"serving_default": values}, "value") <= 1e-5
    with SessionModel(path) as session:
        assert set(session.signatures["serving_default"].outputs) == {"value"}
        out = session.run("serving_default", text=np.array(texts, dtype=object))
    assert out["value"].dtype == np.float32 and out["value"].shape == (4,)
    np.testing.assert_allclose(out["value"], values, rtol=1e-5)

    with TFServingStub(tmp_path / "saved" / "tinyreg", model_name="tinyreg") as stub:
        result = CliRunner().invoke(main, ["predict", "--server", stub.url, "--model",
                                           "tinyreg", "--text", texts[0], "--text", texts[1]])
    assert result.exit_code == 0, result.output
    served = [float(line.split("\t")[0]) for line in result.output.strip().splitlines()]
    np.testing.assert_allclose(served, values[:2], rtol=1e-3)
    result = CliRunner().invoke(main, ["predict", str(path), "--text", texts[0]])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{values[0]:.4g}\t{texts[0]}"

    # targets.json restores the scaling: the rebuilt model scores as the trained one predicted.
    again = FineTuner.from_run(ft.run_dir, log=lambda s: None)
    given = again.evaluate(texts, [80.0, 40.0, 60.0, 60.0])
    assert given["examples"] == 4 and given["mae"] == pytest.approx(
        np.abs(values - [80, 40, 60, 60]).mean(), rel=1e-5)


def test_several_label_columns_are_a_multi_target_regression(tmp_path):
    from kerasft.data.sources import load_data
    from kerasft.errors import DataError

    for data, message in [
        ({"label_column": ["a", "a"]}, r"list of different ones.*data.label_column=\['a', 'a'\]"),
        ({"label_column": []}, r"data.label_column=\[\]"),
        ({"label_column": ["a", "b"]}, r"head.task: regression with a list of label columns"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config({"backbone": {"name": "bert"}, "data": data})
    with pytest.raises(ConfigError, match=r"one label column for data.source: jsonl"):
        load_config({"backbone": {"name": "bert"}, "head": {"task": "regression"},
                     "data": {"source": "jsonl", "label_column": ["a", "b"]}})

    path = tmp_path / "two.csv"
    path.write_text("text,stars,length\na good movie,4.5,3\nawful film,1.0,2\n"
                    "liked it,3.5,\nvery nice,4,2\nit was bad,1.5,3\nnot good,2,2\n")
    cfg = load_config({"backbone": {"name": "bert"}, "head": {"task": "regression"},
                       "data": {"train": str(path), "label_column": ["stars", "length"],
                                "validation_split": 0.2}}, resolve_paths=False)
    data = load_data(cfg.data, seed=0, regression=True)
    assert data.class_names == ["stars", "length"]
    assert data.train.labels.shape == (4, 2) and data.train.labels.dtype == np.float32
    both = np.concatenate([data.train.labels, data.validation.labels])
    assert sorted(map(tuple, both.tolist())) == [(1.0, 2.0), (1.5, 3.0), (2.0, 2.0), (4.0, 2.0),
                                                 (4.5, 3.0)]
    assert data.report["skipped"]["train"]["empty label"]["count"] == 1  # "liked it": no length
    path.write_text("text,stars,length\na good movie,4.5,three\nawful film,1.0,2\n")
    with pytest.raises(DataError, match=r"two\.csv:2: expected a number .*"
                                         r"Received: train 'length'='three'$"):
        load_data(cfg.data, seed=0, regression=True)


def test_multi_target_metrics_per_column_and_their_mean():
    truth = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    pred = np.array([[1.5, 10.0], [2.0, 22.0], [2.5, 30.0], [4.0, 40.0]])
    report = regression_report(truth, pred, ["stars", "length"])
    stars, length = (regression_report(truth[:, j], pred[:, j]) for j in range(2))
    assert report["targets"]["stars"]["mae"] == pytest.approx(stars["mae"]) == 0.25
    assert report["targets"]["length"]["rmse"] == pytest.approx(length["rmse"]) == 1.0
    for key in ("mae", "rmse", "r2", "pearson", "spearman"):
        assert report[key] == pytest.approx((stars[key] + length[key]) / 2), key
    text = format_report(report)
    assert "stars" in text.splitlines()[0] and "mean" in text.splitlines()[0]


@pytest.mark.slow
def test_multi_target_export_answers_a_value_row_per_text(tmp_path):
    from kerasft.api import FineTuner, build_finetuner
    from tests.bert_fixtures import write_tiny_bert_preset
    from tests.session_loader import SessionModel

    rng = np.random.default_rng(0)
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "stars", "words"])
        for t in (GOOD + BAD) * 2:  # two targets on different scales
            writer.writerow([t, f"{(4.5 if t in GOOD else 1.5) + rng.normal(0, 0.2):.2f}",
                             f"{100 * len(t.split()) + rng.normal(0, 5):.1f}"])
    ft = build_finetuner({
        "name": "tinyreg2", "seed": 1,
        "backbone": {"name": "bert", "preset": write_tiny_bert_preset(tmp_path / "kh"),
                     "sequence_length": 16},
        "head": {"task": "regression", "target_scaling": "standard"},
        "data": {"source": "csv", "train": str(path), "label_column": ["stars", "words"],
                 "validation_split": 0.25, "batch_size": 8},
        "stages": [{"name": "head", "trainable": "head", "epochs": 1, "learning_rate": 0.01}],
        "training": {"strategy": "default", "tensorboard": False, "verbose": "silent",
                     "mixed_precision": "none"},
        "output_dir": str(tmp_path / "runs"), "export": {"dir": str(tmp_path / "saved")},
    }, log=lambda s: None)
    ft.fit()
    train_y = ft.data.train.labels
    assert np.allclose(ft.target_stats[0], train_y.mean(0), rtol=1e-5)
    metrics = json.loads((ft.run_dir / "metrics.json").read_text())
    assert set(metrics["targets"]) == {"stars", "words"}
    texts = ["a great movie", "terrible and awful film", ""]
    values = ft.predict(texts)
    assert values.shape == (3, 2)
    assert np.all(np.abs(values[:, 1] - 300) < 300)  # original units of each column
    path = ft.export(verify=False)
    with SessionModel(path) as session:
        out = session.run("serving_default", text=np.array(texts, dtype=object))
    np.testing.assert_allclose(out["value"], values, rtol=1e-5, atol=1e-4)
    assert "`[batch, 2]`" in (path / "assets.extra" / "README.md").read_text()
    again = FineTuner.from_run(ft.run_dir, log=lambda s: None)  # targets.json holds two columns
    np.testing.assert_allclose(again.predict(texts), values, rtol=1e-5, atol=1e-4)
