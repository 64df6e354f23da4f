"""The networks table of ``mtl-search select``: reading it with errors that name the place, printing a choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl_search.errors import DataError
from mtl_search.networks_csv import format_selection, read_networks_csv
from mtl_search.selection import select_networks

from .test_selection import OVERLAP


def test_format_and_json():
    selection = select_networks(OVERLAP, ["a", "b", "c"], 1.5)
    text = format_selection(selection)
    assert "budget 1.5: 2 network(s), cost 1.5" in text
    assert "bc      serves b+c" in text and "half_a  serves a" in text
    assert any(line.split() == ["b", "bc", "1"] for line in text.splitlines())
    assert text.splitlines()[-1].split() == ["total", "3.5"]
    data = json.loads(json.dumps(selection.to_dict()))
    assert data == {"budget": 1.5, "networks": ["bc", "half_a"], "n_networks": 2, "cost": 1.5, "total_loss": 3.5,
                    "groups": {"bc": "b+c", "half_a": "a"},
                    "assignment": {"a": "half_a", "b": "bc", "c": "bc"}, "losses": {"a": 1.5, "b": 1.0, "c": 1.0}}


# --------------------------------------------------------------------------- reading a networks CSV

GOOD_CSV = """network,group,cost,a,b,c
ab,a+b,1,1.0,2.0,
bc, c+b ,1,,1.0,1.0
abc,a+b+c,1,2,2,2
half_a,a,0.5,1.5,,

"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "networks.csv"
    path.write_text(text)
    return path


def test_read_networks_csv(tmp_path: Path):
    networks, tasks = read_networks_csv(write(tmp_path, GOOD_CSV))
    assert tasks == ["a", "b", "c"]
    assert networks == OVERLAP
    assert networks[1].group == "b+c"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("network,cost,a\nn,1,1\n", "missing column.*group"),
        ("network,group,cost\nn,a,1\n", "no task columns"),
        ("network,group,cost,a,a\nn,a,1,1,1\n", "column 'a' appears more than once"),
        ("network,group,cost,a\n", "no networks"),
        ("network,group,cost,a\nn,a,1,1\nn,a,1,2\n", r"line 3, column network: network 'n' is already named on line 2"),
        ("network,group,cost,a\nmy net,a,1,1\n", "line 2, column network"),
        ("network,group,cost,a\nn,a,cheap,1\n", "line 2, column cost: network 'n' has cost 'cheap'"),
        ("network,group,cost,a\nn,a,-1,1\n", "line 2, column cost: network 'n' has cost '-1'"),
        ("network,group,cost,a\nn,a,nan,1\n", "column cost"),
        ("network,group,cost,a\nn,,1,1\n", "line 2, column group: network 'n' has no group"),
        ("network,group,cost,a\nn,a+z,1,1\n", "line 2, column group.*'z' are not task columns"),
        ("network,group,cost,a\nn,a+a,1,1\n", "names a task twice"),
        ("network,group,cost,a,b\nn,a,1,1,2\n", "line 2, column b: network 'n' has loss '2' on task 'b', which is not"),
        ("network,group,cost,a,b\nn,a+b,1,1,\n", "line 2, column b: network 'n' has no loss on task 'b'"),
        ("network,group,cost,a\nn,a,1,low\n", "line 2, column a: network 'n' has loss 'low'"),
        ("network,group,cost,a\nn,a,1,inf\n", "column a"),
        ("network,group,cost,a\nn,a,1\n", "line 2: 3 cells, but the header has 4 columns"),
        ("network,group,cost,a+b\nn,a+b,1,1\n", "task column 'a\\+b'"),
    ],
)
def test_read_networks_csv_errors_name_the_file_and_place(tmp_path: Path, text: str, match: str):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=match) as caught:
        read_networks_csv(path)
    assert str(path) in str(caught.value)


def test_read_networks_csv_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match="cannot read the networks table .*nowhere.csv"):
        read_networks_csv(tmp_path / "nowhere.csv")


