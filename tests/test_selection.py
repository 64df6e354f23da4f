"""Budgeted network selection: hand-computed cases, ties, CSV reading, and Standley et al. 2020 vs exhaustive search."""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtl_search.selection import (
    TABLE_COLUMNS,
    Network,
    Selection,
    budgets_for,
    select_networks,
    selection_table,
)

STANDLEY = Path(__file__).parent / "data" / "standley2020"
STANDLEY_TASKS = [f"t{i}" for i in range(1, 6)]


def net(name: str, cost: float, **losses: float) -> Network:
    return Network(name=name, group="+".join(losses), cost=cost, losses=losses)


# --------------------------------------------------------------------------- an independent exhaustive solver


def fits(cost: float, budget: float) -> bool:
    return cost <= budget + 1e-9 * max(1.0, budget)


def expected_selection(chosen: Sequence[Network], tasks: Sequence[str], budget: float) -> Selection:
    """The documented result for a chosen set: each task served by the lowest loss, then the first name."""
    assignment, losses = {}, {}
    for task in tasks:
        loss, name = min((n.losses[task], n.name) for n in chosen if task in n.losses)
        assignment[task], losses[task] = name, loss
    return Selection(budget=budget, networks=tuple(sorted(n.name for n in chosen)),
                     cost=math.fsum(n.cost for n in chosen), total_loss=math.fsum(losses.values()),
                     assignment=assignment, losses=losses, groups={n.name: n.group for n in chosen})


def selection_key(chosen: Sequence[Network], tasks: Sequence[str]) -> tuple | None:
    """The documented order of selections (loss, cost, count, sorted names); None if a task is unserved."""
    per_task = []
    for task in tasks:
        served = [n.losses[task] for n in chosen if task in n.losses]
        if not served:
            return None
        per_task.append(min(served))
    return (math.fsum(per_task), math.fsum(n.cost for n in chosen), len(chosen), tuple(sorted(n.name for n in chosen)))


def brute_force(networks: Sequence[Network], tasks: Sequence[str], budget: float,
                max_size: int | None = None) -> Selection | None:
    """Every subset (up to ``max_size`` networks) that fits; the smallest key wins."""
    best = None
    for size in range(1, (len(networks) if max_size is None else max_size) + 1):
        for combo in itertools.combinations(networks, size):
            if not fits(math.fsum(n.cost for n in combo), budget):
                continue
            key = selection_key(combo, tasks)
            if key is not None and (best is None or key < best[0]):
                best = (key, combo)
    return None if best is None else expected_selection(best[1], tasks, budget)


# --------------------------------------------------------------------------- hand-computed cases

OVERLAP = [
    net("ab", 1.0, a=1.0, b=2.0),
    net("bc", 1.0, b=1.0, c=1.0),
    net("abc", 1.0, a=2.0, b=2.0, c=2.0),
    net("half_a", 0.5, a=1.5),
]


@pytest.mark.parametrize(
    ("budget", "networks", "total", "assignment"),
    [
        (1.0, ("abc",), 6.0, {"a": "abc", "b": "abc", "c": "abc"}),
        # bc + half_a = 1.5 + 1 + 1 beats abc + half_a = 1.5 + 2 + 2.
        (1.5, ("bc", "half_a"), 3.5, {"a": "half_a", "b": "bc", "c": "bc"}),
        # Overlapping groups: ab and bc both serve b; bc's lower loss serves it: 1 + 1 + 1.
        (2.0, ("ab", "bc"), 3.0, {"a": "ab", "b": "bc", "c": "bc"}),
        # Budget left over is not spent: adding half_a (a = 1.5) would only add cost.
        (2.5, ("ab", "bc"), 3.0, {"a": "ab", "b": "bc", "c": "bc"}),
    ],
)
def test_overlapping_groups_by_hand(budget, networks, total, assignment):
    selection = select_networks(OVERLAP, ["a", "b", "c"], budget)
    assert selection is not None
    assert selection.networks == networks
    assert selection.total_loss == pytest.approx(total)
    assert dict(selection.assignment) == assignment
    assert selection.cost <= budget
    assert selection == brute_force(OVERLAP, ["a", "b", "c"], budget)


def test_a_task_served_best_by_a_bigger_network():
    networks = [net("x", 1.0, x=1.0), net("y", 1.0, y=1.0), net("xy", 1.0, x=0.8, y=1.2)]
    selection = select_networks(networks, ["x", "y"], 2.0)
    # xy + y = 0.8 + 1.0 beats the two single-task networks (2.0) and xy + x (0.8 + 1.2).
    assert selection is not None and selection.networks == ("xy", "y")
    assert dict(selection.assignment) == {"x": "xy", "y": "y"}
    assert selection.total_loss == pytest.approx(1.8)
    assert dict(selection.groups) == {"xy": "x+y", "y": "y"}


