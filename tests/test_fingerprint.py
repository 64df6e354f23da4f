"""What a run started with: fingerprints of spec and data, and the differences a resume refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mtl_search.fingerprint import differences, file_sha256, fingerprint
from mtl_search.spec_file import spec_from_dict


def spec_for(path: Path, **space: object):
    return spec_from_dict({"name": "f", "output": "/tmp/out", "data": {
        "source": str(path), "tasks": {"y": {"column": "y", "type": "regression"}}},
        "space": {"epochs": 2, **space}})


def table(path: Path, rows: int = 5) -> Path:
    pd.DataFrame({"x": range(rows), "y": range(rows)}).to_csv(path, index=False)
    return path


def test_the_same_spec_and_data_have_no_differences(tmp_path: Path):
    data = table(tmp_path / "t.csv")
    first = fingerprint(spec_for(data), ["x", "y"])
    assert first["data"]["sha256"] == file_sha256(data) and first["data"]["bytes"] == data.stat().st_size
    os.utime(data, ns=(1, 1))  # touched, not changed
    assert differences(first, fingerprint(spec_for(data), ["x", "y"])) == []


def test_where_the_results_go_may_change(tmp_path: Path):
    data = table(tmp_path / "t.csv")
    moved = spec_for(data).model_copy(update={"output": "/elsewhere", "name": "g"})
    assert differences(fingerprint(spec_for(data), ["x", "y"]), fingerprint(moved, ["x", "y"])) == []


def test_spec_changes_are_listed_by_dotted_key(tmp_path: Path):
    data = table(tmp_path / "t.csv")
    changed = differences(fingerprint(spec_for(data), ["x", "y"]), fingerprint(spec_for(data, epochs=4), ["x", "y"]))
    assert changed == ["spec space.epochs: 2 -> 4"]


def test_data_changes_are_named(tmp_path: Path):
    data = table(tmp_path / "t.csv")
    before = fingerprint(spec_for(data), ["x", "y"])
    table(data, rows=6)
    assert any(line.startswith("data bytes:") for line in differences(before, fingerprint(spec_for(data), ["x", "y"])))
    same_size = data.read_text().replace("5,5", "5,4")
    data.write_text(same_size)
    changed = differences(before | {"data": before["data"] | {"bytes": data.stat().st_size}},
                          fingerprint(spec_for(data), ["x", "y"]))
    assert changed == ["data contents: the file's bytes changed (SHA-256 differs), its size did not"]
    columns = differences(before, before | {"data": before["data"] | {"columns": ["x", "y", "z"]}})
    assert columns == ["data columns: 1 added (z), 0 removed ()"]


def test_a_builtin_source_is_fixed_by_its_name_and_params():
    spec = spec_from_dict({"name": "b", "data": {"source": "builtin:planted", "params": {"rows": 100}}})
    recorded = fingerprint(spec, ["a0"])
    assert "sha256" not in recorded["data"]
    other = spec_from_dict({"name": "b", "data": {"source": "builtin:planted", "params": {"rows": 200}}})
    assert differences(recorded, fingerprint(other, ["a0"])) == ["spec data.params.rows: 100 -> 200"]


def test_a_setting_a_later_version_added_is_not_a_change(tmp_path: Path):
    data = table(tmp_path / "t.csv")
    recorded = fingerprint(spec_for(data), ["x", "y"])
    del recorded["spec"]["space"]["epochs"]  # as if this version had no such setting
    assert differences(recorded, fingerprint(spec_for(data), ["x", "y"])) == []


def test_a_mapping_that_was_empty_shows_whole():
    recorded = {"spec": {"data": {"params": {}}}, "data": {}}
    now = {"spec": {"data": {"params": {"rows": 5}}}, "data": {}}
    assert differences(recorded, now) == ['spec data.params: {} -> {"rows": 5}']
