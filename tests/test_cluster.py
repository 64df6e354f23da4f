"""Running on a Ray cluster: ``submit`` to a real Ray head (cluster/local.sh), its errors, and results on
shared storage (URIs through pyarrow.fs)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from mtl_search import jobs, storage
from mtl_search.cli import main
from mtl_search.errors import ResultsExistError, UserError
from mtl_search.results import load_results
from mtl_search.spec_file import load_spec

from .conftest import planted_spec_dict

LOCAL_SH = Path(__file__).resolve().parents[1] / "cluster" / "local.sh"
#: What the cluster test submits: 2 tasks -> 3 candidate groups, 3 trials (configurations) of all 3, 2 epochs, inline.
TINY = {"data.params": {"rows": 400, "features": 8, "clusters": 1, "tasks_per_cluster": 2},
        "search.num_samples": 3}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Head:
    url: str
    env: dict[str, str]


@pytest.fixture
def local_head():
    """A real single-node Ray head on 127.0.0.1 in its own processes, stopped on teardown whatever happens.

    Its own temp dir (a plain ray.init() elsewhere never joins it), its own ports (a local ray.init() may hold
    8265 and 52365), its own token file (RAY_AUTH_TOKEN_PATH), and token authentication on.
    """
    folder = Path(tempfile.mkdtemp(prefix="mtlray-", dir="/tmp"))  # short: Ray puts unix sockets in it
    dashboard = _free_port()
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env.update({
        "MTL_RAY_DIR": str(folder),
        "MTL_RAY_PORT": str(_free_port()),
        "MTL_DASHBOARD_PORT": str(dashboard),
        "MTL_RAY_CLIENT_PORT": str(_free_port()),
        "MTL_RAY_AGENT_PORT": str(_free_port()),
        "MTL_RAY_CPUS": "2",
        "RAY_AUTH_TOKEN_PATH": str(folder / "auth_token"),
        # The head's jobs run `python -m mtl_search` with the python on PATH: this test's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": sys.executable,
    })
    try:
        started = subprocess.run(["bash", str(LOCAL_SH), "start"], env=env, capture_output=True, text=True,
                                 timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr
        yield Head(f"http://127.0.0.1:{dashboard}", env)
    finally:
        subprocess.run(["bash", str(LOCAL_SH), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _cli(head: Head, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtl_search", *args], env=head.env, capture_output=True,
                          text=True, timeout=timeout)


def test_submit_wait_runs_the_search_on_a_real_head(local_head: Head, write_spec, tmp_path: Path, monkeypatch,
                                                   capsys):
    # Token authentication is on: without the token the Jobs API refuses.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{local_head.url}/api/jobs/", timeout=10)
    assert refused.value.code == 401

    spec = write_spec(planted_spec_dict(tmp_path, **TINY))
    done = _cli(local_head, "submit", str(spec), "--address", local_head.url, "--wait")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    job_id = done.stdout.splitlines()[0]
    assert job_id.startswith("mtl_search-planted-")
    assert "[3/3, " in done.stdout and "top groupings" in done.stdout  # the job's log, streamed
    assert f"job {job_id}: SUCCEEDED" in done.stderr

    board = load_results(tmp_path / "results" / "planted").leaderboard
    assert list(board["rank"]) == [1, 2]
    assert set(board["grouping"]) == {"a0+a1", "a0|a1"}
    assert board["valid_score"].notna().all() and board["score"].notna().all()
    assert len(pd.read_csv(tmp_path / "results" / "planted" / "trials.csv")) == 3 * 3  # 3 trials x 3 networks

    # status and logs (in this process), the address from RAY_API_SERVER_ADDRESS this time
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", local_head.env["RAY_AUTH_TOKEN_PATH"])
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", local_head.url)
    capsys.readouterr()
    assert main(["status", job_id]) == 0
    out = capsys.readouterr().out
    assert f"job {job_id}: SUCCEEDED" in out and str(tmp_path / "results" / "planted") in out
    assert main(["logs", job_id]) == 0
    assert "top groupings" in capsys.readouterr().out


# --------------------------------------------------------------------------- submit: errors before sending


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if anything tries to reach a cluster."""

    def refuse(address):  # noqa: ANN001, ANN202
        raise AssertionError(f"contacted the cluster at {address}")

    monkeypatch.setattr(jobs, "connect", refuse)


