"""A Ray Tune callback that keeps ``trials.csv`` current as trials end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mtl_search import storage
from mtl_search.leaderboard import trial_row, trials_frame
from mtl_search.progress import Progress
from mtl_search.results import for_csv, read_trial_rows


class TrialRecorder(Callback):
    """Keeps every trial's last result and rewrites ``trials.csv`` whenever a trial ends.

    A crash therefore leaves every finished trial on disk, and a resumed search
    (``Tuner.restore``) starts from the rows already there. ASHA-stopped trials
    never return from their function, so the last *reported* result is what counts.
    """

    def __init__(self, path: Path, *, max_epochs: int, progress: Progress | None = None):
        self.path = path
        self.max_epochs = max_epochs
        self.progress = progress
        self.rows: dict[str, dict[str, Any]] = {}

    def setup(self, **info: Any) -> None:
        self.rows = read_trial_rows(self.path)
        if self.progress is not None:
            self.progress.start(already_done=len(self.rows))

    def _record(self, trial: Any, error: str | None = None) -> None:
        row = trial_row(trial.trial_id, trial.config, trial.last_result or None,
                        max_epochs=self.max_epochs, error=error)
        self.rows[trial.trial_id] = row
        storage.atomic_write_csv(self.path, for_csv(trials_frame(self.rows.values())))
        if self.progress is not None:
            self.progress.running = max(0, self.progress.running - 1)
            self.progress(row, list(self.rows.values()))

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
