"""Reading results back and the ``leaderboard`` / ``compare`` views: re-ranking on validation, test numbers shown."""

from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mtl_search import cli
from mtl_search.errors import UserError
from mtl_search.leaderboard import rank_groupings
from mtl_search.results import load_results
from mtl_search.review import parse_rank_key, rerank, show_compare, show_leaderboard

TYPES = {"a": "regression", "b": "binary", "c": "multiclass"}
METRIC = {"regression": "rmse", "binary": "auc", "multiclass": "accuracy"}
# Per-task normalised validation loss of each group's best network. a+b is the best grouping on
# validation but not on test (its test losses are worse): a view that ranked on test would show it.
VALID = {"a": {"a": 0.50}, "b": {"b": 0.60}, "c": {"c": 0.70},
         "a+b": {"a": 0.45, "b": 0.55}, "a+c": {"a": 0.52, "c": 0.72}, "b+c": {"b": 0.58, "c": 0.66},
         "a+b+c": {"a": 0.48, "b": 0.59, "c": 0.69}}
TEST_SHIFT = {"a+b": 0.08}  # test = valid + 0.01, + this for the group


def _metric(task: str, nloss: float) -> float:
    """A headline metric that moves with the loss: RMSE up, AUC / accuracy down."""
    return 10 * nloss if TYPES[task] == "regression" else 1 - nloss / 2


def make_result_dir(
    root: Path,
    name: str = "toy",
    *,
    tasks: tuple[str, ...] = ("a", "b", "c"),
    cost: str = "networks",
    confirm: bool = True,
    affinity: bool = True,
    baseline: bool = True,
    estimated: tuple[str, ...] = (),
    failed: tuple[str, ...] = (),
    run_info: bool = True,
) -> Path:
    """A result directory as ``run`` writes it, from the hand-made group losses above.

    Args:
        estimated: groups whose losses are estimated (no trials, no parameters, no validation metric).
        failed: groups whose every trial failed (empty scores).
    """
    path = root / name
    path.mkdir(parents=True)
    types = {t: TYPES[t] for t in tasks}
    groups = ["+".join(c) for size in range(1, len(tasks) + 1) for c in itertools.combinations(tasks, size)]
    rows = []
    for group in groups:
        members = group.split("+")
        valid = {t: VALID[group][t] if group in VALID else 0.5 for t in members}
        test = {t: v + 0.01 + TEST_SHIFT.get(group, 0.0) for t, v in valid.items()}
        is_failed, is_estimated = group in failed, group in estimated
        row = {"group": group, "n_tasks": len(members), "estimated": is_estimated,
               "trials": 0 if is_estimated else 2, "trials_failed": 2 if is_failed else 0,
               "best_trial": None if is_failed or is_estimated else f"t-{group}",
               "valid_score": math.nan if is_failed else float(np.mean(list(valid.values()))),
               "test_score": math.nan if is_failed else float(np.mean(list(test.values()))),
               "params": math.nan if is_failed or is_estimated else 1000.0 * (1 + len(members)),
               "depth": 2, "sharing_depth": 1, "width": 16, "weighting": "equal"}
        if not is_failed:
            for t in members:
                row |= {f"valid_{t}_nloss": valid[t], f"test_{t}_nloss": test[t],
                        f"test_{t}_{METRIC[TYPES[t]]}": _metric(t, test[t])}
                if not is_estimated:
                    row[f"valid_{t}_{METRIC[TYPES[t]]}"] = _metric(t, valid[t])
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.to_csv(path / "groups.csv", index=False)
    board = rank_groupings(frame, types, cost=cost)
    board["baseline"] = False
    if baseline:
        reference = {"rank": math.nan, "grouping": "baseline:gbdt", "n_groups": len(tasks), "valid_score": 0.62,
                     "score": 0.64, "delta_vs_single_task_pct": 3.0, "params": math.nan,
                     "inference_cost": float(len(tasks)) if cost == "networks" else math.nan,
                     "estimated": False, "baseline": True}
        reference |= {f"test_{t}_{METRIC[TYPES[t]]}": _metric(t, 0.64) for t in tasks}
        board = pd.concat([board, pd.DataFrame([reference])], ignore_index=True)
    board.to_csv(path / "leaderboard.csv", index=False)
    config = {"name": name, "seed": 0,
              "data": {"source": "builtin:planted", "tasks": {t: {"column": t, "type": k} for t, k in types.items()},
                       "split": {"valid": 0.15, "test": 0.15}},
              "grouping": {"candidates": "exhaustive", "max_groups": None, "cost": cost}}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if run_info:
        (path / "run.json").write_text(json.dumps({"wall_s": 90.0, "trials": 14, "trials_failed": 2 * len(failed),
                                                   "trial_executor": "inline", "mtl_search_version": "0.1.0"}))
    if confirm:
        confirm_rows = []
        ranked = board[~board["baseline"].astype(bool)].head(2)
        for _, entry in ranked.iterrows():
            scores = []
            for group in str(entry["grouping"]).split("|"):
                for t in group.split("+"):
                    nloss = float(frame.set_index("group").loc[group, f"test_{t}_nloss"]) + 0.005
                    scores.append(nloss)
                    confirm_rows.append({"rank": entry["rank"], "grouping": entry["grouping"], "task": t,
                                         "group": group, "metric": METRIC[TYPES[t]],
                                         "metric_mean": _metric(t, nloss), "metric_std": 0.004,
                                         "nloss_mean": nloss, "nloss_std": 0.003, "seeds": 2})
            confirm_rows.append({"rank": entry["rank"], "grouping": entry["grouping"], "task": "all", "group": "",
                                 "metric": "score", "metric_mean": np.mean(scores), "metric_std": 0.002,
                                 "nloss_mean": np.mean(scores), "nloss_std": 0.002, "seeds": 2})
        pd.DataFrame(confirm_rows).to_csv(path / "confirm.csv", index=False)
    if affinity:
        matrix = pd.DataFrame(np.eye(len(tasks)) + 0.1, index=pd.Index(list(tasks), name="source"),
                              columns=list(tasks))
        matrix.to_csv(path / "affinity.csv")
    return path


