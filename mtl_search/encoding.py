"""Encoding a table for the networks, fitted on the training rows only.

Targets: a regression target is standardised with the training mean and
standard deviation; a classification target's classes are those seen in
training (other values count as unlabelled). Features: numbers are imputed
(median, plus a missing-value indicator) and standardised (or quantile-,
piecewise-linear- or periodic-encoded: ``space.numeric_encoding``), other
columns one-hot encoded (categories rarer than 10 training rows pooled, at most
``data.max_categories`` per column).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from mtl_search.config import DataSpec
from mtl_search.errors import DataError
from mtl_search.metrics import BINARY, MULTICLASS, REGRESSION, class_prior

MISSING_CATEGORY = "__missing__"

#: Bins per numeric column of the ``piecewise_linear`` encoding (at most: tied quantiles merge).
PIECEWISE_BINS = 8
#: Frequencies per numeric column of the ``periodic`` encoding, and the spread they are drawn with.
PERIODIC_FREQUENCIES = 8
PERIODIC_SIGMA = 1.0

#: The largest magnitude a number may have: networks train in float32 (about 3.4e38).
FLOAT32_LIMIT = float(np.finfo(np.float32).max)


class PiecewiseLinear(TransformerMixin, BaseEstimator):
    """Piecewise-linear encoding of numbers (Gorishniy, Rubachev and Babenko, NeurIPS 2022), bins at the
    training quantiles.

    A column becomes one component per bin: 1 for the bins below the value, the value's position in its
    own bin (0 to 1) for that bin, 0 for the bins above. The first component goes below 0 and the last
    above 1 for values outside the training range, so nothing is clipped away. A column with one
    distinct training value becomes one component of zeros.
    """

    def __init__(self, bins: int = PIECEWISE_BINS) -> None:
        self.bins = bins

    def fit(self, x: Any, y: Any = None) -> PiecewiseLinear:
        x = np.asarray(x, dtype=np.float64)
        self.n_features_in_ = x.shape[1]
        self.edges_ = [np.unique(np.quantile(column, np.linspace(0.0, 1.0, self.bins + 1))) for column in x.T]
        return self

    def transform(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        parts = []
        for column, edges in zip(x.T, self.edges_, strict=True):
            if len(edges) < 2:
                parts.append(np.zeros((len(column), 1)))
                continue
            encoded = (column[:, None] - edges[:-1]) / np.diff(edges)
            encoded[:, 1:] = np.maximum(encoded[:, 1:], 0.0)  # every bin but the first starts at 0
            encoded[:, :-1] = np.minimum(encoded[:, :-1], 1.0)  # every bin but the last ends at 1
            parts.append(encoded)
        return np.hstack(parts)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = input_features if input_features is not None else [f"x{i}" for i in range(self.n_features_in_)]
        return np.array([f"{name}_bin{t}" for name, edges in zip(names, self.edges_, strict=True)
                         for t in range(max(1, len(edges) - 1))], dtype=object)


class Periodic(TransformerMixin, BaseEstimator):
    """Periodic encoding of numbers: the standardised value ``z`` and ``sin(2 pi c z)``, ``cos(2 pi c z)`` for
    ``frequencies`` frequencies ``c`` per column drawn once from ``N(0, sigma^2)``.

    The periodic embeddings of Gorishniy, Rubachev and Babenko (NeurIPS 2022) put these features before a
    linear layer and a ReLU ("PLR"), with the frequencies trained. Here the frequencies stay as drawn
    (random Fourier features, Rahimi and Recht 2007), so the encoding is a preprocessing step fitted on the
    training rows, and the first hidden layer of every network is the "LR" that reads it.
    """

    def __init__(self, frequencies: int = PERIODIC_FREQUENCIES, sigma: float = PERIODIC_SIGMA,
                 random_state: int = 0) -> None:
        self.frequencies = frequencies
        self.sigma = sigma
        self.random_state = random_state

    def fit(self, x: Any, y: Any = None) -> Periodic:
        x = np.asarray(x, dtype=np.float64)
        self.n_features_in_ = x.shape[1]
        self.mean_ = x.mean(axis=0)
        std = x.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        rng = np.random.default_rng(self.random_state)
        self.frequencies_ = rng.normal(0.0, self.sigma, size=(x.shape[1], self.frequencies))
        return self

    def transform(self, x: Any) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_
        angles = 2 * np.pi * z[:, :, None] * self.frequencies_  # (rows, columns, frequencies)
        return np.concatenate([z[:, :, None], np.sin(angles), np.cos(angles)], axis=2).reshape(len(z), -1)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = input_features if input_features is not None else [f"x{i}" for i in range(self.n_features_in_)]
        parts = ["z", *(f"sin{f}" for f in range(self.frequencies)), *(f"cos{f}" for f in range(self.frequencies))]
        return np.array([f"{name}_{part}" for name in names for part in parts], dtype=object)


@dataclass(frozen=True)
class Task:
    """A target, as encoded for training.

    Attributes:
        name: the task's name in the spec.
        column: the table column holding its labels.
        type: ``regression``, ``binary`` or ``multiclass``.
        classes: class labels in encoding order (binary: negative, positive).
        mean, std: training statistics used to standardise a regression target.
        positive: for a binary task derived from a column of many values, the values that
            are its positive class (labels 1; other values 0); empty otherwise.
    """

    name: str
    column: str
    type: str
    classes: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    positive: tuple[str, ...] = ()

    @property
    def outputs(self) -> int:
        """Output units: K for K classes, else 1."""
        return len(self.classes) if self.type == MULTICLASS else 1


def derive_binary_targets(
    frame: pd.DataFrame, tasks: dict[str, tuple[str, str]], spec: DataSpec, origin: str
) -> pd.DataFrame:
    """Replace the column of each task with ``positive`` values by its 0/1 labels (missing stays missing).

    Only a target column changes, and one column serves one task, so features are untouched.
    """
    derived: dict[str, pd.Series] = {}
    for name, task_spec in (spec.tasks or {}).items():
        if task_spec.positive is None:
            continue
        column = tasks[name][0]
        values = frame[column]
        where = f"data.tasks.{name}.positive (column {column} in {origin})"
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            try:
                wanted: list[Any] = [float(v) for v in task_spec.positive]
            except (TypeError, ValueError):
                raise DataError(f"{where}: the column holds numbers, but positive lists "
                                f"{', '.join(map(repr, task_spec.positive))}") from None
            comparable = values.astype("float64")
            present = set(comparable.dropna().unique().tolist())
        else:
            wanted = [str(v) for v in task_spec.positive]
            comparable = values.astype("string")
            present = set(comparable.dropna().unique().tolist())
        absent = [v for v in wanted if v not in present]
        if absent:
            choices = sorted(map(str, present))
            hints = []
            for value in absent:
                close = difflib.get_close_matches(str(value), choices, n=1)
                hints.append(repr(value) + (f" (did you mean {close[0]!r}?)" if close else ""))
            shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
            verb = "does" if len(absent) == 1 else "do"
            raise DataError(f"{where}: {', '.join(hints)} {verb} not occur in the column; its values: {shown}")
        labels = pd.Series(np.where(comparable.isin(wanted).fillna(False), 1, 0), index=frame.index, dtype="Int64")
        derived[column] = labels.where(values.notna())
    return frame.assign(**derived) if derived else frame


def encode_target(
    name: str, column: str, kind: str, values: pd.Series, index: dict[str, np.ndarray], origin: str
) -> tuple[Task, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    where = f"task {name} (column {column} in {origin})"
    present = values.notna().to_numpy()
    train = index["train"]
    if not present.any():
        raise DataError(f"{where}: every label is missing (the column is empty in all {len(values)} rows); "
                        "name the column that holds the task's labels, or remove the task")
    if not present[train].any():
        raise DataError(f"{where}: every training label is missing; the training split needs labelled rows "
                        "(check the column, or use data.split.column to assign rows)")
    encoded: dict[str, np.ndarray] = {}
    mask: dict[str, np.ndarray] = {}
    if kind == REGRESSION:
        numeric = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & numeric.isna()
        if bad.any():
            examples = ", ".join(repr(v) for v in values[bad].unique()[:3])
            raise DataError(f"{where}: a regression target must be numeric, but holds {examples}; "
                            "use type binary or multiclass for labels")
        array = numeric.to_numpy(dtype=np.float64)
        if not np.isfinite(array[present]).all():
            raise DataError(f"{where}: holds infinite values; replace them or leave the cells empty")
        if (np.abs(array[present]) > FLOAT32_LIMIT).any():
            raise DataError(f"{where}: holds values beyond what float32 holds (|x| > {FLOAT32_LIMIT:.1e}), e.g. "
                            f"{array[present][np.abs(array[present]) > FLOAT32_LIMIT][0]:g}; rescale the column "
                            "(e.g. to thousands, or its logarithm)")
        mean = float(np.mean(array[train][present[train]]))
        std = float(np.std(array[train][present[train]]))
        if std == 0:
            raise DataError(f"{where}: every training label equals {mean:g}; nothing to learn")
        standardised = np.where(present, (array - mean) / std, 0.0).astype(np.float32)
        for split, rows in index.items():
            encoded[split] = standardised[rows]
            mask[split] = present[rows]
        return Task(name, column, kind, mean=mean, std=std), encoded, mask, None

    text = values.astype("string")
    classes = tuple(sorted(text[train][present[train]].unique(), key=_class_order))
    if len(classes) < 2:
        raise DataError(f"{where}: a {kind} target needs at least two classes in the training split, "
                        f"found {list(classes)}")
    if kind == BINARY and len(classes) > 2:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise DataError(f"{where}: a binary target has two classes, found {len(classes)} ({shown}); "
                        "use type multiclass")
    codes = pd.Categorical(text, categories=list(classes)).codes.astype(np.int64)
    known = codes >= 0
    dtype = np.float32 if kind == BINARY else np.int64
    for split, rows in index.items():
        encoded[split] = np.where(known[rows], codes[rows], 0).astype(dtype)
        mask[split] = known[rows]
    prior = class_prior(codes[train][known[train]], len(classes))
    task = Task(name, column, kind, classes=tuple(str(c) for c in classes))
    return task, encoded, mask, prior


def _class_order(label: str) -> tuple[int, float | str]:
    """Numeric labels in numeric order (so 0 < 1 < 10), then text labels alphabetically."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


