"""Plots and report.html: the files written, that each PNG holds a drawing, and the Pareto front."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from mtl_search import cli
from mtl_search.errors import UserError
from mtl_search.plots import pareto_front
from mtl_search.report import write_report
from mtl_search.results import AFFINITY_PNG, COST_FRONT_PNG, REPORT_HTML, TASK_METRICS_PNG, TOP_GROUPINGS_PNG
from tests.test_review import make_result_dir

ALL_PLOTS = {TOP_GROUPINGS_PNG, COST_FRONT_PNG, TASK_METRICS_PNG, AFFINITY_PNG}


def assert_drawn(path: Path) -> None:
    """The PNG opens, is a real figure's size, and is not blank: many colours, a good share of ink."""
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= 300 and pixels.shape[1] >= 400, pixels.shape
    rgb = pixels[..., :3].reshape(-1, 3)
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) >= 20  # text, bars, colours
    ink = (rgb < 0.9).any(axis=1).mean()
    assert 0.01 < ink < 0.95, ink


def test_report_writes_every_plot_and_the_page(tmp_path: Path):
    results = make_result_dir(tmp_path)
    written = write_report(results, html=True)
    assert {p.name for p in written} == ALL_PLOTS | {REPORT_HTML}
    for path in written:
        if path.suffix == ".png":
            assert path.parent == results / "plots"
            assert_drawn(path)
    page = (results / REPORT_HTML).read_text()
    for name in ALL_PLOTS:
        assert f'src="plots/{name}"' in page  # linked relative to the page: the folder can move whole
    assert "baseline:gbdt" in page and "Confirmation" in page
    assert page.index("a+b|c") < page.index("a|b|c")  # the leaderboard keeps its ranking order


def test_plots_need_only_what_the_run_wrote(tmp_path: Path):
    """No confirm.csv, no affinity.csv, no baseline: the heatmap is skipped, the rest still drawn."""
    results = make_result_dir(tmp_path, confirm=False, affinity=False, baseline=False)
    written = write_report(results)
    assert {p.name for p in written} == ALL_PLOTS - {AFFINITY_PNG}
    for path in written:
        assert_drawn(path)


def test_report_command_prints_the_files(tmp_path: Path, capsys):
    results = make_result_dir(tmp_path)
    assert cli.main(["report", str(results), "--html", "--top", "3"]) == 0
    printed = capsys.readouterr().out.split()
    assert {Path(p).name for p in printed} == ALL_PLOTS | {REPORT_HTML}
    assert all(Path(p).is_file() for p in printed)


def test_report_refuses_a_uri_and_a_folder_without_results(tmp_path: Path):
    with pytest.raises(UserError, match="local copy"):
        write_report("s3://bucket/results/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        write_report(tmp_path / "empty")


@pytest.mark.parametrize(("costs", "scores", "front"), [
    ([1, 2, 3], [0.5, 0.4, 0.3], [0, 1, 2]),            # every step buys a better score
    ([1, 2, 3], [0.3, 0.4, 0.5], [0]),                  # the cheapest is also the best
    ([2, 1, 2, 3], [0.40, 0.50, 0.35, 0.36], [1, 2]),   # same cost: the lower score; 0.36 is beaten by 0.35
    ([1, float("nan"), 2], [0.5, 0.1, float("inf")], [0]),  # non-finite points are never on the front
    ([], [], []),
])
def test_pareto_front(costs, scores, front):
    assert pareto_front(costs, scores) == front
