"""The views users review a result directory with: ``leaderboard`` (re-ranked if asked) and ``compare``.

Honesty rule kept here, as in :mod:`mtl_search.leaderboard`: a re-ranking (by
another task's metric, or under an inference budget) is chosen on the
**validation** numbers of ``groups.csv``; every number shown besides the ranking
key is from the **test** split, which chose nothing. Asking to rank by a test
column is refused with the validation column to use instead.

Reference rows (``baseline`` true in ``leaderboard.csv``, e.g. ``baseline:gbdt``)
are shown below the ranked groupings, never ranked among them.

Pandas only; results are read back by :mod:`mtl_search.results`, plotted by :mod:`mtl_search.plots`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mtl_search.errors import UserError
from mtl_search.grouping import compact_grouping, group_tasks, grouping_groups
from mtl_search.leaderboard import LEADERBOARD_LIMIT, rank_groupings
from mtl_search.metrics import PRIMARY_METRIC
from mtl_search.results import NLOSS, TEST, VALID, Results, as_float, column, load_results, parse_column, truthy
from mtl_search.tables import Style, Table, format_number, format_percent

#: ``--by`` names of the mean normalised loss over all tasks (the leaderboard's own ranking).
SCORE_KEYS = ("score", "mean", "valid_score")
#: The most tasks whose test metrics a leaderboard table shows one column each.
TASK_COLUMNS = 8
#: Weight of the mean normalised validation loss in a per-task ranking cost: it only breaks ties
#: between groupings that serve the ranked task with the same network.
_TIE_BREAK = 1e-9


# --------------------------------------------------------------------------- ranking keys


@dataclass(frozen=True)
class RankKey:
    """What a leaderboard is ranked by: the mean normalised loss (``task`` None) or one task's metric.

    The ranking always reads the validation column ``valid_<task>_<metric>``.
    """

    name: str
    task: str | None = None
    metric: str = NLOSS
    higher_is_better: bool = False

    @property
    def label(self) -> str:
        """Words for captions: what is ranked, on which split, in which direction."""
        what = "mean normalised loss over all tasks" if self.task is None else (
            f"the normalised loss of {self.task}" if self.metric == NLOSS else f"the {self.metric} of {self.task}")
        return f"{what} on validation ({'higher' if self.higher_is_better else 'lower'} is better)"

    @property
    def header(self) -> str:
        """Short column header of the ranking key."""
        return "score" if self.task is None else f"{self.task} {self.metric}"


def rank_keys(results: Results) -> list[RankKey]:
    """Every key a leaderboard of ``results`` can be ranked by: the mean, then each task's metric and loss."""
    keys = [RankKey("score")]
    for task, kind in results.tasks.items():
        metric, higher = PRIMARY_METRIC[kind].name, PRIMARY_METRIC[kind].higher_is_better
        keys += [RankKey(f"{task}_{metric}", task, metric, higher), RankKey(f"{task}_{NLOSS}", task)]
    return keys


def parse_rank_key(results: Results, by: str | None) -> RankKey:
    """The ranking key ``--by`` names: ``score`` (or ``mean``), ``TASK`` (its headline metric) or ``TASK_METRIC``.

    Raises:
        UserError: an unknown name (the valid ones are listed), or a test column (ranking on test is refused).
    """
    keys = rank_keys(results)
    if by is None or by.strip().lower() in SCORE_KEYS:
        return keys[0]
    wanted = by.strip()
    valid_names = ", ".join(["score (or mean)", *(key.name for key in keys[1:])])
    if wanted.startswith("test_"):
        rest = wanted[len("test_"):]
        suggestion = "score" if rest == "score" else rest
        raise UserError(f"--by {wanted}: rankings are chosen on the validation split, never on test (a number "
                        f"chosen on test would no longer be an honest estimate); use --by {suggestion}, which ranks "
                        "on its validation value and still reports the test numbers")
    if wanted.startswith("valid_"):
        wanted = wanted[len("valid_"):]
    if wanted in results.tasks:
        wanted = f"{wanted}_{results.headline[wanted]}"
    for key in keys[1:]:
        if key.name == wanted:
            return key
    raise UserError(f"--by {by}: unknown metric; valid: {valid_names}. A task name alone ranks by its headline "
                    f"metric (e.g. --by {next(iter(results.tasks), 'TASK')})")


