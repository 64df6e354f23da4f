"""Ray overhead per trial: the same spec with each trial executor, back to back.

Runs ``python -m mtl_search run SPEC`` once per executor (each in a fresh
process, so each starts its own local Ray), then prints the experiment's wall
time and the median per-trial wall time, time inside the training loop and
overhead (wall - loop), read from the run's ``trials.csv``.

    python benchmarks/executors.py                                  # the default spec
    python benchmarks/executors.py search_spaces/tabular.yaml --set search.num_samples=31
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run_once(spec: Path, executor: str, output: Path, overrides: list[str]) -> dict[str, float | str]:
    name = f"bench-{executor}"
    command = [sys.executable, "-m", "mtl_search", "run", str(spec), "--output", str(output), "--name", name,
               "--overwrite", "--set", f"search.trial_executor={executor}"]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    trials = pd.read_csv(output / name / "trials.csv")
    ok = trials[trials["status"].isin(["completed", "stopped"])]
    info = json.loads((output / name / "run.json").read_text())
    return {
        "executor": executor,
        "trials": len(trials),
        "wall_min": wall / 60,
        "trial_wall_s": ok["wall_s"].median(),
        "train_loop_s": ok["train_loop_s"].median(),
        "overhead_s": ok["overhead_s"].median(),
        "best": pd.read_csv(output / name / "leaderboard.csv")["grouping"].iloc[0],
        "ray": info["ray_version"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", type=Path, default=ROOT / "search_spaces" / "tabular.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--executors", nargs="+", default=["train", "inline"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_once(args.spec, executor, Path(tmp), args.overrides) for executor in args.executors]
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, Ray {rows[0]['ray']}")
    print(pd.DataFrame(rows).drop(columns="ray").to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
