"""Budgeted network selection: which trained networks to deploy under an inference budget.

Standley et al. 2020 ("Which Tasks Should Be Learned Together in Multi-task
Learning?", ICML) pose the problem this module solves exactly. Given candidate
**networks**, each with an inference cost and a loss on every task it serves,
choose a set whose total cost fits a **budget** such that every task is served,
each task by its best chosen network, and the sum of those per-task losses is
as small as possible. Groups may overlap: a task trained by two chosen networks
is simply served by the better one.

The solver is an exact branch-and-bound (:func:`select_networks`); see
:func:`_branch_and_bound` for how it prunes. Results are fully deterministic:

* **Which network serves a task**: the lowest loss; among equal losses, the
  network whose name sorts first.
* **Which selection wins**: the lowest total loss; then the lowest cost; then
  the fewest networks; then the sorted tuple of network names, compared
  lexicographically. Totals are ``math.fsum`` of the per-task losses (costs:
  of the network costs), which is exactly rounded and so does not depend on
  the order of summation: two selections tie only if those sums are equal as
  floats.
* **Fitting the budget**: a selection fits when its cost is at most
  ``budget + 1e-9 * max(1, budget)``, so that decimal costs such as
  ``0.1 + 0.2`` fit a budget of ``0.3``.

Pure Python + numpy + pandas: no Ray, no torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from mtl_search.grouping import GROUP_SEP, group_id

#: Separator of network names in :func:`selection_table`'s ``networks`` column. Not ``|``: that joins the
#: groups of a *grouping* (a partition), and a selection's groups may overlap.
NETWORK_SEP = " "
#: Step between consecutive budgets of :func:`budgets_for`, in networks (half a full-size network).
BUDGET_STEP = 0.5
#: Relative slack when comparing a cost with a budget (absorbs decimal round-off in summed costs).
COST_TOLERANCE = 1e-9
#: The leading columns of :func:`selection_table`; ``<task>_network`` and ``<task>_loss`` follow per task.
TABLE_COLUMNS = ("budget", "feasible", "networks", "n_networks", "cost", "total_loss")


# --------------------------------------------------------------------------- value objects


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_task_name(task: object, where: str) -> str:
    if not isinstance(task, str) or not task or GROUP_SEP in task:
        raise ValueError(f"{where}: a task name must be a non-empty string without {GROUP_SEP!r}, but got {task!r}.")
    return task


@dataclass(frozen=True)
class Network:
    """A trained network that can be deployed: its cost and its loss on each task it serves.

    Args:
        name: unique name, non-empty and without whitespace (selections list names separated by spaces).
        group: the tasks it serves, joined by ``+`` in any order; stored in canonical (sorted) form.
            Must name exactly the tasks of ``losses``.
        cost: inference cost, finite and ``>= 0`` (Standley et al.: 1 for a full-size network, 0.5 for a
            half-size one).
        losses: task -> loss on that task, lower is better; finite, any sign.
    """

    name: str
    group: str
    cost: float
    losses: Mapping[str, float]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(ch.isspace() for ch in self.name):
            raise ValueError(f"Network name must be a non-empty string without whitespace, but got name={self.name!r}.")
        where = f"Network {self.name!r}"
        if not _is_real(self.cost) or not math.isfinite(self.cost) or self.cost < 0:
            raise ValueError(f"{where}: cost must be a finite number >= 0, but got cost={self.cost!r}.")
        if not isinstance(self.losses, Mapping) or not self.losses:
            raise ValueError(f"{where}: losses must be a non-empty mapping task -> loss, "
                             f"but got losses={self.losses!r}.")
        losses: dict[str, float] = {}
        for task, loss in self.losses.items():
            _check_task_name(task, where)
            if not _is_real(loss) or not math.isfinite(loss):
                raise ValueError(f"{where}: the loss on task {task!r} must be a finite number, but got {loss!r}.")
            losses[task] = float(loss)
        if not isinstance(self.group, str) or set(self.group.split(GROUP_SEP)) != set(losses):
            raise ValueError(f"{where}: group={self.group!r} must name exactly the tasks it has losses for "
                             f"({group_id(losses)!r}).")
        # Frozen: the canonical group, a float cost and a read-only copy of the losses, so a caller's dict
        # mutated later cannot change a network already handed to the solver.
        object.__setattr__(self, "group", group_id(losses))
        object.__setattr__(self, "cost", float(self.cost))
        object.__setattr__(self, "losses", MappingProxyType({task: losses[task] for task in sorted(losses)}))

    def __hash__(self) -> int:  # the generated hash would fail on the mapping
        return hash((self.name, self.group, self.cost, tuple(self.losses.items())))

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks it serves, sorted."""
        return tuple(self.losses)


