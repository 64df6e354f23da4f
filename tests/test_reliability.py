"""Interrupted searches resume, failing trials do not stop a search, and runs are reproducible."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from mtl_search.experiment import run_experiment
from mtl_search.spec_file import spec_from_dict

from .conftest import planted_spec_dict

THREE_TASKS = {"rows": 1500, "features": 8, "latent_dim": 3, "clusters": 1, "tasks_per_cluster": 3}


def cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtl_search", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def reported(tune_dir: Path) -> dict[str, list[dict]]:
    """Every result each trial reported, from Tune's own result.json files."""
    results = {}
    for path in tune_dir.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        if lines:
            results[lines[0]["trial_id"]] = lines
    return results


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_run_resumes_without_retraining_finished_trials(write_spec, tmp_path: Path):
    spec = write_spec(planted_spec_dict(tmp_path, **{
        "data.params": THREE_TASKS, "space.epochs": 12, "search.num_samples": 5,
        "search.max_concurrent_trials": 1, "search.scheduler": {"type": "fifo"}}))
    out = tmp_path / "results" / "planted"
    trials_csv = out / "trials.csv"
    process = subprocess.Popen([sys.executable, "-m", "mtl_search", "run", str(spec)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 480
        while time.time() < deadline and process.poll() is None:
            if trials_csv.exists() and pd.read_csv(trials_csv)["trial_id"].nunique() >= 2:
                break
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the local Ray it started
        process.wait()
    before = pd.read_csv(trials_csv, dtype={"trial_id": str})
    finished = before["trial_id"].unique()
    assert 2 <= len(finished) < 5, "the kill must land mid-search"
    assert len(before) == 7 * len(finished)  # one row per network of each finished pack
    results_before = reported(out / "tune")

    resumed = cli("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {len(finished)} of 5 trials already finished" in resumed.stdout

    after = pd.read_csv(trials_csv, dtype={"trial_id": str})
    assert after["trial_id"].nunique() == 5 and len(after) == 5 * 7
    assert not after.duplicated(["trial_id", "group"]).any()
    assert set(after["status"]) == {"completed"}
    kept = after.set_index(["trial_id", "group"]).loc[list(zip(before["trial_id"], before["group"], strict=True))]
    for column in ("score", "test_score", "epochs_run", "lr"):
        assert list(kept[column]) == list(before[column]), column
    # No finished trial was trained again. One that finished just before the kill may not be marked finished
    # in Tune's saved state yet: it is restored from its last checkpoint and only repeats its final report.
    results_after = reported(out / "tune")
    for trial_id in finished:
        old, new = results_before[trial_id], results_after[trial_id]
        assert new[:len(old)] == old
        for extra in new[len(old):]:
            assert extra["epoch"] == old[-1]["epoch"] and extra["train_loop_s"] == old[-1]["train_loop_s"]
            assert extra["score"] == old[-1]["score"]
    retrained = sum(len(results_after[t]) > len(results_before[t]) and results_after[t][len(results_before[t])]["epoch"]
                    > results_before[t][-1]["epoch"] for t in finished)
    print(f"resume: {len(finished)} trials finished before the kill, {5 - len(finished)} after the resume, "
          f"{retrained} finished trials trained again")  # the figures for the record (pytest -s)
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 5  # Bell(3): every group was scored
    assert set(pd.read_csv(out / "groups.csv")["group"]) == {"a0", "a1", "a2", "a0+a1", "a0+a2", "a1+a2",
                                                             "a0+a1+a2"}


def progress_events(out: Path) -> int:
    """How far a search has got: trial folders, checkpoints written (per trial, its newest number + 1), trials ended."""
    tune_dir = out / "tune"
    events = 0
    for trial_dir in tune_dir.glob("*/") if tune_dir.is_dir() else []:
        if (trial_dir / "params.json").exists() or any(trial_dir.glob("checkpoint_*")):
            events += 1
            numbers = [int(path.name.rsplit("_", 1)[1]) for path in trial_dir.glob("checkpoint_[0-9]*")]
            events += max(numbers, default=-1) + 1
    trials_csv = out / "trials.csv"
    if trials_csv.exists():
        with contextlib.suppress(pd.errors.EmptyDataError, KeyError):
            events += pd.read_csv(trials_csv)["trial_id"].nunique()
    return events


@pytest.mark.ray
@pytest.mark.slow
def test_ten_kills_at_different_moments_lose_no_trial(write_spec, tmp_path: Path):
    """SIGKILL of the whole process group (driver, local Ray, trials) at ten moments; each time resume continues.

    The moments are spread by how far the search has got since the last start (trial folders created,
    checkpoints written, trials ended) plus a short delay, so kills land at trial starts, between and during
    checkpoint writes, at trial ends, and while Tune rewrites its experiment state.
    """
    spec = write_spec(planted_spec_dict(tmp_path, **{
        "data.params": THREE_TASKS, "space.epochs": 30, "search.num_samples": 8,
        "search.max_concurrent_trials": 1, "search.scheduler": {"type": "fifo"}}))
    out = tmp_path / "results" / "planted"
    trials_csv = out / "trials.csv"
    advances = [1, 3, 12, 1, 25, 6, 40, 2, 30, 9]
    delays = [0.0, 0.1, 0.3, 0.0, 0.5, 0.05, 0.2, 0.0, 0.4, 0.1]
    seen = 0
    kills = 0
    finished: pd.DataFrame = pd.DataFrame()
    log = tmp_path / "driver.log"
    for advance, delay in zip(advances, delays, strict=True):
        command = ["run", str(spec)] if kills == 0 else ["resume", str(out)]
        with log.open("a") as stderr:
            stderr.write(f"\n=== start {kills + 1}: {' '.join(command)}\n")
            stderr.flush()
            process = subprocess.Popen([sys.executable, "-m", "mtl_search", *command], stdout=stderr,
                                       stderr=stderr, start_new_session=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and process.poll() is None and progress_events(out) < seen + advance:
                time.sleep(0.02)
            time.sleep(delay)
        finally:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
        assert code == -signal.SIGKILL, f"start {kills + 1} ended on its own ({code}):\n{log.read_text()[-4000:]}"
        kills += 1
        seen = progress_events(out)
        if trials_csv.exists():
            now = pd.read_csv(trials_csv, dtype={"trial_id": str})
            assert not now.duplicated(["trial_id", "group"]).any(), "a finished trial was recorded twice"
            assert set(now["status"]) <= {"completed"}, now[["trial_id", "status", "error"]].to_string()
            if len(finished):
                kept = now.set_index(["trial_id", "group"]).loc[
                    list(zip(finished["trial_id"], finished["group"], strict=True))]
                assert list(kept["score"]) == list(finished["score"]), "a finished trial changed"
            finished = now
    assert kills == 10
    # An eleventh kill in the middle of Tune rewriting its experiment state (it writes in place) leaves the file
    # cut short; this one is made for certain rather than left to timing.
    newest = max((out / "tune").glob("experiment_state-*.json"))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    resumed = cli("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:] + log.read_text()[-3000:]
    assert "Tune's newest saved state was damaged" in resumed.stdout and "resuming from the last complete one" \
        in resumed.stdout
    after = pd.read_csv(trials_csv, dtype={"trial_id": str})
    assert len(finished["trial_id"].unique()) >= 3, "the kills must leave finished trials behind"
    assert after["trial_id"].nunique() == 8 and len(after) == 8 * 7, after[["trial_id", "group", "status"]].to_string()
    assert not after.duplicated(["trial_id", "group"]).any()
    assert set(after["status"]) == {"completed"}
    kept = after.set_index(["trial_id", "group"]).loc[list(zip(finished["trial_id"], finished["group"], strict=True))]
    assert list(kept["score"]) == list(finished["score"])
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 5  # Bell(3): every grouping scored
    print(f"ten kills: {finished['trial_id'].nunique()} trials finished before the last resume")


def test_resume_without_an_interrupted_search_is_a_clear_error(tmp_path: Path):
    result = cli("resume", str(tmp_path))
    assert result.returncode == 2 and "not an mtl_search result directory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_diverging_and_raising_trials_are_recorded_and_the_search_finishes(write_spec, tmp_path: Path):
    spec = write_spec(planted_spec_dict(tmp_path, **{
        "data.params": {"rows": 300, "features": 8, "latent_dim": 2, "clusters": 1, "tasks_per_cluster": 2},
        "space.lr": 1.0e30, "space.epochs": 3, "search.unit": "group", "search.num_samples": "groups"}))
    result = cli("run", str(spec), env={"MTL_SEARCH_FAIL_GROUPS": "a1"})
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "results" / "planted" / "trials.csv").set_index("group")
    assert trials.loc["a1", "status"] == "error" and "injected failure" in trials.loc["a1", "reason"]
    assert trials.loc["a0", "status"] == "diverged" and "non-finite" in trials.loc["a0", "reason"]
    assert trials.loc["a0+a1", "status"] == "diverged"
    assert "3 failed" in result.stdout and "no grouping could be scored" in result.stdout


@pytest.mark.parametrize("executor", ["inline"])
def test_same_seed_same_trials_and_leaderboard(ray_local, tmp_path: Path, executor: str):
    boards, trials = [], []
    for name in ("first", "second"):
        spec = spec_from_dict(planted_spec_dict(tmp_path, **{
            "name": name, "data.params": THREE_TASKS, "space.epochs": 3, "search.num_samples": 5,
            "space.lr": {"float": [1e-3, 1e-1], "log": True}, "space.width": {"choice": [4, 8, 16]},
            "search.max_concurrent_trials": 1, "search.trial_executor": executor}))
        result = run_experiment(spec, echo=lambda line: None)
        columns = ["group", "lr", "width", "status", "epochs_run", "score", "test_score"]
        trials.append(result.trials[columns].reset_index(drop=True))
        boards.append(result.leaderboard.reset_index(drop=True))
    pd.testing.assert_frame_equal(trials[0], trials[1])
    pd.testing.assert_frame_equal(boards[0], boards[1])
    assert trials[0]["lr"].nunique() > 1  # TPE really proposed different values


def interrupt(spec: Path, signum: int, reached: Callable[[list[str]], bool]) -> tuple[int, str, str]:
    """Start ``run SPEC``, send ``signum`` once ``reached(stdout lines)``, and return its exit code, stdout, stderr.

    SIGINT goes to the whole process group, as Ctrl-C in a terminal does; SIGTERM to the driver only, as
    ``kill PID`` or a scheduler's stop does.
    """
    import threading

    process = subprocess.Popen([sys.executable, "-m", "mtl_search", "run", str(spec)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    errors: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True),
               threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)]  # a full pipe blocks
    for reader in readers:
        reader.start()
    try:
        deadline = time.time() + 480
        while time.time() < deadline and process.poll() is None and not reached(lines):
            time.sleep(0.1)
        assert process.poll() is None, "the run must still be running when the signal comes"
        if signum == signal.SIGINT:
            os.killpg(process.pid, signal.SIGINT)
        else:
            os.kill(process.pid, signal.SIGTERM)
        code = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    for reader in readers:
        reader.join(timeout=60)
    return code, "".join(lines), "".join(errors)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize(("phase", "signum"), [("search", signal.SIGINT), ("confirm", signal.SIGINT),
                                               ("search", signal.SIGTERM)])
def test_ctrl_c_ends_a_run_as_interrupted_and_resume_completes_it(write_spec, tmp_path: Path, phase: str,
                                                                 signum: int):
    spec = write_spec(planted_spec_dict(tmp_path, **{
        "data.params": THREE_TASKS, "space.epochs": 12, "search.num_samples": 4,
        "search.max_concurrent_trials": 1, "search.scheduler": {"type": "fifo"},
        "confirm": {"top_k": 2, "seeds": 3}}))
    out = tmp_path / "results" / "planted"
    trials_csv = out / "trials.csv"

    def reached(lines: list[str]) -> bool:
        if phase == "confirm":
            return any(line.startswith("confirm: retraining") for line in lines)
        return trials_csv.exists() and pd.read_csv(trials_csv)["trial_id"].nunique() >= 1

    code, _, stderr = interrupt(spec, signum, reached)
    assert code == 128 + signum, stderr[-3000:]
    assert f"interrupted ({signal.Signals(signum).name})" in stderr and f"mtl-search resume {out}" in stderr
    assert not (out / "leaderboard.csv").exists() and not (out / "run.json").exists()  # nothing presented as final
    before = pd.read_csv(trials_csv, dtype={"trial_id": str}) if trials_csv.exists() else pd.DataFrame()
    if phase == "search":
        assert 1 <= before["trial_id"].nunique() < 4, "Ctrl-C must land mid-search"
    else:
        assert before["trial_id"].nunique() == 4

    resumed = cli("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = pd.read_csv(trials_csv, dtype={"trial_id": str})
    assert after["trial_id"].nunique() == 4 and set(after["status"]) == {"completed"}  # none left "stopped"
    kept = after.set_index(["trial_id", "group"]).loc[list(zip(before["trial_id"], before["group"], strict=True))]
    assert list(kept["score"]) == list(before["score"])  # finished trials kept as they were
    assert (out / "leaderboard.csv").is_file() and (out / "confirm.csv").is_file()
    stamp = (out / "leaderboard.csv").stat().st_mtime_ns
    again = cli("resume", str(out))  # a finished run: said so, nothing retrained or rewritten
    assert again.returncode == 0 and "holds a finished run" in again.stdout and "nothing to resume" in again.stdout
    assert (out / "leaderboard.csv").stat().st_mtime_ns == stamp


@pytest.mark.ray
def test_resume_refuses_a_changed_spec_or_data_and_names_the_changes(write_spec, tmp_path: Path):
    data = tmp_path / "table.csv"
    spec_dict = planted_spec_dict(tmp_path, **{"data.params": THREE_TASKS, "search.num_samples": 2})
    from mtl_search.datasets import load_builtin

    load_builtin("planted", THREE_TASKS).frame.to_csv(data, index=False)
    spec_dict["data"] = {"source": str(data), "tasks": {name: {"column": name, "type": kind} for name, kind in
                                                        (("a0", "regression"), ("a1", "binary"))}}
    spec = write_spec(spec_dict)
    out = tmp_path / "results" / "planted"
    assert cli("run", str(spec)).returncode == 0
    recorded = json.loads((out / "run.json").read_text())["fingerprint"]
    assert recorded["data"]["path"] == str(data) and recorded["data"]["bytes"] == data.stat().st_size
    # As if the run had been cut off before its tables: what resume checks comes first.
    (out / "run.json").unlink()
    (out / "leaderboard.csv").unlink()
    config = out / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("epochs: 2", "epochs: 3"))
    refused = cli("resume", str(out))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "the spec or the data changed since the run started" in refused.stderr
    assert "spec space.epochs: 2 -> 3" in refused.stderr and str(config) in refused.stderr

    config.write_text(original)
    table = data.read_bytes()
    data.write_bytes(table + table.splitlines(keepends=True)[-1])  # one row more
    refused = cli("resume", str(out))
    assert refused.returncode == 2 and "data bytes:" in refused.stderr, refused.stderr

    data.write_bytes(table)  # the same bytes, a new modification time: the same data
    resumed = cli("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "leaderboard.csv").is_file()


@pytest.mark.ray
@pytest.mark.slow
def test_an_interrupted_uri_run_publishes_what_exists_and_resumes_from_its_staging_folder(write_spec,
                                                                                          tmp_path: Path):
    uri = f"file://{tmp_path}/bucket/results"
    spec = write_spec(planted_spec_dict(tmp_path, **{
        "data.params": THREE_TASKS, "space.epochs": 30, "search.num_samples": 4,
        "search.max_concurrent_trials": 1, "search.scheduler": {"type": "fifo"}, "output": uri}))
    published = tmp_path / "bucket" / "results" / "planted"

    def reached(lines: list[str]) -> bool:
        return any(line.startswith("[1/4") for line in lines)

    code, stdout, stderr = interrupt(spec, signal.SIGTERM, reached)
    assert code == 143, stderr[-3000:]
    staging = Path(next(line for line in stdout.splitlines() if line.startswith("staging: ")).split()[1])
    assert staging.is_dir() and (staging / "trials.csv").is_file()  # kept, to resume from
    assert f"mtl-search resume {staging}" in stderr
    assert (published / "trials.csv").is_file() and (published / "config.yaml").is_file()  # what existed
    assert not (published / "leaderboard.csv").exists()

    resumed = cli("resume", str(staging))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"results copied to {uri}/planted" in resumed.stdout
    assert (published / "leaderboard.csv").is_file()
    assert pd.read_csv(published / "trials.csv")["trial_id"].nunique() == 4
    assert not staging.exists() and not staging.parent.exists()  # a finished run's staging folder goes
