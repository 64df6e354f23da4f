"""Where an experiment's results live, and writing them without ever losing any.

Files are written atomically (a temporary file in the same folder, then a
rename), so a crash leaves either the old file or the new one, never half of
one. An existing result directory is never overwritten unless asked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from mtl_search.errors import ResultsExistError

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
TRIALS_FILE = "trials.csv"
GROUPS_FILE = "groups.csv"
LEADERBOARD_FILE = "leaderboard.csv"
TUNE_DIR = "tune"
TRAIN_DIR = "train"


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write a data frame as CSV (no index) atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def prepare_result_dir(path: Path, *, overwrite: bool = False) -> Path:
    """Create the result directory, refusing to reuse one that holds results.

    Raises:
        ResultsExistError: ``path`` holds files and ``overwrite`` is False.
    """
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ResultsExistError(
                f"{path} already holds results; pass --overwrite to replace them, "
                "or choose another --name or --output"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