def test_infeasible_budget_gives_none():
    assert select_networks(OVERLAP, ["a", "b", "c"], 0.5) is None  # half_a alone leaves b and c unserved
    assert select_networks(OVERLAP, ["a", "d"], 5.0) is None  # no network serves d


def test_zero_budget_and_zero_cost_networks():
    free = [net("free", 0.0, x=2.0), net("paid", 1.0, x=1.0)]
    assert select_networks(free, ["x"], 0.0).networks == ("free",)
    assert select_networks(free, ["x"], 1.0).networks == ("paid",)


def test_decimal_costs_fit_their_decimal_budget():
    networks = [net("p", 0.1, x=1.0), net("q", 0.2, y=1.0)]
    assert 0.1 + 0.2 > 0.3  # the round-off the tolerance absorbs
    assert select_networks(networks, ["x", "y"], 0.3).networks == ("p", "q")


def test_losses_on_tasks_not_asked_for_are_ignored():
    networks = [net("wide", 1.0, x=1.0, w=100.0), net("narrow", 1.0, x=1.5)]
    selection = select_networks(networks, ["x"], 1.0)
    assert selection.networks == ("wide",) and dict(selection.losses) == {"x": 1.0}


# --------------------------------------------------------------------------- ties


def test_tie_identical_networks_the_first_name_wins():
    networks = [net("zeta", 1.0, x=1.0, y=1.0), net("alpha", 1.0, x=1.0, y=1.0)]
    assert select_networks(networks, ["x", "y"], 1.0).networks == ("alpha",)


def test_tie_on_loss_the_cheaper_set_wins():
    networks = [net("dear", 1.0, x=1.0), net("cheap", 0.5, x=1.0)]
    selection = select_networks(networks, ["x"], 1.0)
    assert selection.networks == ("cheap",) and selection.cost == 0.5


def test_tie_on_loss_and_cost_fewer_networks_win():
    networks = [net("hx", 0.5, x=1.0), net("hy", 0.5, y=1.0), net("xy", 1.0, x=1.0, y=1.0)]
    assert select_networks(networks, ["x", "y"], 1.0).networks == ("xy",)


def test_tie_on_loss_cost_and_count_the_sorted_names_decide():
    networks = [net("b", 1.0, x=1.0), net("c", 1.0, y=1.0), net("d", 1.0, x=1.0), net("a", 1.0, y=1.0)]
    # {a, b}, {a, d}, {b, c}, {c, d}: equal on everything but names; ("a", "b") sorts first.
    assert select_networks(networks, ["x", "y"], 2.0).networks == ("a", "b")


def test_tie_within_a_selection_the_first_name_serves_the_task():
    networks = [net("q", 1.0, y=1.0, z=1.0), net("p", 1.0, x=1.0, y=1.0)]
    selection = select_networks(networks, ["x", "y", "z"], 2.0)
    assert selection.networks == ("p", "q")
    assert dict(selection.assignment) == {"x": "p", "y": "p", "z": "q"}


def random_instance(rng: random.Random) -> tuple[list[Network], list[str]]:
    """Few tasks, small integer losses (many ties), costs including 0 and duplicates."""
    tasks = [f"t{i}" for i in range(rng.randint(1, 4))]
    names = rng.sample([f"n{i:02d}" for i in range(20)], rng.randint(1, 10))
    networks = []
    for name in names:
        group = rng.sample(tasks, rng.randint(1, len(tasks)))
        cost = rng.choice([0.0, 0.5, 0.5, 1.0, 1.0, 1.5])
        networks.append(Network(name, "+".join(group), cost, {task: float(rng.randint(-1, 3)) for task in group}))
    return networks, tasks


@pytest.mark.parametrize("seed", range(8))
def test_random_instances_match_full_enumeration(seed: int):
    """Every subset enumerated (no size cap), so the irredundance and dominance pruning are checked too."""
    rng = random.Random(seed)
    for _ in range(40):
        networks, tasks = random_instance(rng)
        for budget in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
            assert select_networks(networks, tasks, budget) == brute_force(networks, tasks, budget), (
                networks, tasks, budget)


# --------------------------------------------------------------------------- value objects and checks


