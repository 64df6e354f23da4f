"""Reproduce the Census-Income comparison of the MMoE paper with mtl_search's own pipeline.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018, section 6.3: single-task networks against a
shared-bottom network for (income > 50k, never married) and (education >= college,
never married) on the full UCI Census-Income (KDD) data, test AUC mean over runs.

This script

1. builds ``data/census_income_full.csv.gz`` if it is missing (every row and every
   attribute, with the original train/test partition; ``scripts/build_census_sample.py``),
2. runs ``search_spaces/census_mmoe.yaml`` through :func:`mtl_search.experiment.run_experiment`
   (fixed hyperparameters, one trial per group, then ``confirm``: 5 fresh seeds per network)
   on a local Ray limited to ``--cpus`` CPUs,
3. prints our test AUC (mean ± std over the seeds) beside the paper's tables, as Markdown.

Usage::

    python scripts/reproduce_mmoe.py                       # ~15 min on one core
    python scripts/reproduce_mmoe.py --overwrite --set space.epochs=4   # any spec override
    python scripts/reproduce_mmoe.py --table-only          # reprint the table of an earlier run

What matches the paper and what does not: docs/reproductions.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "census_mmoe.yaml"
DATA = ROOT / "data" / "census_income_full.csv.gz"

#: The paper's Tables 1 and 2, main tasks: (group, task) -> model -> (mean AUC over 400 runs, AUC of the
#: run with the best main-task AUC). The best run's AUC is the larger of the two, so the columns are certain.
PAPER = {
    ("group 1", "income"): {"single-task": (0.9337, 0.9398), "shared-bottom": (0.9295, 0.9361),
                            "MMoE": (0.9359, 0.9410)},
    ("group 2", "college"): {"single-task": (0.8792, 0.8843), "shared-bottom": (0.8813, 0.8836),
                             "MMoE": (0.8826, 0.8860)},
}

#: The never-married (auxiliary) task: (group, model) -> its two columns, "mean" and "in the run with the
#: best main-task AUC", in the order the paper's text gives them; which is which the text does not settle
#: (docs/reproductions.md), so both are shown.
PAPER_AUXILIARY = {
    ("group 1", "single-task"): (0.9933, 0.9922), ("group 1", "shared-bottom"): (0.9915, 0.9921),
    ("group 1", "MMoE"): (0.9926, 0.9927),
    ("group 2", "single-task"): (0.9933, 0.9922), ("group 2", "shared-bottom"): (0.9927, 0.9917),
    ("group 2", "MMoE"): (0.9932, 0.9924),
}

#: Rows of the comparison: (paper group, task, model, the mtl_search group that is that model).
ROWS = [
    ("group 1", "income", "single-task", "income"),
    ("group 1", "income", "shared-bottom", "income+never_married"),
    ("group 1", "never_married", "single-task", "never_married"),
    ("group 1", "never_married", "shared-bottom", "income+never_married"),
    ("group 2", "college", "single-task", "college"),
    ("group 2", "college", "shared-bottom", "college+never_married"),
    ("group 2", "never_married", "single-task", "never_married"),
    ("group 2", "never_married", "shared-bottom", "college+never_married"),
    ("(not in the paper)", "income", "income + college", "college+income"),
    ("(not in the paper)", "college", "income + college", "college+income"),
]


def build_data(path: Path) -> None:
    """Build the full table (every row, every attribute, original partition) with the dataset script."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_census_sample.py"), "--rows", "0",
                    "--keep-leaks", "--original-split", "--out", str(path)], check=True)


def comparison(confirm: pd.DataFrame) -> str:
    """Our confirm.csv beside the paper's tables, as a Markdown table."""
    ours = confirm[confirm["task"] != "all"].drop_duplicates(["task", "group"]).set_index(["task", "group"])
    lines = ["| paper group | task | model | mtl_search network | ours: test AUC mean ± std (seeds) "
             "| paper: mean AUC (400 runs) | paper: best run |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    auxiliary = "never_married"
    for paper_group, task, model, group in ROWS:
        if (task, group) not in ours.index:
            continue
        row = ours.loc[(task, group)]
        paper = PAPER.get((paper_group, task), {}).get(model)
        mean, best = (f"{paper[0]:.4f}", f"{paper[1]:.4f}") if paper else ("–", "–")
        if task == auxiliary and (paper_group, model) in PAPER_AUXILIARY:
            mean = best = " or ".join(f"{v:.4f}" for v in PAPER_AUXILIARY[(paper_group, model)])
        lines.append(f"| {paper_group} | {task} | {model} | `{group}` | {row['metric_mean']:.4f} ± "
                     f"{row['metric_std']:.4f} ({int(row['seeds'])}) | {mean} | {best} |")
    for paper_group, task in PAPER:
        paper = PAPER[(paper_group, task)]["MMoE"]
        lines.append(f"| {paper_group} | {task} | MMoE | (not in mtl_search) | – | {paper[0]:.4f} | {paper[1]:.4f} |")
        either = " or ".join(f"{v:.4f}" for v in PAPER_AUXILIARY[(paper_group, "MMoE")])
        lines.append(f"| {paper_group} | {auxiliary} | MMoE | (not in mtl_search) | – | {either} | {either} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs the local Ray may use (default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, as `mtl-search run --set`")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's result directory")
    parser.add_argument("--table-only", action="store_true", help="only print the table of an earlier run")
    args = parser.parse_args(argv)

    from mtl_search.spec_file import load_spec

    spec = load_spec(args.spec, args.overrides)
    if not args.table_only:
        from mtl_search.experiment import run_experiment
        from mtl_search.ray_session import connect_ray

        source = Path(spec.data.source)
        if not source.exists():
            if source.resolve() != DATA.resolve():
                raise SystemExit(f"{source} does not exist; build it with scripts/build_census_sample.py")
            build_data(source)
        started = time.time()
        connect_ray(num_cpus=args.cpus)  # run_experiment joins this Ray: every run shares these CPUs
        run_experiment(spec, overwrite=args.overwrite)
        print(f"\nwall time: {(time.time() - started) / 60:.1f} min on {args.cpus} CPU(s)")
    path = spec.result_dir() / "confirm.csv"
    if not path.is_file() or path.stat().st_size == 0 or (confirm := pd.read_csv(path)).empty:
        raise SystemExit(f"{path}: no confirmed networks; see trials.csv there for failed trials")
    print()
    print(comparison(confirm))


if __name__ == "__main__":
    main()
