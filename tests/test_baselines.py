"""Reference models scored exactly like the networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtl_search.baselines import BASELINES, GBDT, baseline_rows, check_baselines, make_baseline
from mtl_search.data import prepare, raw_features
from mtl_search.errors import SpecError, UserError
from mtl_search.spec_file import spec_from_dict

SPEC = {"name": "t", "data": {"source": "builtin:planted", "params": {"rows": 900, "features": 8, "latent_dim": 3,
                                                                        "missing": 0.2}}}


@pytest.fixture(scope="module")
def prepared():
    spec = spec_from_dict(SPEC)
    data = prepare(spec)
    return data, raw_features(spec.data, data)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_reports_each_task_on_valid_and_test(prepared, name: str):
    data, features = prepared
    metrics = make_baseline(name).evaluate(data, features, seed=0)
    for split in ("valid", "test"):
        for task in data.tasks:
            assert 0 < metrics[f"{split}/{task}/nloss"] < 1.0, (split, task)  # learns more than the trivial predictor
        assert metrics[f"{split}/score"] == pytest.approx(
            sum(metrics[f"{split}/{t}/nloss"] for t in data.tasks) / len(data.tasks))
    assert {"test/a0/rmse", "test/a1/auc", "test/b0/accuracy"} <= set(metrics)


def test_gbdt_is_seeded(prepared):
    data, features = prepared
    assert GBDT().evaluate(data, features, seed=1) == GBDT().evaluate(data, features, seed=1)
    assert list(baseline_rows(data, features, ["gbdt"], seed=0)) == ["baseline:gbdt"]


def test_unknown_baseline_is_rejected_by_the_spec():
    with pytest.raises(SpecError, match=r"baselines.*'xgb'.*gbdt"):
        spec_from_dict({**SPEC, "baselines": ["xgb"]})
    assert spec_from_dict({**SPEC, "baselines": []}).baselines == []


def many_class_data(tmp_path: Path, classes: int, rows: int) -> tuple:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=rows), "x2": rng.normal(size=rows),
                          "kind": [f"k{i % classes}" for i in range(rows)]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    spec = spec_from_dict({"name": "m", "data": {"source": str(tmp_path / "t.csv"), "tasks": {
        "kind": {"column": "kind", "type": "multiclass"}}}})
    data = prepare(spec)
    return data, raw_features(spec.data, data)


def test_gbdt_fits_a_task_with_classes_of_one_training_row(tmp_path: Path):
    data, features = many_class_data(tmp_path, classes=30, rows=60)  # ~1.4 training rows a class
    train = data.splits["train"]
    counts = np.bincount(train.y["kind"][train.mask["kind"]].astype(int))
    assert (counts[counts > 0] == 1).any()  # what scikit-learn's stratified early-stopping slice refuses
    metrics = GBDT().evaluate(data, features, seed=0)
    assert np.isfinite(metrics["valid/kind/nloss"]) and np.isfinite(metrics["test/kind/nloss"])


def test_gbdt_refuses_a_task_with_too_many_classes_before_training(tmp_path: Path):
    data, _ = many_class_data(tmp_path, classes=GBDT.max_classes + 50, rows=4 * (GBDT.max_classes + 50))
    with pytest.raises(UserError, match=rf"gbdt .* task\(s\) kind \(\d+ classes\) have more than "
                                        rf"{GBDT.max_classes}.*remove gbdt from baselines"):
        check_baselines(data, ["gbdt"])
    check_baselines(data, [])  # no baseline: nothing to refuse
