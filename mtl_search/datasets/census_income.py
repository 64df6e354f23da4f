"""A 20,000-row stratified extract of the UCI Census-Income (KDD) data.

Built by ``scripts/build_census_sample.py``; provenance, licence and the
columns removed as target leaks are in this folder's README.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl_search.datasets._table import BuiltinTable

PATH = Path(__file__).with_name("census_income.csv.gz")

#: The documented tasks: name -> (column, type).
TASKS: dict[str, tuple[str, str]] = {
    "income": ("income_gt_50k", "binary"),
    "weeks": ("weeks_worked_in_year", "regression"),
    "worker": ("class_of_worker", "multiclass"),
    "employment": ("full_or_part_time_employment_stat", "multiclass"),
    "marital": ("marital_stat", "multiclass"),
    "union": ("member_of_a_labor_union", "binary"),
}


def load() -> BuiltinTable:
    """The embedded sample with its six documented tasks."""
    frame = pd.read_csv(PATH)
    return BuiltinTable(
        frame=frame,
        tasks=dict(TASKS),
        exclude=("instance_weight",),
        description="UCI Census-Income (KDD), 20,000-row stratified sample (CC BY 4.0)",
    )
