"""Built-in tables: the embedded Census-Income sample and the planted-cluster generator."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_search.datasets import BUILTINS, load_builtin
from mtl_search.datasets.planted import TYPES, generate, planted_grouping, task_names
from mtl_search.errors import DataError


def test_census_sample_has_its_documented_tasks():
    table = load_builtin("census_income", {})
    assert len(table.frame) == 20_000
    assert set(table.tasks) == {"income", "weeks", "worker", "employment", "marital", "union"}
    for column, _ in table.tasks.values():
        assert column in table.frame.columns
    assert table.frame["income_gt_50k"].isin([0, 1]).all()
    # Union membership is only asked of wage earners: the rest are unlabelled, not a class.
    assert 0.8 < table.frame["member_of_a_labor_union"].isna().mean() < 0.95
    assert set(table.frame["member_of_a_labor_union"].dropna()) == {"Yes", "No"}
    leaks = {"detailed_household_and_family_stat", "tax_filer_stat", "major_occupation_code", "wage_per_hour"}
    assert not leaks & set(table.frame.columns)


def test_planted_is_deterministic_and_mixed():
    first = generate(seed=3, rows=200)
    second = generate(seed=3, rows=200)
    assert first.frame.equals(second.frame)
    assert not first.frame.equals(generate(seed=4, rows=200).frame)
    types = {kind for _, kind in first.tasks.values()}
    assert types == {"regression", "binary", "multiclass"}
    assert task_names(2, 2) == [["a0", "a1"], ["b0", "b1"]]
    assert planted_grouping(2, 2) == "a0+a1|b0+b1"


def test_planted_clusters_are_correlated_inside_and_independent_across():
    table = generate(rows=20_000, clusters=2, tasks_per_cluster=2, noise=0.1, missing=0.0, features=16,
                     latent_dim=4)
    frame = table.frame
    inside = np.corrcoef(frame["a0"], frame["b1"])[0, 1]
    # a0 and b1 are both regression, in different clusters: independent latents.
    assert abs(inside) < 0.1
    same = generate(rows=20_000, clusters=1, tasks_per_cluster=4, noise=0.1, missing=0.0, features=16,
                    latent_dim=4).frame
    assert np.corrcoef(same["a0"], same["a3"])[0, 1] > 0.9


def test_planted_clusters_of_mixed_sizes_reach_thirty_tasks():
    sizes = [3, 3, 1]
    table = generate(sizes=sizes, rows=300, seed=1)
    assert task_names(sizes=sizes) == [["a0", "a1", "a2"], ["b0", "b1", "b2"], ["c0"]]
    assert planted_grouping(sizes=sizes) == "a0+a1+a2|b0+b1+b2|c0"
    kinds = {name: kind for name, (_, kind) in table.tasks.items()}
    for cluster in ("a", "b"):  # a cluster of three holds one task of each type
        assert sorted(kind for name, kind in kinds.items() if name[0] == cluster) == sorted(TYPES)
    assert "3+3+1" in table.description
    many = generate(sizes=[5, 4, 4, 3, 3, 3, 3, 2, 2, 1], rows=500, missing=0.3, seed=2)
    assert len(many.tasks) == 30 and 0.2 < many.frame["j0"].isna().mean() < 0.4
    # Enough features for ten independent latents: twice their units.
    assert sum(c.startswith("x") for c in many.frame) == max(48, 2 * 10 * 6)
    with pytest.raises(ValueError, match="sizes must be a list of positive integers"):
        generate(sizes=[3, 0])


def test_planted_missing_labels():
    frame = generate(rows=2000, missing=0.5).frame
    assert 0.4 < frame["a0"].isna().mean() < 0.6
    assert frame[[c for c in frame if c.startswith("x")]].notna().all().all()


@pytest.mark.parametrize(("params", "word"), [({"clusters": 0}, "clusters"), ({"missing": 1.0}, "missing"),
                                              ({"rows": -5}, "rows"), ({"correlation": 2}, "correlation")])
def test_bad_generator_parameters(params: dict, word: str):
    with pytest.raises(DataError, match=word):
        load_builtin("planted", params)


def test_unknown_builtin_and_parameter():
    with pytest.raises(DataError, match="builtin:planted"):
        load_builtin("plantd", {})
    with pytest.raises(DataError, match=r"data.params.colour.*allowed: clusters"):
        load_builtin("planted", {"colour": 1})
    assert set(BUILTINS) == {"census_income", "nhefs", "planted"}


def test_the_many_target_census_spec_validates_with_twelve_tasks(capsys):
    from pathlib import Path

    from mtl_search.cli import main

    spec = Path(__file__).resolve().parent.parent / "search_spaces" / "census_many.yaml"
    assert main(["validate", str(spec)]) == 0
    out = capsys.readouterr().out
    assert out.count(" column ") == 12 and "candidate groups (estimate)" in out and "(at most 30 groups)" in out
