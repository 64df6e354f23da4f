"""``report.html`` and redrawing a result directory's plots (``mtl-search report``).

A static page (no server, no script) with the run's facts, its leaderboard,
confirmation, the plots of :mod:`mtl_search.plots` (linked relatively, so the
result directory can be moved or zipped whole), groups and selection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path

import pandas as pd

from mtl_search import storage
from mtl_search.errors import UserError
from mtl_search.plots import PLOTS, write_plots
from mtl_search.results import REPORT_HTML, Results, as_float, load_results
from mtl_search.review import leaderboard_table, parse_rank_key, rerank
from mtl_search.tables import format_number


def write_html(results: Results, path: Path, plots: Sequence[Path], *, top: int = 10) -> Path:
    """``report.html``: the run, its leaderboard, confirmation, plots (linked relatively), groups and selection."""
    info = results.run_info
    facts = [("location", results.location), ("candidates", (results.config.get("grouping") or {}).get("candidates")),
             ("tasks", ", ".join(f"{t} ({k})" for t, k in results.tasks.items())),
             ("trials", info.get("trials")), ("networks trained", info.get("networks")),
             ("failed networks", info.get("networks_failed", info.get("trials_failed"))),
             ("wall time", f"{as_float(info.get('wall_s')) / 60:.1f} min" if "wall_s" in info else None),
             ("executor", info.get("trial_executor")), ("finished", info.get("finished")),
             ("versions", ", ".join(f"{k.removesuffix('_version')} {v}" for k, v in info.items()
                                    if k.endswith("_version")) or None)]
    parts = [f"<h1>mtl_search: {escape(results.name)}</h1>",
             "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in facts if v is not None)
             + "</dl>",
             "<h2>Leaderboard</h2>",
             leaderboard_table(rerank(results, parse_rank_key(results, None)), top=top).html()]
    if results.confirm is not None and not results.confirm.empty:
        confirm = results.confirm[results.confirm["task"].astype(str) == "all"]
        parts += ["<h2>Confirmation: the top groupings retrained with fresh seeds (test)</h2>",
                  _frame_html(confirm[[c for c in ("rank", "grouping", "nloss_mean", "nloss_std", "seeds")
                                       if c in confirm]])]
    parts.append("<h2>Plots</h2>")
    for plot in plots:
        relative = plot.relative_to(path.parent).as_posix() if plot.is_relative_to(path.parent) else plot.as_posix()
        parts.append(f'<figure><img src="{escape(relative)}" alt="{escape(plot.stem)}">'
                     f"<figcaption>{escape(PLOTS.get(plot.name, plot.stem))}</figcaption></figure>")
    columns = [c for c in ("group", "n_tasks", "estimated", "trials", "trials_failed", "valid_score", "test_score",
                           "params", "depth", "sharing_depth", "width", "weighting") if c in results.groups]
    parts += ["<h2>Groups: each candidate's best trial (chosen on validation)</h2>",
              "<p>The more trials a group got, the more optimistic its best.</p>",
              _frame_html(results.groups[columns])]
    if results.selection is not None and not results.selection.empty:
        parts += ["<h2>Budgeted selection (networks may overlap; chosen on validation)</h2>",
                  _frame_html(results.selection)]
    page = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>mtl_search: {escape(results.name)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    path.write_text(page)
    return path


def _frame_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, na_rep="—", float_format=lambda v: format_number(v), border=0, escape=True)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #ddd}"
        "td.num{text-align:right;font-variant-numeric:tabular-nums}th.span{border-bottom:2px solid #888}"
        "caption{text-align:left;font-size:13px;color:#444;margin-bottom:4px}tr.reference{color:#a35a00}"
        "img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}figcaption{font-size:13px;color:#444}"
        "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{font-weight:600}dd{margin:0}"
        "ul.notes{font-size:12px;color:#555}")


def write_report(location: str | Path, *, top: int = 10, html: bool = False, keep_going: bool = False,
                 echo: Callable[[str], None] | None = None) -> list[Path]:
    """Draw a result directory's plots into its ``plots/`` (and ``report.html`` with ``html``).

    ``run`` calls it when a search ends (with ``keep_going``), ``mtl-search report`` on an
    existing directory. Returns the files written.

    Raises:
        UserError: ``location`` is not a local result directory.
    """
    if storage.is_uri(location):
        raise UserError(f"report writes its plots into the result directory, so it needs a local copy of "
                        f"{location}: copy it to this machine (e.g. `aws s3 sync`) and run `mtl-search report` "
                        "on that folder")
    results = load_results(location)
    result_dir = Path(location).expanduser()
    written = write_plots(results, result_dir / storage.PLOTS_DIR, top=top, keep_going=keep_going, echo=echo)
    if html:
        written.append(write_html(results, result_dir / REPORT_HTML, written, top=top))
    return written
