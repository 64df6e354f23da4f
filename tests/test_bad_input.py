"""Bad input through the real command line: exit code 2, no traceback, a message naming what to fix.

Each case starts from one small valid spec over a tiny CSV, breaks one thing, runs
``validate`` (or ``run``, for the result directory) and matches the message.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mtl_search.cli import EXIT_USER, main

ROWS = 60


def small_table() -> pd.DataFrame:
    """Numeric and text features plus a regression, a binary and a three-class target."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "x1": rng.normal(size=ROWS).round(3),
        "x2": rng.normal(size=ROWS).round(3),
        "colour": rng.choice(["red", "green", "blue"], size=ROWS),
        "price": rng.normal(100, 10, size=ROWS).round(2),
        "churn": np.tile(["yes", "no"], ROWS // 2),
        "segment": np.tile(["a", "b", "c"], ROWS // 3),
    })


def small_spec(results: Path) -> dict[str, Any]:
    return {
        "name": "small",
        "data": {"source": "table.csv", "tasks": {"price": {"column": "price", "type": "regression"},
                                                  "churn": {"column": "churn", "type": "binary"}}},
        "space": {"depth": 1, "sharing_depth": 1, "width": 8, "head_sizes": "", "weighting": "equal",
                  "lr": 0.01, "batch_size": 32, "epochs": 1},
        "search": {"num_samples": "auto", "max_concurrent_trials": 1, "trial_executor": "inline"},
        "baselines": [],
        "output": str(results),
    }


@dataclass
class Inputs:
    """What a case writes: the spec (dict, or raw YAML text), the table (frame, or raw bytes) and the arguments."""

    spec: dict[str, Any]
    table: pd.DataFrame
    spec_text: str | bytes | None = None
    data_bytes: bytes | None = None
    data_name: str = "table.csv"
    command: str = "validate"
    extra: list[str] = field(default_factory=list)


Change = Callable[[Inputs], None]


def _set(key: str, value: Any) -> Change:
    """Set a dotted key of the spec (creating mappings on the way)."""
    def change(inputs: Inputs) -> None:
        node = inputs.spec
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return change


def _rename(key: str, to: str) -> Change:
    """Misspell a dotted key, keeping its value."""
    def change(inputs: Inputs) -> None:
        node = inputs.spec
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[to] = node.pop(last)
    return change


def _column(name: str, values: Callable[[pd.Series], Any]) -> Change:
    def change(inputs: Inputs) -> None:
        inputs.table[name] = values(inputs.table[name])
    return change


def _with_text(where: int, text: Any) -> Callable[[pd.Series], pd.Series]:
    """A numeric column with ``text`` in rows ``where`` (an object column, as a CSV with typos reads)."""
    def edit(values: pd.Series) -> pd.Series:
        out = values.astype(object)
        out.iloc[where] = text
        return out
    return edit


def _all(*changes: Change) -> Change:
    def change(inputs: Inputs) -> None:
        for each in changes:
            each(inputs)
    return change