#: A text column whose non-empty cells are at least this share numbers is a numeric column with typos.
_MOSTLY_NUMERIC = 0.9


def _refuse_garbled_numbers(values: pd.Series, origin: str) -> None:
    """Stop a numeric column with a few non-numbers from silently becoming a one-hot text column."""
    present = values.dropna()
    if present.empty:
        return
    parsed = pd.to_numeric(present, errors="coerce")
    share = float(parsed.notna().mean())
    if _MOSTLY_NUMERIC <= share < 1.0:
        bad = present[parsed.isna()]
        shown = ", ".join(f"{v!r} (data row {i + 1})" for i, v in list(bad.items())[:3])
        raise DataError(
            f"feature column {values.name} in {origin} is {share:.0%} numbers but also holds {shown}; "
            "fix or empty those cells (empty cells are imputed), or drop the column with data.drop"
        )


def _folded_categories(encoder: Any, columns: list[str], max_categories: int) -> list[str]:
    """A line for each column whose categories ``max_categories`` cut down (rare ones always share)."""
    lines = []
    for column, seen, infrequent in zip(columns, encoder.categories_, encoder.infrequent_categories_,
                                        strict=True):
        if infrequent is None or len(seen) - len(infrequent) < max_categories - 1:
            continue  # nothing folded, or only categories rarer than 10 training rows
        shown = ", ".join(repr(str(value)) for value in list(infrequent)[:3])
        lines.append(f"feature column {column}: {len(seen):,} categories; the {len(seen) - len(infrequent):,} most "
                     f"frequent keep a column each, the other {len(infrequent):,} ({shown}, ...) share one "
                     f"(data.max_categories: {max_categories}; raise it to keep more)")
    return lines


