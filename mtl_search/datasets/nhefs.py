"""NHEFS: 1,629 smokers examined in 1971, followed up in 1982 (weight, blood pressure, quitting) and 1992 (death).

The NHANES I Epidemiologic Follow-up Study extract cleaned by Hernán and Robins
for *Causal Inference: What If*, as shipped in the ``causaldata`` package.
Built by ``scripts/build_nhefs.py``; provenance, licence, tasks and the columns
removed as target leaks are in this folder's README.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtl_search.datasets._table import BuiltinTable

PATH = Path(__file__).with_name("nhefs.csv.gz")

#: The documented tasks: name -> (column, type). Every feature is measured in 1971, before the outcomes.
TASKS: dict[str, tuple[str, str]] = {
    "death": ("death", "binary"),                   # died by 1992
    "quit_smoking": ("qsmk", "binary"),             # quit smoking between 1971 and 1982
    "weight_change": ("wt82_71", "regression"),     # kg, 1982 minus 1971
    "sbp": ("sbp", "regression"),                   # systolic blood pressure in 1982, mmHg
    "dbp": ("dbp", "regression"),                   # diastolic blood pressure in 1982, mmHg
}


def load() -> BuiltinTable:
    """The whole NHEFS extract with its five documented tasks."""
    return BuiltinTable(
        frame=pd.read_csv(PATH),
        tasks=dict(TASKS),
        description="NHEFS (NHANES I Epidemiologic Follow-up Study), 1,629 smokers, 1971-1992 (public domain, CDC)",
    )
