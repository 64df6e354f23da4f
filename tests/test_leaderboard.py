"""From trials to groups and groupings: statuses, best-per-group, ranking and honest columns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mtl_search.grouping import make_strategy
from mtl_search.leaderboard import (
    add_baseline_rows,
    add_estimates,
    best_per_group,
    format_top,
    rank_groupings,
    trial_rows,
    trials_frame,
)
from mtl_search.results import network_key

TYPES = {"a": "regression", "b": "binary"}
GROUPS = ["a", "b", "a+b"]


TRIAL_KEYS = ("epoch", "wall_s", "train_loop_s", "threads")


def result(epoch: int, score: float, test_score: float, metrics: dict, **extra) -> dict:
    """The flat metrics of one network (and its trial's epoch and times)."""
    out = {"epoch": epoch, "score": score, "test/score": test_score, "params": 100, "wall_s": 10.0,
           "train_loop_s": 4.0, "best_epoch": epoch, "status": "completed"}
    for key, value in metrics.items():
        out[key] = value
    return out | extra


def report(networks: dict[str, dict]) -> dict:
    """A trial's report from its networks' flat metrics (the trial-level keys taken from the first)."""
    first = next(iter(networks.values()))
    return {**{key: first[key] for key in TRIAL_KEYS if key in first},
            "networks": {network_key(group): {k: v for k, v in flat.items() if k not in TRIAL_KEYS}
                         for group, flat in networks.items()}}


def trial_row(trial_id: str, config: dict, flat: dict | None, *, max_epochs: int, error: str | None = None) -> dict:
    """The one row of a trial of one network (``unit: group``)."""
    group = config["group"]
    (row,) = trial_rows(trial_id, config, report({group: flat}) if flat else None, groups=[group],
                        max_epochs=max_epochs, error=error)
    return row


def metrics_for(tasks: dict[str, tuple[float, float]]) -> dict:
    """task -> (valid nloss, test nloss); metric values derived from them for easy checking."""
    out = {}
    for task, (valid, test) in tasks.items():
        metric = "rmse" if TYPES[task] == "regression" else "auc"
        out |= {f"valid/{task}/nloss": valid, f"test/{task}/nloss": test,
                f"valid/{task}/{metric}": 1 - valid, f"test/{task}/{metric}": 1 - test}
    return out


def test_trial_statuses():
    config = {"group": "a+b", "depth": 2, "sharing_depth": 5}
    done = trial_row("t1", config, result(10, 0.5, 0.6, {}, sharing_depth=2), max_epochs=10)
    assert done["status"] == "completed" and done["n_tasks"] == 2
    assert done["sharing_depth"] == 2  # the effective value reported by training, not the sampled one
    assert done["overhead_s"] == pytest.approx(6.0)
    stopped = trial_row("t2", config, result(3, 0.5, 0.6, {}, status="running"), max_epochs=10)
    assert stopped["status"] == "stopped" and "3 of 10" in stopped["reason"]
    diverged = trial_row("t3", config, result(4, math.nan, math.nan, {}, status="diverged", reason="nan!"),
                         max_epochs=10)
    assert diverged["status"] == "diverged" and diverged["reason"] == "nan!" and math.isnan(diverged["score"])
    failed = trial_row("t4", config, None, max_epochs=10, error="Traceback...\nValueError: boom")
    assert failed["status"] == "error" and failed["reason"] == "ValueError: boom"
    silent = trial_row("t5", config, None, max_epochs=10)
    assert silent["status"] == "error" and "no result" in silent["reason"]
    patience = trial_row("t6", config, result(5, 0.5, 0.6, {}, reason="stopped after epoch 5: ... (patience)"),
                         max_epochs=10)
    assert patience["status"] == "completed" and "patience" in patience["reason"] and patience["score"] == 0.5


def test_a_pack_trial_gives_one_row_per_network():
    config = {"depth": 2, "sharing_depth": 1, "lr": 0.01}
    networks = {"a": result(4, 0.4, 0.5, metrics_for({"a": (0.4, 0.5)}), sharing_depth=2, status="running"),
                "a+b": result(4, math.nan, math.nan, {}, status="diverged", reason="nan!", sharing_depth=1),
                "b": result(4, 0.6, 0.7, metrics_for({"b": (0.6, 0.7)}), sharing_depth=2, status="running")}
    rows = trial_rows("p1", config, report(networks), groups=GROUPS, max_epochs=10)
    assert [row["group"] for row in rows] == GROUPS and {row["trial_id"] for row in rows} == {"p1"}
    by_group = {row["group"]: row for row in rows}
    assert by_group["a"]["status"] == "stopped" and by_group["a"]["score"] == 0.4
    assert by_group["a"]["valid_a_nloss"] == 0.4 and "valid_b_nloss" not in by_group["a"]
    assert by_group["a+b"]["status"] == "diverged" and math.isnan(by_group["a+b"]["score"])
    assert by_group["a+b"]["sharing_depth"] == 1 and by_group["a"]["sharing_depth"] == 2
    failed = trial_rows("p2", config, None, groups=GROUPS, max_epochs=10, error="RuntimeError: x")
    assert [row["status"] for row in failed] == ["error"] * 3


def build_trials() -> pd.DataFrame:
    rows = [
        trial_row("a1", {"group": "a"}, result(5, 0.40, 0.42, metrics_for({"a": (0.40, 0.42)})), max_epochs=5),
        trial_row("a2", {"group": "a"}, result(5, 0.30, 0.35, metrics_for({"a": (0.30, 0.35)})), max_epochs=5),
        trial_row("b1", {"group": "b"}, result(5, 0.60, 0.65, metrics_for({"b": (0.60, 0.65)})), max_epochs=5),
        trial_row("ab1", {"group": "a+b"}, result(5, 0.40, 0.30, metrics_for({"a": (0.35, 0.25), "b": (0.45, 0.35)})),
                  max_epochs=5),
        trial_row("ab2", {"group": "a+b"}, None, max_epochs=5, error="RuntimeError: x"),
    ]
    return trials_frame(rows)


def test_best_per_group_is_chosen_on_validation():
    groups = best_per_group(build_trials(), TYPES, GROUPS).set_index("group")
    assert groups.loc["a", "best_trial"] == "a2" and groups.loc["a", "trials"] == 2
    assert groups.loc["a+b", "trials"] == 2 and groups.loc["a+b", "trials_failed"] == 1
    assert groups.loc["a+b", "test_score"] == pytest.approx(0.30)
    assert groups.loc["a+b", "test_b_auc"] == pytest.approx(0.65)


def test_groupings_ranked_on_validation_and_reported_on_test():
    board = rank_groupings(best_per_group(build_trials(), TYPES, GROUPS), TYPES)
    assert list(board.columns) == ["rank", "grouping", "n_groups", "valid_score", "score",
                                   "delta_vs_single_task_pct", "test_a_rmse", "test_b_auc", "params",
                                   "inference_cost", "estimated", "baseline"]
    assert list(board["inference_cost"]) == [1, 2] and not board["estimated"].any()
    assert list(board["grouping"]) == ["a+b", "a|b"]  # 0.40 < mean(0.30, 0.60)
    together, singles = board.iloc[0], board.iloc[1]
    assert together["valid_score"] == pytest.approx(0.40) and together["score"] == pytest.approx(0.30)
    assert singles["valid_score"] == pytest.approx(0.45) and singles["score"] == pytest.approx(0.50)
    assert together["delta_vs_single_task_pct"] == pytest.approx(-40.0)
    assert singles["delta_vs_single_task_pct"] == pytest.approx(0.0)
    assert together["test_a_rmse"] == pytest.approx(0.75)  # from the test split, not validation
    assert singles["params"] == 200
    assert "a+b" in format_top(board)


def test_groups_without_a_successful_trial_are_listed_but_not_scored():
    trials = build_trials()
    trials = trials[trials["group"] != "b"]
    groups = best_per_group(trials, TYPES, GROUPS)
    assert np.isnan(groups.set_index("group").loc["b", "valid_score"])
    board = rank_groupings(groups, TYPES)
    assert list(board["grouping"]) == ["a+b"]
    assert np.isnan(board.iloc[0]["delta_vs_single_task_pct"])  # no single-task baseline to compare with


def test_empty_inputs():
    assert trials_frame([]).empty
    empty = best_per_group(trials_frame([]), TYPES, GROUPS)
    assert rank_groupings(empty, TYPES).empty
    assert "no grouping" in format_top(rank_groupings(empty, TYPES))


def test_max_groups_and_parameter_cost():
    groups = best_per_group(build_trials(), TYPES, GROUPS)
    assert list(rank_groupings(groups, TYPES, max_groups=1)["grouping"]) == ["a+b"]
    by_params = rank_groupings(groups, TYPES, cost="params")
    assert list(by_params["inference_cost"]) == [100, 200]
    with pytest.raises(ValueError, match="networks, params"):
        rank_groupings(groups, TYPES, cost="flops")


THREE = {"a": "regression", "b": "binary", "c": "regression"}


def test_estimated_groups_are_ranked_and_flagged():
    rows = []
    nloss = {"a": {"a": 0.5}, "b": {"b": 0.5}, "c": {"c": 0.5}, "a+b+c": {"a": 0.9, "b": 0.9, "c": 0.9},
             "a+b": {"a": 0.3, "b": 0.4}, "a+c": {"a": 0.3, "c": 0.4}, "b+c": {"b": 0.3, "c": 0.4}}
    for group, values in nloss.items():
        metrics = {}
        for task, value in values.items():
            metric = "rmse" if THREE[task] == "regression" else "auc"
            metrics |= {f"valid/{task}/nloss": value, f"test/{task}/nloss": value + 0.01,
                        f"valid/{task}/{metric}": value, f"test/{task}/{metric}": value}
        score = float(np.mean(list(values.values())))
        rows.append(trial_row(group, {"group": group}, result(5, score, score, metrics), max_epochs=5))
    groups = best_per_group(trials_frame(rows), THREE, list(nloss))
    strategy = make_strategy("pairs")
    groups = add_estimates(groups, THREE, lambda trained: strategy.estimate(list(THREE), trained))
    assert groups["estimated"].sum() == 0  # the all-task group is trained; nothing left to estimate
    groups = best_per_group(trials_frame([r for r in rows if r["group"] != "a+b+c"]), THREE,
                            [g for g in nloss if g != "a+b+c"])
    groups = add_estimates(groups, THREE, lambda trained: strategy.estimate(list(THREE), trained))
    estimated = groups.set_index("group").loc["a+b+c"]
    assert bool(estimated["estimated"]) and estimated["trials"] == 0
    assert estimated["valid_a_nloss"] == pytest.approx(0.3)  # mean of a's losses in a+b and a+c
    assert estimated["valid_c_nloss"] == pytest.approx(0.4)
    assert estimated["test_c_nloss"] == pytest.approx(0.41)
    board = rank_groupings(groups, THREE)
    top = board.iloc[0]
    assert top["grouping"] == "a+b+c" and bool(top["estimated"]) and np.isnan(top["params"])
    assert not board.set_index("grouping").loc["a|b|c", "estimated"]


def test_baseline_rows_are_references_never_ranked():
    board = rank_groupings(best_per_group(build_trials(), TYPES, GROUPS), TYPES)
    metrics = {"valid/score": 0.42, "test/score": 0.45, "test/a/rmse": 1.5, "test/b/auc": 0.8}
    with_baseline = add_baseline_rows(board, TYPES, {"baseline:gbdt": metrics})
    row = with_baseline.iloc[-1]
    assert row["grouping"] == "baseline:gbdt" and bool(row["baseline"]) and np.isnan(row["rank"])
    assert row["delta_vs_single_task_pct"] == pytest.approx(100 * (0.45 - 0.50) / 0.50)
    assert list(with_baseline["rank"].dropna()) == [1, 2]  # the groupings keep their ranks
    text = format_top(with_baseline)
    assert "baseline:gbdt" in text and "a+b" in text


def test_the_exact_budgeted_selection_is_left_out_beyond_ten_tasks():
    from mtl_search.leaderboard import selection_csv

    tasks = {f"t{i}": "regression" for i in range(11)}
    assert selection_csv(pd.DataFrame(columns=["group", "estimated", "valid_score", "n_tasks", "params"]),
                         tasks).empty
