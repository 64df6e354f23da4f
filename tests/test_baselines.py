"""Reference models scored exactly like the networks."""

from __future__ import annotations

import pytest

from mtl_search.baselines import BASELINES, GBDT, baseline_rows, make_baseline, raw_features
from mtl_search.config import spec_from_dict
from mtl_search.data import prepare

SPEC = {"name": "t", "data": {"source": "builtin:planted", "params": {"rows": 900, "features": 8, "latent_dim": 3,
                                                                        "missing": 0.2}}}


@pytest.fixture(scope="module")
def prepared():
    spec = spec_from_dict(SPEC)
    return spec, prepare(spec)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_reports_each_task_on_valid_and_test(prepared, name: str):
    spec, data = prepared
    metrics = make_baseline(name).evaluate(spec, data, seed=0)
    for split in ("valid", "test"):
        for task in data.tasks:
            assert 0 < metrics[f"{split}/{task}/nloss"] < 1.0, (split, task)  # learns more than the trivial predictor
        assert metrics[f"{split}/score"] == pytest.approx(
            sum(metrics[f"{split}/{t}/nloss"] for t in data.tasks) / len(data.tasks))
    assert {"test/a0/rmse", "test/a1/auc", "test/b0/accuracy"} <= set(metrics)


def test_gbdt_is_seeded(prepared):
    spec, data = prepared
    assert GBDT().evaluate(spec, data, seed=1) == GBDT().evaluate(spec, data, seed=1)
    assert list(baseline_rows(spec, data, ["gbdt"], seed=0)) == ["baseline:gbdt"]


def test_trees_see_raw_columns_split_like_the_networks(prepared):
    spec, data = prepared
    features = raw_features(spec, data)
    assert {split: len(frame) for split, frame in features.items()} == {s: data.splits[s].rows for s in data.splits}
    assert list(features["train"].columns) == data.input_columns


def test_census_text_columns_become_categories():
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:census_income"}})
    data = prepare(spec)
    features = raw_features(spec, data)
    assert str(features["train"]["education"].dtype) == "category"
    assert features["valid"]["education"].cat.categories.equals(features["train"]["education"].cat.categories)


def test_unknown_baseline_is_rejected_by_the_spec():
    from mtl_search.errors import SpecError

    with pytest.raises(SpecError, match=r"baselines.*'xgb'.*gbdt"):
        spec_from_dict({**SPEC, "baselines": ["xgb"]})
    assert spec_from_dict({**SPEC, "baselines": []}).baselines == []
