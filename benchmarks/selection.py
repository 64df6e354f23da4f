"""Budgeted network selection on the published tables of Standley et al. 2020: choices, losses and time.

For each of the four settings (five tasks; 36 networks: five half-size single-task
networks of cost 0.5 and the 31 full-size subsets of cost 1) and each budget
1, 1.5, ..., 5, chooses networks on the validation table with
:func:`mtl_search.selection.select_networks` and scores the choice on the test
table, each task served by the network validation assigned it. The test
``tests/test_selection.py`` checks every one of these choices against
exhaustive search; this script prints them and times the solver.

    python benchmarks/selection.py
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

import pandas as pd

from mtl_search.selection import Network, budgets_for, select_networks

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "standley2020"
TASKS = [f"t{i}" for i in range(1, 6)]


def read_setting(setting: int, split: str) -> list[Network]:
    """One published table as networks (line 1: half-size singles; then full-size subsets)."""
    lines = (DATA / f"setting{setting}_{split}.tsv").read_text().splitlines()
    networks = [Network(f"half_{task}", task, 0.5, {task: float(cell)})
                for task, cell in zip(TASKS, lines[0].split("\t"), strict=True)]
    for line in lines[1:]:
        losses = {task: float(cell) for task, cell in zip(TASKS, line.split("\t"), strict=True) if cell.strip()}
        networks.append(Network(f"full_{'+'.join(losses)}", "+".join(losses), 1.0, losses))
    return networks


def main() -> None:
    rows = []
    for setting in (1, 2, 3, 4):
        valid = read_setting(setting, "val")
        test = {n.name: n for n in read_setting(setting, "test")}
        for budget in budgets_for(len(TASKS)):
            started = time.perf_counter()
            chosen = select_networks(valid, TASKS, budget)
            seconds = time.perf_counter() - started
            assert chosen is not None
            rows.append({
                "setting": setting, "budget": budget, "networks": " ".join(chosen.networks),
                "valid_loss": chosen.total_loss,
                "test_loss": math.fsum(test[chosen.assignment[t]].losses[t] for t in TASKS),
                "ms": 1000 * seconds,
            })
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    print(f"\nsolver time per budget: median {table['ms'].median():.2f} ms, max {table['ms'].max():.2f} ms "
          f"({platform.processor() or platform.machine()}, Python {platform.python_version()})")


if __name__ == "__main__":
    main()
