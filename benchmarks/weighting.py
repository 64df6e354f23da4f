"""Loss-weighting schemes: the cost of a training step and the validation score each reaches.

Two measurements on the same network and data (``builtin:planted``: by default
2 clusters x 2 tasks, 4,000 rows; the group trained is all four tasks, so the
two clusters' tasks compete for the shared layer):

1. **time per training step** of every scheme, and its ratio to ``equal``: the
   trainer's own epoch loop (``mtl_search.train.TrainingLoop.run_epoch``, so gradient-level
   schemes pay for the per-task gradients exactly as in a trial), timed in rounds
   that visit every scheme in turn (a busy machine slows all schemes alike), median
   over rounds;
2. **validation score** (mean normalised validation loss at the best epoch, lower
   is better) that ``train.fit`` reaches with each scheme, mean and standard
   deviation over seeds, with the test score at the same epoch.

    python benchmarks/weighting.py                          # CPU, 1 thread (what a trial of 1 CPU uses)
    python benchmarks/weighting.py --device cuda --batch-size 4096
    python benchmarks/weighting.py --schemes equal pcgrad --seeds 1 --rounds 3
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import pandas as pd
import torch

from mtl_search.data import PreparedData, prepare
from mtl_search.grouping import group_id
from mtl_search.spec_file import spec_from_dict
from mtl_search.train import TrainingLoop, fit
from mtl_search.trial import TrialParams
from mtl_search.weighting import WEIGHTINGS


def planted(rows: int, clusters: int, tasks_per_cluster: int, seed: int) -> PreparedData:
    return prepare(spec_from_dict({"name": "bench", "seed": seed, "data": {
        "source": "builtin:planted",
        "params": {"rows": rows, "clusters": clusters, "tasks_per_cluster": tasks_per_cluster, "seed": seed}}}))


def step_seconds(data: PreparedData, tasks: list[str], params: TrialParams, device: torch.device, steps: int,
                 seed: int = 0) -> float:
    """Seconds per training step of the trainer's loop: whole epochs, at least ``steps`` steps, after a warm-up."""
    loop = TrainingLoop(data, [group_id(tasks)], params, device=device, seed=seed)
    epochs = math.ceil(steps / loop.steps)

    def run(count: int) -> None:
        for _ in range(count):
            loop.run_epoch()

    run(1)  # warm-up: allocator, kernels, lazy initialisation
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run(epochs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / (epochs * loop.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a trial uses cpus_per_worker)")
    parser.add_argument("--schemes", nargs="+", default=sorted(WEIGHTINGS, key=lambda n: (n != "equal", n)))
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--tasks-per-cluster", type=int, default=2)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--sharing-depth", type=int, default=1)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200, help="training steps per timing (whole epochs)")
    parser.add_argument("--rounds", type=int, default=5, help="timings per scheme (interleaved)")
    parser.add_argument("--seeds", type=int, default=3, help="fits per scheme for the score")
    parser.add_argument("--skip-scores", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = planted(args.rows, args.clusters, args.tasks_per_cluster, seed=0)
    tasks = list(data.tasks)

    def params(scheme: str) -> TrialParams:
        return TrialParams(depth=args.depth, sharing_depth=args.sharing_depth, width=args.width, head_sizes=(),
                           weighting=scheme, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size)

    times: dict[str, list[float]] = {scheme: [] for scheme in args.schemes}
    ratios: dict[str, list[float]] = {scheme: [] for scheme in args.schemes}
    for _ in range(args.rounds):
        baseline = step_seconds(data, tasks, params("equal"), device, args.steps)
        for scheme in args.schemes:
            seconds = baseline if scheme == "equal" else step_seconds(data, tasks, params(scheme), device, args.steps)
            times[scheme].append(seconds)
            ratios[scheme].append(seconds / baseline)

    rows = []
    for scheme in args.schemes:
        row: dict[str, object] = {
            "scheme": scheme,
            "kind": WEIGHTINGS[scheme].scheme.level,
            "step_ms": 1000 * statistics.median(times[scheme]),
            "vs_equal": statistics.median(ratios[scheme]),
        }
        if not args.skip_scores:
            fits = [fit(planted(args.rows, args.clusters, args.tasks_per_cluster, seed=seed), [group_id(tasks)],
                        params(scheme), device=device, seed=seed) for seed in range(args.seeds)]
            valid = [f.score for f in fits]
            test = [network["test/score"] for f in fits for network in f.networks.values()]
            row.update(valid_score=statistics.mean(valid),
                       valid_std=statistics.stdev(valid) if len(valid) > 1 else float("nan"),
                       test_score=statistics.mean(test))
        rows.append(row)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {args.threads} thread(s)")
          + f", load average {load:.1f}")
    print(f"data: builtin:planted {args.clusters} x {args.tasks_per_cluster} tasks ({', '.join(tasks)}), "
          f"{args.rows} rows; network depth {args.depth}, sharing_depth {args.sharing_depth}, width {args.width}, "
          f"batch {args.batch_size}, lr {args.lr:g}; timing: >= {args.steps} steps x {args.rounds} rounds"
          + ("" if args.skip_scores else f"; scores: {args.epochs} epochs x {args.seeds} seeds"))
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