@dataclass(frozen=True)
class Selection:
    """The networks chosen for one budget, and which of them serves each task.

    Built by :func:`select_networks`; every mapping is keyed in the order of the tasks asked for.

    Args:
        budget: the budget it was chosen for.
        networks: names of the chosen networks, sorted.
        cost: their summed cost (``math.fsum``).
        total_loss: the sum over tasks of the serving network's loss (``math.fsum``).
        assignment: task -> name of the chosen network serving it.
        losses: task -> the serving network's loss on it.
        groups: chosen network name -> its group id.
    """

    budget: float
    networks: tuple[str, ...]
    cost: float
    total_loss: float
    assignment: Mapping[str, str]
    losses: Mapping[str, float]
    groups: Mapping[str, str]

    def __post_init__(self) -> None:
        if tuple(sorted(set(self.networks))) != tuple(self.networks) or not self.networks:
            raise ValueError(f"Selection networks must be distinct names in sorted order, but got {self.networks=}.")
        if set(self.assignment) != set(self.losses):
            raise ValueError(f"Selection assignment and losses must cover the same tasks, but got "
                             f"{sorted(self.assignment)} and {sorted(self.losses)}.")
        unknown = sorted(set(self.assignment.values()) - set(self.networks))
        if unknown:
            raise ValueError(f"assignment must use only the chosen networks, but got networks {unknown} that "
                             "were not chosen.")
        if set(self.groups) != set(self.networks):
            raise ValueError(f"Selection groups must be given for exactly the chosen networks, but got "
                             f"{sorted(self.groups)} for {list(self.networks)}.")
        object.__setattr__(self, "assignment", MappingProxyType(dict(self.assignment)))
        object.__setattr__(self, "losses", MappingProxyType(dict(self.losses)))
        object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))

    def __hash__(self) -> int:
        return hash((self.budget, self.networks, self.cost, self.total_loss, tuple(self.assignment.items())))

    @property
    def n_networks(self) -> int:
        """How many networks were chosen."""
        return len(self.networks)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks served, in the order they were asked for."""
        return tuple(self.assignment)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (plain str, float, int, list and dict values)."""
        return {
            "budget": self.budget,
            "networks": list(self.networks),
            "n_networks": self.n_networks,
            "cost": self.cost,
            "total_loss": self.total_loss,
            "groups": dict(self.groups),
            "assignment": dict(self.assignment),
            "losses": dict(self.losses),
        }


# --------------------------------------------------------------------------- argument checks


def _check_networks(networks: Iterable[Network]) -> list[Network]:
    pool = list(networks)
    seen: set[str] = set()
    for network in pool:
        if not isinstance(network, Network):
            raise ValueError(f"networks must hold Network objects, but got {network!r}.")
        if network.name in seen:
            raise ValueError(f"network names must be unique, but {network.name!r} appears twice.")
        seen.add(network.name)
    return pool


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    if isinstance(tasks, str):  # a lone string would be read as its characters
        raise ValueError(f"tasks must be a sequence of task names, but got the string {tasks=}.")
    task_list = [_check_task_name(task, "tasks") for task in tasks]
    if not task_list:
        raise ValueError("tasks must name at least one task, but got an empty sequence.")
    duplicates = sorted({task for task in task_list if task_list.count(task) > 1})
    if duplicates:
        raise ValueError(f"tasks must be distinct, but {duplicates} appear more than once.")
    return task_list


def _check_budget(budget: float) -> float:
    if not _is_real(budget) or not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget must be a finite number >= 0, but got {budget=}.")
    return float(budget)


def _fits(cost: float, budget: float) -> bool:
    """Whether a (summed) cost fits the budget, up to :data:`COST_TOLERANCE`."""
    return cost <= budget + COST_TOLERANCE * max(1.0, budget)


# --------------------------------------------------------------------------- the solver


