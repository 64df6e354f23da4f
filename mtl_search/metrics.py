"""Per-task metrics, and the normalised loss that makes tasks comparable. NumPy only (no torch).

Losses are those the networks train on (see :mod:`mtl_search.losses`): MSE on
standardised targets, binary cross-entropy with logits, cross-entropy; rows
whose label is missing for a task carry ``mask = False`` and do not count.

The *normalised loss* of a task is its loss divided by the loss of a trivial
predictor fitted on the training split (the training mean for regression, the
training class prior for classification), both measured on the same rows.
About 1 for a useless model; lower is better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

REGRESSION, BINARY, MULTICLASS = "regression", "binary", "multiclass"
TASK_TYPES = (REGRESSION, BINARY, MULTICLASS)


@dataclass(frozen=True)
class MetricInfo:
    """A reported metric and whether larger is better."""

    name: str
    higher_is_better: bool


#: The headline metric per task type (the leaderboard's per-task column).
PRIMARY_METRIC: dict[str, MetricInfo] = {
    REGRESSION: MetricInfo("rmse", higher_is_better=False),
    BINARY: MetricInfo("auc", higher_is_better=True),
    MULTICLASS: MetricInfo("accuracy", higher_is_better=True),
}


def trivial_loss(kind: str, target: np.ndarray, mask: np.ndarray, prior: np.ndarray | None) -> float:
    """Loss of the trivial predictor on labelled rows of one split.

    For regression the targets are standardised on the training split, so the
    trivial prediction is 0. For classification ``prior`` holds the training
    class frequencies (binary: ``[p_negative, p_positive]``).
    """
    y = target[mask]
    if y.size == 0:
        return float("nan")
    if kind == REGRESSION:
        return float(np.mean(y.astype(np.float64) ** 2))
    if prior is None:
        raise ValueError(f"a {kind} task's trivial loss needs the training class prior, but got prior=None.")
    probabilities = prior[y.astype(np.int64)]
    return float(-np.mean(np.log(probabilities)))


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Training class frequencies with one pseudo-count per class (no zero probabilities)."""
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype(np.float64) + 1.0
    return counts / counts.sum()


def evaluate_task(
    kind: str,
    output: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    *,
    target_std: float = 1.0,
) -> dict[str, float]:
    """Loss and metrics of one task on one split, from raw network outputs.

    Regression errors (``rmse``, ``mae``) are in the target's original units
    (``target_std`` undoes the standardisation); ``r2`` is unit-free.
    """
    out = output[mask].astype(np.float64)
    y = target[mask]
    if y.size == 0:
        return {}
    if kind == REGRESSION:
        error = out - y
        mse = float(np.mean(error**2))
        spread = float(np.sum((y - y.mean()) ** 2))
        return {
            "loss": mse,
            "rmse": math.sqrt(mse) * target_std,
            "mae": float(np.mean(np.abs(error))) * target_std,
            "r2": 1.0 - float(np.sum(error**2)) / spread if spread > 0 else float("nan"),
        }
    if kind == BINARY:
        y = y.astype(np.int64)
        log_p = -np.logaddexp(0.0, -out)  # log sigmoid
        log_not_p = -np.logaddexp(0.0, out)
        loss = float(-np.mean(np.where(y == 1, log_p, log_not_p)))
        both = 0 < y.sum() < y.size
        return {
            "loss": loss,
            "auc": roc_auc(y, out) if both else float("nan"),
            "accuracy": float(np.mean((out > 0) == (y == 1))),
        }
    if kind == MULTICLASS:
        y = y.astype(np.int64)
        shifted = out - out.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        predicted = out.argmax(axis=1)
        return {
            "loss": float(-np.mean(log_probs[np.arange(y.size), y])),
            "accuracy": float(np.mean(predicted == y)),
            "macro_f1": macro_f1(y, predicted),
        }
    raise ValueError(unknown_task_type(kind))


# A trial evaluates every network's tasks on two splits after every epoch: scikit-learn's metrics
# spend most of their time validating arguments (0.4 s an epoch for the default spec's 31 networks,
# a third of the epoch), so the two that need more than a line are written out here, tested
# against scikit-learn's.


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for 0/1 labels ``y`` (both present): the Mann-Whitney U
    statistic, tied scores sharing their average rank."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based
    positives = y == 1
    n_pos = int(positives.sum())
    n_neg = y.size - n_pos
    rank_sum = float(average_rank[inverse[positives]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def macro_f1(y: np.ndarray, predicted: np.ndarray) -> float:
    """F1 averaged over the classes that occur in ``y`` or ``predicted`` (non-negative class ids)."""
    size = int(max(y.max(), predicted.max())) + 1
    true_count = np.bincount(y, minlength=size)
    predicted_count = np.bincount(predicted, minlength=size)
    hits = np.bincount(y[y == predicted], minlength=size)
    present = (true_count + predicted_count) > 0
    return float(np.mean(2.0 * hits[present] / (true_count[present] + predicted_count[present])))


def unknown_task_type(kind: object) -> str:
    """The message for a task type that is none of :data:`TASK_TYPES`."""
    return f"unknown task type {kind!r}; valid: {', '.join(sorted(TASK_TYPES))}"
