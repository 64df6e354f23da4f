"""Console progress of a search: one line per finished trial. No Ray."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from mtl_search.leaderboard import best_per_group, rank_groupings, trials_frame
from mtl_search.results import Status


class Progress:
    """One line per finished trial: trials done / running / total, the trial's outcome (its score: for a
    pack, the search's objective), the best grouping so far (by validation), elapsed and estimated remaining time.

    Args:
        total: trials in the search.
        task_types: task -> type, to rank groupings from the finished trials.
        echo: where lines go.
    """

    def __init__(self, total: int, task_types: Mapping[str, str] | None = None,
                 echo: Callable[[str], None] = print):
        self.total = total
        self.task_types = dict(task_types or {})
        self.echo = echo
        self.running = 0
        self.start()

    def start(self, already_done: int = 0) -> None:
        """(Re)start the clock; ``already_done`` trials finished in an earlier, interrupted run."""
        self.started = time.time()
        self.done = self.first = already_done
        if already_done:
            self.echo(f"resuming: {already_done} of {self.total} trials already finished")

    def best_so_far(self, rows: Iterable[Mapping[str, Any]]) -> str:
        """The grouping that would rank first now, with its validation score ("-" until one exists)."""
        if not self.task_types:
            return "-"
        groups = sorted({str(r["group"]) for r in rows})
        board = rank_groupings(best_per_group(trials_frame(rows), self.task_types, groups), self.task_types, limit=1)
        return "none yet" if board.empty else f"{board.loc[0, 'grouping']} ({board.loc[0, 'valid_score']:.4f})"

    def __call__(self, trial: Sequence[Mapping[str, Any]], rows: Iterable[Mapping[str, Any]] = (),
                 score: float | None = None) -> None:
        """Print the line of one finished trial.

        Args:
            trial: its rows (one per network it trained).
            rows: every row so far (for the best grouping).
            score: the trial's score (default: its one network's).
        """
        self.done += 1
        elapsed = time.time() - self.started
        remaining = elapsed / max(1, self.done - self.first) * (self.total - self.done)
        first = trial[0]
        if score is None:
            score = first.get("score") if len(trial) == 1 else None
        finite = isinstance(score, float) and math.isfinite(score)
        statuses = sorted({str(row["status"]) for row in trial})
        outcome = f"score {score:.4f}" if finite else "/".join(statuses)
        label = str(first["group"]) if len(trial) == 1 else f"{len(trial)} networks"
        epochs = max(int(row.get("epochs_run") or 0) for row in trial)
        if statuses == [Status.COMPLETED.value]:
            detail = f"{epochs} epochs"
        elif statuses == [Status.STOPPED.value]:
            detail = f"stopped by the scheduler after {epochs} epochs"
        else:
            detail = ", ".join(f"{sum(r['status'] == s for r in trial)} {s}" if len(trial) > 1 else s for s in statuses)
        self.echo(
            f"[{self.done:>{len(str(self.total))}}/{self.total}, {self.running} running] {label:<24} "
            f"{outcome:<14} ({detail}, {first.get('wall_s', float('nan')):.1f} s) | best so far "
            f"{self.best_so_far(rows)} | {clock(elapsed)} elapsed, ~{clock(remaining)} left"
        )


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
