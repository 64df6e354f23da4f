"""The spec schema: defaults, overrides, and errors that name the key and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtl_search.config import PACK_SAMPLES
from mtl_search.domain import Domain, parse_head_sizes
from mtl_search.errors import SpecError
from mtl_search.spec_file import apply_overrides, load_spec, spec_from_dict

from .conftest import planted_spec_dict

MINIMAL = {"name": "t", "data": {"source": "builtin:planted"}}


def with_change(path: str, value) -> dict:
    """MINIMAL with one dotted key set (value None deletes it)."""
    spec = yaml.safe_load(yaml.safe_dump(MINIMAL))
    return apply_overrides(spec, [f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}"])


def test_defaults_live_in_code():
    spec = spec_from_dict(MINIMAL)
    assert spec.seed == 0
    assert spec.grouping.candidates == "exhaustive"
    assert spec.search.trial_executor == "train"
    assert spec.search.scheduler.type == "asha"
    assert spec.space.depth == Domain("int", (1, 3))
    assert spec.space.max_epochs == 20
    assert spec.resources.gpus_per_worker == "auto"


def test_issue_example_spec_is_valid(tmp_path: Path):
    text = """
name: census-demo
seed: 0
data:
  source: builtin:census_income
  features: auto
  drop: [instance_weight]
  tasks:
    income:  {column: income_gt_50k, type: binary}
    weeks:   {column: weeks_worked_in_year, type: regression}
    marital: {column: marital_stat, type: multiclass}
  split: {valid: 0.15, test: 0.15}
grouping:
  candidates: exhaustive
space:
  depth: {int: [1, 3]}
  sharing_depth: {int: [0, 3]}
  width: {choice: [64, 128, 256]}
  head_sizes: {choice: ["32", "64,32"]}
  weighting: {choice: [equal, uncertainty, dwa]}
  lr: {float: [1.0e-4, 1.0e-2], log: true}
  batch_size: 512
  epochs: 20
search:
  num_samples: 24
  max_concurrent_trials: 2
  scheduler: {type: asha, grace_period: 2}
