"""The MMoE paper's Census-Income setup (search_spaces/census_mmoe.yaml) and the spec features it needs.

CI-sized: the full data (data/census_income_full.csv.gz) is never needed. The spec's
task derivation is checked on the embedded 20,000-row sample; the two spec features,
binary tasks derived from a column of many values (``positive``) and splits that follow
a column (``split.column``), on small tables made here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mtl_search.data import SPLITS, prepare
from mtl_search.errors import DataError, SpecError
from mtl_search.experiment import resolved_spec
from mtl_search.spec_file import load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "census_mmoe.yaml"
COLLEGE = {  # an associate degree or higher: the paper's "at least college" (docs/reproductions.md)
    "Associates degree-occup /vocational", "Associates degree-academic program", "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)", "Prof school degree (MD DDS DVM LLB JD)", "Doctorate degree(PhD EdD)",
}


# --------------------------------------------------------------------------- the spec


def test_mmoe_spec_is_the_papers_setup():
    spec = load_spec(SPEC)
    tasks = spec.data.tasks
    assert tasks is not None and set(tasks) == {"income", "college", "never_married"}
    assert (tasks["income"].column, tasks["income"].type, tasks["income"].positive) == ("income_gt_50k", "binary",
                                                                                         None)
    assert (tasks["never_married"].column, tasks["never_married"].positive) == ("marital_stat", ["Never married"])
    assert tasks["college"].column == "education" and set(tasks["college"].positive or []) == COLLEGE
    # The original files: train trains; test is split 1:1 into validation and test.
    split = spec.data.split
    assert (split.column, split.valid_from, split.valid) == ("original_split", "test", 0.5)
    # Shared-bottom: every hidden layer shared, per-task towers; nothing searched.
    domains = spec.space.domains()
    assert all(domain.is_constant for domain in domains.values())
    assert domains["sharing_depth"].values == domains["depth"].values
    assert domains["head_sizes"].values[0] != ""
    assert spec.grouping.max_group_size == 2 and spec.search.num_samples == "groups"
    assert spec.confirm is not None and spec.confirm.seeds >= 5 and spec.confirm.top_k >= 4
    assert Path(spec.data.source) == ROOT / "data" / "census_income_full.csv.gz"


def test_mmoe_tasks_on_the_embedded_sample():
    """The spec's labels, derived on the embedded sample (which has no original_split column)."""
    spec = load_spec(SPEC, ["data.source=builtin:census_income", "data.split={valid: 0.15, test: 0.15}"])
    data = prepare(spec)
    frame = pd.read_csv(ROOT / "mtl_search" / "datasets" / "census_income.csv.gz")
    # The label columns are no inputs: education and marital status as in the paper, and income.
    assert not {"education", "marital_stat", "income_gt_50k", "instance_weight"} & set(data.input_columns)
    assert data.tasks["never_married"].positive == ("Never married",)
    expected = {
        "income": frame["income_gt_50k"].to_numpy(),
        "never_married": (frame["marital_stat"] == "Never married").to_numpy(),
        "college": frame["education"].isin(COLLEGE).to_numpy(),
    }
    for split in SPLITS:
        rows = data.rows[split]
        for task, labels in expected.items():
            assert data.splits[split].mask[task].all()
            np.testing.assert_array_equal(data.splits[split].y[task], labels[rows].astype(np.float32))
    # A few rows by hand, so the test does not only restate the code.
    sample = frame.head(200)
    some_college = sample.index[sample["education"] == "Some college but no degree"][0]
    bachelor = sample.index[sample["education"] == "Bachelors degree(BA AB BS)"][0]
    assert not expected["college"][some_college] and expected["college"][bachelor]
    widowed = sample.index[sample["marital_stat"] == "Widowed"][0]
    assert not expected["never_married"][widowed]
    assert 0.15 < expected["college"].mean() < 0.25 and 0.35 < expected["never_married"].mean() < 0.5


def test_resolved_spec_keeps_derived_tasks_and_the_split_column(tmp_path: Path):
    path = _partitioned_table(tmp_path)
    spec = spec_from_dict(_spec(path, split={"column": "part", "valid_from": "test", "valid": 0.5}))
    resolved = resolved_spec(spec, prepare(spec))
    again = spec_from_dict(yaml.safe_load(resolved.to_yaml()))
    assert again.data.tasks is not None and again.data.tasks["single"].positive == ["never"]
    assert again.data.split.column == "part" and again.data.split.valid_from == "test"


# --------------------------------------------------------------------------- positive: binary from many values


def _table(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "x": rng.normal(size=rows),
        "region": rng.choice(["north", "south"], rows),
        "marital": rng.choice(["never", "married", "divorced", "widowed"], rows),
        "grade": rng.integers(1, 6, rows),
    })


def _partitioned_table(tmp_path: Path, rows: int = 300) -> Path:
    frame = _table(rows)
    frame["part"] = np.where(np.arange(rows) < 200, "train", "test")
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def _spec(path: Path, **data) -> dict:
    tasks = {"single": {"column": "marital", "type": "binary", "positive": ["never"]},
             "high": {"column": "grade", "type": "binary", "positive": [4, 5]}}
    return {"name": "t", "data": {"source": str(path), "tasks": tasks, **data}}