def encode_features(
    frame: pd.DataFrame, index: dict[str, np.ndarray], origin: str, numeric_encoding: str = "standard", *,
    max_categories: int | None = None, notes: list[str] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Encode numeric columns and one-hot encode the rest, every transform fitted on the training rows only.

    Numeric columns are median-imputed, then (a column with missing training values also gets a 0/1
    missing-value indicator column, not encoded)

    * ``standard``: standardised (mean 0, variance 1);
    * ``quantile``: mapped through their training quantiles to a standard normal (scikit-learn's
      ``QuantileTransformer``), which makes skewed, heavy-tailed or spiky columns (incomes, counts)
      well spread and bounded, the input treatment RealMLP and the TabM paper's baselines use;
    * ``piecewise_linear``: one component per training-quantile bin (:class:`PiecewiseLinear`), so the
      first layer can respond to each range of a number separately;
    * ``periodic``: the standardised value and its sines and cosines at a few random frequencies
      (:class:`Periodic`).

    Other columns are one-hot encoded; categories rarer than 10 training rows share one column, and a
    column keeps at most ``max_categories`` columns (its most frequent categories; the rest share one).
    A column cut down by ``max_categories`` gets a line in ``notes`` (how many categories, which share).
    The networks read one-hot columns as embedding lookups (:mod:`mtl_search.packed`).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, QuantileTransformer, StandardScaler

    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and
               not pd.api.types.is_bool_dtype(frame[c])]
    for column in frame.columns:
        if column not in numeric:
            _refuse_garbled_numbers(frame[column], origin)
    categorical = [c for c in frame.columns if c not in numeric]
    for column in numeric:
        values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(values).any():
            raise DataError(f"feature column {column} in {origin} holds infinite values; "
                            "replace them or leave the cells empty")
        if (np.abs(values[~np.isnan(values)]) > FLOAT32_LIMIT).any():
            raise DataError(f"feature column {column} in {origin} holds values beyond what float32 holds "
                            f"(|x| > {FLOAT32_LIMIT:.1e}): its scaled values would overflow; rescale the column "
                            "(e.g. to thousands, or its logarithm) or drop it (data.drop)")
    cats = frame[categorical].astype("string").astype(object).where(frame[categorical].notna(), MISSING_CATEGORY)
    table = pd.concat([frame[numeric], cats], axis=1)
    transformers = []
    if numeric:
        train_rows = len(index["train"])
        scaler = {
            "standard": StandardScaler,
            # At most one quantile per training row; a fixed seed for its subsample of large tables.
            "quantile": partial(QuantileTransformer, n_quantiles=max(2, min(1000, train_rows)),
                                output_distribution="normal", random_state=0),
            "piecewise_linear": PiecewiseLinear,
            "periodic": Periodic,
        }
        if numeric_encoding not in scaler:
            raise ValueError(f"unknown numeric_encoding {numeric_encoding!r}; valid: {', '.join(scaler)}")
        transformers.append(("num", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                                                  scaler[numeric_encoding]()), numeric))
        # 0/1 per column with missing training values, beside the encoding rather than through it.
        transformers.append(("missing", MissingIndicator(error_on_new=False), numeric))
    if categorical:
        transformers.append(("cat", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=10,
                                                  max_categories=max_categories, sparse_output=False,
                                                  dtype=np.float32), categorical))
    encoder = ColumnTransformer(transformers, sparse_threshold=0.0, verbose_feature_names_out=False)
    encoder.fit(table.iloc[index["train"]])
    if categorical and notes is not None and max_categories is not None:
        notes.extend(_folded_categories(encoder.named_transformers_["cat"], categorical, max_categories))
    names = [str(n) for n in encoder.get_feature_names_out()]
    out = {split: np.ascontiguousarray(encoder.transform(table.iloc[rows]), dtype=np.float32)
           for split, rows in index.items()}
    return out, names
