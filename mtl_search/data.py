"""From a table to training arrays: load, check, split, preprocess, mask.

Everything here is fitted on the training split only: feature scaling and
encoding, regression target standardisation, class lists and the trivial
predictors behind the normalised loss. Rows whose label is missing for a task
stay in the data with ``mask = False`` for that task.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from mtl_search.config import DataSpec, ExperimentSpec, SplitSpec
from mtl_search.encoding import MISSING_CATEGORY, Task, derive_binary_targets, encode_features, encode_target
from mtl_search.errors import DataError
from mtl_search.metrics import BINARY, MULTICLASS, trivial_loss
from mtl_search.source import read_table, resolve_columns

SPLITS = ("train", "valid", "test")
MIN_ROWS = {"train": 10, "valid": 5, "test": 5}


@dataclass
class SplitArrays:
    """One split, encoded: features, per-task labels, label masks, trivial losses."""

    x: np.ndarray
    y: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]
    trivial_loss: dict[str, float]

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


@dataclass
class PreparedData:
    """Everything a trial needs, as plain numpy arrays (cheap to ship through Ray's object store)."""

    tasks: dict[str, Task]
    feature_names: list[str]
    input_columns: list[str]
    splits: dict[str, SplitArrays]
    source: str
    notes: list[str] = field(default_factory=list)
    #: Row positions of each split in the table as read (for models that need the raw columns).
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    #: The numeric encoding of :attr:`splits`' features (``space.numeric_encoding``).
    encoding: str = "standard"
    #: Every other encoding the search may choose: name -> (feature names, split -> features).
    alternatives: dict[str, tuple[list[str], dict[str, np.ndarray]]] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def encoded(self, encoding: str | None) -> PreparedData:
        """The same data with its features in ``encoding`` (labels, masks and splits shared, not copied);
        None: as it is.

        Raises:
            ValueError: ``encoding`` was not prepared (the message lists those that were).
        """
        if encoding is None or encoding == self.encoding:
            return self
        if encoding not in self.alternatives:
            raise ValueError(f"numeric encoding {encoding!r} was not prepared; prepared: "
                             f"{', '.join([self.encoding, *self.alternatives])} (space.numeric_encoding lists "
                             "what a search may choose)")
        names, features = self.alternatives[encoding]
        others = {name: alternative for name, alternative in self.alternatives.items() if name != encoding}
        others[self.encoding] = (self.feature_names, {split: arrays.x for split, arrays in self.splits.items()})
        return replace(self, feature_names=names, encoding=encoding, alternatives=others,
                       splits={split: replace(arrays, x=features[split]) for split, arrays in self.splits.items()})

    def summary(self) -> str:
        """A few human-readable lines about the prepared data."""
        sizes = ", ".join(f"{name} {self.splits[name].rows:,}" for name in SPLITS)
        lines = [
            f"data: {self.source}",
            f"rows: {sizes}; {len(self.input_columns)} input columns -> {self.num_features} encoded features",
            "tasks:",
        ]
        for task in self.tasks.values():
            labelled = self.splits["train"].mask[task.name].mean()
            detail = f"{len(task.classes)} classes" if task.classes else f"mean {task.mean:.3g}, std {task.std:.3g}"
            if task.positive:
                detail += f", 1 = {' | '.join(task.positive)}"
            lines.append(f"  {task.name:<14} {task.type:<10} column {task.column} ({detail}; "
                         f"{labelled:.0%} of training rows labelled)")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def prepare(spec: ExperimentSpec) -> PreparedData:
    """Read, check, split and encode the data a spec describes.

    Raises:
        DataError: missing file or columns, unusable targets, too few rows.
    """
    frame, builtin_tasks, exclude, origin = read_table(spec.data)
    tasks, features = resolve_columns(spec.data, frame, builtin_tasks, exclude, origin)
    frame = frame.reset_index(drop=True)
    positives = {name: tuple(str(v) for v in t.positive) for name, t in (spec.data.tasks or {}).items()
                 if t.positive is not None}
    frame = derive_binary_targets(frame, tasks, spec.data, origin)
    notes: list[str] = []
    if spec.data.split.column is None:
        index = _split_rows(frame, tasks, spec.data.split.valid, spec.data.split.test, spec.seed, notes)
    else:
        index = _split_by_column(frame, tasks, spec.data.split, spec.seed, notes, origin)
    encoded_tasks: dict[str, Task] = {}
    labels: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    masks: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    trivial: dict[str, dict[str, float]] = {s: {} for s in SPLITS}
    for name, (column, kind) in tasks.items():
        task, encoded, mask, prior = encode_target(name, column, kind, frame[column], index, origin)
        encoded_tasks[name] = replace(task, positive=positives.get(name, ()))
        # A class absent from training cannot be predicted: such rows count as unlabelled for the task.
        unseen = int(sum((frame[column].notna().to_numpy()[index[s]] & ~mask[s]).sum() for s in SPLITS))
        if unseen:
            notes.append(f"task {name}: {unseen} row(s) with a class absent from training count as unlabelled")
        for split in SPLITS:
            labels[split][name] = encoded[split]
            masks[split][name] = mask[split]
            trivial[split][name] = trivial_loss(kind, encoded[split], mask[split], prior)
            if not mask[split].any():
                raise DataError(
                    f"task {name} (column {column} in {origin}) has no labelled rows in the {split} split; "
                    "it needs labels in every split: check the column or use more rows"
                )
    encodings = [str(name) for name in spec.space.numeric_encoding.candidates()]
    encoded_features = {name: encode_features(frame[features], index, origin, name,
                                              max_categories=spec.data.max_categories,
                                              notes=notes if name == encodings[0] else None)  # said once
                        for name in encodings}
    x, feature_names = encoded_features[encodings[0]]
    splits = {
        split: SplitArrays(x=x[split], y=labels[split], mask=masks[split], trivial_loss=trivial[split])
        for split in SPLITS
    }
    return PreparedData(tasks=encoded_tasks, feature_names=feature_names, input_columns=features,
                        splits=splits, source=origin, notes=notes, rows=index, encoding=encodings[0],
                        alternatives={name: (names, arrays) for name, (arrays, names) in encoded_features.items()
                                      if name != encodings[0]})


def _split_rows(
    frame: pd.DataFrame, tasks: dict[str, tuple[str, str]], valid: float, test: float, seed: int, notes: list[str]
) -> dict[str, np.ndarray]:
    """Seeded train/valid/test row indices, stratified on the first classification task when possible."""
    from sklearn.model_selection import train_test_split

    n = len(frame)
    sizes = {"test": round(n * test), "valid": round(n * valid)}
    sizes["train"] = n - sizes["test"] - sizes["valid"]
    short = [s for s in SPLITS if sizes[s] < MIN_ROWS[s]]
    if short:
        need = max(int(np.ceil(MIN_ROWS[s] / frac)) for s, frac in
                   (("train", 1 - valid - test), ("valid", valid), ("test", test)))
        raise DataError(
            f"too few rows for the split: {n} rows give {sizes['train']} train / {sizes['valid']} valid / "
            f"{sizes['test']} test, and each needs at least {MIN_ROWS['train']}/{MIN_ROWS['valid']}/"
            f"{MIN_ROWS['test']}; use at least {need} rows or change data.split"
        )
    stratify = _stratify_key(frame, tasks, notes, smallest=min(sizes.values()))
    rows = np.arange(n)
    rest, test_rows = train_test_split(rows, test_size=sizes["test"], random_state=seed,
                                       stratify=stratify)
    rest_stratify = stratify[rest] if stratify is not None else None
    train_rows, valid_rows = train_test_split(rest, test_size=sizes["valid"], random_state=seed,
                                              stratify=rest_stratify)
    return {"train": np.sort(train_rows), "valid": np.sort(valid_rows), "test": np.sort(test_rows)}


def _stratify_key(frame: pd.DataFrame, tasks: dict[str, tuple[str, str]], notes: list[str], *,
                  smallest: int) -> np.ndarray | None:
    """The first classification task's labels, to stratify on, if every class has at least 3 rows and every
    split (the smallest has ``smallest`` rows) can hold one row of each class."""
    for name, (column, kind) in tasks.items():
        if kind in (BINARY, MULTICLASS):
            key = frame[column].astype("string").fillna(MISSING_CATEGORY)
            counts = key.value_counts()
            if len(counts) > smallest:
                notes.append(f"split not stratified: task {name} has {len(counts):,} classes, more than the "
                             f"{smallest:,} rows of the smallest split")
                return None
            if counts.min() >= 3:
                notes.append(f"split stratified on task {name}")
                return key.to_numpy()
            return None
    return None


def _split_by_column(
    frame: pd.DataFrame, tasks: dict[str, tuple[str, str]], split: SplitSpec, seed: int, notes: list[str],
    origin: str,
) -> dict[str, np.ndarray]:
    """Row indices that follow ``split.column`` (values train / valid / test).

    When the column names no validation rows, a seeded (and, as in :func:`_split_rows`,
    stratified) fraction ``split.valid`` of the ``split.valid_from`` rows becomes the validation split.
    """
    from sklearn.model_selection import train_test_split

    column = str(split.column)
    names = frame[column].astype("string").str.strip().str.lower()
    bad = names.isna() | ~names.isin(SPLITS)
    if bad.any():
        shown = ", ".join(repr(v) for v in frame[column][bad].astype("string").fillna("<empty>").unique()[:5])
        raise DataError(f"data.split.column: column {column} in {origin} must hold train, valid or test in every "
                        f"row, but {int(bad.sum())} row(s) hold {shown}")
    index = {name: np.flatnonzero((names == name).to_numpy()) for name in SPLITS}
    if len(index["valid"]):
        if split.valid_from is not None:
            raise DataError(f"data.split.valid_from: column {column} in {origin} already names validation rows; "
                            "remove valid_from")
        notes.append(f"split follows column {column}")
    else:
        source = split.valid_from or "train"
        rows = index[source]
        size = round(len(rows) * split.valid)
        if len(rows) - size < MIN_ROWS[source] or size < MIN_ROWS["valid"]:
            raise DataError(f"data.split: column {column} in {origin} names {len(rows)} {source} row(s); a fraction "
                            f"{split.valid:g} of them cannot leave at least {MIN_ROWS['valid']} validation and "
                            f"{MIN_ROWS[source]} {source} rows")
        stratify = _stratify_key(frame.iloc[rows], tasks, notes, smallest=min(size, len(rows) - size))
        kept, valid = train_test_split(rows, test_size=size, random_state=seed, stratify=stratify)
        index[source], index["valid"] = np.sort(kept), np.sort(valid)
        notes.append(f"split follows column {column}; validation = {split.valid:g} of its {source} rows (seeded)")
    short = [name for name in SPLITS if len(index[name]) < MIN_ROWS[name]]
    if short:
        sizes = " / ".join(f"{len(index[name])} {name}" for name in SPLITS)
        raise DataError(f"data.split.column: column {column} in {origin} gives {sizes} rows, and each split needs at "
                        f"least {MIN_ROWS['train']}/{MIN_ROWS['valid']}/{MIN_ROWS['test']}")
    return index




def raw_features(spec: DataSpec, data: PreparedData) -> dict[str, pd.DataFrame]:
    """The table's feature columns per split as read, for models that take raw columns (e.g. the GBDT baseline).

    Numbers stay numbers; every other column becomes a categorical whose categories are
    those seen in training (a category never seen in training is missing, like an empty
    cell). Reads the table again: call it once per run.
    """
    frame, builtin_tasks, exclude, origin = read_table(spec)
    _, columns = resolve_columns(spec, frame, builtin_tasks, exclude, origin)
    frame = frame.reset_index(drop=True)[columns]
    train = frame.iloc[data.rows["train"]]
    out = {split: frame.iloc[data.rows[split]].copy() for split in SPLITS}
    for column in columns:
        if not pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column]):
            categories = sorted(train[column].dropna().astype(str).unique())
            for split in SPLITS:
                values = out[split][column].astype("string")
                values = values.where(values.isin(categories))
                out[split][column] = pd.Categorical(values.astype(object), categories=categories)
    return out