def select_networks(networks: Iterable[Network], tasks: Sequence[str], budget: float) -> Selection | None:
    """The best set of networks within ``budget`` that serves every task (exact branch-and-bound).

    Args:
        networks: candidate networks, with unique names. Losses on tasks not in ``tasks`` are ignored;
            a network serving none of ``tasks`` is never chosen.
        tasks: the tasks that must all be served; the order of the result's mappings.
        budget: the largest total cost allowed, finite and ``>= 0``.

    Returns:
        The winning :class:`Selection` under the module's tie-breaking rules, or ``None`` when no set of
        networks within the budget serves every task.
    """
    pool = _check_networks(networks)
    task_list = _check_tasks(tasks)
    budget = _check_budget(budget)
    chosen, _ = _solve(pool, task_list, budget)
    if chosen is None:
        return None
    return _make_selection([pool[i] for i in chosen], task_list, budget)


def _make_selection(chosen: Sequence[Network], tasks: Sequence[str], budget: float) -> Selection:
    """The :class:`Selection` of a set of networks that serves every task (assignment by loss, then name)."""
    assignment: dict[str, str] = {}
    losses: dict[str, float] = {}
    for task in tasks:
        serving = min((net for net in chosen if task in net.losses), key=lambda net: (net.losses[task], net.name))
        assignment[task] = serving.name
        losses[task] = serving.losses[task]
    return Selection(
        budget=budget,
        networks=tuple(sorted(net.name for net in chosen)),
        cost=math.fsum(net.cost for net in chosen),
        total_loss=math.fsum(losses.values()),
        assignment=assignment,
        losses=losses,
        groups={net.name: net.group for net in sorted(chosen, key=lambda net: net.name)},
    )


def _solve(pool: Sequence[Network], tasks: Sequence[str], budget: float) -> tuple[list[int] | None, int]:
    """Indices into ``pool`` of the winning selection (``None``: infeasible) and the search nodes visited."""
    task_index = {task: j for j, task in enumerate(tasks)}
    # Candidates: serve at least one asked task and fit the budget alone; the rest can never be chosen.
    candidates = [i for i, net in enumerate(pool)
                  if _fits(net.cost, budget) and any(task in task_index for task in net.losses)]
    loss = np.full((len(candidates), len(tasks)), np.inf)
    for row, i in enumerate(candidates):
        for task, value in pool[i].losses.items():
            if task in task_index:
                loss[row, task_index[task]] = value
    cost = np.array([pool[i].cost for i in candidates], dtype=float)
    names = [pool[i].name for i in candidates]
    if not candidates or not np.isfinite(loss.min(axis=0)).all():
        return None, 0

    keep = _undominated(loss, cost, names)
    loss, cost, names = loss[keep], cost[keep], [names[k] for k in keep]
    candidates = [candidates[k] for k in keep]

    # Order: good networks first, so a strong incumbent comes soon and the bound prunes more of what follows.
    # "Good" is the mean over served tasks of the loss's place between that task's best and worst loss
    # (0 = best), which is free of each task's scale; then the cheaper; then the name. Any order is exact;
    # on the Standley et al. tables this one visits about 3x fewer nodes than ordering by group size.
    served = np.isfinite(loss)
    best_loss = loss.min(axis=0)
    worst_loss = np.where(served, loss, -np.inf).max(axis=0)
    spread = np.where(worst_loss > best_loss, worst_loss - best_loss, 1.0)
    regret = np.where(served, (loss - best_loss) / spread, 0.0)
    order = sorted(range(len(candidates)), key=lambda k: (regret[k].sum() / served[k].sum(), cost[k], names[k]))
    loss, cost = loss[order], cost[order]
    names = [names[k] for k in order]
    candidates = [candidates[k] for k in order]
    by_name = {name: position for position, name in enumerate(sorted(names))}
    rank = np.array([by_name[name] for name in names])

    chosen, nodes = _branch_and_bound(loss, cost, rank, names, budget)
    return (None if chosen is None else [candidates[k] for k in chosen]), nodes


def _undominated(loss: np.ndarray, cost: np.ndarray, names: Sequence[str]) -> list[int]:
    """Rows not dominated by another: the others cannot be in the winning selection.

    ``a`` dominates ``b`` when ``a`` costs no more, serves every task ``b`` serves with a loss no higher,
    and is cheaper or (at equal cost) has the smaller name. Swapping ``b`` for ``a`` in a selection (or
    dropping ``b`` if ``a`` is already in it) then gives a selection that is at least as good on loss and
    cost and wins the tie-breaks, so ``b`` never belongs to the unique winner. Removing every dominated
    network at once is safe because each claim holds against the full set.
    """
    by_name = {name: position for position, name in enumerate(sorted(names))}
    name_rank = np.array([by_name[name] for name in names])
    keep = []
    for b in range(len(names)):
        cheaper_or_first = (cost < cost[b]) | ((cost == cost[b]) & (name_rank < name_rank[b]))  # never b itself
        dominates_b = cheaper_or_first & (loss <= loss[b]).all(axis=1)  # inf <= inf: b's unserved tasks are free
        if not dominates_b.any():
            keep.append(b)
    return keep


