"""A Ray Tune callback that keeps ``trials.csv`` current as trials end."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mtl_search import storage
from mtl_search.leaderboard import trial_rows, trials_frame
from mtl_search.progress import Progress
from mtl_search.results import for_csv, read_trial_rows


class TrialRecorder(Callback):
    """Keeps every trial's last result and rewrites ``trials.csv`` (one row per network) whenever a trial ends.

    A crash therefore leaves every finished trial on disk, and a resumed search
    (``Tuner.restore``) starts from the rows already there. ASHA-stopped trials
    never return from their function, so the last *reported* result is what counts.
    """

    def __init__(self, path: Path, *, max_epochs: int, groups_of: Callable[[dict[str, Any]], list[str]],
                 progress: Progress | None = None):
        self.path = path
        self.max_epochs = max_epochs
        self.groups_of = groups_of  # what a trial with this config trains
        self.progress = progress
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def setup(self, **info: Any) -> None:
        self.rows = read_trial_rows(self.path)
        if self.progress is not None:
            self.progress.start(already_done=len(self.rows))

    def _record(self, trial: Any, error: str | None = None) -> None:
        result = trial.last_result or None
        rows = trial_rows(trial.trial_id, trial.config, result, groups=self.groups_of(trial.config),
                          max_epochs=self.max_epochs, error=error)
        self.rows[trial.trial_id] = rows
        every = [row for trial_rows_ in self.rows.values() for row in trial_rows_]
        storage.atomic_write_csv(self.path, for_csv(trials_frame(every)))
        if self.progress is not None:
            self.progress.running = max(0, self.progress.running - 1)
            self.progress(rows, every, score=(result or {}).get("score"))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.progress is not None:
            self.progress.running += 1

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, error=_error_text(trial))


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.exists(path):
            with open(path) as handle:
                return handle.read()
    except OSError:
        pass
    return "the trial failed (no error file)"
