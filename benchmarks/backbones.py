"""Networks against per-target GBDT: the best grouping of each network family at an equal search budget.

For each data set (the embedded Census-Income sample, NHEFS) and each variant, runs the real search
(``python -m mtl_search run SPEC --set ...``, a fresh process and local Ray each) with the spec's own
budget, then reads the run's ``leaderboard.csv`` and ``confirm.csv`` and prints, per run: wall time,
the rank-1 grouping (chosen on validation), its validation and test scores, its confirm mean ± std
(retrained with fresh seeds, test split), and the same numbers for ``baseline:gbdt`` (one
gradient-boosted tree model per target, on the same splits, refitted with the same seeds). Lower is
better (mean normalised test loss).

Variants (each a set of ``--set`` overrides on the data set's spec):

``mlp``
    today's plain network: standardised numbers, MLP backbone.
``periodic``
    + numerical embeddings: ``space.numeric_encoding=periodic``.
``tabm``
    + TabM: ``space.backbone=tabm`` with periodic numbers (``--members`` members).

    python benchmarks/backbones.py                        # both data sets, every variant (about 40 min on 2 cores)
    python benchmarks/backbones.py --datasets census --variants mlp periodic

``--one-config`` isolates the network from the search: no Ray, no TPE, no ASHA. Each variant trains
every candidate group under ONE configuration (the spec's default point, changed by ``--point``) as
one pack on one thread, as a trial does, for each ``--seeds`` seed, and prints the best grouping's
validation and test scores (chosen on validation), all-singletons' test score, and the seconds it took:

    python benchmarks/backbones.py --one-config --datasets census --seeds 0 1 \
        --point '{"depth": 2, "width": 128, "lr": 0.003}'
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

#: Data set -> its spec and the overrides every variant shares (NHEFS: the budget of a default run).
DATASETS = {
    "census": (ROOT / "search_spaces" / "tabular.yaml", []),
    "nhefs": (ROOT / "search_spaces" / "nhefs.yaml", []),
}
VARIANTS = {
    "mlp": ["space.numeric_encoding=standard", "space.backbone=mlp"],
    "periodic": ["space.numeric_encoding=periodic", "space.backbone=mlp"],
    "tabm": ["space.numeric_encoding=periodic", "space.backbone=tabm"],
}


def _confirm(result: Path, grouping: str) -> tuple[float, float]:
    """A grouping's confirm mean and std of the mean normalised test loss (NaN when it was not confirmed)."""
    confirm = pd.read_csv(result / "confirm.csv")
    row = confirm[(confirm["grouping"] == grouping) & (confirm["task"] == "all")]
    return (float(row["nloss_mean"].iloc[0]), float(row["nloss_std"].iloc[0])) if len(row) else (float("nan"),) * 2


def run_once(dataset: str, variant: str, output: Path, members: int) -> dict[str, object]:
    spec, shared = DATASETS[dataset]
    name = f"backbones-{dataset}-{variant}"
    command = [sys.executable, "-m", "mtl_search", "run", str(spec), "--output", str(output), "--name", name,
               "--overwrite", "--set", "confirm={top_k: 1, seeds: 3}", "--set", f"space.members={members}"]
    for item in [*shared, *VARIANTS[variant]]:
        command += ["--set", item]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    result = output / name
    board = pd.read_csv(result / "leaderboard.csv")
    best = board[board["rank"].notna()].iloc[0]
    gbdt = board[board["grouping"] == "baseline:gbdt"].iloc[0]
    mean, std = _confirm(result, best["grouping"])
    gbdt_mean, gbdt_std = _confirm(result, "baseline:gbdt")
    return {"data": dataset, "variant": variant, "wall_min": round(wall / 60, 2), "best": best["grouping"],
            "valid": round(best["valid_score"], 4), "test": round(best["score"], 4),
            "confirm": f"{mean:.4f} ± {std:.4f}", "gbdt_valid": round(gbdt["valid_score"], 4),
            "gbdt_test": round(gbdt["score"], 4), "gbdt_confirm": f"{gbdt_mean:.4f} ± {gbdt_std:.4f}"}


def one_config(dataset: str, variant: str, point: dict[str, object], seed: int, members: int) -> dict[str, object]:
    """Train every candidate group under one configuration (one pack, one thread) and score its best grouping."""
    import numpy as np
    import torch

    from mtl_search.data import prepare
    from mtl_search.grouping import best_partitions, group_tasks
    from mtl_search.spec_file import load_spec
    from mtl_search.train import fit
    from mtl_search.trial import TrialParams

    torch.set_num_threads(1)
    spec_path, shared = DATASETS[dataset]
    overrides = dict(item.split("=", 1) for item in [*shared, *VARIANTS[variant]])
    spec = load_spec(spec_path, overrides=[f"{key}={value}" for key, value in overrides.items()])
    data = prepare(spec)
    tasks = list(data.tasks)
    groups = spec.grouping.strategy().propose(tasks)
    config = {**spec.space.defaults(), "members": members, **point}
    started = time.perf_counter()
    result = fit(data, groups, TrialParams.from_config(config), seed=seed)
    seconds = time.perf_counter() - started
    costs = {group: {task: network[f"valid/{task}/nloss"] for task in group_tasks(group)}
             for group, network in result.networks.items() if np.isfinite(network["score"])}
    ((cost, partition),) = best_partitions(tasks, costs, 1)
    test = [result.networks[group][f"test/{task}/nloss"] for group in partition for task in group_tasks(group)]
    singles = [result.networks[task][f"test/{task}/nloss"] for task in tasks if task in result.networks]
    return {"data": dataset, "variant": variant, "seed": seed, "seconds": round(seconds, 1),
            "best": "|".join(partition), "valid": round(cost / len(tasks), 4), "test": round(float(np.mean(test)), 4),
            "singles_test": round(float(np.mean(singles)), 4) if len(singles) == len(tasks) else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--members", type=int, default=8, help="TabM's ensemble size k (default 8)")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "benchmarks",
                        help="parent folder of the runs' result directories (replaced on a rerun)")
    parser.add_argument("--one-config", action="store_true",
                        help="no search: train every group under one configuration (see above)")
    parser.add_argument("--point", type=json.loads, default={},
                        help='--one-config: hyperparameters replacing the default point, as JSON')
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="--one-config: training seeds")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        for variant in args.variants:
            if args.one_config:
                runs = [one_config(dataset, variant, args.point, seed, args.members) for seed in args.seeds]
            else:
                runs = [run_once(dataset, variant, args.output, args.members)]
            for row in runs:
                rows.append(row)
                print(" | ".join(str(value) for value in row.values()), flush=True)
    print(f"\nmachine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; lower is better (mean normalised test loss)")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
