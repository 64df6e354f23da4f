"""Reference models users would otherwise pick, scored exactly like the networks.

``gbdt``: one gradient-boosted tree model per task (scikit-learn's
``HistGradientBoostingRegressor`` / ``HistGradientBoostingClassifier`` with
native categorical support) on the same training rows, the same label masks and
the same metrics and normalised loss as the networks. It appears in
``leaderboard.csv`` as the row ``baseline:gbdt``: a reference, never ranked.

Trees see the raw columns (numbers as they are, text as categories), not the
networks' one-hot encoding; the trees stop early on a slice of the *training*
rows, so the validation and test splits stay untouched.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from mtl_search.errors import UserError
from mtl_search.metrics import BINARY, REGRESSION, evaluate_task
from mtl_search.results import NLOSS, TEST, VALID, baseline_label, metric_key, score_key

if TYPE_CHECKING:  # the registry is read by the spec's validation, which must not need the data layer
    from mtl_search.data import PreparedData

#: Raw feature columns per split (``mtl_search.data.raw_features``).
RawFeatures = Mapping[str, pd.DataFrame]


class Baseline(ABC):
    """A reference model family: one model per task, evaluated on the validation and test splits."""

    name: ClassVar[str]

    def check(self, data: PreparedData) -> None:  # noqa: B027 - optional: most baselines take any data
        """Refuse, before any training, data this baseline cannot fit in reasonable time or memory.

        Raises:
            UserError: naming the task and the way out.
        """

    @abstractmethod
    def evaluate(self, data: PreparedData, features: RawFeatures, *, seed: int) -> dict[str, float]:
        """Metrics in the trials' naming (``valid/<task>/<metric>``, ``test/<task>/<metric>``, incl. ``nloss``).

        Args:
            data: the prepared splits (labels, masks, trivial losses).
            features: the same rows' raw feature columns.
            seed: seeds the models.
        """


class GBDT(Baseline):
    """Per-task histogram gradient boosting (scikit-learn), native categorical support."""

    name = "gbdt"
    #: The most classes a task may have: a classifier grows one tree per class per boosting round (measured:
    #: 5,000 classes ran for minutes at 11 GB before the first round ended).
    max_classes: ClassVar[int] = 200

    def __init__(self, *, max_iter: int = 200, learning_rate: float = 0.1, l2_regularization: float = 1.0) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        # scikit-learn's default 0 lets a leaf of a rare class take a huge Newton step (its hessian p(1-p) is
        # ~0): measured on the default spec's 9-class task, one seed in four predicted a test row's true class
        # with log-loss > 700 and doubled the task's normalised loss. 1.0 stops that and scores better on every seed.
        self.l2_regularization = l2_regularization

    def check(self, data: PreparedData) -> None:
        wide = {name: len(task.classes) for name, task in data.tasks.items() if len(task.classes) > self.max_classes}
        if wide:
            listed = ", ".join(f"{name} ({count:,} classes)" for name, count in wide.items())
            raise UserError(f"baselines: gbdt grows one tree per class in every boosting round, and task(s) {listed} "
                            f"have more than {self.max_classes}: it would take hours and many GB; remove gbdt from "
                            "baselines, or group rare classes of the target column into fewer")

    def evaluate(self, data: PreparedData, features: RawFeatures, *, seed: int) -> dict[str, float]:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        metrics: dict[str, float] = {}
        for name, task in data.tasks.items():
            train = data.splits["train"]
            labelled = train.mask[name]
            options: dict[str, Any] = dict(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                           l2_regularization=self.l2_regularization,
                                           categorical_features="from_dtype", early_stopping=True,
                                           random_state=seed)
            if task.type == REGRESSION:
                model: Any = HistGradientBoostingRegressor(**options)
            else:
                model = HistGradientBoostingClassifier(**options)
            with warnings.catch_warnings():  # few rows a class is what this baseline is for, not a mistake
                warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
                _fit(model, features["train"][labelled], train.y[name][labelled], task.type, seed)
            for split in (VALID, TEST):
                arrays = data.splits[split]
                outputs = _outputs(model, features[split], task.type, task.outputs)
                values = evaluate_task(task.type, outputs, arrays.y[name], arrays.mask[name], target_std=task.std)
                values[NLOSS] = values["loss"] / arrays.trivial_loss[name]
                metrics.update({metric_key(split, name, k): v for k, v in values.items()})
        for split in (VALID, TEST):
            metrics[score_key(split)] = float(np.mean([metrics[metric_key(split, t, NLOSS)] for t in data.tasks]))
        return metrics


def _fit(model: Any, x: pd.DataFrame, y: np.ndarray, kind: str, seed: int) -> None:
    """Fit, stopping early on scikit-learn's own stratified 10% slice of the training rows when it can.

    A class with a single training row cannot be stratified and scikit-learn refuses; then the slice is drawn
    here, stratified over the classes with two rows or more, and every one-row class stays in the fitting part
    (with too few such rows for a slice, the model trains without early stopping).
    """
    classes, counts = np.unique(y, return_counts=True)
    if kind == REGRESSION or counts.min() >= 2:
        model.fit(x, y)
        return
    from sklearn.model_selection import train_test_split

    candidates = np.flatnonzero(np.isin(y, classes[counts >= 2]))
    kinds = len(np.unique(y[candidates]))
    if kinds == 0 or len(candidates) < 2 * kinds:
        model.set_params(early_stopping=False)
        model.fit(x, y)
        return
    held = max(0.1, kinds / len(candidates))  # at least one row of each class
    _, stop = train_test_split(candidates, test_size=held, stratify=y[candidates], random_state=seed)
    fit = np.setdiff1d(np.arange(len(y)), stop)
    model.fit(x.iloc[fit], y[fit], X_val=x.iloc[stop], y_val=y[stop])


def _outputs(model: Any, features: pd.DataFrame, kind: str, classes: int) -> np.ndarray:
    """Predictions in the networks' output space: standardised value, logit, or one score per class."""
    if kind == REGRESSION:
        return model.predict(features)
    scores = model.decision_function(features)
    if kind == BINARY:
        return np.asarray(scores, dtype=np.float64)
    # A class missing from a task's labelled training rows gets no column: give it a very low score.
    full = np.full((len(features), classes), -1e9)
    full[:, model.classes_.astype(int)] = scores
    return full


BASELINES: dict[str, type[Baseline]] = {GBDT.name: GBDT}


def make_baseline(name: str) -> Baseline:
    """Build a registered baseline by name.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    try:
        return BASELINES[name]()
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(sorted(BASELINES))}") from None


def check_baselines(data: PreparedData, names: Sequence[str]) -> None:
    """:meth:`Baseline.check` of each of ``names``, before anything is trained or written.

    Raises:
        UserError: a baseline cannot fit this data (the message names the task and the way out).
    """
    for name in names:
        make_baseline(name).check(data)


def baseline_rows(data: PreparedData, features: RawFeatures, names: Sequence[str], *,
                  seed: int) -> dict[str, Mapping[str, float]]:
    """``baseline:<name>`` (see :func:`mtl_search.results.baseline_label`) -> its metrics, for each of ``names``."""
    return {baseline_label(name): make_baseline(name).evaluate(data, features, seed=seed) for name in names}