def _branch_and_bound(
    loss: np.ndarray, cost: np.ndarray, rank: np.ndarray, names: Sequence[str], budget: float
) -> tuple[list[int] | None, int]:
    """Depth-first search over sets of rows, each set built in increasing row order.

    A node is a chosen set with its candidate rows (later rows not yet ruled out); each child adds one
    candidate and inherits the candidates after it. Pruning, each step safe under the tie-breaks:

    * **Budget**: a child whose summed cost does not fit is not visited.
    * **Irredundance**: a child in which some chosen network serves no task (under the assignment rule)
      is not visited. Such a set, and every superset of it, loses to the same set without that network
      (equal loss, no more cost, fewer networks). Each prefix of an irredundant set is irredundant, so
      every set that can win is still reached. It also caps a branch at one network per task. A row
      that would win no task, or would take a chosen network's last task, leaves the candidates of the
      whole subtree: adding networks only lowers the current losses and shrinks what each network serves.
    * **Bound**: at a node, each task's loss in any descendant is at least the lower of its current loss
      and the best loss among the later rows still affordable; a task with neither cannot be served, so
      the subtree is cut. The descendants' key (total loss, cost, networks) is at least
      (:func:`_loss_floor`, current cost plus the cheapest affordable later row, current count + 1);
      when that exceeds the incumbent's key the subtree is cut.

    Returns:
        The winning rows (``None`` when nothing feasible) and the number of nodes visited.
    """
    n_rows, n_tasks = loss.shape
    unserved_rank = n_rows  # ranks are 0..n_rows-1; an unserved task loses every name tie
    best: tuple[tuple[float, float, int, tuple[str, ...]], list[int]] | None = None
    chosen: list[int] = []
    nodes = 0

    def visit(candidates: np.ndarray, current: np.ndarray, current_rank: np.ndarray, current_cost: float) -> None:
        nonlocal best, nodes
        nodes += 1
        if chosen and np.isfinite(current).all():
            key = (math.fsum(current), current_cost, len(chosen), tuple(sorted(names[k] for k in chosen)))
            if best is None or key < best[0]:
                best = (key, list(chosen))
        # Looser than _fits on purpose (the bound may only err low); children are checked exactly below.
        slack = budget - current_cost + 2 * COST_TOLERANCE * max(1.0, budget)
        affordable = candidates[cost[candidates] <= slack]
        if affordable.size == 0:
            return
        later = loss[affordable]
        reachable = np.minimum(current, later.min(axis=0))
        if not np.isfinite(reachable).all():
            return
        if best is not None:
            cost_floor = math.fsum([*(cost[k] for k in chosen), float(cost[affordable].min())])
            loss_floor = _loss_floor(current, reachable, later, cost[affordable], slack, n_tasks - len(chosen))
            if (loss_floor, cost_floor, len(chosen) + 1) > best[0][:3]:
                return
        # Screen every child at once: a row must win a task (lower loss, or equal loss and first name) and
        # leave each chosen network a task of its own. A row failing either fails it in every descendant too.
        wins = np.isfinite(later) & ((later < current) | ((later == current) & (rank[affordable, None] < current_rank)))
        keeps = wins.any(axis=1)
        for k in chosen:
            keeps &= ((current_rank == rank[k]) & ~wins).any(axis=1)
        chosen_costs = [float(cost[k]) for k in chosen]
        children = []
        for screened in np.flatnonzero(keeps):
            child_cost = math.fsum([*chosen_costs, float(cost[affordable[screened]])])
            if _fits(child_cost, budget):  # a row that does not fit now never will either
                children.append((int(screened), child_cost))
        # Each child takes only the rows after it as its candidates, so every set is visited once, built in
        # row order. (Best-first by the loss each child reaches visited more nodes than this fixed order.)
        positions = np.array([position for position, _ in children], dtype=int)
        for i, (position, child_cost) in enumerate(children):
            row = int(affordable[position])
            row_wins = wins[position]
            chosen.append(row)
            visit(affordable[positions[i + 1:]], np.where(row_wins, later[position], current),
                  np.where(row_wins, rank[row], current_rank), child_cost)
            chosen.pop()

    visit(np.arange(n_rows), np.full(n_tasks, np.inf), np.full(n_tasks, unserved_rank), 0.0)
    return (None if best is None else best[1]), nodes


