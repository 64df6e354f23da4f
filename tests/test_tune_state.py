"""Tune's saved state: damaged files are detected, complete copies are kept, and a resume gets a sound state.

The files are written here in Tune's own formats (JSON trial data; the search algorithm's state pickled with
Ray's cloudpickle), damaged the way a kill mid-write damages them: cut short. A real search killed at ten
moments is in tests/test_reliability.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray import cloudpickle

from mtl_search.errors import ResultsMissingError
from mtl_search.tune_state import StateKeeper, check, keep_copy, repair, sessions

EARLY, LATE = "2026-12-03_10-00-00", "2026-12-03_11-00-00"


def save_state(folder: Path, session: str, trials: int, *, created: int | None = None) -> None:
    """Tune's three files for one session holding ``trials`` trials (the searcher created ``created``)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = [[json.dumps({"trial_id": f"t{i}", "relative_logdir": f"trial_{i}"}), json.dumps({})]
            for i in range(trials)]
    (folder / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": data, "runner_data": {}}))
    counter = trials if created is None else created
    (folder / f"search_gen_state-{session}.json").write_bytes(cloudpickle.dumps({"counter": counter}))
    (folder / f"searcher-state-{session}.pkl").write_bytes(cloudpickle.dumps({"study": list(range(counter))}))


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_a_complete_state_is_sound_and_counts_its_trials(tmp_path: Path):
    save_state(tmp_path, EARLY, 3)
    assert sessions(tmp_path) == [EARLY]
    state = check(tmp_path, EARLY)
    assert state.problem is None and state.trials == 3


@pytest.mark.parametrize("damage", ["experiment_state", "search_gen_state", "searcher-state", "missing",
                                    "mismatch"])
def test_damaged_states_are_named(tmp_path: Path, damage: str):
    save_state(tmp_path, EARLY, 3, created=4 if damage == "mismatch" else None)
    files = {path.name.split("-2026")[0]: path for path in tmp_path.iterdir()}
    if damage == "missing":
        files["search_gen_state"].unlink()
    elif damage != "mismatch":
        cut_short(files[damage])
    problem = check(tmp_path, EARLY).problem
    assert problem is not None
    expected = {"experiment_state": "experiment_state", "search_gen_state": "search algorithm",
                "searcher-state": "search algorithm", "missing": "missing", "mismatch": "created 4 trials"}
    assert expected[damage] in problem


def test_keep_copy_keeps_only_sound_states_and_the_newest_copies(tmp_path: Path):
    tune_dir, keep_dir = tmp_path / "tune", tmp_path / "keep"
    save_state(tune_dir, EARLY, 1)
    first = keep_copy(tune_dir, keep_dir)
    assert first is not None and check(first, EARLY).trials == 1
    cut_short(tune_dir / f"experiment_state-{EARLY}.json")
    assert keep_copy(tune_dir, keep_dir) is None  # a damaged state is not copied
    for trials in (2, 3, 4):
        save_state(tune_dir, EARLY, trials)
        keep_copy(tune_dir, keep_dir)
    copies = sorted(path.name for path in keep_dir.iterdir())
    assert copies == ["3", "4"]  # the two newest; no partial folder left behind
    assert check(keep_dir / "4", EARLY).trials == 4


def test_repair_leaves_a_sound_state_alone(tmp_path: Path):
    save_state(tmp_path / "tune", EARLY, 2)
    assert repair(tmp_path / "tune", tmp_path / "keep") is None
    assert not (tmp_path / "keep").exists()


def test_repair_puts_back_the_newest_complete_copy_and_sets_the_damaged_files_aside(tmp_path: Path):
    tune_dir, keep_dir = tmp_path / "tune", tmp_path / "keep"
    save_state(tune_dir, EARLY, 2)  # an earlier session, finished
    save_state(tune_dir, LATE, 3)
    keep_copy(tune_dir, keep_dir)
    save_state(tune_dir, LATE, 4)
    damaged = (tune_dir / f"experiment_state-{LATE}.json")
    cut_short(damaged)
    cut_bytes = damaged.read_bytes()

    message = repair(tune_dir, keep_dir)
    assert message is not None and "a copy kept while it ran (3 trials)" in message
    assert check(tune_dir, LATE).problem is None and check(tune_dir, LATE).trials == 3
    aside = next(keep_dir.glob("set-aside-*"))
    assert (aside / damaged.name).read_bytes() == cut_bytes  # nothing deleted
    assert repair(tune_dir, keep_dir) is None  # sound now


def test_repair_falls_back_to_an_earlier_session(tmp_path: Path):
    tune_dir, keep_dir = tmp_path / "tune", tmp_path / "keep"
    save_state(tune_dir, EARLY, 2)
    save_state(tune_dir, LATE, 3)
    cut_short(tune_dir / f"search_gen_state-{LATE}.json")
    message = repair(tune_dir, keep_dir)
    assert message is not None and f"its session {EARLY} (2 trials)" in message
    assert sessions(tune_dir) == [EARLY]  # the damaged later session moved aside


def test_repair_without_any_sound_state_is_a_clear_error(tmp_path: Path):
    tune_dir = tmp_path / "tune"
    save_state(tune_dir, EARLY, 2)
    cut_short(tune_dir / f"experiment_state-{EARLY}.json")
    with pytest.raises(ResultsMissingError, match=r"damaged .* run SPEC --overwrite"):
        repair(tune_dir, tmp_path / "keep")


def test_the_keeper_copies_on_trial_starts_and_ends_and_throttles_checkpoints(tmp_path: Path):
    tune_dir, keep_dir = tmp_path / "tune", tmp_path / "keep"
    keeper = StateKeeper(tune_dir, keep_dir, interval_s=3600)
    keeper.on_trial_start(0, [], None)  # nothing saved yet: nothing to copy
    assert not keep_dir.exists()
    save_state(tune_dir, EARLY, 1)
    keeper.on_trial_start(0, [], None)
    keeper.on_trial_complete(0, [], None)  # unchanged: no second copy
    assert sorted(path.name for path in keep_dir.iterdir()) == ["1"]
    save_state(tune_dir, EARLY, 2)
    keeper.on_checkpoint(0, [], None, None)  # within the interval: skipped
    assert sorted(path.name for path in keep_dir.iterdir()) == ["1"]
    keeper.on_trial_complete(0, [], None)
    assert check(keep_dir / "2", EARLY).trials == 2


def test_repair_prefers_a_sessions_own_last_save_to_an_older_copy_of_it(tmp_path: Path):
    tune_dir, keep_dir = tmp_path / "tune", tmp_path / "keep"
    save_state(tune_dir, EARLY, 2)
    keep_copy(tune_dir, keep_dir)  # a copy of the earlier session, taken while it ran
    save_state(tune_dir, EARLY, 2)  # its last save: the same trials, further on
    final = (tune_dir / f"experiment_state-{EARLY}.json").read_bytes()
    save_state(tune_dir, LATE, 2)
    cut_short(tune_dir / f"experiment_state-{LATE}.json")
    message = repair(tune_dir, keep_dir)
    assert message is not None and f"its session {EARLY}" in message
    assert (tune_dir / f"experiment_state-{EARLY}.json").read_bytes() == final