def ranked_csv(text: str) -> pd.DataFrame:
    frame = pd.read_csv(io.StringIO(text))
    return frame[frame["rank"].notna()]


# --------------------------------------------------------------------------- leaderboard


def test_default_view_is_the_leaderboard_itself(tmp_path: Path):
    path = make_result_dir(tmp_path)
    written = pd.read_csv(path / "leaderboard.csv")
    shown = pd.read_csv(io.StringIO(show_leaderboard(path, top=100, style="csv")))
    ranked = shown[shown["rank"].notna()]
    assert list(ranked["grouping"]) == list(written.loc[written["rank"].notna(), "grouping"])
    assert list(ranked["rank"]) == list(range(1, 6))  # Bell(3) groupings
    assert set(written.columns) <= set(shown.columns) and (ranked["ranked_by"] == "score").all()
    # The reference row is listed after the ranked ones, unranked.
    assert list(shown.loc[shown["rank"].isna(), "grouping"]) == ["baseline:gbdt"]
    # Ranked on validation: a+b|c is first though its test score is not the best.
    assert ranked.iloc[0]["grouping"] == "a+b|c"
    assert ranked.iloc[0]["score"] > ranked["score"].min()


def test_text_table_says_what_it_is_ranked_by_and_that_numbers_are_test(tmp_path: Path):
    text = show_leaderboard(make_result_dir(tmp_path), top=3)
    caption = text.splitlines()[0]
    assert "ranked by mean normalised loss over all tasks on validation" in caption and "top 3 of 5" in caption
    assert "test split" in text
    assert "valid" in text and "test" in text.splitlines()[3]  # the spanned header over the columns
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    body = lines[header + 2:header + 2 + 3]
    assert [line.split()[1] for line in body] == ["a+b|c", "a|b+c", "a+b+c"]
    assert any(line.lstrip().startswith("ref") and "baseline:gbdt" in line for line in lines)
    for column in ("a rmse", "b auc", "c accuracy", "vs single", "networks"):
        assert column in lines[header]


@pytest.mark.parametrize("by, expected_first", [("b", "a+b|c"), ("b_auc", "a+b|c"), ("c_nloss", "a|b+c"),
                                                 ("valid_c_accuracy", "a|b+c"), ("a", "a+b|c")])
def test_rerank_by_a_task_uses_its_validation_metric(tmp_path: Path, by: str, expected_first: str):
    results = load_results(make_result_dir(tmp_path))
    ranking = rerank(results, parse_rank_key(results, by))
    board = ranking.board
    assert board.iloc[0]["grouping"] == expected_first
    key = ranking.key_column
    values = board[key].to_numpy()
    higher = ranking.key.higher_is_better
    assert (np.diff(values) <= 1e-12).all() if higher else (np.diff(values) >= -1e-12).all()
    # Every reported number is still the test one: the grouping's test score from its groups' test losses.
    groups = pd.read_csv(tmp_path / "toy" / "groups.csv").set_index("group")
    for _, row in board.iterrows():
        parts = str(row["grouping"]).split("|")
        test = np.mean([groups.loc[g, f"test_{t}_nloss"] for g in parts for t in g.split("+")])
        valid = np.mean([groups.loc[g, f"valid_{t}_nloss"] for g in parts for t in g.split("+")])
        assert row["score"] == pytest.approx(test) and row["valid_score"] == pytest.approx(valid)