# --------------------------------------------------------------------------- re-ranking


@dataclass(frozen=True)
class Ranking:
    """A leaderboard re-ranked on validation; ``board`` has ``leaderboard.csv``'s columns plus ``ranked_by``."""

    results: Results
    key: RankKey
    board: pd.DataFrame
    budget: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def key_column(self) -> str:
        """The column of ``board`` holding each grouping's validation value of the key."""
        return "valid_score" if self.key.task is None else column(VALID, self.key.task, self.key.metric)


def _ranking_groups(results: Results, key: RankKey) -> pd.DataFrame:
    """``groups.csv`` with each task's validation cost replaced by the key's (lower = better) for the ranking."""
    groups = results.scored_groups()
    if key.task is None:
        return groups
    name = column(VALID, key.task, key.metric)
    holds = groups["group"].astype(str).map(lambda g: key.task in group_tasks(g))
    values = pd.to_numeric(groups[name], errors="coerce") if name in groups else pd.Series(np.nan, groups.index)
    groups = groups[~holds | np.isfinite(values)].copy()  # estimated groups have no validation metric
    sign = -1.0 if key.higher_is_better else 1.0
    for task in results.tasks:
        nloss = column(VALID, task, NLOSS)
        if nloss not in groups:
            continue
        tie_break = _TIE_BREAK * pd.to_numeric(groups[nloss], errors="coerce")
        groups[nloss] = tie_break + (sign * values.loc[groups.index] if task == key.task else 0.0)
    return groups


def rerank(results: Results, key: RankKey, *, budget: float | None = None) -> Ranking:
    """The groupings of ``results`` ranked by ``key`` on validation, within an optional inference budget.

    With the default key and no budget this is ``leaderboard.csv`` itself. Groupings are
    rebuilt from ``groups.csv`` with :func:`mtl_search.leaderboard.rank_groupings` (exact,
    all of them up to 7 tasks), ranking on the key's validation values; the reported
    columns (``score``, ``test_*``, ``delta_vs_single_task_pct``) stay the test ones.

    Args:
        results: a result directory read back.
        key: what to rank by (see :func:`parse_rank_key`).
        budget: keep only groupings with ``inference_cost <= budget`` (networks or parameters, as the run's
            ``grouping.cost``).

    Raises:
        UserError: ``budget`` is below every grouping's inference cost (the cheapest is named).
    """
    if budget is not None and not math.isfinite(budget):
        raise UserError(f"--budget must be a finite number, got {budget}")
    groups = _ranking_groups(results, key)
    max_groups = results.max_groups
    if budget is not None and results.cost == "networks":
        max_groups = min(int(math.floor(budget)), max_groups or len(results.tasks))
    board = pd.DataFrame(columns=list(results.leaderboard.columns))
    if max_groups is None or max_groups >= 1:
        board = rank_groupings(groups, results.tasks, max_groups=max_groups, cost=results.cost,
                               limit=LEADERBOARD_LIMIT)
    notes = []
    if key.task is not None and len(board):
        # Exact order on the key; ties (the same network serves the task) keep the mean-score order.
        name = column(VALID, key.task, key.metric)
        served = {str(row["group"]): as_float(row[name]) for _, row in groups.iterrows()
                  if key.task in group_tasks(str(row["group"]))}
        board[name] = [next(served[g] for g in grouping_groups(str(grouping)) if g in served)
                       for grouping in board["grouping"]]
        board = board.sort_values(name, ascending=not key.higher_is_better, kind="stable")
        unranked = len(results.scored_groups()) - len(groups)
        if unranked:
            notes.append(f"{unranked} estimated group(s) holding {key.task} have no validation {key.metric} and are "
                         "left out of this ranking")
    if len(board):
        # valid_score from the true validation losses (the per-task ranking altered the costs it was built from)
        truth = {str(row["group"]): row for _, row in results.scored_groups().iterrows()}
        board["valid_score"] = [
            float(np.mean([as_float(truth[g][column(VALID, t, NLOSS)]) for g in grouping_groups(str(grouping))
                           for t in group_tasks(g)])) for grouping in board["grouping"]]
    if budget is not None and len(board):
        costs = pd.to_numeric(board["inference_cost"], errors="coerce")
        if not np.isfinite(costs).all():
            notes.append("groupings with an estimated group have no parameter count and are left out under a budget")
        board = board[costs <= budget + 1e-9]
    if budget is not None and board.empty:
        raise _budget_error(results, budget)
    board = board.reset_index(drop=True)
    board["rank"] = np.arange(1, len(board) + 1)
    board["ranked_by"] = key.name
    return Ranking(results=results, key=key, board=board, budget=budget, notes=notes)