def test_network_is_canonical_and_read_only():
    losses = {"b": 2, "a": 1}
    network = Network("n", "b+a", 1, losses)
    losses["a"] = 99  # the caller's dict changing later does not reach the network
    assert network.group == "a+b" and network.tasks == ("a", "b")
    assert dict(network.losses) == {"a": 1.0, "b": 2.0} and isinstance(network.cost, float)
    with pytest.raises(TypeError):
        network.losses["a"] = 0.0  # type: ignore[index]
    assert hash(network) == hash(Network("n", "a+b", 1.0, {"a": 1.0, "b": 2.0}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "two words"}, "name"),
        ({"name": ""}, "name"),
        ({"cost": -1.0}, "cost=-1.0"),
        ({"cost": math.nan}, "cost=nan"),
        ({"cost": True}, "cost=True"),
        ({"losses": {}}, "losses"),
        ({"losses": {"a": math.inf}, "group": "a"}, "loss on task 'a'"),
        ({"losses": {"a": "1"}, "group": "a"}, "loss on task 'a'"),
        ({"group": "a"}, "group='a'"),
        ({"losses": {"a+b": 1.0}, "group": "a+b"}, "task name"),
    ],
)
def test_network_rejects_bad_arguments(kwargs, match):
    arguments = {"name": "n", "group": "a+b", "cost": 1.0, "losses": {"a": 1.0, "b": 2.0}} | kwargs
    with pytest.raises(ValueError, match=match):
        Network(**arguments)


@pytest.mark.parametrize(
    ("networks", "tasks", "budget", "match"),
    [
        ([net("n", 1.0, a=1.0), net("n", 0.5, a=2.0)], ["a"], 1.0, "'n' appears twice"),
        ([{"name": "n"}], ["a"], 1.0, "Network objects"),
        ([net("n", 1.0, a=1.0)], "a", 1.0, "tasks="),
        ([net("n", 1.0, a=1.0)], [], 1.0, "at least one task"),
        ([net("n", 1.0, a=1.0)], ["a", "a"], 1.0, "distinct"),
        ([net("n", 1.0, a=1.0)], ["a"], -0.5, "budget=-0.5"),
        ([net("n", 1.0, a=1.0)], ["a"], math.inf, "budget=inf"),
    ],
)
def test_select_networks_rejects_bad_arguments(networks, tasks, budget, match):
    with pytest.raises(ValueError, match=match):
        select_networks(networks, tasks, budget)


def test_budgets_for():
    assert budgets_for(5) == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert budgets_for(1) == [1.0]
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="num_tasks"):
            budgets_for(bad)  # type: ignore[arg-type]


def test_selection_table_keeps_infeasible_budgets():
    table = selection_table(OVERLAP, ["a", "b", "c"], [0.5, 2.0, 1.0])
    per_task = ["a_network", "a_loss", "b_network", "b_loss", "c_network", "c_loss"]
    assert list(table.columns) == [*TABLE_COLUMNS, *per_task]
    assert table["budget"].tolist() == [0.5, 2.0, 1.0]
    infeasible = table.iloc[0]
    assert not infeasible["feasible"] and infeasible["networks"] == "" and infeasible["n_networks"] == 0
    assert math.isnan(infeasible["total_loss"]) and math.isnan(infeasible["cost"]) and math.isnan(infeasible["a_loss"])
    two = table.iloc[1]
    assert two["feasible"] and two["networks"] == "ab bc" and two["n_networks"] == 2
    assert two["total_loss"] == pytest.approx(3.0) and two["b_network"] == "bc" and two["b_loss"] == 1.0
    assert table.iloc[2]["networks"] == "abc"


def test_selection_table_refuses_a_task_whose_columns_clash():
    with pytest.raises(ValueError, match="total_loss"):
        selection_table([net("n", 1.0, total=1.0)], ["total"], [1.0])


# --------------------------------------------------------------------------- Standley et al. 2020


@functools.cache
def standley_networks(setting: int, split: str) -> tuple[Network, ...]:
    """A published table as Networks: line 1 = half_<i> (cost 0.5, task i); lines 2-32 = full_<group> (cost 1)."""
    lines = (STANDLEY / f"setting{setting}_{split}.tsv").read_text().splitlines()
    assert len(lines) == 32
    networks = []
    for number, line in enumerate(lines, start=1):
        cells = line.split("\t")
        assert len(cells) == 5, (setting, split, number)
        if number == 1:
            networks += [Network(f"half_{i}", task, 0.5, {task: float(cell)})
                         for i, (task, cell) in enumerate(zip(STANDLEY_TASKS, cells, strict=True), start=1)]
        else:
            losses = {task: float(cell) for task, cell in zip(STANDLEY_TASKS, cells, strict=True) if cell.strip()}
            networks.append(Network(f"full_{'+'.join(losses)}", "+".join(losses), 1.0, losses))
    return tuple(networks)


