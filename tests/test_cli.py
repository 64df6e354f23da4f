"""The command line: help, exit codes, clear errors without tracebacks, and a real run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mtl_search.cli import main

from .conftest import planted_spec_dict


def test_help_explains_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "validate" in out and "leaderboard.csv" in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--set" in capsys.readouterr().out


def test_validate_checks_without_training(write_spec, tmp_path: Path, capsys):
    assert main(["validate", str(write_spec(planted_spec_dict(tmp_path)))]) == 0
    out = capsys.readouterr().out
    assert "candidate groups (exhaustive): 15" in out and "spec and data are valid" in out
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("change", "words"), [
    ({"search.trial_executor": "local"}, ["search.trial_executor", "inline"]),
    ({"data.source": "missing.csv", "data.params": {}}, ["missing.csv", "does not exist"]),
    ({"search.num_samples": 3, "search.unit": "group"}, ["num_samples=3", "15 candidate groups"]),
    ({"search.num_samples": "groups"}, ["num_samples 'groups'", "unit 'group'", "'auto' (10)"]),
    ({"data.params": {"clusterz": 2}}, ["data.params.clusterz", "clusters"]),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(write_spec, tmp_path: Path, capsys, change, words):
    assert main(["validate", str(write_spec(planted_spec_dict(tmp_path, **change)))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    for word in words:
        assert word in err


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2
    assert main(["validate", "nope.yaml", "--set", "name"]) == 2


def test_existing_results_are_never_overwritten_silently(write_spec, tmp_path: Path, capsys):
    spec = write_spec(planted_spec_dict(tmp_path))
    existing = tmp_path / "results" / "planted"
    existing.mkdir(parents=True)
    (existing / "leaderboard.csv").write_text("precious\n")
    assert main(["run", str(spec)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (existing / "leaderboard.csv").read_text() == "precious\n"


def test_select_reads_a_network_table_and_prints_the_choice(tmp_path: Path, capsys):
    table = tmp_path / "networks.csv"
    table.write_text("network,group,cost,a,b\nsolo_a,a,1,0.5,\nsolo_b,b,1,,0.5\nboth,a+b,1,0.55,0.6\n")
    # Alone at budget 1, "both" serves a and b; at budget 2 the two specialists together are better.
    assert main(["select", str(table), "--budget", "1"]) == 0
    assert "both" in capsys.readouterr().out  # one network must serve both tasks
    assert main(["select", str(table), "--budget", "2", "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)
    assert sorted(chosen["networks"]) == ["solo_a", "solo_b"] and chosen["total_loss"] == pytest.approx(1.0)
    assert main(["select", str(table), "--budget", "0.9"]) == 2
    assert "raise --budget" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("network,group,cost,a\nx,a,cheap,0.1\n")
    assert main(["select", str(tmp_path / "bad.csv"), "--budget", "1"]) == 2
    err = capsys.readouterr().err
    assert "cost" in err and "bad.csv" in err and "Traceback" not in err


DOCUMENTED = {
    "trials.csv": ["trial_id", "group", "n_tasks", "status", "reason", "depth", "sharing_depth", "width",
                   "head_sizes", "weighting", "lr", "weight_decay", "dropout", "batch_size", "epochs", "epochs_run",
                   "best_epoch", "score", "test_score", "params", "threads", "wall_s", "train_loop_s",
                   "overhead_s"],
    "groups.csv": ["group", "n_tasks", "trials", "trials_failed", "best_trial", "valid_score", "test_score",
                   "params"],
    "leaderboard.csv": ["rank", "grouping", "n_groups", "valid_score", "score", "delta_vs_single_task_pct",
                        "params", "inference_cost", "estimated", "baseline"],
    "selection.csv": ["budget", "feasible", "networks", "n_networks", "cost", "total_loss", "test_total_loss"],
}


@pytest.mark.ray
@pytest.mark.slow
def test_run_in_a_fresh_process_writes_the_documented_results(write_spec, tmp_path: Path):
    spec = write_spec(planted_spec_dict(tmp_path, **{"data.params": {"rows": 400, "features": 8, "clusters": 1,
                                                                     "tasks_per_cluster": 3},
                                                     "search.num_samples": 3, "baselines": ["gbdt"]}))
    token = tmp_path / "ray" / "auth_token"  # where this run's local Ray keeps its token (not the user's own)
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ADDRESS": ""}  # empty, as CI templates set it
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_MODE", None)
    done = subprocess.run([sys.executable, "-m", "mtl_search", "run", str(spec), "--set", "space.epochs=3"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert token.stat().st_mode & 0o777 == 0o600  # the local Ray's token: readable by its owner only
    assert "top groupings" in done.stdout and "[3/3, " in done.stdout and "baseline:gbdt" in done.stdout
    assert "7 networks" in done.stdout  # a trial trains every candidate group (unit: pack)
    out = tmp_path / "results" / "planted"
    for name, columns in DOCUMENTED.items():
        frame = pd.read_csv(out / name)
        assert set(columns) <= set(frame.columns), (name, set(columns) - set(frame.columns))
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board.loc[board["baseline"], "grouping"]) == ["baseline:gbdt"]  # a reference, not ranked
    assert board.loc[board["baseline"], "rank"].isna().all()
    board = board[~board["baseline"]]
    assert len(board) == 5  # Bell(3)
    assert {"a0|a1|a2", "a0+a1+a2"} <= set(board["grouping"])
    assert {"test_a0_rmse", "test_a1_auc", "test_a2_accuracy"} <= set(board.columns)
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 * 7 and (trials["epochs"] == 3).all()  # one row per network: 3 trials x 7 groups
    assert (trials.groupby("group")["trial_id"].nunique() == 3).all()  # every group under every configuration
    assert "epochs: 3" in (out / "config.yaml").read_text()

    # The run drew its plots, and the review commands read what it wrote.
    from tests.test_report import assert_drawn

    for name in ("top_groupings.png", "score_vs_cost.png", "tasks_best_group.png"):
        assert_drawn(out / "plots" / name)
    shown = subprocess.run([sys.executable, "-m", "mtl_search", "leaderboard", str(out), "--top", "3", "--csv"],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    table = pd.read_csv(io.StringIO(shown.stdout))
    ranked = table[table["rank"].notna()]
    assert list(ranked["grouping"]) == list(board["grouping"].head(3))  # the run's own ranking
    assert "baseline:gbdt" in set(table["grouping"])
    compared = subprocess.run([sys.executable, "-m", "mtl_search", "compare", str(out), str(out), "--markdown"],
                              capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr
    assert board["grouping"].iloc[0].replace("|", r"\|") in compared.stdout  # Markdown escapes the bar
    reported = subprocess.run([sys.executable, "-m", "mtl_search", "report", str(out), "--html"],
                              capture_output=True, text=True, timeout=300)
    assert reported.returncode == 0, reported.stderr
    assert (out / "report.html").is_file() and "report.html" in reported.stdout


@pytest.mark.parametrize(("backbone", "encoding"), [("mlp", "standard"), ("mlp", "quantile"),
                                                    ("tabm", "piecewise_linear"), ("tabm", "periodic")])
def test_a_tiny_search_runs_with_every_backbone_and_encoding(ray_local, write_spec, tmp_path: Path, backbone: str,
                                                             encoding: str):
    spec = planted_spec_dict(tmp_path, **{
        "data.params": {"rows": 400, "features": 8, "clusters": 1, "tasks_per_cluster": 3},
        "space.backbone": backbone, "space.members": 3, "space.numeric_encoding": encoding,
        "space.lr_schedule": "cosine", "space.grad_clip": 1.0, "search.num_samples": 1,
        "confirm": {"top_k": 1, "seeds": 1} if backbone == "tabm" else None})
    assert main(["run", str(write_spec(spec))]) == 0
    out = tmp_path / "results" / "planted"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 7 and set(trials["status"]) == {"completed"}  # one pack trial: all 7 groups of 3 tasks
    assert set(trials["backbone"]) == {backbone} and set(trials["numeric_encoding"]) == {encoding}
    assert trials["score"].notna().all() and trials["test_score"].notna().all()
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board[~board["baseline"]]) == 5 and board["score"].notna().all()
    if backbone == "tabm":  # confirm retrains the rank-1 grouping's networks with the trial's backbone and encoding
        confirm = pd.read_csv(out / "confirm.csv")
        assert set(confirm["grouping"]) == {board.loc[0, "grouping"]} and confirm["nloss_mean"].notna().all()


def test_validate_refuses_a_30_task_exhaustive_search_at_once_and_names_the_way_out(write_spec, tmp_path: Path,
                                                                                   capsys):
    spec = planted_spec_dict(tmp_path, **{"data.params": {"rows": 300, "features": 32, "latent_dim": 3, "clusters": 10,
                                                          "tasks_per_cluster": 3}})
    assert main(["validate", str(write_spec(spec))]) == 2
    message = capsys.readouterr().err
    assert "grouping.candidates: 'exhaustive' would train 1,073,741,823 candidate groups for 30 tasks" in message
    assert "max_group_size: 2 (465 groups)" in message and "Traceback" not in message
    spec["grouping"] = {"candidates": "affinity", "top_k": 2}
    assert main(["validate", str(write_spec(spec))]) == 0
    assert "candidate groups (affinity): the singletons plus the groups of the top 2 groupings by affinity" in \
        capsys.readouterr().out
    spec["grouping"] = {"candidates": "estimate", "top_k": 2}
    assert main(["validate", str(write_spec(spec))]) == 0
    assert "the top 2 groupings by estimated loss, chosen after an all-task affinity run (at most 60 groups)" in \
        capsys.readouterr().out


def test_name_and_output_are_literal_strings_never_yaml(write_spec, tmp_path: Path):
    import argparse

    from mtl_search.cli import _load

    output = tmp_path / "runs #2"  # a YAML comment marker inside a folder name
    args = argparse.Namespace(spec=write_spec(planted_spec_dict(tmp_path)), overrides=[], output=str(output),
                              name="2024")  # a name, not a number
    spec = _load(args)  # what run and submit read their --name and --output through
    assert spec.name == "2024" and str(spec.output) == str(output)


def test_the_cli_reads_names_and_paths_literally(write_spec, tmp_path: Path, capsys):
    spec = write_spec(planted_spec_dict(tmp_path))
    output = tmp_path / "runs #2"
    assert main(["run", str(spec), "--resume", "--name", "2024", "--output", str(output)]) == 2
    assert f"nothing to resume at {output / '2024'}" in capsys.readouterr().err  # not `runs`, not the number 2024
    odd = tmp_path / "odd #1" / "run"
    assert main(["resume", str(odd)]) == 2
    assert f"{odd} holds no config.yaml" in capsys.readouterr().err  # not odd/run


@pytest.mark.parametrize(("given", "environment", "expected"), [
    (None, None, None), (None, "", None), (None, "  ", None), ("", "", None),
    (None, "ray://head:10001", "ray://head:10001"), ("auto", "ray://head:10001", "auto")])
def test_an_empty_ray_address_means_a_local_ray(monkeypatch: pytest.MonkeyPatch, given, environment, expected):
    from mtl_search.ray_session import ray_address

    if environment is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", environment)
    assert ray_address(given) == expected


def test_a_second_run_of_the_same_result_directory_exits_2_while_the_first_finishes_untouched(
        write_spec, tmp_path: Path, capsys):
    import time

    from mtl_search import storage

    spec = write_spec(planted_spec_dict(tmp_path, **{"data.params": {"rows": 400, "features": 8, "clusters": 1,
                                                                     "tasks_per_cluster": 2},
                                                     "search.num_samples": 2, "space.epochs": 30}))
    out = tmp_path / "results" / "planted"
    first = subprocess.Popen([sys.executable, "-m", "mtl_search", "run", str(spec)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # the lock is taken before Ray starts, so the run holds it for many seconds after
            if (out / storage.LOCK_FILE).exists() or first.poll() is not None:
                break
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1][-3000:]
        for extra in ([], ["--overwrite"], ["--resume"]):
            assert main(["run", str(spec), *extra]) == 2
            err = capsys.readouterr().err
            assert "in use by another mtl_search run" in err and f"pid {first.pid}" in err, err
        assert first.poll() is None  # the refusals above all happened while the first run held the folder
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert "top groupings" in stdout and (out / "leaderboard.csv").is_file() and (out / "config.yaml").is_file()
    assert not (out / storage.LOCK_FILE).exists() and not list(out.parent.glob(".planted.replaced-*"))


def test_resources_no_node_can_hold_are_refused_before_any_trial(ray_local, write_spec, tmp_path: Path, capsys):
    spec = write_spec(planted_spec_dict(tmp_path, **{"resources": {"cpus_per_worker": 64}}))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "each trial worker needs 64 CPU and 0 GPU on one node" in err and "its nodes: 2 CPU, 0 GPU" in err
    assert not (tmp_path / "results" / "planted").exists()  # it never started: nothing left behind
