"""Result directories: atomic writes, the marker that makes a folder one, the lock one run holds, and
results that ``--overwrite`` moves aside until the new run has started."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mtl_search import storage
from mtl_search.errors import ResultsExistError, ResultsLockedError, UserError


def dead_pid() -> int:
    """The pid of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_new_result_directory_is_marked_and_locked_by_this_process(tmp_path: Path):
    path, replaced = storage.prepare_result_dir(tmp_path / "run")
    assert replaced is None and (path / storage.MARKER_FILE).is_file()
    holder = json.loads((path / storage.LOCK_FILE).read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
    assert oct((path / storage.LOCK_FILE).stat().st_mode & 0o777) == oct(0o600)
    storage.lock_result_dir(path)  # holding it already is fine
    storage.unlock_result_dir(path)
    assert not (path / storage.LOCK_FILE).exists()
    (path / "leaderboard.csv").write_text("x\n")
    with pytest.raises(ResultsExistError, match="--overwrite"):
        storage.prepare_result_dir(path)


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path: Path):
    path = tmp_path / "run"
    path.mkdir()
    lock = path / storage.LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "started": "then"}))
    storage.lock_result_dir(path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text("{half a lock")  # a crash between creating and writing it
    storage.lock_result_dir(path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    for holder in ({"host": socket.gethostname(), "pid": os.getppid(), "started": "now"},
                   {"host": "another-node", "pid": 1, "started": "now"}):  # another machine's run may be alive
        lock.write_text(json.dumps(holder))
        with pytest.raises(ResultsLockedError, match=f"host {holder['host']}, pid {holder['pid']}"):
            storage.lock_result_dir(path)
    storage.unlock_result_dir(path)  # not ours: left alone
    assert json.loads(lock.read_text())["host"] == "another-node"


def test_overwrite_moves_the_old_results_aside_until_the_new_run_has_started(tmp_path: Path):
    old, _ = storage.prepare_result_dir(tmp_path / "run")
    (old / "leaderboard.csv").write_text("old\n")
    storage.unlock_result_dir(old)
    path, replaced = storage.prepare_result_dir(tmp_path / "run", overwrite=True)
    assert replaced is not None and (replaced / "leaderboard.csv").read_text() == "old\n"
    assert sorted(p.name for p in path.iterdir()) == sorted([storage.LOCK_FILE, storage.MARKER_FILE])
    location = storage.ResultLocation(path, replaced=replaced)
    storage.restore_replaced(location)  # the new run could not start: the old results come back
    assert (path / "leaderboard.csv").read_text() == "old\n" and not replaced.exists()
    assert not (path / storage.LOCK_FILE).exists()
    path, replaced = storage.prepare_result_dir(tmp_path / "run", overwrite=True)
    storage.discard_replaced(storage.ResultLocation(path, replaced=replaced))  # it started: the old ones go
    assert not replaced.exists() and not (path / "leaderboard.csv").exists()


def test_overwrite_refuses_a_folder_mtl_search_did_not_create(tmp_path: Path):
    folder = tmp_path / "Documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years\n")
    with pytest.raises(UserError, match="holds no .mtl_search marker: nothing was deleted"):
        storage.prepare_result_dir(folder, overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]