def test_submit_with_a_bad_key_fails_at_once_with_exit_2(no_cluster, write_spec, tmp_path: Path, capsys):
    spec = write_spec(planted_spec_dict(tmp_path, **TINY))
    started = time.time()
    code = main(["submit", str(spec), "--set", "search.num_sample=3", "--address", "http://127.0.0.1:9"])
    assert code == 2
    assert time.time() - started < 30
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "search.num_sample: unknown key" in err and "did you mean 'num_samples'" in err


@pytest.mark.parametrize(("change", "words"), [
    ({"output": "results"}, ["output 'results' is a relative path", "--output", "s3://"]),
    ({"data.source": "missing.csv", "data.params": {}}, ["missing.csv", "does not exist"]),
])
def test_submit_rejects_what_cannot_work_on_a_cluster(no_cluster, write_spec, tmp_path: Path, capsys, change,
                                                      words):
    assert main(["submit", str(write_spec(planted_spec_dict(tmp_path, **change))), "--address", "x"]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_submit_without_an_address_says_how_to_get_one(write_spec, tmp_path: Path, capsys, monkeypatch):
    for name in jobs.ADDRESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert main(["submit", str(write_spec(planted_spec_dict(tmp_path, **TINY)))]) == 2
    err = capsys.readouterr().err
    assert "no cluster address" in err and "cluster/local.sh start" in err


def test_an_unreachable_address_is_named_with_the_fix(write_spec, tmp_path: Path, capsys):
    address = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["status", "some-job", "--address", address]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Ray Jobs API at {address}" in err and "cluster/local.sh start" in err


# --------------------------------------------------------------------------- what travels with a job


def test_build_job_ships_the_spec_and_a_local_data_file(write_spec, tmp_path: Path):
    table = pd.DataFrame({"x": range(40), "y": [float(i % 7) for i in range(40)], "z": [i % 2 for i in range(40)]})
    (tmp_path / "data").mkdir()
    table.to_csv(tmp_path / "data" / "table.csv", index=False)
    raw = {"name": "shipped", "data": {"source": "data/table.csv",
                                       "tasks": {"y": {"column": "y", "type": "regression"},
                                                 "z": {"column": "z", "type": "binary"}}},
           "output": "/srv/results"}
    workdir = tmp_path / "job"
    workdir.mkdir()
    spec, request = jobs.build_job(write_spec(raw), ["seed=3"], workdir, overwrite=True)

    assert request.entrypoint == "python -m mtl_search run spec.yaml --overwrite"
    assert request.runtime_env["working_dir"] == str(workdir)
    assert request.runtime_env["py_modules"][0].endswith("mtl_search")
    assert request.results == "/srv/results/shipped" and spec.name == "shipped"
    shipped = yaml.safe_load((workdir / "spec.yaml").read_text())
    assert shipped["seed"] == 3 and shipped["data"]["source"] == "data/table.csv"
    assert (workdir / "data" / "table.csv").read_bytes() == (tmp_path / "data" / "table.csv").read_bytes()
    assert load_spec(workdir / "spec.yaml").data.source == str((workdir / "data" / "table.csv").resolve())

    other = tmp_path / "job2"
    other.mkdir()
    _, installed = jobs.build_job(write_spec(raw), [], other, use_installed=True)
    assert "py_modules" not in installed.runtime_env and installed.entrypoint.endswith("run spec.yaml")


def test_data_on_cluster_needs_an_absolute_path(write_spec, tmp_path: Path):
    raw = {"name": "remote", "data": {"source": "table.csv",
                                      "tasks": {"y": {"column": "y", "type": "regression"}}}, "output": "/srv"}
    workdir = tmp_path / "job"
    workdir.mkdir()
    with pytest.raises(UserError, match="absolute path on the cluster"):
        jobs.build_job(write_spec(raw), [], workdir, data_on_cluster=True)
    raw["data"]["source"] = "/data/table.csv"
    jobs.build_job(write_spec(raw), [], workdir, data_on_cluster=True)
    assert yaml.safe_load((workdir / "spec.yaml").read_text())["data"]["source"] == "/data/table.csv"
    assert not (workdir / "data").exists()


def test_address_and_token_are_found_where_ray_looks(monkeypatch, tmp_path: Path):
    for name in (*jobs.ADDRESS_VARIABLES, "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "http://b:8265")
    assert jobs.resolve_address(None) == "http://b:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://a:8265")
    assert jobs.resolve_address(None) == "http://a:8265"
    assert jobs.resolve_address("http://explicit:8265") == "http://explicit:8265"

    assert jobs.auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert jobs.auth_token() == "home-token"
    (tmp_path / "named").write_text("named-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "named"))
    assert jobs.auth_token() == "named-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert jobs.auth_token() == "env-token"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.auth_token()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_token() is None


@pytest.mark.parametrize(("status", "driver_code", "expected"), [
    ("SUCCEEDED", 0, 0), ("FAILED", 2, 2), ("FAILED", 1, 1), ("FAILED", None, 1), ("STOPPED", None, 1),
])
def test_wait_exits_with_the_jobs_outcome(status, driver_code, expected):
    assert jobs.exit_code(SimpleNamespace(status=status, driver_exit_code=driver_code)) == expected


# --------------------------------------------------------------------------- results on shared storage


def test_uri_results_are_never_overwritten_silently(tmp_path: Path):
    uri = f"file://{tmp_path}/shared/run"
    storage.prepare_remote_dir(uri)
    staged = tmp_path / "stage"
    staged.mkdir()
    pd.DataFrame({"rank": [1], "grouping": ["a|b"]}).to_csv(staged / "leaderboard.csv", index=False)
    storage.publish_results(storage.ResultLocation(staged, uri))
    assert pd.read_csv(tmp_path / "shared" / "run" / "leaderboard.csv")["grouping"].tolist() == ["a|b"]

    with pytest.raises(ResultsExistError, match="--overwrite"):
        storage.prepare_remote_dir(uri)
    assert (tmp_path / "shared" / "run" / "leaderboard.csv").exists()
    storage.prepare_remote_dir(uri, overwrite=True)
    assert not any((tmp_path / "shared" / "run").iterdir())
    with pytest.raises(UserError, match="no leaderboard.csv at file://"):
        load_results(uri)


def test_uri_helpers():
    assert storage.is_uri("s3://bucket/x") and storage.is_uri("file:///tmp") and not storage.is_uri("/mnt/nfs/x")
    assert storage.join_uri("s3://bucket/prefix/", "name", "leaderboard.csv") == "s3://bucket/prefix/name/leaderboard.csv"
    with pytest.raises(UserError, match="no filesystem for this URI"):
        storage.open_uri("nosuchscheme://bucket/x")


def test_a_run_with_a_uri_output_publishes_its_results(ray_local, tmp_path: Path):
    from mtl_search.experiment import run_experiment
    from mtl_search.spec_file import spec_from_dict

    uri = f"file://{tmp_path}/bucket/results"
    spec = spec_from_dict(planted_spec_dict(tmp_path, **TINY, output=uri))
    lines: list[str] = []
    result = run_experiment(spec, echo=lines.append)
    assert f"staging: {result.result_dir}" in "\n".join(lines)  # printed at the start, to resume from
    assert not result.result_dir.parent.exists()  # the staging folder (mkdtemp) went once published
    published = tmp_path / "bucket" / "results" / "planted"
    for name in ("config.yaml", "run.json", "trials.csv", "groups.csv", "leaderboard.csv"):
        assert (published / name).is_file(), name
    assert result.result_dir != published  # it ran in a local staging folder
    board = load_results(f"{uri}/planted").leaderboard
    assert set(board["grouping"]) == {"a0+a1", "a0|a1"}
    with pytest.raises(ResultsExistError):
        run_experiment(spec, echo=lambda line: None)
