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
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--members", type=int, default=8, help="TabM's ensemble size k (default 8)")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "benchmarks",
                        help="parent folder of the runs' result directories (replaced on a rerun)")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        for variant in args.variants:
            rows.append(run_once(dataset, variant, args.output, args.members))
            print(" | ".join(str(value) for value in rows[-1].values()), flush=True)
    print(f"\nmachine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; lower is better (mean normalised test loss)")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