def _budget_error(results: Results, budget: float) -> UserError:
    costs = pd.to_numeric(results.leaderboard["inference_cost"], errors="coerce")
    unit = "networks" if results.cost == "networks" else "parameters"
    if not np.isfinite(costs).any():
        return UserError(f"--budget {budget:g}: no grouping of {results.location} has a known inference cost "
                         f"({unit}); drop --budget")
    cheapest = results.leaderboard.loc[costs.idxmin()]
    return UserError(f"--budget {budget:g} is below every grouping's inference cost: the cheapest grouping, "
                     f"{cheapest['grouping']}, costs {format_number(as_float(cheapest['inference_cost']), 0)} {unit} "
                     f"(the run's grouping.cost is {results.cost}); raise --budget to at least that")


# --------------------------------------------------------------------------- tables


def _grouping_table_rows(results: Results, board: pd.DataFrame, key_column: str,
                         references: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool], int | None]:
    """Headers, cells and alignment of a leaderboard table: validation key, then test numbers."""
    headline = results.headline
    if len(headline) > TASK_COLUMNS:  # one column per task stops being readable: keep the ranked task's only
        keyed = parse_column(key_column, results.tasks)
        headline = {keyed[1]: headline[keyed[1]]} if keyed is not None else {}
    show_params = results.cost == "params" or "params" in board
    headers = ["rank", "grouping", "networks", *(["params"] if show_params else []),
               _key_header(key_column, results), "score", "vs single", *[f"{t} {m}" for t, m in headline.items()]]
    rows = []
    first = str(board["grouping"].iloc[0]) if len(board) else None
    for frame, is_reference in ((board, False), (references, True)):
        for _, row in frame.iterrows():
            grouping = str(row["grouping"]) if is_reference else compact_grouping(str(row["grouping"]),
                                                                                   reference=first)
            if str(row.get("estimated", "")).strip().lower() == "true":
                grouping += " *"
            cells = ["ref" if is_reference else str(int(row["rank"])), grouping,
                     format_number(as_float(row.get("n_groups")), 0),
                     *([format_number(as_float(row.get("params")), 0)] if show_params else []),
                     format_number(as_float(row.get(key_column))),
                     format_number(as_float(row.get("score"))),
                     format_percent(as_float(row.get("delta_vs_single_task_pct"))),
                     *[format_number(as_float(row.get(column(TEST, t, m)))) for t, m in headline.items()]]
            rows.append(cells)
    right = [True, False, *[True] * (len(headers) - 2)]
    return headers, rows, right, (len(board) if len(references) else None)


def _key_header(key_column: str, results: Results) -> str:
    if key_column == "valid_score":
        return "score"
    parsed = parse_column(key_column, results.tasks)
    return key_column if parsed is None else f"{parsed[1]} {parsed[2]}"