def test_positive_derives_a_binary_task_from_text_and_numbers(tmp_path: Path):
    frame = _table()
    frame.loc[:9, "marital"] = None  # missing stays missing: masked out of the task
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    data = prepare(spec_from_dict(_spec(path)))
    assert data.tasks["single"].classes == ("0", "1") and data.tasks["high"].positive == ("4", "5")
    labelled = sum(int(data.splits[s].mask["single"].sum()) for s in SPLITS)
    positives = sum(float(data.splits[s].y["single"][data.splits[s].mask["single"]].sum()) for s in SPLITS)
    assert labelled == 290 and positives == (frame["marital"] == "never").sum()
    high = sum(float(data.splits[s].y["high"].sum()) for s in SPLITS)
    assert high == frame["grade"].isin([4, 5]).sum()
    assert "marital" not in data.input_columns and "grade" not in data.input_columns


def test_positive_names_a_typo_and_suggests(tmp_path: Path):
    path = tmp_path / "t.csv"
    _table().to_csv(path, index=False)
    raw = _spec(path)
    raw["data"]["tasks"]["single"]["positive"] = ["nevr"]
    with pytest.raises(DataError, match=r"data.tasks.single.positive.*'nevr' \(did you mean 'never'\?\) does not"):
        prepare(spec_from_dict(raw))
    raw["data"]["tasks"]["single"]["positive"] = ["never"]
    raw["data"]["tasks"]["high"]["positive"] = ["top"]
    with pytest.raises(DataError, match=r"data.tasks.high.positive.*holds numbers"):
        prepare(spec_from_dict(raw))


@pytest.mark.parametrize(("task", "words"), [
    ({"column": "marital", "type": "multiclass", "positive": ["never"]}, "use type binary"),
    ({"column": "marital", "type": "binary", "positive": []}, "at least one value"),
    ({"column": "marital", "type": "binary", "positive": ["never", "never"]}, "twice"),
])
def test_positive_spec_errors(task: dict, words: str):
    with pytest.raises(SpecError, match=rf"data.tasks.single: .*{words}"):
        spec_from_dict({"name": "t", "data": {"source": "x.csv", "tasks": {"single": task}}})


# --------------------------------------------------------------------------- split.column


def test_split_follows_a_column_and_draws_validation_from_test(tmp_path: Path):
    path = _partitioned_table(tmp_path)
    spec = spec_from_dict(_spec(path, split={"column": "part", "valid_from": "test", "valid": 0.5}))
    data = prepare(spec)
    np.testing.assert_array_equal(data.rows["train"], np.arange(200))
    assert len(data.rows["valid"]) == len(data.rows["test"]) == 50
    assert set(data.rows["valid"]) | set(data.rows["test"]) == set(range(200, 300))
    assert "part" not in data.input_columns
    again = prepare(spec)
    np.testing.assert_array_equal(data.rows["valid"], again.rows["valid"])
    # valid_from defaults to train.
    data = prepare(spec_from_dict(_spec(path, split={"column": "part", "valid": 0.25})))
    assert (len(data.rows["train"]), len(data.rows["valid"]), len(data.rows["test"])) == (150, 50, 100)


def test_split_column_errors(tmp_path: Path):
    frame = _table()
    frame["part"] = np.resize(["train", "valid", "test"], len(frame))
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    data = prepare(spec_from_dict(_spec(path, split={"column": "part"})))
    assert [len(data.rows[s]) for s in SPLITS] == [100, 100, 100]
    with pytest.raises(DataError, match="already names validation rows"):
        prepare(spec_from_dict(_spec(path, split={"column": "part", "valid_from": "train"})))
    with pytest.raises(DataError, match=r"data.split.column: column 'prt'|data.split.column: column\(s\) 'prt'"):
        prepare(spec_from_dict(_spec(path, split={"column": "prt"})))
    frame.loc[3, "part"] = "holdout"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"must hold train, valid or test.*'holdout'"):
        prepare(spec_from_dict(_spec(path, split={"column": "part"})))
    with pytest.raises(DataError, match="is a target column"):
        prepare(spec_from_dict(_spec(path, split={"column": "marital"})))
    with pytest.raises(SpecError, match="valid_from.*set split.column"):
        spec_from_dict(_spec(path, split={"valid_from": "test"}))


# --------------------------------------------------------------------------- the build script's options


def test_build_script_keeps_leaks_only_when_asked():
    module_spec = importlib.util.spec_from_file_location("build_census_sample",
                                                         ROOT / "scripts" / "build_census_sample.py")
    assert module_spec is not None and module_spec.loader is not None
    build = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(build)
    raw = pd.DataFrame([["x"] * len(build.COLUMNS)], columns=build.COLUMNS)
    raw["income"] = "50000+."
    assert not set(build.LEAKS) & set(build.clean(raw.copy()).columns)
    kept = build.clean(raw.copy(), keep_leaks=True)
    assert set(build.LEAKS) <= set(kept.columns) and kept["income_gt_50k"].tolist() == [1]
