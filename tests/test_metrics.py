"""Metrics agree with scikit-learn and read well."""

from __future__ import annotations

import numpy as np
import pytest

from kerasft.evaluation.metrics import classification_report, format_report, plot_history

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_report_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200)
    probs[np.arange(100), y[:100]] += 1.0  # half of them right
    report = classification_report(y, probs, ["a", "b", "c", "d"])
    pred = probs.argmax(1)
    assert report["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, pred))
    assert report["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(y, pred, average="macro"))
    assert report["weighted_f1"] == pytest.approx(
        sklearn_metrics.f1_score(y, pred, average="weighted"))
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(y, pred)
    for i, name in enumerate("abcd"):
        assert report["per_class"][name]["precision"] == pytest.approx(p[i])
        assert report["per_class"][name]["recall"] == pytest.approx(r[i])
        assert report["per_class"][name]["f1"] == pytest.approx(f[i])
        assert report["per_class"][name]["support"] == s[i]
    np.testing.assert_array_equal(report["confusion_matrix"],
                                  sklearn_metrics.confusion_matrix(y, pred))


def test_class_never_predicted_has_zero_precision_not_nan():
    report = classification_report(np.array([0, 1, 2]), np.eye(3)[[0, 1, 1]], ["x", "y", "z"])
    assert report["per_class"]["z"]["precision"] == 0.0
    assert report["per_class"]["z"]["recall"] == 0.0


def test_multi_label_report():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    probs = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.6], [0.6, 0.4, 0.1]])
    report = classification_report(y, probs, ["a", "b", "c"], multi_label=True)
    assert report["accuracy"] == pytest.approx(1 / 3)
    assert report["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert "confusion_matrix" not in report


def test_table_is_readable():
    report = classification_report(np.array([0, 1, 1]), np.eye(2)[[0, 1, 0]],
                                   ["negative", "positive"])
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[1].split() == ["negative", "0.5000", "1.0000", "0.6667", "1"]
    assert "confusion matrix (rows: true, columns: predicted)" in text
    assert lines[-2].split() == ["negative", "1", "0"]


def test_training_curves_png(tmp_path):
    pytest.importorskip("matplotlib")
    csv = tmp_path / "history.csv"
    csv.write_text("stage,epoch,learning_rate,accuracy,loss,val_accuracy,val_loss\n"
                   "head,1,0.1,0.5,1.0,0.5,1.1\nall,2,0.01,0.7,0.6,0.6,0.8\n")
    assert plot_history(csv, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