def leaderboard_table(ranking: Ranking, *, top: int = 10) -> Table:
    """The top ``top`` groupings of a ranking, then the reference rows, as a captioned :class:`Table`."""
    results, key = ranking.results, ranking.key
    shown = ranking.board.head(top)
    references = results.references.copy()
    if key.task is not None:
        references[ranking.key_column] = math.nan  # references keep no per-task validation numbers
    headers, rows, right, reference_start = _grouping_table_rows(results, shown, ranking.key_column, references)
    unit = "networks" if results.cost == "networks" else "parameters"
    budget = f" within a budget of {format_number(ranking.budget, 0)} {unit}" if ranking.budget is not None else ""
    caption = [
        f"{results.name}: top {len(shown)} of {len(ranking.board)} groupings of {len(results.tasks)} tasks{budget}, "
        f"ranked by {key.label}.",
        "Every other number is on the test split, which chose nothing: score = mean normalised test loss "
        "(lower is better); vs single = score relative to one network per task.",
    ]
    notes = list(ranking.notes)
    if len(shown) and rows[0][1].removesuffix(" *") != str(shown["grouping"].iloc[0]):
        notes.append(f"#1 in full: {shown['grouping'].iloc[0]}")
    if len(results.tasks) > TASK_COLUMNS:
        notes.append(f"{len(results.tasks)} tasks: the per-task test metrics are in leaderboard.csv (or --csv); "
                     "--by TASK ranks by one task and shows its column")
    if any(r[1].endswith(" *") for r in rows):
        notes.append("* some group's losses are estimated from pairs (pairs strategy), not trained")
    if reference_start is not None:
        notes.append("ref = reference model (e.g. baseline:gbdt, one per task), not ranked")
    failed = results.failed_groups()
    if failed:
        notes.append(f"{len(failed)} candidate group(s) had no successful trial and are in no grouping: "
                     f"{', '.join(failed[:5])}{' …' if len(failed) > 5 else ''} (groups.csv, trials.csv)")
    if not len(shown):
        notes.append("no grouping could be scored: every candidate group lacks a successful trial (see trials.csv)")
    fixed = headers.index(_key_header(ranking.key_column, results))
    spans = [("", fixed), ("valid", 1), ("test", len(headers) - fixed - 1)]
    return Table(caption=caption, headers=headers, rows=rows, right=right, spans=spans, notes=notes,
                 reference_start=reference_start)


def leaderboard_csv(ranking: Ranking, *, top: int | None = None) -> str:
    """A ranking as CSV: ``leaderboard.csv``'s columns plus ``ranked_by`` (and the key's validation column)."""
    board = ranking.board if top is None else ranking.board.head(top)
    references = ranking.results.references.copy()
    if len(references):
        references["ranked_by"] = ""
        board = pd.concat([board, references], ignore_index=True)
    return board.to_csv(index=False, quoting=csv.QUOTE_MINIMAL)


def show_leaderboard(location: str | Path, *, top: int = 10, by: str | None = None, budget: float | None = None,
                     style: Style = "text") -> str:
    """What ``mtl-search leaderboard`` prints.

    Raises:
        UserError: not a result directory, an unknown ``by``, or a budget no grouping fits.
    """
    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    results = load_results(location)
    ranking = rerank(results, parse_rank_key(results, by), budget=budget)
    if style == "csv":
        return leaderboard_csv(ranking, top=top)
    return leaderboard_table(ranking, top=top).render(style)


# --------------------------------------------------------------------------- compare


def _confirmed_score(results: Results, grouping: str) -> tuple[float, float, int] | None:
    """(mean, std, seeds) of a grouping's retrained test score from ``confirm.csv``, if it was confirmed."""
    frame = results.confirm
    if frame is None or frame.empty or not {"grouping", "task"} <= set(frame.columns):
        return None
    rows = frame[(frame["grouping"].astype(str) == grouping) & (frame["task"].astype(str) == "all")]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return as_float(row["nloss_mean"]), as_float(row["nloss_std"]), int(as_float(row.get("seeds", 0)) or 0)