def _loss_floor(current: np.ndarray, reachable: np.ndarray, later_loss: np.ndarray, later_cost: np.ndarray,
                room: float, max_added: int) -> float:
    """A lower bound on the total loss of any set that adds affordable later rows to the current one.

    Two bounds, the larger wins:

    * every task at the best loss reachable on its own (``reachable``): exact, as ``fsum`` is monotone;
    * few networks cannot improve everything: the added set holds at most ``k`` rows (the most whose
      cheapest costs fit ``room``, and at most ``max_added``: in an irredundant set each network serves a
      task of its own), and on the tasks served now it improves the loss by at most the sum of the ``k``
      largest single-row improvements. This one subtracts, so it is lowered by a relative 1e-9 to stay
      below the true total despite round-off (which only costs pruning in near-ties).

    Args:
        current: per-task loss of the current set (inf where unserved).
        reachable: per-task minimum of ``current`` and the later affordable rows (all finite).
        later_loss: the later affordable rows' losses (inf where unserved).
        later_cost: their costs.
        room: the budget left (with slack).
        max_added: the most rows an irredundant descendant can add.
    """
    floor = math.fsum(reachable)
    served = np.isfinite(current)
    if not served.any():
        return floor
    cheapest = np.cumsum(np.sort(later_cost))
    k = min(int(np.searchsorted(cheapest, room, side="right")), max_added)
    if k == 0:
        return floor
    gains = np.maximum(current[served] - later_loss[:, served], 0.0).sum(axis=1)
    top = math.fsum(np.sort(gains)[-k:])
    now = math.fsum(current[served])
    cap = min(top, now - math.fsum(reachable[served]))
    counted = math.fsum(reachable[~served]) + now - cap
    return max(floor, counted - 1e-9 * max(1.0, abs(now) + abs(cap)))


# --------------------------------------------------------------------------- tables and text


def budgets_for(num_tasks: int) -> list[float]:
    """The budgets Standley et al. sweep: 1, 1.5, ..., ``num_tasks`` (in full-size networks).

    Args:
        num_tasks: the number of tasks, ``>= 1``; one full-size network per task is the largest budget.
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an integer >= 1, but got {num_tasks=}.")
    steps = round((int(num_tasks) - 1) / BUDGET_STEP)
    return [1.0 + BUDGET_STEP * k for k in range(steps + 1)]


def selection_table(networks: Iterable[Network], tasks: Sequence[str], budgets: Iterable[float]) -> pd.DataFrame:
    """One row per budget, in the order given: the winning selection and who serves each task.

    Columns: ``budget``, ``feasible`` (whether any set within the budget serves every task),
    ``networks`` (chosen names, sorted, joined by a space), ``n_networks``, ``cost``, ``total_loss``,
    then per task ``<task>_network`` and ``<task>_loss``. An infeasible budget keeps its row, with
    ``feasible`` false, empty names, ``n_networks`` 0 and NaN cost and losses.

    Args:
        networks: candidate networks (see :func:`select_networks`).
        tasks: the tasks that must all be served; the order of the per-task columns.
        budgets: the budgets to solve for, each finite and ``>= 0``.
    """
    pool = _check_networks(networks)
    task_list = _check_tasks(tasks)
    budget_list = [_check_budget(budget) for budget in budgets]
    per_task = [f"{task}_{field}" for task in task_list for field in ("network", "loss")]
    clashes = sorted(set(per_task) & set(TABLE_COLUMNS))
    if clashes:
        raise ValueError(f"task names give per-task columns that clash with fixed ones: {clashes}; rename the task.")
    rows = []
    for budget in budget_list:
        selection = select_networks(pool, task_list, budget)
        row: dict[str, Any] = {"budget": budget, "feasible": selection is not None}
        if selection is None:
            row.update(networks="", n_networks=0, cost=math.nan, total_loss=math.nan)
            row.update({f"{task}_{field}": ("" if field == "network" else math.nan)
                        for task in task_list for field in ("network", "loss")})
        else:
            row.update(networks=NETWORK_SEP.join(selection.networks), n_networks=selection.n_networks,
                       cost=selection.cost, total_loss=selection.total_loss)
            for task in task_list:
                row[f"{task}_network"] = selection.assignment[task]
                row[f"{task}_loss"] = selection.losses[task]
        rows.append(row)
    return pd.DataFrame(rows, columns=[*TABLE_COLUMNS, *per_task])
