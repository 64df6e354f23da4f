"""The results vocabulary: every name a result directory uses, and reading one back.

One home for the protocol between the writers (training, the leaderboard, the
baselines) and the readers (``leaderboard``, ``compare``, ``report``):

* a trial reports each network's metrics under ``networks/<key>`` (:func:`network_key`);
* a metric reported by a trial is keyed ``<split>/<task>/<metric>``
  (:func:`metric_key`) and becomes the CSV column ``<split>_<task>_<metric>``
  (:func:`column`); :func:`parse_column` reads one back;
* a trial's :class:`Status`;
* the ``baseline:`` prefix of reference rows (:func:`baseline_label`);
* the plot file names under ``plots/`` (the CSV and folder names are :mod:`mtl_search.storage`'s);
* :func:`load_results` reads a whole result directory (or its storage URI) back.

Group and grouping ids are :mod:`mtl_search.grouping`'s. Pandas, no torch, no Ray.
"""

from __future__ import annotations

import enum
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtl_search import storage
from mtl_search.errors import ResultsMissingError, UserError
from mtl_search.grouping import GROUP_SEP, group_tasks
from mtl_search.metrics import PRIMARY_METRIC, TASK_TYPES

# --------------------------------------------------------------------------- names


class Status(str, enum.Enum):
    """What became of a trial (or of one network in it): ``trials.csv``'s ``status``."""

    RUNNING = "running"  #: still training (only in reports, never in a finished table)
    COMPLETED = "completed"  #: trained every epoch, or until its pack ran out of patience
    STOPPED = "stopped"  #: early-stopped by the scheduler; its best epoch still counts
    DIVERGED = "diverged"  #: its loss became non-finite; it never scores
    ERROR = "error"  #: its process failed; it never scores

    def __str__(self) -> str:
        return self.value


#: Statuses whose best epoch is a usable network.
OK_STATUSES: tuple[Status, ...] = (Status.COMPLETED, Status.STOPPED)

#: The splits a metric can come from, and the metric every task has besides its own: the normalised loss.
VALID, TEST = "valid", "test"
NLOSS = "nloss"
#: Per-task training columns (``train_loss_<task>``, ``weight_<task>``) and their report keys.
TRAIN_LOSS, WEIGHT = "train_loss", "weight"

BASELINE_PREFIX = "baseline:"

TOP_GROUPINGS_PNG = "top_groupings.png"
COST_FRONT_PNG = "score_vs_cost.png"
TASK_METRICS_PNG = "tasks_best_group.png"
AFFINITY_PNG = "affinity.png"
REPORT_HTML = "report.html"


def metric_key(split: str, task: str, metric: str) -> str:
    """A trial's reported metric: ``valid/income/auc``."""
    return f"{split}/{task}/{metric}"


def score_key(split: str) -> str:
    """A reported mean normalised loss over the tasks: ``test/score``."""
    return f"{split}/score"


def task_key(kind: str, task: str) -> str:
    """A reported per-task training value: ``train_loss/income`` or ``weight/income`` (``kind`` :data:`TRAIN_LOSS`
    or :data:`WEIGHT`)."""
    return f"{kind}/{task}"


def network_key(group: str) -> str:
    """A network's key in a trial's report (``networks/<key>/...``): its group id with ``-`` for ``+``.

    Trackers take the flattened report keys as metric names, and MLflow refuses ``+`` in them;
    task names never hold ``-``, so the key reads back unambiguously.
    """
    return group.replace(GROUP_SEP, "-")


def column(split: str, task: str, metric: str) -> str:
    """The CSV column of a per-task metric: ``valid_income_auc`` (``split`` may also be a :func:`task_key` kind)."""
    return f"{split}_{task}_{metric}"


def key_column(key: str) -> str:
    """The CSV column of a reported key (``valid/income/auc`` -> ``valid_income_auc``)."""
    return key.replace("/", "_")


def is_task_key(key: str) -> bool:
    """Whether a reported key is a per-task value that ``trials.csv`` keeps (not a split's mean score)."""
    kind = key.split("/", 1)[0]
    return kind in (VALID, TEST, TRAIN_LOSS, WEIGHT) and key.count("/") == (2 if kind in (VALID, TEST) else 1)


def parse_column(name: str, tasks: Any) -> tuple[str, str, str] | None:
    """``(split, task, metric)`` of a per-task metric column, or None; ``tasks`` are the known task names.

    Task names may hold ``_``, so the task is matched against the known names, longest first.
    """
    for split in (VALID, TEST):
        prefix = f"{split}_"
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        for task in sorted(tasks, key=len, reverse=True):
            if rest.startswith(f"{task}_"):
                return split, task, rest[len(task) + 1:]
    return None