def _summary(results: Results) -> dict[str, str]:
    """One column of the side-by-side summary: what the experiment did and its rank-1 grouping."""
    info, board = results.run_info, results.leaderboard
    trained = int((~truthy(results.groups["estimated"])).sum()) if "estimated" in results.groups else len(
        results.groups)
    trials = info.get("trials", int(pd.to_numeric(results.groups.get("trials"), errors="coerce").sum()))
    failed = info.get("networks_failed", info.get("trials_failed", int(pd.to_numeric(
        results.groups.get("trials_failed"), errors="coerce").sum())))  # trials_failed: run.json before packs
    wall = as_float(info.get("wall_s"))
    out = {
        "candidates": str((results.config.get("grouping") or {}).get("candidates", "—")),
        "groups trained": str(trained),
        "trials (failed networks)": f"{trials} ({failed})",
        "wall time": f"{wall / 60:.1f} min" if math.isfinite(wall) else "—",
        "executor": str(info.get("trial_executor", "—")),
    }
    if board.empty:
        out["best grouping"] = "(none scored)"
        return out
    best = board.iloc[0]
    out.update({
        "best grouping": str(best["grouping"]),
        "networks": format_number(as_float(best["n_groups"]), 0),
        "valid score": format_number(as_float(best["valid_score"])),
        "test score": format_number(as_float(best["score"])),
        "vs single-task": format_percent(as_float(best["delta_vs_single_task_pct"])),
    })
    for task, metric in results.headline.items():
        out[f"test {task} {metric}"] = format_number(as_float(best.get(column(TEST, task, metric))))
    confirmed = _confirmed_score(results, str(best["grouping"]))
    out["confirmed score"] = ("not run" if confirmed is None else
                              f"{format_number(confirmed[0])} ± {format_number(confirmed[1])} ({confirmed[2]} seeds)")
    for _, row in results.references.iterrows():
        out[f"{row['grouping']} score"] = format_number(as_float(row.get("score")))
    return out


def _comparability(a: Results, b: Results) -> list[str]:
    """Warnings when two experiments' test numbers do not measure the same thing."""
    notes = []
    if list(a.tasks) != list(b.tasks):
        notes.append(f"the experiments have different tasks (A: {', '.join(a.tasks)}; B: {', '.join(b.tasks)}): "
                     "scores average over different tasks")
    differ = [key for key in ("source", "params", "features", "drop", "split")
              if (a.config.get("data") or {}).get(key) != (b.config.get("data") or {}).get(key)]
    if a.config.get("seed") != b.config.get("seed"):
        differ.append("seed")
    if differ and a.config and b.config:
        notes.append(f"the data or its split differ ({', '.join(f'data.{k}' if k != 'seed' else k for k in differ)}):"
                     " the test splits are not the same rows, so scores are not directly comparable")
    notes.append("vs single-task compares each experiment with its own single-task networks")
    return notes


def compare_tables(a: Results, b: Results, *, top: int = 3) -> list[Table]:
    """``compare``: a side-by-side summary of two experiments, then each one's top ``top`` groupings."""
    summaries = _summary(a), _summary(b)
    labels = list(dict.fromkeys([*summaries[0], *summaries[1]]))
    summary = Table(
        caption=[f"A = {a.name}  ({a.location})", f"B = {b.name}  ({b.location})",
                 "Rank 1 of each, chosen on validation; score and metrics are on the test split (lower score is "
                 "better)."],
        headers=["", f"A: {a.name}", f"B: {b.name}"],
        rows=[[label, summaries[0].get(label, "—"), summaries[1].get(label, "—")] for label in labels],
        right=[False, False, False], notes=_comparability(a, b))
    tables = [summary]
    for tag, results in (("A", a), ("B", b)):
        ranking = rerank(results, parse_rank_key(results, None))
        table = leaderboard_table(ranking, top=top)
        table.caption = [f"{tag}: {table.caption[0]}", *table.caption[1:]]
        tables.append(table)
    return tables


def show_compare(first: str | Path, second: str | Path, *, top: int = 3, style: Style = "text") -> str:
    """What ``mtl-search compare`` prints.

    Raises:
        UserError: either location is not a result directory.
    """
    if top < 1:
        raise UserError(f"--top must be >= 1, got {top}")
    a, b = load_results(first), load_results(second)
    if style == "csv":
        frames = []
        for tag, results in (("A", a), ("B", b)):
            ranking = rerank(results, parse_rank_key(results, None))
            frame = pd.concat([ranking.board.head(top), results.references], ignore_index=True)
            frame.insert(0, "location", results.location)
            frame.insert(0, "experiment", f"{tag}: {results.name}")
            frames.append(frame)
        return pd.concat(frames, ignore_index=True).to_csv(index=False)
    return "\n".join(table.render(style) for table in compare_tables(a, b, top=top))