def test_rerank_by_a_regression_metric_prefers_lower(tmp_path: Path):
    results = load_results(make_result_dir(tmp_path))
    ranking = rerank(results, parse_rank_key(results, "a"))  # rmse: lower is better
    assert not ranking.key.higher_is_better and ranking.key_column == "valid_a_rmse"
    assert ranking.board["valid_a_rmse"].is_monotonic_increasing
    # Ties on a's value (the same network serves a) keep the mean-score order.
    tied = ranking.board[ranking.board["valid_a_rmse"] == ranking.board["valid_a_rmse"].iloc[-1]]
    assert tied["valid_score"].is_monotonic_increasing


def test_ranking_by_a_test_column_is_refused(tmp_path: Path):
    results = load_results(make_result_dir(tmp_path))
    with pytest.raises(UserError, match="validation split, never on test.*--by b_auc"):
        parse_rank_key(results, "test_b_auc")
    with pytest.raises(UserError, match="--by score"):
        parse_rank_key(results, "test_score")


def test_unknown_metric_lists_the_valid_ones(tmp_path: Path):
    results = load_results(make_result_dir(tmp_path))
    with pytest.raises(UserError) as caught:
        parse_rank_key(results, "f1")
    message = str(caught.value)
    for name in ("score", "a_rmse", "a_nloss", "b_auc", "b_nloss", "c_accuracy", "c_nloss"):
        assert name in message


def test_budget_in_networks(tmp_path: Path):
    results = load_results(make_result_dir(tmp_path))
    ranking = rerank(results, parse_rank_key(results, None), budget=2)
    assert (ranking.board["inference_cost"] <= 2).all() and len(ranking.board) == 4  # all but a|b|c
    assert list(ranking.board["rank"]) == [1, 2, 3, 4]
    text = show_leaderboard(tmp_path / "toy", budget=1)
    assert "within a budget of 1 networks" in text and "a+b+c" in text
    with pytest.raises(UserError, match=r"below every grouping's inference cost.*a\+b\+c, costs 1 networks"):
        rerank(results, parse_rank_key(results, None), budget=0.5)


def test_budget_in_parameters_leaves_out_estimated_groupings(tmp_path: Path):
    path = make_result_dir(tmp_path, cost="params", estimated=("a+b+c",))
    results = load_results(path)
    ranking = rerank(results, parse_rank_key(results, None), budget=7000)
    assert (ranking.board["params"] <= 7000).all() and "a+b+c" not in set(ranking.board["grouping"])
    assert any("no parameter count" in note for note in ranking.notes)
    with pytest.raises(UserError, match="parameters"):
        rerank(results, parse_rank_key(results, None), budget=10)


def test_estimated_groups_have_no_validation_metric_to_rank_by(tmp_path: Path):
    results = load_results(make_result_dir(tmp_path, estimated=("a+b+c",)))
    by_mean = rerank(results, parse_rank_key(results, None))
    assert "a+b+c" in set(by_mean.board["grouping"])
    by_b = rerank(results, parse_rank_key(results, "b"))
    assert "a+b+c" not in set(by_b.board["grouping"])
    assert any("estimated" in note for note in by_b.notes)
    assert "a+b+c *" in show_leaderboard(tmp_path / "toy") and "estimated from pairs" in show_leaderboard(
        tmp_path / "toy")


def test_failed_groups_are_named(tmp_path: Path):
    path = make_result_dir(tmp_path, failed=("a+c",))
    text = show_leaderboard(path)
    assert "1 candidate group(s) had no successful trial" in text and "a+c" in text.splitlines()[-1]
    assert "a+c|b" not in text


def test_markdown_table_for_a_report(tmp_path: Path):
    text = show_leaderboard(make_result_dir(tmp_path), top=2, style="markdown", by="b")
    lines = text.splitlines()
    assert lines[0].startswith("**toy: top 2 of 5 groupings") and "the auc of b on validation" in lines[0]
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| rank | grouping | networks | params | valid b auc | test score")
    assert table[1].startswith("|---:|:---|")
    assert len(table) == 2 + 2 + 1  # header, rule, two groupings, the reference
    assert "a+b\\|c" in table[2]  # the grouping separator is escaped inside a Markdown cell
    assert "*baseline:gbdt*" in table[-1]