#: Columns of the result tables that hold whole numbers (empty where unknown, e.g. a reference row's rank).
INTEGER_COLUMNS = frozenset({"rank", "n_tasks", "n_groups", "trials", "trials_failed", "epochs_run", "best_epoch",
                             "params", "threads", "depth", "sharing_depth", "width", "batch_size", "epochs", "seeds"})


def for_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose whole-number columns are integers (``1``, not ``1.0``, even beside empty cells)."""
    out = frame.copy()
    for name in INTEGER_COLUMNS.intersection(out.columns):
        values = pd.to_numeric(out[name], errors="coerce")
        finite = values.dropna()
        if len(finite) and np.isfinite(finite).all() and (finite % 1 == 0).all():
            out[name] = values.astype("Int64")
    return out


def headline(task_type: str) -> str:
    """The headline metric of a task type (``rmse``, ``auc``, ``accuracy``)."""
    return PRIMARY_METRIC[task_type].name


def baseline_label(name: str) -> str:
    """The row label of a registered baseline: ``baseline:gbdt``."""
    return f"{BASELINE_PREFIX}{name}"


# --------------------------------------------------------------------------- reading results back


def read_trial_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows of an existing ``trials.csv`` by trial id, one per network (empty if there is none)."""
    if not path.exists():
        return {}
    frame = pd.read_csv(path, dtype={"trial_id": str, "head_sizes": str, "reason": str},
                        keep_default_na=True).fillna({"head_sizes": "", "reason": ""})
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in frame.to_dict("records"):
        rows.setdefault(str(row["trial_id"]), []).append(row)
    return rows


@dataclass(frozen=True)
class Results:
    """One experiment's result directory, read back.

    Attributes:
        location: the directory or URI as given.
        name: the experiment's name (``config.yaml``, else the folder's name).
        tasks: task -> type, in the spec's order.
        cost: the run's inference cost (``networks`` or ``params``).
        max_groups: the run's ``grouping.max_groups`` (its leaderboard holds no larger grouping).
        config: the resolved spec as a dict (empty when ``config.yaml`` is missing).
        run_info: ``run.json`` (empty when missing).
        leaderboard: the ranked rows of ``leaderboard.csv``.
        references: its reference rows (``baseline`` true), never ranked.
        groups: ``groups.csv``.
        confirm: ``confirm.csv`` or None.
        affinity: ``affinity.csv`` (task x task) or None.
        selection: ``selection.csv`` or None.
    """

    location: str
    name: str
    tasks: dict[str, str]
    cost: str
    max_groups: int | None
    config: dict[str, Any]
    run_info: dict[str, Any]
    leaderboard: pd.DataFrame
    references: pd.DataFrame
    groups: pd.DataFrame
    confirm: pd.DataFrame | None = None
    affinity: pd.DataFrame | None = None
    selection: pd.DataFrame | None = None

    @property
    def headline(self) -> dict[str, str]:
        """Task -> its headline metric name (``rmse``, ``auc``, ``accuracy``)."""
        return {task: headline(kind) for task, kind in self.tasks.items()}

    @property
    def local_path(self) -> Path | None:
        """The directory on this machine, or None for a storage URI."""
        return None if storage.is_uri(self.location) else Path(self.location).expanduser()

    def scored_groups(self) -> pd.DataFrame:
        """``groups.csv`` rows a grouping can use: over known tasks, with a validation score, no reference rows."""
        frame = self.groups
        known = frame["group"].astype(str).map(lambda g: set(group_tasks(g)) <= self.tasks.keys())
        keep = known & np.isfinite(pd.to_numeric(frame["valid_score"], errors="coerce"))
        if "baseline" in frame:
            keep &= ~truthy(frame["baseline"])
        return frame[keep].reset_index(drop=True)

    def failed_groups(self) -> list[str]:
        """Candidate groups that were trained but have no successful trial."""
        frame = self.groups
        scores = pd.to_numeric(frame["valid_score"], errors="coerce")
        estimated = truthy(frame["estimated"]) if "estimated" in frame else pd.Series(False, index=frame.index)
        return [str(g) for g in frame.loc[~np.isfinite(scores) & ~estimated, "group"]]

    def group_value(self, group: str, column: str) -> float:
        """``groups.csv[column]`` of one group (NaN when the group or the column is missing)."""
        rows = self.groups[self.groups["group"].astype(str) == group]
        if rows.empty or column not in rows:
            return math.nan
        return as_float(rows.iloc[0][column])


def truthy(values: pd.Series) -> pd.Series:
    """Booleans from a CSV column that may hold True/False, 1/0, "true"/"false" or blanks."""
    if values.dtype == bool:
        return values
    return values.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0", "yes"))