resources: {workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: auto}
output: results
"""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    spec = load_spec(path)
    assert spec.space.lr == Domain("float", (1e-4, 1e-2), log=True)
    assert spec.space.head_sizes == Domain("choice", ("32", "64,32"))
    assert spec.data.tasks["weeks"].type == "regression"


def test_resolved_yaml_round_trips():
    spec = spec_from_dict(with_change("space.width", {"choice": [16, 32]}))
    again = spec_from_dict(yaml.safe_load(spec.to_yaml()))
    assert again == spec


def test_set_overrides_nested_keys_and_parses_yaml():
    spec = spec_from_dict(apply_overrides(MINIMAL, ["search.num_samples=4", "space.width={choice: [8, 16]}",
                                                    "resources.gpus_per_worker=0.25"]))
    assert spec.search.num_samples == 4
    assert spec.space.width == Domain("choice", (8, 16))
    assert spec.resources.gpus_per_worker == 0.25


def test_relative_data_path_is_resolved_against_the_spec_file(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "data": {"source": "table.csv", "tasks": {
        "y": {"column": "y", "type": "regression"}}}}))
    assert load_spec(path).data.source == str((tmp_path / "sub" / "table.csv").resolve())


def test_head_sizes_parse():
    assert parse_head_sizes("64, 32") == (64, 32)
    assert parse_head_sizes("") == ()
    assert parse_head_sizes(16) == (16,)
    with pytest.raises(ValueError, match="positive integers"):
        parse_head_sizes("a,b")


BAD_SPECS = [
    # (dotted key, value, words the message must contain)
    ("datta", {"source": "x"}, ["datta", "unknown key", "did you mean 'data'"]),
    ("search.num_sample", 4, ["search.num_sample", "num_samples"]),
    ("space.widht", 64, ["space.widht", "width"]),
    ("data.tasks", {"y": {"column": "y", "type": "regresion"}}, ["data.tasks.y.type", "regression", "multiclass"]),
    ("data.tasks", {"y": {"colum": "y", "type": "binary"}}, ["data.tasks.y.colum", "column"]),
    ("data.split.valid", 1.5, ["data.split.valid", "less than 1"]),
    ("space.weighting", {"choice": ["equal", "magic"]}, ["space.weighting", "'magic'", "dwa", "uncertainty"]),
    ("space.depth", {"int": [3, 1]}, ["space.depth", "lo > hi"]),
    ("space.width", {"choice": []}, ["space.width", "non-empty"]),
    ("space.lr", {"float": [0, 0.1], "log": True}, ["space.lr", "lo > 0"]),
    ("space.epochs", {"int": [1, 5]}, ["space.epochs", "constant"]),
    ("space.sharing_depth", {"int": [4, 5]}, ["sharing_depth", "depth"]),
    ("space.head_sizes", "64,x", ["space.head_sizes", "comma"]),
    ("search.scheduler.type", "hyperband", ["search.scheduler.type", "asha", "fifo"]),
    ("search.trial_executor", "local", ["search.trial_executor", "train", "inline"]),
    ("search.num_samples", 0, ["search.num_samples", ">= 1"]),
    ("grouping.candidates", "clever", ["grouping.candidates", "exhaustive"]),
    ("resources.gpus_per_worker", -1, ["resources.gpus_per_worker", ">= 0"]),
    ("resources.cpus_per_worker", 0, ["resources.cpus_per_worker", "greater than 0"]),
    ("name", "my results/x", ["name", "directory name"]),
    ("data.features", [], ["data.features", "non-empty list"]),
    ("data.tasks", {"a+b": {"column": "y", "type": "binary"}}, ["data.tasks", "'a+b'", "letter"]),
    ("data.tasks", {"a": {"column": "y", "type": "binary"}, "b": {"column": "y", "type": "binary"}},
     ["data.tasks", "column(s) y"]),
]


@pytest.mark.parametrize(("path", "value", "words"), BAD_SPECS, ids=[case[0] for case in BAD_SPECS])
def test_bad_spec_names_the_key_and_what_is_allowed(path: str, value, words: list[str]):
    with pytest.raises(SpecError) as info:
        spec_from_dict(with_change(path, value))
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_inline_executor_needs_one_worker():
    raw = apply_overrides(MINIMAL, ["search.trial_executor=inline", "resources.workers_per_trial=2"])
    with pytest.raises(SpecError, match=r"workers_per_trial must be 1"):
        spec_from_dict(raw)


def test_missing_required_key():
    with pytest.raises(SpecError, match=r"data: required key is missing"):
        spec_from_dict({"name": "t"})


def test_unreadable_and_missing_spec_files(tmp_path: Path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(listed)


def test_bad_override_syntax():
    with pytest.raises(SpecError, match="dotted.key=value"):
        apply_overrides(MINIMAL, ["search.num_samples"])
    with pytest.raises(SpecError, match="holds a value"):
        apply_overrides(MINIMAL, ["name.x=1"])


def test_num_samples_of_group_trials_must_cover_every_group():
    def spec(**search):
        return spec_from_dict({"name": "t", "data": {"source": "builtin:planted"},
                               "search": {"unit": "group", **search}})

    with pytest.raises(SpecError, match=r"num_samples=2.*3 candidate groups"):
        spec(num_samples=2).num_samples(["a", "b", "a+b"])
    assert spec().num_samples(["a", "b", "a+b"]) == 6
    assert spec(num_samples="groups").num_samples(["a", "b", "a+b"]) == 3


def test_num_samples_of_pack_trials_counts_configurations():
    def spec(**search):
        return spec_from_dict({"name": "t", "data": {"source": "builtin:planted"}, "search": search})

    assert spec().search.unit == "pack" and spec().num_samples(["a", "b", "a+b"]) == PACK_SAMPLES
    assert spec(num_samples=2).num_samples(["a", "b", "a+b"]) == 2  # every trial trains every group
    with pytest.raises(SpecError, match=r"'groups' \(one trial per group\) is for search.unit 'group'"):
        spec(num_samples="groups").num_samples(["a"])


def test_space_defaults_are_each_domains_default():
    spec = spec_from_dict({**MINIMAL, "space": {"depth": {"int": [1, 3]}, "lr": {"float": [1e-4, 1e-2], "log": True},
                                                "width": {"choice": [32, 64]}}})
    defaults = spec.space.defaults()
    assert defaults["depth"] == 2 and defaults["width"] == 32 and defaults["lr"] == pytest.approx(1e-3)
    assert set(defaults) == set(spec.space.domains())


def spec(tmp_path: Path, **overrides):
    return spec_from_dict(planted_spec_dict(tmp_path, **overrides))


def test_config_refuses_cuda_graphs_on_without_a_gpu(tmp_path: Path):
    with pytest.raises(SpecError, match="gpus_per_worker is 0"):
        spec(tmp_path, **{"train.cuda_graphs": "on", "resources.gpus_per_worker": 0})
    with pytest.raises(SpecError, match="rlw"):
        spec(tmp_path, **{"train.cuda_graphs": True, "resources.gpus_per_worker": 1,  # YAML's bare `on`
                          "space.weighting": {"choice": ["equal", "rlw"]}})
    assert spec(tmp_path, **{"train.cuda_graphs": "on", "resources.gpus_per_worker": 0.5}).train.cuda_graphs == "on"
