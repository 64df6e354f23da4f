"""The data source: reading the table a spec names and deciding which columns are targets and features."""

from __future__ import annotations

import difflib
from pathlib import Path

import pandas as pd

from mtl_search.config import BUILTIN_PREFIX, DataSpec
from mtl_search.datasets import load_builtin
from mtl_search.errors import DataError


def read_table(data: DataSpec) -> tuple[pd.DataFrame, dict[str, tuple[str, str]], tuple[str, ...], str]:
    """Read the table a spec names.

    Returns:
        the frame, the documented tasks of a built-in table (else empty), columns
        the source excludes from features, and a name for messages.
    """
    source = data.source
    if source.startswith(BUILTIN_PREFIX):
        table = load_builtin(source[len(BUILTIN_PREFIX):], data.params)
        return table.frame, table.tasks, table.exclude, source
    if data.params:
        raise DataError(f"data.params is only for built-in sources (builtin:...); {source} is a file")
    path = Path(source)
    if not path.exists():
        raise DataError(f"data file {source} does not exist (data.source); paths are relative to the spec file")
    name = path.name.lower()
    _refuse_beyond_memory(path, name, source)
    try:
        if name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz")):
            _refuse_duplicate_columns(path, name, source)  # from the header alone, before the table is read
            frame = pd.read_csv(path)
        elif name.endswith((".parquet", ".pq")):
            _refuse_duplicate_columns(path, name, source)
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


#: How many bytes of memory a byte of the file becomes once read (pandas objects for text cells): a plain CSV,
#: and a compressed CSV or Parquet file.
MEMORY_PER_BYTE = 3
MEMORY_PER_COMPRESSED_BYTE = 15


def available_memory() -> int:
    """Bytes of memory this machine can give without swapping."""
    import psutil

    return int(psutil.virtual_memory().available)


def _refuse_beyond_memory(path: Path, name: str, source: str) -> None:
    """Refuse, before reading it, a file whose table would not fit in the memory available."""
    size = path.stat().st_size
    compressed = name.endswith((".gz", ".bz2", ".zip", ".xz", ".parquet", ".pq"))
    needed = size * (MEMORY_PER_COMPRESSED_BYTE if compressed else MEMORY_PER_BYTE)
    available = available_memory()
    if needed > available:
        raise DataError(
            f"data file {source} is {_bytes(size)}, about {_bytes(needed)} once read, and this machine has "
            f"{_bytes(available)} available: sample its rows into a smaller file, keep only the columns the spec "
            "uses (Parquet reads faster and smaller), or run on a machine with more memory"
        )


def _bytes(count: float) -> str:
    """``12.3 GiB``, ``850.0 KiB``, ``500 B``."""
    if count < 1024:
        return f"{int(count)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            break
    return f"{count:.1f} {unit}"


def _refuse_duplicate_columns(path: Path, name: str, source: str) -> None:
    """pandas renames a repeated CSV column ``x`` to ``x.1``, which could turn a copy of a target into a
    feature: refuse repeated names instead."""
    if name.endswith((".parquet", ".pq")):
        import pyarrow.parquet

        names = list(pyarrow.parquet.read_schema(path).names)
    else:
        names = list(pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].astype(str))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"data file {source}: column name(s) {', '.join(map(repr, repeated))} appear more than "
                        "once in the header; rename them so every column has its own name")


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
