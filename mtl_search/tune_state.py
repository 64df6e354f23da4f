"""Tune's saved experiment state: a last complete copy while a search runs, and a sound state to resume from.

Tune saves its experiment in three files per session (``experiment_state-<session>.json``: the trials;
``search_gen_state-<session>.json`` and ``searcher-state-<session>.pkl``: the search algorithm, Optuna's
study included). It rewrites them often (with ``num_to_keep=1``, after every trial checkpoint) by plain
writes and copies, not atomic swaps, so a run killed at the wrong moment leaves a file cut short. Restoring
from such a file fails outright (a JSON error) or, for the searcher's files, "succeeds" with no trials at all,
which would present an empty search as finished.

:class:`StateKeeper` therefore copies the newest state aside whenever it is complete and consistent, and
:func:`repair` (before ``Tuner.restore``) checks the newest state and, when it is damaged, sets it aside and
puts back the newest sound one: the keeper's copy or an earlier session's own files. Trials that ended after
that copy keep their rows in ``trials.csv``; the restored search continues the rest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import cloudpickle
from ray.tune import Callback

from mtl_search.errors import ResultsMissingError

#: Tune's state files of one session, by the part of the name before the session stamp.
STATE_FILES = {"experiment_state": ".json", "search_gen_state": ".json", "searcher-state": ".pkl"}
#: Copies kept by :class:`StateKeeper`, newest last (one more is written before the oldest goes).
COPIES_KEPT = 2
_SESSION = re.compile(r"^experiment_state-(.+)\.json$")


def _name(kind: str, session: str) -> str:
    return f"{kind}-{session}{STATE_FILES[kind]}"


def state_paths(folder: Path, session: str) -> dict[str, Path]:
    """One session's state files in ``folder``, by kind (see :data:`STATE_FILES`)."""
    return {kind: folder / _name(kind, session) for kind in STATE_FILES}


def sessions(folder: Path) -> list[str]:
    """The sessions (Tune's start stamps) that saved an experiment state in ``folder``, oldest first."""
    found = (_SESSION.match(path.name) for path in folder.glob("experiment_state-*.json"))
    return sorted(match.group(1) for match in found if match)


@dataclass(frozen=True)
class SavedState:
    """One session's saved state in one folder, as checked.

    Args:
        folder: where the files are (the Tune folder, or one of the keeper's copies).
        session: Tune's session stamp in the file names.
        trials: how many trials the experiment state holds (0 when it cannot be read).
        problem: why it cannot be restored, or None when it can.
    """

    folder: Path
    session: str
    trials: int
    problem: str | None


def check(folder: Path, session: str) -> SavedState:
    """Read one session's state files and say whether Tune can restore from them.

    Sound means: every file is there and reads to the end, and the search algorithm has created exactly
    the trials the experiment state holds (a copy taken between two of Tune's writes would not match).
    The searcher's files are unpickled, as ``Tuner.restore`` would: only check folders this user owns.
    """
    files = state_paths(folder, session)
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        return SavedState(folder, session, 0, f"{', '.join(missing)} missing")
    try:
        trials = len(json.loads(files["experiment_state"].read_bytes())["trial_data"])
    except (ValueError, KeyError, TypeError) as error:
        return SavedState(folder, session, 0, f"{files['experiment_state'].name} is cut short or damaged ({error})")
    try:
        generator = cloudpickle.loads(files["search_gen_state"].read_bytes())
        cloudpickle.loads(files["searcher-state"].read_bytes())
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a damaged file
        return SavedState(folder, session, trials, f"the search algorithm's state is cut short or damaged "
                                                   f"({type(error).__name__}: {error})")
    created = generator.get("counter") if isinstance(generator, dict) else None
    if created != trials:
        return SavedState(folder, session, trials, f"the search algorithm had created {created} trials, the "
                                                   f"experiment state holds {trials} (files from different saves)")
    return SavedState(folder, session, trials, None)


def _copies(keep_dir: Path) -> list[Path]:
    """The keeper's copies, oldest first (folders named by a sequence number)."""
    if not keep_dir.is_dir():
        return []
    return sorted((path for path in keep_dir.iterdir() if path.is_dir() and path.name.isdigit()),
                  key=lambda path: int(path.name))


