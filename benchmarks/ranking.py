"""Ranking groupings of many tasks: the exact top-N search over scored groups (``best_partitions``, what
``leaderboard.csv`` is built with) and the candidate search over estimated costs (``top_groupings``).

Scored groups are drawn at random: every singleton plus random groups of 2 to 5 tasks, with per-task
normalised losses either *structured* (tasks in planted clusters of four do better beside cluster-mates,
plus noise) or pure *noise* (no group is much better than another: the hardest case for the bound).

    python benchmarks/ranking.py                 # 20 tasks, 500 groups, top 100; 30 tasks, 60 groups, top 1000
    python benchmarks/ranking.py --tasks 24 --groups 800 --top 100
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from mtl_search.grouping import best_partitions, group_id, group_tasks, top_groupings


def scored_groups(tasks: list[str], count: int, *, structured: bool, seed: int) -> dict[str, dict[str, float]]:
    """``count`` groups (every singleton first) with per-task losses around 1."""
    rng = np.random.default_rng(seed)
    groups = {group_id([t]) for t in tasks}
    while len(groups) < count:
        size = int(rng.integers(2, 6))
        groups.add(group_id(rng.choice(tasks, size=size, replace=False)))
    cluster = {t: i // 4 for i, t in enumerate(tasks)}

    def loss(task: str, members: tuple[str, ...]) -> float:
        noise = float(rng.normal(0.0, 0.05))
        if not structured:
            return 1.0 + noise
        mates = sum(cluster[u] == cluster[task] for u in members if u != task)
        strangers = sum(cluster[u] != cluster[task] for u in members)
        return 1.0 - 0.05 * mates + 0.04 * strangers + noise

    return {g: {t: loss(t, group_tasks(g)) for t in group_tasks(g)} for g in sorted(groups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[20, 30])
    parser.add_argument("--groups", type=int, nargs="+", default=[500, 60])
    parser.add_argument("--top", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.node()} ({platform.machine()}), Python {platform.python_version()}")
    print("tasks | groups | top | costs | seed | best_partitions s | found")
    for count, groups, top in zip(args.tasks, args.groups, args.top, strict=True):
        tasks = [f"t{i:02d}" for i in range(count)]
        for structured in (True, False):
            for seed in range(args.seeds):
                costs = scored_groups(tasks, groups, structured=structured, seed=seed)
                started = time.perf_counter()
                found = best_partitions(tasks, costs, top)
                seconds = time.perf_counter() - started
                print(f"{count} | {groups} | {top} | {'structured' if structured else 'noise'} | {seed} | "
                      f"{seconds:.2f} | {len(found)}", flush=True)
    # The candidate search over costs of any group, asked lazily (the estimate strategy's search).
    print("\ntasks | top_k | beam | groups asked | top_groupings s")
    for count in (12, 20, 30):
        tasks = [f"t{i:02d}" for i in range(count)]
        asked: set[str] = set()
        cluster = {t: i // 3 for i, t in enumerate(tasks)}

        def costs(group: str, asked: set[str] = asked, cluster: dict[str, int] = cluster) -> dict[str, float]:
            asked.add(group)
            members = group_tasks(group)
            return {t: 1.0 - 0.1 * sum(cluster[u] == cluster[t] for u in members if u != t)
                    + 0.2 * sum(cluster[u] != cluster[t] for u in members) for t in members}

        started = time.perf_counter()
        top_groupings(tasks, costs, 3, beam=8)
        print(f"{count} | 3 | 8 | {len(asked)} | {time.perf_counter() - started:.2f}", flush=True)


if __name__ == "__main__":
    main()
