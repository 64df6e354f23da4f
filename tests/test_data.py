"""Reading tables, checking columns, splitting, encoding and label masks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtl_search.config import NUMERIC_ENCODINGS
from mtl_search.data import SPLITS, prepare, raw_features
from mtl_search.errors import DataError, SpecError
from mtl_search.spec_file import spec_from_dict

TASKS = {"price": {"column": "price", "type": "regression"},
         "sold": {"column": "sold", "type": "binary"},
         "colour": {"column": "colour", "type": "multiclass"}}


def make_table(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "size": rng.normal(50, 10, rows),
        "region": rng.choice(["north", "south", "east"], rows),
        "age": rng.integers(0, 30, rows).astype(float),
    })
    frame["price"] = 3 * frame["size"] + rng.normal(0, 5, rows)
    frame["sold"] = np.where(rng.random(rows) < 0.4, "yes", "no")
    frame["colour"] = rng.choice(["red", "green", "blue"], rows)
    return frame


def spec_for(path: Path, encoding: object = None, **data) -> object:
    space = {} if encoding is None else {"numeric_encoding": encoding}
    return spec_from_dict({"name": "t", "data": {"source": str(path), "tasks": TASKS, **data}, "space": space})


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_reads_every_supported_format(tmp_path: Path, suffix: str):
    path = tmp_path / f"table{suffix}"
    frame = make_table()
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    data = prepare(spec_for(path))
    assert sum(data.splits[s].rows for s in SPLITS) == 200
    assert data.input_columns == ["size", "region", "age"]
    assert data.tasks["sold"].classes == ("no", "yes")
    assert data.tasks["colour"].outputs == 3
    assert data.splits["train"].x.dtype == np.float32


def test_split_fractions_and_seed(tmp_path: Path):
    path = tmp_path / "t.csv"
    make_table(rows=1000).to_csv(path, index=False)
    data = prepare(spec_for(path, split={"valid": 0.2, "test": 0.1}))
    assert (data.splits["train"].rows, data.splits["valid"].rows, data.splits["test"].rows) == (700, 200, 100)
    again = prepare(spec_for(path, split={"valid": 0.2, "test": 0.1}))
    assert np.array_equal(data.splits["valid"].x, again.splits["valid"].x)


def test_preprocessing_and_target_scaling_are_fitted_on_train_only(tmp_path: Path):
    path = tmp_path / "t.csv"
    frame = make_table(rows=1000)
    frame.to_csv(path, index=False)
    data = prepare(spec_for(path, encoding="standard"))
    train = data.splits["train"]
    size = data.feature_names.index("size")
    assert train.x[:, size].mean() == pytest.approx(0.0, abs=1e-5)
    assert train.x[:, size].std() == pytest.approx(1.0, abs=1e-3)
    price = data.tasks["price"]
    assert train.y["price"].mean() == pytest.approx(0.0, abs=1e-5)
    assert data.splits["valid"].y["price"].mean() != pytest.approx(0.0, abs=1e-6)
    # Standardised against training statistics: undoing it gives the raw prices back.
    assert price.std == pytest.approx(np.std(train.y["price"] * price.std + price.mean), rel=1e-4)


def test_missing_labels_are_masked_per_task_not_dropped(tmp_path: Path):
    path = tmp_path / "t.csv"
    frame = make_table(rows=400)
    frame.loc[::4, "price"] = np.nan
    frame.loc[1::5, "colour"] = None
    frame.to_csv(path, index=False)
    data = prepare(spec_for(path))
    rows = sum(data.splits[s].rows for s in SPLITS)
    assert rows == 400
    labelled = {t: sum(int(data.splits[s].mask[t].sum()) for s in SPLITS) for t in TASKS}
    assert labelled == {"price": 300, "sold": 400, "colour": 320}
    # Masked rows hold a harmless filler, never NaN, so a masked loss stays finite.
    for split in SPLITS:
        assert np.isfinite(data.splits[split].y["price"]).all()


def test_trivial_loss_is_the_training_predictor_on_each_split(tmp_path: Path):
    path = tmp_path / "t.csv"
    make_table(rows=1000).to_csv(path, index=False)
    data = prepare(spec_for(path))
    valid = data.splits["valid"]
    assert valid.trivial_loss["price"] == pytest.approx(np.mean(valid.y["price"] ** 2), rel=1e-5)
    assert data.splits["train"].trivial_loss["price"] == pytest.approx(1.0, rel=1e-5)


def test_feature_missing_values_are_imputed(tmp_path: Path):
    path = tmp_path / "t.csv"
    frame = make_table()
    frame.loc[::3, "size"] = np.nan
    frame.loc[::7, "region"] = None
    frame.to_csv(path, index=False)
    for encoding in NUMERIC_ENCODINGS:
        data = prepare(spec_for(path, encoding=encoding))
        assert all(np.isfinite(data.splits[s].x).all() for s in SPLITS)
        indicator = data.splits["train"].x[:, data.feature_names.index("missingindicator_size")]
        assert set(np.unique(indicator)) == {0.0, 1.0}  # beside the encoding, not through it


def test_missing_column_names_the_column_the_file_and_close_matches(tmp_path: Path):
    path = tmp_path / "t.csv"
    make_table().to_csv(path, index=False)
    spec = spec_from_dict({"name": "t", "data": {"source": str(path), "tasks": {
        "price": {"column": "prices", "type": "regression"}}}})
    with pytest.raises(DataError) as info:
        prepare(spec)
    message = str(info.value)
    assert "'prices'" in message and str(path) in message and "price" in message
    assert "data.tasks.price.column" in message


@pytest.mark.parametrize(("change", "words"), [
    (lambda f: f.assign(sold=np.where(np.arange(len(f)) % 3 == 0, "maybe", f["sold"])), ["binary", "multiclass"]),
    (lambda f: f.assign(colour="red"), ["two classes"]),
    (lambda f: f.assign(price="cheap"), ["regression", "numeric", "'cheap'"]),
    (lambda f: f.assign(price=np.nan), ["price", "missing"]),
    (lambda f: f.assign(size=np.where(np.arange(len(f)) == 5, np.inf, f["size"])), ["size", "infinite"]),
    (lambda f: f.head(12), ["too few rows"]),
])
def test_unusable_data_is_a_clear_error(tmp_path: Path, change, words: list[str]):
    path = tmp_path / "t.csv"
    change(make_table()).to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        prepare(spec_for(path))
    for word in words:
        assert word in str(info.value)


def test_target_used_as_feature_and_unknown_drop(tmp_path: Path):
    path = tmp_path / "t.csv"
    make_table().to_csv(path, index=False)
    with pytest.raises(DataError, match="target"):
        prepare(spec_for(path, features=["size", "price"]))
    with pytest.raises(DataError, match="data.drop"):
        prepare(spec_for(path, drop=["sizee"]))


def test_missing_and_unsupported_files(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(spec_for(tmp_path / "nope.csv"))
    other = tmp_path / "t.xlsx"
    other.write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        prepare(spec_for(other))


def test_builtin_census_uses_its_documented_tasks():
    data = prepare(spec_from_dict({"name": "t", "data": {"source": "builtin:census_income"}}))
    assert list(data.tasks) == ["income", "weeks", "worker", "employment", "marital", "union"]
    assert "instance_weight" not in data.input_columns
    assert not {t.column for t in data.tasks.values()} & set(data.input_columns)
    union = data.splits["train"].mask["union"].mean()
    assert 0.05 < union < 0.2


def test_raw_features_split_like_the_prepared_arrays():
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:planted", "params": {"rows": 300}}})
    data = prepare(spec)
    features = raw_features(spec.data, data)
    assert {split: len(frame) for split, frame in features.items()} == {s: data.splits[s].rows for s in data.splits}
    assert list(features["train"].columns) == data.input_columns


def test_raw_census_text_columns_become_categories_from_training():
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:census_income"}})
    data = prepare(spec)
    features = raw_features(spec.data, data)
    assert str(features["train"]["education"].dtype) == "category"
    assert features["valid"]["education"].cat.categories.equals(features["train"]["education"].cat.categories)


@pytest.mark.parametrize("encoding", NUMERIC_ENCODINGS)
def test_every_numeric_encoding_is_fitted_on_training_rows_only(tmp_path: Path, encoding: str):
    frame = make_table(rows=600)
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    before = prepare(spec_for(path, encoding=encoding))
    held_out = np.setdiff1d(np.arange(len(frame)), before.rows["train"])
    frame.loc[held_out, ["size", "age"]] *= 1000.0  # only validation and test rows change
    frame.to_csv(path, index=False)
    after = prepare(spec_for(path, encoding=encoding))
    np.testing.assert_array_equal(after.splits["train"].x, before.splits["train"].x)
    assert not np.array_equal(after.splits["valid"].x, before.splits["valid"].x)


def test_quantile_encoding_spreads_a_skewed_column_like_a_normal(tmp_path: Path):
    frame = make_table(rows=1000)
    frame["size"] = np.random.default_rng(1).lognormal(0.0, 2.0, len(frame))  # heavy right tail
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    column = prepare(spec_for(path, encoding="quantile")).splits["train"].x[:, 0]
    assert abs(float(np.median(column))) < 0.05 and 0.9 < float(np.std(column)) < 1.1
    standard = prepare(spec_for(path)).splits["train"].x[:, 0]
    assert float(np.max(standard)) > 3 * float(np.max(column))  # the tail no longer dominates


def test_an_unknown_numeric_encoding_names_the_allowed_ones(tmp_path: Path):
    path = tmp_path / "t.csv"
    make_table().to_csv(path, index=False)
    with pytest.raises(SpecError, match=r"space\.numeric_encoding.*valid: standard, quantile, piecewise_linear, "
                                        "periodic"):
        spec_for(path, encoding="robust")
    with pytest.raises(SpecError, match=r"data\.numeric_encoding is now space\.numeric_encoding"):
        spec_for(path, numeric_encoding="quantile")


def test_a_searched_encoding_prepares_each_choice_once_and_shares_the_labels(tmp_path: Path):
    path = tmp_path / "t.csv"
    make_table(rows=300).to_csv(path, index=False)
    data = prepare(spec_for(path, encoding={"choice": ["standard", "periodic"]}))
    assert data.encoding == "standard" and list(data.alternatives) == ["periodic"]
    periodic = data.encoded("periodic")
    alone = prepare(spec_for(path, encoding="periodic"))
    assert periodic.feature_names == alone.feature_names and periodic.num_features > data.num_features
    for split in SPLITS:
        np.testing.assert_array_equal(periodic.splits[split].x, alone.splits[split].x)
        assert periodic.splits[split].y is data.splits[split].y  # labels are shared, not copied
    np.testing.assert_array_equal(periodic.encoded("standard").splits["train"].x, data.splits["train"].x)
    with pytest.raises(ValueError, match="'quantile' was not prepared; prepared: standard, periodic"):
        data.encoded("quantile")


def test_max_categories_caps_a_categorical_columns_one_hot_block(tmp_path: Path):
    frame = make_table(rows=600)
    frame["region"] = [f"r{i % 40}" for i in range(len(frame))]  # 40 categories of ~10 training rows
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    wide = prepare(spec_for(path))
    capped = prepare(spec_for(path, max_categories=5))
    assert sum(name.startswith("region_") for name in capped.feature_names) == 5
    assert sum(name.startswith("region_") for name in wide.feature_names) > 5
    folded = [note for note in capped.notes if note.startswith("feature column region:")]
    assert len(folded) == 1, capped.notes  # said once, in the summary a run prints
    assert re.search(r"40 categories; the 4 most frequent keep a column each, the other 36 \('r\d+', .*\) share "
                     r"one \(data.max_categories: 5; raise it", folded[0]), folded[0]
    assert not any("region" in note for note in wide.notes)  # rare categories sharing a column is no news


def test_periodic_encoding_is_the_value_and_its_sines_and_cosines():
    from mtl_search.encoding import Periodic

    x = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 2))
    encoder = Periodic(frequencies=3, sigma=0.5).fit(x)
    out = encoder.transform(x).reshape(50, 2, 7)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    np.testing.assert_allclose(out[:, :, 0], z)
    angles = 2 * np.pi * z[:, :, None] * encoder.frequencies_
    np.testing.assert_allclose(out[:, :, 1:4], np.sin(angles))
    np.testing.assert_allclose(out[:, :, 4:], np.cos(angles))
    assert len(encoder.get_feature_names_out(["a", "b"])) == 14


def test_piecewise_linear_encoding_follows_the_published_formula():
    from mtl_search.encoding import PiecewiseLinear

    train = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    encoder = PiecewiseLinear(bins=4).fit(train)  # edges 0, 1, 2, 3, 4
    encoded = encoder.transform(np.array([[2.5], [-1.0], [6.0], [0.0]]))
    np.testing.assert_allclose(encoded, [[1, 1, 0.5, 0], [-1, 0, 0, 0], [1, 1, 1, 3], [0, 0, 0, 0]])
    assert list(encoder.get_feature_names_out(["x"])) == ["x_bin0", "x_bin1", "x_bin2", "x_bin3"]
    constant = PiecewiseLinear().fit(np.ones((5, 1)))
    assert constant.transform(np.array([[7.0]])).tolist() == [[0.0]]


def test_a_target_with_more_classes_than_a_split_has_rows_is_split_without_stratifying(tmp_path: Path):
    frame = make_table(rows=200)
    frame["kind"] = [f"k{i % 60}" for i in range(len(frame))]  # 60 classes, 3-4 rows each; 30 validation rows
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    spec = spec_from_dict({"name": "t", "data": {"source": str(path), "tasks": {
        "kind": {"column": "kind", "type": "multiclass"}, "price": {"column": "price", "type": "regression"}}}})
    data = prepare(spec)  # scikit-learn's stratified split refuses 60 classes in 30 rows
    assert "split not stratified: task kind has 60 classes, more than the 30 rows of the smallest split" in data.notes
    assert sum(data.splits[s].rows for s in SPLITS) == 200