def test_one_task_and_an_empty_leaderboard(tmp_path: Path):
    single = show_leaderboard(make_result_dir(tmp_path, tasks=("a",), confirm=False, affinity=False))
    assert "top 1 of 1 groupings of 1 tasks" in single
    every = ("a", "b", "c", "a+b", "a+c", "b+c", "a+b+c")
    empty = show_leaderboard(make_result_dir(tmp_path, "empty", failed=every, confirm=False, baseline=False))
    assert "no grouping could be scored" in empty


def test_reads_a_storage_uri(tmp_path: Path):
    path = make_result_dir(tmp_path)
    uri = path.resolve().as_uri()  # file:///...
    assert show_leaderboard(uri, style="csv") == show_leaderboard(path, style="csv")


@pytest.mark.parametrize("setup, words", [
    (lambda root: root / "missing", "does not exist"),
    (lambda root: root, "not an mtl_search result directory"),
    (lambda root: (make_result_dir(root, "inner"), root)[1], "it holds these result directories: inner"),
    (lambda root: ((root / "half").mkdir(), (root / "half" / "trials.csv").write_text("trial_id\n"),
                   root / "half")[2], "has not finished"),
])
def test_not_a_result_directory_exits_2(tmp_path: Path, capsys, setup, words):
    target = setup(tmp_path)
    code = cli.main(["leaderboard", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


@pytest.mark.parametrize("arguments, words", [
    (["--by", "f1"], "unknown metric; valid: score (or mean), a_rmse"),
    (["--by", "test_a_rmse"], "never on test"),
    (["--budget", "0.5"], "below every grouping's inference cost"),
    (["--top", "0"], "expected a whole number >= 1"),
])
def test_bad_arguments_exit_2(tmp_path: Path, capsys, arguments, words):
    path = make_result_dir(tmp_path)
    code = cli.main(["leaderboard", str(path), *arguments]) if "--top" not in arguments else None
    if code is None:
        with pytest.raises(SystemExit) as caught:
            cli.main(["leaderboard", str(path), *arguments])
        code = caught.value.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_cli_leaderboard_prints_csv(tmp_path: Path, capsys):
    path = make_result_dir(tmp_path)
    assert cli.main(["leaderboard", str(path), "--csv", "--top", "2", "--by", "c"]) == 0
    frame = ranked_csv(capsys.readouterr().out)
    assert list(frame["rank"]) == [1, 2] and (frame["ranked_by"] == "c_accuracy").all()
    assert "valid_c_accuracy" in frame.columns and "test_c_accuracy" in frame.columns


# --------------------------------------------------------------------------- compare


def test_compare_labels_each_experiment(tmp_path: Path):
    first = make_result_dir(tmp_path, "first")
    second = make_result_dir(tmp_path, "second", confirm=False, baseline=False, failed=("a+c",))
    text = show_compare(first, second, top=2)
    lines = text.splitlines()
    assert lines[0].startswith("A = first") and lines[1].startswith("B = second")
    header = next(line for line in lines if "A: first" in line)
    assert header.index("A: first") < header.index("B: second")
    summary = {line.split("  ")[0]: line for line in lines[:30]}
    assert "a+b|c" in summary["best grouping"]
    assert "not run" in summary["confirmed score"] and "±" in summary["confirmed score"]
    assert "1.5 min" in summary["wall time"]
    assert "A: first: top 2 of 5 groupings" in text and "B: second: top 2 of 4 groupings" in text
    assert "own single-task networks" in text


def test_compare_warns_when_the_test_splits_differ(tmp_path: Path):
    first = make_result_dir(tmp_path, "first")
    second = make_result_dir(tmp_path, "second", tasks=("a", "b"))
    config = yaml.safe_load((second / "config.yaml").read_text())
    config["seed"] = 3
    (second / "config.yaml").write_text(yaml.safe_dump(config))
    text = show_compare(first, second)
    assert "different tasks" in text and "not directly comparable" in text and "seed" in text


def test_compare_csv_and_bad_input(tmp_path: Path, capsys):
    first, second = make_result_dir(tmp_path, "first"), make_result_dir(tmp_path, "second")
    assert cli.main(["compare", str(first), str(second), "--csv", "--top", "1"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame["experiment"].unique()) == ["A: first", "B: second"]
    assert frame.groupby("experiment")["rank"].count().tolist() == [1, 1]
    assert cli.main(["compare", str(first), str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- at scale: 30 tasks


def make_many_task_dir(root: Path, count: int = 30) -> tuple[Path, list[str]]:
    """A result directory of ``count`` tasks in clusters of three (kinds cycling): singletons, the cluster
    triples and one pair per cluster trained; the affinity matrix in a shuffled task order."""
    kinds = ("regression", "binary", "multiclass")
    tasks = [f"t{i:02d}" for i in range(count)]
    types = {t: kinds[i % 3] for i, t in enumerate(tasks)}
    clusters = [tasks[i:i + 3] for i in range(0, count, 3)]
    groups = [[t] for t in tasks] + clusters + [c[:2] for c in clusters]
    rows = []
    for members in groups:
        shared = len(members) > 1
        valid = {t: 0.5 - 0.05 * len(members) + 0.01 * (int(t[1:]) % 7) for t in members}
        row = {"group": "+".join(members), "n_tasks": len(members), "estimated": False, "trials": 1,
               "trials_failed": 0, "best_trial": "x", "valid_score": float(np.mean(list(valid.values()))),
               "test_score": float(np.mean(list(valid.values()))) + 0.01, "params": 1000.0 * (1 + shared),
               "depth": 1, "sharing_depth": 1, "width": 8, "weighting": "equal"}
        for t in members:
            metric = METRIC[types[t]]
            row |= {f"valid_{t}_nloss": valid[t], f"test_{t}_nloss": valid[t] + 0.01,
                    f"valid_{t}_{metric}": 1 - valid[t] / 2, f"test_{t}_{metric}": 1 - (valid[t] + 0.01) / 2}
        rows.append(row)
    frame = pd.DataFrame(rows)
    path = root / "many"
    path.mkdir(parents=True)
    frame.to_csv(path / "groups.csv", index=False)
    board = rank_groupings(frame, types)
    board["baseline"] = False
    board.to_csv(path / "leaderboard.csv", index=False)
    config = {"name": "many", "seed": 0,
              "data": {"source": "builtin:planted", "tasks": {t: {"column": t, "type": k} for t, k in types.items()},
                       "split": {"valid": 0.15, "test": 0.15}},
              "grouping": {"candidates": "affinity", "max_groups": None, "cost": "networks"}}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rng = np.random.default_rng(0)
    cluster = np.arange(count) // 3
    matrix = 0.4 * (cluster[:, None] == cluster[None, :]) + rng.normal(0.0, 0.03, (count, count))
    order = rng.permutation(count)
    shuffled = [tasks[i] for i in order]
    pd.DataFrame(matrix[np.ix_(order, order)], index=pd.Index(shuffled, name="source"),
                 columns=shuffled).to_csv(path / "affinity.csv")
    return path, tasks


def test_thirty_tasks_leaderboard_stays_readable_and_reranks_by_a_task(tmp_path: Path):
    path, tasks = make_many_task_dir(tmp_path)
    text = show_leaderboard(path, top=5)
    lines = text.splitlines()
    assert "top 5 of" in text and "30 tasks" in text
    assert "per-task test metrics are in leaderboard.csv" in text
    assert max(len(line) for line in lines) < 200  # not 30 metric columns, not a 300-character grouping
    first = pd.read_csv(path / "leaderboard.csv").loc[0, "grouping"]
    assert "t00+t01+t02" in first and len(first) > 60
    assert "#1 but t27+t28|t29" in text and f"#1 in full: {first}" in text  # later rows: what differs from #1
    by = show_leaderboard(path, top=3, by="t07")
    assert "ranked by the auc of t07" in by and by.count("t07 auc") == 2  # its validation and test columns
    assert show_leaderboard(path, top=3, style="csv").count("\n") >= 3  # files keep every column


def test_the_affinity_heatmap_orders_thirty_tasks_by_cluster(tmp_path: Path):
    from mtl_search.plots import affinity_order, plot_affinity

    path, tasks = make_many_task_dir(tmp_path)
    matrix = pd.read_csv(path / "affinity.csv", index_col=0)
    order = affinity_order(matrix)
    assert sorted(order) == tasks
    blocks = [{int(t[1:]) // 3 for t in order[i:i + 3]} for i in range(0, 30, 3)]
    assert all(len(block) == 1 for block in blocks), order  # each cluster's three tasks side by side
    matrix.iloc[0, 1] = matrix.iloc[1, 0] = np.nan  # an unmeasured pair is no obstacle
    assert sorted(affinity_order(matrix)) == tasks
    png = plot_affinity(matrix, tmp_path / "affinity.png")
    assert png.stat().st_size > 10_000
    from matplotlib.image import imread
    height, width = imread(png).shape[:2]
    assert width <= 13.5 * 120 + 1 and height <= 12 * 120 + 1  # the figure stops growing