@functools.cache
def standley_subsets(setting: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each size 1..5: every subset of the 36 validation networks, with its summed loss and cost.

    Sets of more than five networks are skipped: with five tasks, one of their networks serves no task, and
    dropping it keeps the loss, costs no more and uses fewer networks, so such a set never wins (the random
    instances above check this against enumeration without a cap). Unserved tasks count as +inf.
    """
    networks = standley_networks(setting, "val")
    loss = np.array([[n.losses.get(task, np.inf) for task in STANDLEY_TASKS] for n in networks])
    cost = np.array([n.cost for n in networks])
    subsets = []
    for size in range(1, len(STANDLEY_TASKS) + 1):
        combos = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(len(networks)), size)),
                             dtype=np.int64).reshape(-1, size)
        subsets.append((combos, loss[combos].min(axis=1).sum(axis=1), cost[combos].sum(axis=1)))
    return subsets


def standley_exhaustive(setting: int, budget: float) -> Selection | None:
    """Exhaustive search, vectorised: near-minimal subsets by numpy, then the exact documented key in Python."""
    networks = standley_networks(setting, "val")
    best = None
    for combos, totals, costs in standley_subsets(setting):
        affordable = (costs <= budget + 1e-6) & np.isfinite(totals)
        if not affordable.any():
            continue
        lowest = totals[affordable].min()
        for combo in combos[affordable & (totals <= lowest + 1e-9)]:  # numpy's sums may differ from fsum by ulps
            chosen = [networks[i] for i in combo]
            if not fits(math.fsum(n.cost for n in chosen), budget):
                continue
            key = selection_key(chosen, STANDLEY_TASKS)
            assert key is not None  # finite totals: every task served
            if best is None or key < best[0]:
                best = (key, chosen)
    return None if best is None else expected_selection(best[1], STANDLEY_TASKS, budget)


def standley_test_sum(selection: Selection, setting: int) -> float:
    """The test-table sum of the chosen networks, each task scored by the network validation assigned it,
    read from the raw TSV line of that network (so the name -> line mapping is checked too)."""
    lines = (STANDLEY / f"setting{setting}_test.tsv").read_text().splitlines()
    total = []
    for column, task in enumerate(STANDLEY_TASKS):
        name = selection.assignment[task]
        if name.startswith("half_"):
            line = lines[0]
            assert int(name.removeprefix("half_")) == column + 1
        else:
            served = name.removeprefix("full_").split("+")
            line = next(raw for raw in lines[1:]
                        if [cell.strip() != "" for cell in raw.split("\t")] == [t in served for t in STANDLEY_TASKS])
        total.append(float(line.split("\t")[column]))
    return math.fsum(total)


STANDLEY_POINTS = [pytest.param(setting, budget, id=f"setting{setting}-budget{budget:g}")
                   for setting in (1, 2, 3, 4) for budget in budgets_for(5)]


@pytest.mark.parametrize(("setting", "budget"), STANDLEY_POINTS)
def test_standley2020_branch_and_bound_equals_exhaustive(setting: int, budget: float):
    networks = standley_networks(setting, "val")
    selection = select_networks(networks, STANDLEY_TASKS, budget)
    assert selection is not None  # the all-task network alone fits every budget >= 1
    assert selection == standley_exhaustive(setting, budget)  # same loss, same set, same assignment
    assert selection.cost <= budget
    assert set(selection.assignment.values()) == set(selection.networks)  # every chosen network serves a task

    test = {n.name: n for n in standley_networks(setting, "test")}
    test_sum = math.fsum(test[selection.assignment[task]].losses[task] for task in STANDLEY_TASKS)
    assert math.isfinite(test_sum)
    assert test_sum == standley_test_sum(selection, setting)


def test_standley2020_table_is_monotone_in_budget():
    """More budget never hurts on validation; selection_table agrees with select_networks."""
    for setting in (1, 2, 3, 4):
        networks = standley_networks(setting, "val")
        table = selection_table(networks, STANDLEY_TASKS, budgets_for(5))
        assert table["feasible"].all()
        assert (np.diff(table["total_loss"].to_numpy()) <= 0).all()
        last = select_networks(networks, STANDLEY_TASKS, 5.0)
        assert table.iloc[-1]["networks"] == " ".join(last.networks)
        assert isinstance(table, pd.DataFrame)
