"""Reference models scored exactly like the networks."""

from __future__ import annotations

import pytest

from mtl_search.baselines import BASELINES, GBDT, baseline_rows, make_baseline
from mtl_search.data import prepare, raw_features
from mtl_search.errors import SpecError
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
