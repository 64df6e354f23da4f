"""From a table to training arrays: load, check, split, preprocess, mask.

Everything here is fitted on the training split only: feature scaling and
encoding, regression target standardisation, class lists and the trivial
predictors behind the normalised loss. Rows whose label is missing for a task
stay in the data with ``mask = False`` for that task.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtl_search.config import BUILTIN_PREFIX, DataSpec, ExperimentSpec, SplitSpec
from mtl_search.errors import DataError
from mtl_search.metrics import BINARY, MULTICLASS, REGRESSION, class_prior, trivial_loss

SPLITS = ("train", "valid", "test")
MIN_ROWS = {"train": 10, "valid": 5, "test": 5}
_MISSING_CATEGORY = "__missing__"


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

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

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


# --------------------------------------------------------------------------- reading


def read_table(data: DataSpec) -> tuple[pd.DataFrame, dict[str, tuple[str, str]], tuple[str, ...], str]:
    """Read the table a spec names.

    Returns:
        the frame, the documented tasks of a built-in table (else empty), columns
        the source excludes from features, and a name for messages.
    """
    source = data.source
    if source.startswith(BUILTIN_PREFIX):
        from mtl_search.datasets import load_builtin

        table = load_builtin(source[len(BUILTIN_PREFIX):], data.params)
        return table.frame, table.tasks, table.exclude, source
    if data.params:
        raise DataError(f"data.params is only for built-in sources (builtin:...); {source} is a file")
    path = Path(source)
    if not path.exists():
        raise DataError(f"data file {source} does not exist (data.source); paths are relative to the spec file")
    name = path.name.lower()
    try:
        if name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz")):
            frame = pd.read_csv(path)
        elif name.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"data file {source}: unsupported format; use .csv, .csv.gz or .parquet")
    except DataError:
        raise
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataError(f"data file {source} cannot be read: {type(exc).__name__}: {exc}") from None
    if frame.empty:
        raise DataError(f"data file {source} holds no rows")
    return frame, {}, (), source


def _missing_columns(columns: list[str], frame: pd.DataFrame, where: str, origin: str) -> None:
    absent = [c for c in columns if c not in frame.columns]
    if not absent:
        return
    hints = []
    for column in absent:
        close = difflib.get_close_matches(column, [str(c) for c in frame.columns], n=3)
        hints.append(f"'{column}'" + (f" (close: {', '.join(close)})" if close else ""))
    raise DataError(f"{where}: column(s) {', '.join(hints)} not found in {origin}")


def resolve_columns(
    spec: DataSpec, frame: pd.DataFrame, builtin_tasks: dict[str, tuple[str, str]], exclude: tuple[str, ...],
    origin: str,
) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """The tasks (name -> (column, type)) and the input feature columns."""
    if spec.tasks is not None:
        tasks = {name: (t.column, t.type) for name, t in spec.tasks.items()}
    elif builtin_tasks:
        tasks = dict(builtin_tasks)
    else:
        raise DataError(f"data.tasks is required for {origin}: name each target, e.g. "
                        "tasks: {price: {column: price, type: regression}}")
    for name, (column, _) in tasks.items():
        _missing_columns([column], frame, f"data.tasks.{name}.column", origin)
    _missing_columns(list(spec.drop), frame, "data.drop", origin)
    targets = {column for column, _ in tasks.values()}
    # A column that assigns rows to splits says nothing about a row: it is never a feature.
    split_column = {spec.split.column} if spec.split.column is not None else set()
    if split_column:
        _missing_columns(list(split_column), frame, "data.split.column", origin)
        if split_column & targets:
            raise DataError(f"data.split.column: {spec.split.column} is a target column; name a column that "
                            "assigns rows to train/valid/test")
    if spec.features == "auto":
        skip = targets | set(spec.drop) | set(exclude) | split_column
        features = [str(c) for c in frame.columns if c not in skip]
    else:
        _missing_columns(list(spec.features), frame, "data.features", origin)
        used = [c for c in spec.features if c in targets]
        if used:
            raise DataError(f"data.features: {', '.join(used)} is a target column; a target cannot be a feature")
        if split_column & set(spec.features):
            raise DataError(f"data.features: {spec.split.column} is data.split.column; it assigns rows to splits "
                            "and cannot be a feature")
        features = list(spec.features)
    if not features:
        raise DataError(f"no feature columns left in {origin} after removing targets and data.drop")
    return tasks, features


# --------------------------------------------------------------------------- preparing


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
    frame = _derive_binary_targets(frame, tasks, spec.data, origin)
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
        task, encoded, mask, prior = _encode_target(name, column, kind, frame[column], index, origin)
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
    x, feature_names = _encode_features(frame[features], index, origin)
    splits = {
        split: SplitArrays(x=x[split], y=labels[split], mask=masks[split], trivial_loss=trivial[split])
        for split in SPLITS
    }
    return PreparedData(tasks=encoded_tasks, feature_names=feature_names, input_columns=features,
                        splits=splits, source=origin, notes=notes, rows=index)


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
    stratify = _stratify_key(frame, tasks, notes)
    rows = np.arange(n)
    rest, test_rows = train_test_split(rows, test_size=sizes["test"], random_state=seed,
                                       stratify=stratify)
    rest_stratify = stratify[rest] if stratify is not None else None
    train_rows, valid_rows = train_test_split(rest, test_size=sizes["valid"], random_state=seed,
                                              stratify=rest_stratify)
    return {"train": np.sort(train_rows), "valid": np.sort(valid_rows), "test": np.sort(test_rows)}


def _stratify_key(frame: pd.DataFrame, tasks: dict[str, tuple[str, str]], notes: list[str]) -> np.ndarray | None:
    """The first classification task's labels, to stratify on, if every class has at least 3 rows."""
    for name, (column, kind) in tasks.items():
        if kind in (BINARY, MULTICLASS):
            key = frame[column].astype("string").fillna(_MISSING_CATEGORY)
            if key.value_counts().min() >= 3:
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
        stratify = _stratify_key(frame.iloc[rows], tasks, notes)
        kept, valid = train_test_split(rows, test_size=size, random_state=seed, stratify=stratify)
        index[source], index["valid"] = np.sort(kept), np.sort(valid)
        notes.append(f"split follows column {column}; validation = {split.valid:g} of its {source} rows (seeded)")
    short = [name for name in SPLITS if len(index[name]) < MIN_ROWS[name]]
    if short:
        sizes = " / ".join(f"{len(index[name])} {name}" for name in SPLITS)
        raise DataError(f"data.split.column: column {column} in {origin} gives {sizes} rows, and each split needs at "
                        f"least {MIN_ROWS['train']}/{MIN_ROWS['valid']}/{MIN_ROWS['test']}")
    return index


def _derive_binary_targets(
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


def _encode_target(
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


def _encode_features(
    frame: pd.DataFrame, index: dict[str, np.ndarray], origin: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Scale numeric columns and one-hot encode the rest, fitted on the training rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

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
    cats = frame[categorical].astype("string").astype(object).where(frame[categorical].notna(), _MISSING_CATEGORY)
    table = pd.concat([frame[numeric], cats], axis=1)
    transformers = []
    if numeric:
        transformers.append(("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True,
                                                                keep_empty_features=True),
                                                  StandardScaler()), numeric))
    if categorical:
        transformers.append(("cat", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=10,
                                                  sparse_output=False, dtype=np.float32), categorical))
    encoder = ColumnTransformer(transformers, sparse_threshold=0.0, verbose_feature_names_out=False)
    encoder.fit(table.iloc[index["train"]])
    names = [str(n) for n in encoder.get_feature_names_out()]
    out = {split: np.ascontiguousarray(encoder.transform(table.iloc[rows]), dtype=np.float32)
           for split, rows in index.items()}
    return out, names
