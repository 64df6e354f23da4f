"""The second real table, builtin:nhefs (health outcomes of smokers), and its example spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtl_search.data import SPLITS, prepare
from mtl_search.datasets import load_builtin
from mtl_search.spec_file import load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"death": ("death", "binary"), "quit_smoking": ("qsmk", "binary"), "weight_change": ("wt82_71", "regression"),
         "sbp": ("sbp", "regression"), "dbp": ("dbp", "regression")}


def test_nhefs_loads_with_its_documented_tasks():
    table = load_builtin("nhefs", {})
    frame = table.frame
    assert frame.shape == (1629, 59)
    assert table.tasks == TASKS
    for column, kind in table.tasks.values():
        assert column in frame.columns
        if kind == "binary":
            assert set(frame[column].dropna()) == {0, 1}
    # Identifiers and the columns that give a target away are gone (datasets/README.md).
    removed = {"seqn", "id", "yrdth", "modth", "dadth", "wt82", "censored", "smkintensity82_71"}
    assert not removed & set(frame.columns)
    # Documented missing codes are empty cells; nominal codes are labels.
    assert frame["hbp"].dropna().isin([0, 1]).all() and frame["hbp"].isna().sum() == 791
    assert set(frame["marital"].dropna()) == {"married", "widowed", "never married", "divorced", "separated"}
    assert frame["birthplace"].dropna().str.fullmatch(r"state \d\d").all()


def test_nhefs_prepares_with_per_task_label_masks():
    data = prepare(spec_from_dict({"name": "t", "data": {"source": "builtin:nhefs"}}))
    assert list(data.tasks) == list(TASKS)
    assert sum(data.splits[s].rows for s in SPLITS) == 1629
    assert not {column for column, _ in TASKS.values()} & set(data.input_columns)
    labelled = {t: sum(int(data.splits[s].mask[t].sum()) for s in SPLITS) for t in TASKS}
    # The 1982 measurements are missing for some (died or lost to follow-up): masked, per task.
    assert labelled == {"death": 1629, "quit_smoking": 1629, "weight_change": 1566, "sbp": 1552, "dbp": 1548}
    assert all(np.isfinite(data.splits[s].x).all() for s in SPLITS)


def test_nhefs_example_spec_is_valid():
    spec = load_spec(ROOT / "search_spaces" / "nhefs.yaml")
    assert spec.data.source == "builtin:nhefs" and spec.data.tasks is None
    assert spec.search.trial_executor == "inline" and spec.confirm is not None