def _wide_target(classes: int) -> Change:
    """A multiclass target ``species`` with ``classes`` classes, two rows each (the table grows to hold them)."""
    def change(inputs: Inputs) -> None:
        rows = 2 * classes
        inputs.table = pd.concat([inputs.table] * (rows // len(inputs.table) + 1), ignore_index=True).iloc[:rows]
        inputs.table["species"] = [f"s{i % classes}" for i in range(rows)]
        inputs.spec["data"]["tasks"]["species"] = {"column": "species", "type": "multiclass"}
        inputs.spec["data"]["split"] = {"valid": 0.05, "test": 0.05}  # most classes seen in training
    return change


def _file(name: str, content: bytes | None = None) -> Change:
    """Point data.source at ``name``, written with ``content`` (the table in its format when None)."""
    def change(inputs: Inputs) -> None:
        inputs.spec["data"]["source"] = name
        inputs.data_name = name
        inputs.data_bytes = content
    return change


def _yaml_text(text: str | bytes) -> Change:
    def change(inputs: Inputs) -> None:
        inputs.spec_text = text
    return change


def _args(*extra: str, command: str = "validate") -> Change:
    def change(inputs: Inputs) -> None:
        inputs.command = command
        inputs.extra = list(extra)
    return change


DUPLICATE_TASKS = """\
name: small
data:
  source: table.csv
  tasks:
    price: {column: price, type: regression}
    price: {column: churn, type: binary}
space: {depth: 1, sharing_depth: 1, width: 8, weighting: equal, epochs: 1}
"""

SYNTAX_ERROR = """\
name: small
data:
  source: table.csv
  tasks: {price: {column: price, type: regression}
space: {depth: 1}
"""

# id -> (change, patterns every one of which must be found in the message)
CASES: dict[str, tuple[Change, list[str]]] = {
    "misspelt top-level key": (
        _rename("search", "serach"), [r"serach: unknown key", r"did you mean 'search'"]),
    "misspelt nested key": (
        _rename("space.width", "widht"), [r"space\.widht: unknown key", r"did you mean 'width'", r"sharing_depth"]),
    "wrong type": (
        _set("space.depth", "three"), [r"space\.depth", r"'three'", r"integer >= 1"]),
    "split fraction out of range": (
        _set("data.split.valid", 1.5), [r"data\.split\.valid", r"less than 1", r"1\.5"]),
    "negative learning rate": (
        _set("space.lr", -0.01), [r"space\.lr", r"-0\.01", r"> 0"]),
    "empty choice": (
        _set("space.width", {"choice": []}), [r"space\.width", r"non-empty list"]),
    "sharing_depth beyond every depth": (
        _all(_set("space.depth", {"int": [1, 2]}), _set("space.sharing_depth", {"int": [3, 4]})),
        [r"space\.sharing_depth is at least 3", r"space\.depth is at most 2"]),
    "unknown weighting": (
        _set("space.weighting", {"choice": ["equal", "uncertanty"]}),
        [r"space\.weighting", r"'uncertanty'", r"valid: .*dwa.*equal.*uncertainty"]),
    "weighting choice that is a list": (
        _set("space.weighting", {"choice": ["equal", ["dwa"]]}), [r"space\.weighting", r"\['dwa'\]", r"valid: "]),
    "unknown grouping strategy": (
        _set("grouping.candidates", "exhaustiv"), [r"grouping\.candidates", r"'exhaustiv'", r"valid: .*exhaustive"]),
    "unknown builtin source": (
        _set("data.source", "builtin:plantd"),
        [r"data\.source", r"builtin:plantd", r"did you mean 'builtin:planted'"]),
    "missing data file": (
        _set("data.source", "nowhere.csv"), [r"nowhere\.csv", r"does not exist", r"data\.source"]),
    "unsupported data format": (
        _file("table.xlsx", b"PK\x03\x04"), [r"table\.xlsx", r"unsupported format", r"\.parquet"]),
    "corrupt parquet": (
        _file("table.parquet", b"\x00garbage\xff" * 40), [r"table\.parquet", r"cannot be read"]),
    "csv.gz that is not gzip": (
        _file("table.csv.gz", b"x1,price\n1,2\n"), [r"table\.csv\.gz", r"cannot be read"]),
    "empty data file": (
        _file("table.csv", b"x1,x2,colour,price,churn,segment\n"), [r"table\.csv", r"no rows"]),
    "missing target column": (
        _set("data.tasks.price.column", "prize"),
        [r"data\.tasks\.price\.column", r"'prize'", r"close: price", r"table\.csv"]),
    "missing feature column": (
        _set("data.features", ["x1", "x3", "colour"]), [r"data\.features", r"'x3'", r"table\.csv"]),
    "missing data.drop column": (
        _set("data.drop", ["colur"]), [r"data\.drop", r"'colur'", r"close: colour"]),
    "duplicate task names": (
        _yaml_text(DUPLICATE_TASKS), [r"spec\.yaml", r"'price' appears twice", r"lines 5 and 6"]),
    "two tasks on one column": (
        _set("data.tasks.again", {"column": "price", "type": "regression"}),
        [r"data\.tasks", r"column\(s\) price used by more than one task"]),
    "target listed as a feature": (
        _set("data.features", ["x1", "price"]), [r"data\.features", r"price is a target column"]),
    "unknown task type": (
        _set("data.tasks.churn.type", "binery"), [r"data\.tasks\.churn\.type", r"'regression', 'binary'", r"binery"]),
    "one-class binary target": (
        _column("churn", lambda values: "yes"),
        [r"task churn \(column churn in .*table\.csv\)", r"at least two classes", r"\['yes'\]"]),
    "one-class multiclass target": (
        _all(_set("data.tasks.segment", {"column": "segment", "type": "multiclass"}),
             _column("segment", lambda values: "a")),
        [r"task segment \(column segment", r"multiclass target needs at least two classes"]),
    "non-numeric regression target": (
        _column("price", _with_text(slice(0, 30), "cheap")),
        [r"task price \(column price in .*table\.csv\)", r"must be numeric", r"'cheap'", r"binary or multiclass"]),
    "all labels missing": (
        _column("price", lambda values: np.nan),
        [r"task price \(column price in .*table\.csv\)", r"every label is missing", r"all 60 rows",
         r"remove the task"]),
    "too few rows": (
        lambda inputs: setattr(inputs, "table", inputs.table.head(20)),
        [r"too few rows", r"20 rows", r"data\.split", r"at least \d+ rows"]),
    "garbled numeric feature": (
        _column("x2", _with_text([3, 7], "n/a?")),
        [r"feature column x2 in .*table\.csv", r"'n/a\?' \(data row 4\)", r"data\.drop"]),
    "infinite feature": (
        _column("x1", lambda values: values.where(values.index != 5, np.inf)),
        [r"feature column x1 in .*table\.csv", r"infinite"]),
    "infinite regression target": (
        _column("price", lambda values: values.where(values.index != 5, -np.inf)),
        [r"task price \(column price", r"infinite"]),
    "negative seed": (
        _set("seed", -1), [r"\bseed: Input should be greater than or equal to 0"]),
    "seed beyond 32 bits": (
        _set("seed", 2**32), [r"\bseed: Input should be less than or equal to 4294966295"]),
    "huge but finite feature": (
        _column("x1", lambda values: values.where(values.index != 5, 1e308)),
        [r"feature column x1 in .*table\.csv", r"beyond what float32 holds", r"rescale"]),
    "huge but finite regression target": (
        _column("price", lambda values: values.where(values.index != 5, -1e300)),
        [r"task price \(column price", r"beyond what float32 holds", r"-1e\+300"]),
    "duplicate column names in the CSV": (
        _file("dup.csv", b"x1,price,churn,price\n" + b"".join(b"%d,%d,yes,%d\n" % (i, i, i) for i in range(60))),
        [r"dup\.csv", r"'price' appear more than once", r"rename"]),
    "binary target with three classes": (
        _set("data.tasks.churn.column", "segment"),
        [r"task churn \(column segment", r"binary target has two classes, found 3", r"use type multiclass"]),
    "YAML syntax error": (
        _yaml_text(SYNTAX_ERROR), [r"not valid YAML", r'in ".*spec\.yaml", line 4']),
    "YAML key that is a list": (
        _yaml_text("name: small\n? [data, space]\n: 1\n"), [r"spec\.yaml", r"a key must be a plain value",
                                                           r"not a list", r"line 2"]),
    "spec that is not UTF-8": (
        _yaml_text("name: caf\xe9\n".encode("latin-1")), [r"cannot read spec file", r"spec\.yaml", r"utf-8"]),
    "section that is not a mapping": (
        _set("data", "table.csv"), [r"\bdata: Input should be a valid dictionary", r"'table\.csv'"]),
    "YAML that is not a mapping": (
        _yaml_text("- name: small\n- data: {}\n"), [r"spec\.yaml", r"must be a mapping", r"got list"]),
    "required key missing": (
        lambda inputs: inputs.spec.pop("name"), [r"\bname: required key is missing"]),
    "unknown baseline": (
        _set("baselines", ["gbtd"]), [r"baselines", r"'gbtd'", r"valid: .*gbdt"]),
    "--set unknown key": (
        _args("--set", "space.widht=16"), [r"space\.widht: unknown key", r"did you mean 'width'"]),
    "--set without a value": (
        _args("--set", "space.width"), [r"--set 'space\.width'", r"dotted\.key=value"]),
    "--set value that is not YAML": (
        _args("--set", "space.width={choice: [8,"), [r"--set 'space\.width=", r"not valid YAML"]),
    "--set with an empty key part": (
        _args("--set", "space..width=16"), [r"--set 'space\.\.width=16'", r"empty part", r"space\.width"]),
    "--set below a constant": (
        _args("--set", "space.lr.low=1"), [r"--set 'space\.lr\.low=1'", r"space\.lr holds a value"]),
    "--resume with --overwrite": (
        _args("--resume", "--overwrite", command="run"), [r"--resume", r"--overwrite", r"choose one"]),
    "unreachable --address": (
        _args("--address", "127.0.0.1:1", command="run"),
        [r"cannot reach the Ray cluster at 127\.0\.0\.1:1", r"ray start --head", r"port 1"]),
    "--address that is not host:port": (
        _args("--address", "headnode", command="run"), [r"--address 'headnode'", r"expected host:port"]),
    "resume with nothing to resume": (
        _args("--resume", command="run"), [r"nothing to resume", r"small", r"mtl-search run"]),
    "gbdt baseline for a 5,000-class target": (
        _all(_wide_target(classes=5000), _set("baselines", ["gbdt"])),
        [r"baselines: gbdt grows one tree per class", r"species \([\d,]+ classes\) have more than 200",
         r"remove gbdt from baselines"]),
}


@pytest.fixture
def inputs(tmp_path: Path) -> Inputs:
    return Inputs(spec=small_spec(tmp_path / "results"), table=small_table())


def write(inputs: Inputs, folder: Path) -> Path:
    """Write the table and the spec into ``folder``; return the spec's path."""
    data = folder / inputs.data_name
    if inputs.data_bytes is not None:
        data.write_bytes(inputs.data_bytes)
    elif inputs.data_name.endswith(".parquet"):
        inputs.table.to_parquet(data)
    else:
        inputs.table.to_csv(data, index=False)
    spec = folder / "spec.yaml"
    text = inputs.spec_text if inputs.spec_text is not None else yaml.safe_dump(inputs.spec, sort_keys=False)
    spec.write_bytes(text if isinstance(text, bytes) else text.encode())
    return spec


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of one in-process CLI call, which must hold no traceback."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def test_the_small_spec_is_valid(inputs: Inputs, tmp_path: Path, capsys):
    code, out, err = run_cli(["validate", str(write(inputs, tmp_path))], capsys)
    assert code == 0, err
    assert "spec and data are valid" in out


@pytest.mark.parametrize(("change", "patterns"), list(CASES.values()), ids=list(CASES))
def test_bad_input_exits_2_and_says_what_to_fix(inputs: Inputs, tmp_path: Path, capsys, change: Change,
                                                 patterns: list[str]):
    change(inputs)
    spec = write(inputs, tmp_path)
    code, _, err = run_cli([inputs.command, str(spec), *inputs.extra], capsys)
    assert code == EXIT_USER, err
    assert err.startswith("error: "), err
    for pattern in patterns:
        assert re.search(pattern, err), f"{pattern!r} not in:\n{err}"


def test_a_missing_spec_file_is_named(tmp_path: Path, capsys):
    code, _, err = run_cli(["validate", str(tmp_path / "nope.yaml")], capsys)
    assert code == EXIT_USER and "nope.yaml" in err and "does not exist" in err


def test_existing_results_are_refused_and_left_untouched(inputs: Inputs, tmp_path: Path, capsys):
    spec = write(inputs, tmp_path)
    existing = tmp_path / "results" / "small"
    existing.mkdir(parents=True)
    files = {"leaderboard.csv": "rank,grouping\n1,precious\n", "trials.csv": "trial_id\nabc\n",
             "config.yaml": "name: small\n"}
    for name, text in files.items():
        (existing / name).write_text(text)
    before = {path.name: path.stat().st_mtime_ns for path in existing.iterdir()}
    code, _, err = run_cli(["run", str(spec)], capsys)
    assert code == EXIT_USER
    assert str(existing) in err and "--overwrite" in err and "--resume" in err
    assert {path.name: path.read_text() for path in existing.iterdir()} == files
    assert {path.name: path.stat().st_mtime_ns for path in existing.iterdir()} == before


def test_overwrite_deletes_nothing_but_an_mtl_search_result_directory(inputs: Inputs, tmp_path: Path, capsys):
    spec = write(inputs, tmp_path)
    documents = tmp_path / "results" / "small"  # e.g. --output ~ --name Documents
    documents.mkdir(parents=True)
    (documents / "thesis.tex").write_text("years of work\n")
    code, _, err = run_cli(["run", str(spec), "--overwrite"], capsys)
    assert code == EXIT_USER and "Traceback" not in err
    assert ".mtl_search marker: nothing was deleted" in err and str(documents) in err
    assert [p.name for p in documents.iterdir()] == ["thesis.tex"]


def test_a_result_directory_held_by_a_live_run_is_refused_with_the_holder_named(inputs: Inputs, tmp_path: Path,
                                                                                capsys):
    import json
    import os
    import socket

    from mtl_search import storage

    spec = write(inputs, tmp_path)
    held = tmp_path / "results" / "small"
    held.mkdir(parents=True)
    (held / storage.MARKER_FILE).write_text("{}\n")
    (held / "tune").mkdir()
    (held / "leaderboard.csv").write_text("rank,grouping\n1,precious\n")
    # A live process of this host holds it: the test's parent (pytest's own pid would count as this run).
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "started": "2026-12-03T08:00:00+0000"}
    (held / storage.LOCK_FILE).write_text(json.dumps(holder))
    for extra in (["--overwrite"], ["--resume"]):
        code, _, err = run_cli(["run", str(spec), *extra], capsys)
        assert code == EXIT_USER and "Traceback" not in err, err
        assert f"in use by another mtl_search run (host {holder['host']}, pid {os.getppid()}" in err
        assert (held / "leaderboard.csv").read_text() == "rank,grouping\n1,precious\n"
    assert not list(held.parent.glob(".small.replaced-*"))  # nothing was moved aside either


def test_a_yaml_alias_bomb_gets_a_short_message(tmp_path: Path, capsys):
    levels = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for name, below in zip("bcdefgh", "abcdefg", strict=True):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{below}"] * 9) + "]")
    spec = tmp_path / "bomb.yaml"
    spec.write_text("name: bomb\n" + "\n".join(levels) + "\ndata: *h\n")  # 9^8 strings if expanded
    code, _, err = run_cli(["validate", str(spec)], capsys)
    assert code == EXIT_USER and err.startswith("error: invalid spec") and "data: Input should be" in err
    assert len(err) < 2000, len(err)


