"""Per-task metrics and the trivial predictor behind the normalised loss (NumPy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from mtl_search.metrics import class_prior, evaluate_task, macro_f1, roc_auc, trivial_loss


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    logits = rng.normal(size=200) + y
    mask = rng.random(200) < 0.8
    values = evaluate_task("binary", logits, y.astype(np.float32), mask)
    probability = 1 / (1 + np.exp(-logits[mask]))
    assert values["auc"] == pytest.approx(roc_auc_score(y[mask], logits[mask]))
    assert values["loss"] == pytest.approx(log_loss(y[mask], probability))
    assert values["accuracy"] == pytest.approx(np.mean((probability > 0.5) == y[mask]))


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4))
    logits[np.arange(300), y] += 1.0
    mask = np.ones(300, dtype=bool)
    values = evaluate_task("multiclass", logits, y, mask)
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert values["loss"] == pytest.approx(log_loss(y, probabilities, labels=range(4)))
    assert values["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    assert values["macro_f1"] == pytest.approx(f1_score(y, logits.argmax(1), average="macro"))


def test_regression_errors_are_in_original_units():
    y = np.array([0.0, 1.0, -1.0, 2.0], dtype=np.float32)  # standardised
    out = y + np.array([0.5, -0.5, 0.5, -0.5])
    values = evaluate_task("regression", out, y, np.ones(4, dtype=bool), target_std=10.0)
    assert values["loss"] == pytest.approx(0.25)
    assert values["rmse"] == pytest.approx(5.0)
    assert values["mae"] == pytest.approx(5.0)
    assert values["r2"] == pytest.approx(1 - 1.0 / np.sum((y - y.mean()) ** 2))


def test_trivial_losses():
    y = np.array([0.5, -0.5, 1.0, 0.0], dtype=np.float32)
    assert trivial_loss("regression", y, np.ones(4, bool), None) == pytest.approx(np.mean(y**2))
    labels = np.array([0, 0, 0, 1])
    prior = class_prior(labels, 2)
    assert prior.tolist() == pytest.approx([4 / 6, 2 / 6])  # one pseudo-count per class
    expected = -(3 * math.log(4 / 6) + math.log(2 / 6)) / 4
    assert trivial_loss("binary", labels.astype(np.float32), np.ones(4, bool), prior) == pytest.approx(expected)
    assert math.isnan(trivial_loss("binary", labels, np.zeros(4, bool), prior))


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_macro_f1_match_sklearn_with_ties_and_missing_classes(seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.normal(size=300) + y, 1)  # rounded: many tied scores
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    labels = rng.integers(0, 6, 200)
    predicted = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 8, 200))  # classes 6, 7 only predicted
    predicted[predicted == 2] = 3  # class 2 never predicted
    assert macro_f1(labels, predicted) == pytest.approx(f1_score(labels, predicted, average="macro", zero_division=0),
                                                        abs=1e-12)