def keep_copy(tune_dir: Path, keep_dir: Path) -> Path | None:
    """Copy the newest session's state from ``tune_dir`` into a new folder under ``keep_dir``, if it is sound.

    The copy is checked after it is made (Tune may be writing while it is taken) and published by renaming
    its folder, so a copy either is complete or does not exist. The oldest copies beyond :data:`COPIES_KEPT`
    are removed. Returns the new copy, or None when the state was not sound at this moment.
    """
    found = sessions(tune_dir)
    if not found:
        return None
    copies = _copies(keep_dir)
    number = int(copies[-1].name) + 1 if copies else 1
    staging = keep_dir / f".partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for path in state_paths(tune_dir, found[-1]).values():
            shutil.copy2(path, staging / path.name)
    except FileNotFoundError:
        shutil.rmtree(staging, ignore_errors=True)
        return None
    if check(staging, found[-1]).problem is not None:
        shutil.rmtree(staging, ignore_errors=True)
        return None
    copy = keep_dir / str(number)
    staging.rename(copy)
    for old in _copies(keep_dir)[:-COPIES_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return copy


def repair(tune_dir: Path, keep_dir: Path) -> str | None:
    """Make the newest saved state in ``tune_dir`` one that Tune can restore; say what was done.

    A sound newest state is left alone (returns None). Otherwise the sound state with the most trials (the
    keeper's copies and every earlier session's files; the latest of equals) takes its place: the damaged
    files, and those of any later session, are moved into ``keep_dir`` (``set-aside-<time>``), never deleted.

    Raises:
        ResultsMissingError: when no sound state exists anywhere (the search cannot be resumed).
    """
    found = sessions(tune_dir)
    if not found:
        return None
    newest = check(tune_dir, found[-1])
    if newest.problem is None:
        return None
    # Oldest first: among equals (trials, then session), the later one wins, and a session's own files (its
    # last save) come after any copy of it.
    candidates = [check(copy, session) for copy in _copies(keep_dir) for session in sessions(copy)]
    candidates += [check(tune_dir, session) for session in found[:-1]]
    sound = [(state.trials, state.session, order, state) for order, state in enumerate(candidates)
             if state.problem is None]
    if not sound:
        raise ResultsMissingError(
            f"cannot resume {tune_dir.parent}: Tune's saved state is damaged ({newest.problem}) and no complete "
            f"copy of it exists; start the search again with `mtl-search run SPEC --overwrite`")
    best = max(sound, key=lambda ranked: ranked[:3])[3]
    aside = keep_dir / f"set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    aside.mkdir(parents=True, exist_ok=True)
    for session in found:
        replaced = session > best.session or (session == best.session and best.folder != tune_dir)
        for path in state_paths(tune_dir, session).values():
            if replaced and path.exists():
                path.rename(aside / path.name)
    if best.folder != tune_dir:
        for path in state_paths(best.folder, best.session).values():
            shutil.copy2(path, tune_dir / path.name)
    source = "a copy kept while it ran" if best.folder != tune_dir else f"its session {best.session}"
    return (f"Tune's newest saved state was damaged when the run stopped ({newest.problem}); resuming from the "
            f"last complete one, {source} ({best.trials} trials); the damaged files are in {aside}")


class StateKeeper(Callback):
    """Keeps a complete copy of Tune's newest saved state (:func:`keep_copy`) as trials start, checkpoint and end.

    A trial's start comes after Tune saved the end of the one before, so that copy holds every ended trial;
    copies on checkpoints (at most one each ``interval_s``) hold the progress of long trials. A copy is taken
    only when Tune's files changed since the last one (they reach about 150 KB a trial).
    """

    def __init__(self, tune_dir: Path, keep_dir: Path, *, interval_s: float = 5.0):
        self.tune_dir = tune_dir
        self.keep_dir = keep_dir
        self.interval_s = interval_s
        self._last: tuple[Any, ...] = ()
        self._last_time = 0.0

    def _keep(self) -> None:
        self._last_time = time.monotonic()
        found = sessions(self.tune_dir)
        if not found:
            return
        try:
            stamp = tuple((path.stat().st_mtime_ns, path.stat().st_size)
                          for path in state_paths(self.tune_dir, found[-1]).values())
        except FileNotFoundError:
            return
        if stamp != self._last and keep_copy(self.tune_dir, self.keep_dir) is not None:
            self._last = stamp

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._keep()

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        if time.monotonic() - self._last_time >= self.interval_s:
            self._keep()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._keep()


def restore_deleted_checkpoints(tune_dir: Path) -> list[Path]:
    """Put back the trial checkpoints that a killed run's last experiment snapshot names but Tune had deleted.

    Tune keeps one checkpoint per trial (``num_to_keep=1``): registering a new one deletes the old
    one at once, while the experiment snapshot that names the new one is written a moment later, in
    the background. A run killed in between leaves a snapshot naming a deleted checkpoint, and
    restoring that trial fails ("Could not recover from checkpoint as it does not exist"). Each such
    checkpoint is recreated as a copy of the trial's newest one, so the trial resumes from its newest
    state (which records its own epoch) instead of failing.

    Returns:
        the checkpoint folders recreated.
    """
    found = sessions(tune_dir)
    if not found:
        return []
    restored = []
    state = json.loads(state_paths(tune_dir, found[-1])["experiment_state"].read_text())
    for trial_json, runtime_json in state.get("trial_data", []):
        trial_dir = tune_dir / str(json.loads(trial_json).get("relative_logdir", ""))
        existing = sorted(trial_dir.glob("checkpoint_[0-9]*")) if trial_dir.is_dir() else []
        # The checkpoint manager is stored pickled (hex); the folder names show through as text.
        named = set(re.findall(r"checkpoint_\d{6}", runtime_json + _pickled_text(json.loads(runtime_json))))
        for name in sorted(named):
            if existing and not (trial_dir / name).exists():
                shutil.copytree(existing[-1], trial_dir / name)
                restored.append(trial_dir / name)
    return restored


def _pickled_text(value: Any) -> str:
    """The bytes of every pickled value Tune stored in a JSON state (``CLOUDPICKLE_FALLBACK``), as text."""
    if isinstance(value, dict):
        if value.get("_type") == "CLOUDPICKLE_FALLBACK" and isinstance(value.get("value"), str):
            return bytes.fromhex(value["value"]).decode("latin-1")
        return "".join(_pickled_text(v) for v in value.values())
    if isinstance(value, list):
        return "".join(_pickled_text(v) for v in value)
    return ""