def test_a_run_that_cannot_start_leaves_the_folder_as_it_was(inputs: Inputs, tmp_path: Path, capsys):
    from mtl_search import storage

    spec = write(inputs, tmp_path)
    out = tmp_path / "results" / "small"
    code, _, err = run_cli(["run", str(spec), "--address", "127.0.0.1:1"], capsys)
    assert code == EXIT_USER and "cannot reach" in err
    assert not out.exists()  # nothing left that the next `run` or `resume` would refuse
    out.mkdir(parents=True)
    (out / storage.MARKER_FILE).write_text("{}\n")
    (out / "leaderboard.csv").write_text("rank,grouping\n1,precious\n")
    code, _, err = run_cli(["run", str(spec), "--overwrite", "--address", "127.0.0.1:1"], capsys)
    assert code == EXIT_USER and "cannot reach" in err
    assert (out / "leaderboard.csv").read_text() == "rank,grouping\n1,precious\n"  # the old results came back
    assert not (out / storage.LOCK_FILE).exists() and not list(out.parent.glob(".small.replaced-*"))


def test_a_table_larger_than_the_memory_available_is_refused_before_it_is_read(inputs: Inputs, tmp_path: Path,
                                                                                 capsys, monkeypatch):
    from mtl_search import source

    spec = write(inputs, tmp_path)
    size = (tmp_path / "table.csv").stat().st_size
    monkeypatch.setattr(source, "available_memory", lambda: 2 * size)  # a machine with less memory than 3x the file
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: pytest.fail("the table must not be read"))
    code, _, err = run_cli(["validate", str(spec)], capsys)
    assert code == EXIT_USER and "Traceback" not in err
    assert re.search(r"data file .*table\.csv is [\d.]+ KiB, about [\d.]+ KiB once read, and this machine has "
                     r"[\d.]+ KiB available: sample its rows", err), err


def test_the_console_entry_point_reports_bad_input_the_same_way(inputs: Inputs, tmp_path: Path):
    _rename("space.width", "widht")(inputs)
    done = subprocess.run([sys.executable, "-m", "mtl_search", "validate", str(write(inputs, tmp_path))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_USER
    assert "Traceback" not in done.stdout + done.stderr
    assert "space.widht: unknown key" in done.stderr and "did you mean 'width'" in done.stderr


def test_an_output_folder_that_cannot_be_created_is_named(inputs: Inputs, tmp_path: Path, capsys):
    spec = write(inputs, tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    code, _, err = run_cli(["run", str(spec), "--output", str(blocker)], capsys)
    assert code == EXIT_USER
    assert str(blocker) in err and "--output" in err
    assert blocker.read_text() == "not a folder\n"