def as_float(value: Any) -> float:
    """``value`` as a float; NaN for blanks and text (CSV cells)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _read_text(location: str, file: str) -> str | None:
    """A small text file of a result location (path or URI), or None when it is not there."""
    if not storage.is_uri(location):
        path = Path(location).expanduser() / file
        return path.read_text() if path.is_file() else None
    fs, path = storage.open_uri(storage.join_uri(location, file))
    try:
        with fs.open_input_stream(path) as handle:
            return handle.read().decode()
    except (FileNotFoundError, OSError):
        return None


def _read_optional_csv(location: str, file: str, **options: Any) -> pd.DataFrame | None:
    text = _read_text(location, file)
    if text is None or not text.strip():  # absent, or written empty (e.g. no network could be scored)
        return None
    return pd.read_csv(io.StringIO(text), **options)


def _not_a_result_dir(location: str) -> UserError:
    """Why ``location`` is not a result directory, and what to pass instead."""
    if storage.is_uri(location):
        return ResultsMissingError(f"no {storage.LEADERBOARD_FILE} at {location}: pass the location `run` wrote "
                                   "(<output>/<name>)")
    path = Path(location).expanduser()
    if not path.exists():
        return ResultsMissingError(f"{location} does not exist: pass a result directory `run` wrote, "
                                   "e.g. results/<name>")
    if not path.is_dir():
        return ResultsMissingError(f"{location} is a file, not a result directory: pass the folder `run` wrote, "
                                   "e.g. results/<name>")
    if (path / storage.TRIALS_FILE).is_file():
        return ResultsMissingError(f"{location} holds trials but no {storage.LEADERBOARD_FILE} yet: the search has "
                                   f"not finished; wait for it, or continue it with `mtl-search resume {location}`")
    inside = sorted(p.name for p in path.iterdir() if (p / storage.LEADERBOARD_FILE).is_file())
    hint = f"; it holds these result directories: {', '.join(inside)}" if inside else ""
    return ResultsMissingError(f"{location} is not an mtl_search result directory (no {storage.LEADERBOARD_FILE})"
                               f"{hint}. Pass the folder `run` wrote, e.g. results/<name>")


def _task_types(config: dict[str, Any], groups: pd.DataFrame, board: pd.DataFrame) -> dict[str, str]:
    """Task -> type from the resolved spec, else from the headline columns of ``leaderboard.csv``."""
    tasks = (config.get("data") or {}).get("tasks") or {}
    types = {str(name): str(task.get("type")) for name, task in tasks.items() if isinstance(task, dict)}
    if types and all(kind in TASK_TYPES for kind in types.values()):
        return types
    by_metric = {headline(kind): kind for kind in TASK_TYPES}
    found: dict[str, str] = {}
    for name in board.columns:  # test_<task>_<headline metric>, in the spec's order
        split, _, rest = name.partition("_")
        for metric, kind in by_metric.items():
            if split == TEST and rest.endswith(f"_{metric}"):
                found[rest[:-len(metric) - 1]] = kind
    if not found:
        for name in groups.columns:
            split, _, rest = name.partition("_")
            if split == VALID and rest.endswith(f"_{NLOSS}"):
                found.setdefault(rest[:-len(NLOSS) - 1], "regression")
    return found


def load_results(location: str | Path) -> Results:
    """Read a result directory (or a storage URI) that ``run`` wrote.

    Raises:
        ResultsMissingError: ``location`` is not a result directory; the message says what is there.
    """
    location = str(location)
    board_text = _read_text(location, storage.LEADERBOARD_FILE)
    if board_text is None:
        raise _not_a_result_dir(location)
    groups = _read_optional_csv(location, storage.GROUPS_FILE)
    if groups is None or "group" not in groups or "valid_score" not in groups:
        raise ResultsMissingError(f"{location} has a {storage.LEADERBOARD_FILE} but no usable {storage.GROUPS_FILE}: "
                                  "the result directory is incomplete; rerun or resume the experiment")
    board = pd.read_csv(io.StringIO(board_text))
    config_text = _read_text(location, storage.CONFIG_FILE)
    config: dict[str, Any] = {}
    if config_text:
        import yaml

        loaded = yaml.safe_load(config_text)
        config = loaded if isinstance(loaded, dict) else {}
    run_text = _read_text(location, storage.RUN_FILE)
    run_info = json.loads(run_text) if run_text else {}
    grouping = config.get("grouping") or {}
    is_reference = truthy(board["baseline"]) if "baseline" in board else pd.Series(False, index=board.index)
    affinity = _read_optional_csv(location, storage.AFFINITY_FILE, index_col=0)
    name = str(config.get("name") or location.rstrip("/").rsplit("/", 1)[-1])
    return Results(
        location=location, name=name, tasks=_task_types(config, groups, board),
        cost=str(grouping.get("cost") or "networks"), max_groups=grouping.get("max_groups"),
        config=config, run_info=run_info,
        leaderboard=board[~is_reference].reset_index(drop=True), references=board[is_reference].reset_index(drop=True),
        groups=groups, confirm=_read_optional_csv(location, storage.CONFIRM_FILE), affinity=affinity,
        selection=_read_optional_csv(location, storage.SELECTION_FILE),
    )
