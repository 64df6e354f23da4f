"""The networks table of ``mtl-search select``: reading it, every rule checked, and printing a selection.

The table (CSV) has the columns ``network`` (a unique name), ``group`` (the tasks it
serves joined by ``+``), ``cost``, and one loss column per task; an error names the
file, the line and the column. :mod:`mtl_search.selection` solves the selection.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mtl_search.errors import DataError
from mtl_search.grouping import GROUP_SEP
from mtl_search.selection import Network, Selection

#: The columns of a networks CSV that are not tasks.
CSV_FIXED_COLUMNS = ("network", "group", "cost")


def format_selection(selection: Selection) -> str:
    """A human-readable account: the chosen networks, who serves each task with what loss, and the sum.

    Args:
        selection: a result of :func:`select_networks`.
    """
    lines = [f"budget {selection.budget:g}: {selection.n_networks} network(s), cost {selection.cost:g}"]
    width = max(len(name) for name in selection.networks)
    for name in selection.networks:
        lines.append(f"  {name:<{width}}  serves {selection.groups[name]}")
    task_width = max(len("total"), *(len(task) for task in selection.tasks))
    net_width = max(len("network"), width)
    lines.append(f"{'task':<{task_width}}  {'network':<{net_width}}  loss")
    for task in selection.tasks:
        lines.append(f"{task:<{task_width}}  {selection.assignment[task]:<{net_width}}  {selection.losses[task]:.6g}")
    lines.append(f"{'total':<{task_width}}  {'':<{net_width}}  {selection.total_loss:.6g}")
    return "\n".join(lines)


def _parse_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_networks_csv(path: str | Path) -> tuple[list[Network], list[str]]:
    """Read candidate networks from a CSV: ``network``, ``group``, ``cost`` and one loss column per task.

    Every column other than ``network``, ``group`` and ``cost`` is a task, named by its header. A row is
    one network: a unique name without whitespace; its group, the task columns it serves joined by ``+``
    (any order); its cost, a finite number ``>= 0``; and a finite loss in exactly the task columns of its
    group, the other task cells empty. A filled cell outside the group or an empty one inside it is an
    error rather than a guess: it usually means a shifted row or a failed evaluation, and the fix (correct
    the row, or drop the task from the group) is the user's to choose.

    Args:
        path: the CSV file (comma-separated, header on the first line; cells are stripped of spaces).

    Returns:
        The networks in file order and the task names in column order.

    Raises:
        DataError: the file cannot be read or breaks a rule above; the message names the file, the line
            and the column.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM from Excel is not a column name
            records = list(_numbered_rows(csv.reader(handle)))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the networks table {path}: {exc}") from None
    if not records:
        raise DataError(f"{path}: the networks table is empty; it needs a header line with the columns "
                        f"{', '.join(CSV_FIXED_COLUMNS)} and one column per task.")
    header = [cell.strip() for cell in records[0][1]]
    missing = [column for column in CSV_FIXED_COLUMNS if column not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header) or 'none'}. "
                        f"A networks table needs {', '.join(CSV_FIXED_COLUMNS)} and one loss column per task.")
    for column in header:
        if header.count(column) > 1:
            raise DataError(f"{path}: column {column!r} appears more than once in the header.")
    tasks = [column for column in header if column not in CSV_FIXED_COLUMNS]
    if not tasks:
        raise DataError(f"{path}: no task columns; every column other than {', '.join(CSV_FIXED_COLUMNS)} "
                        f"holds one task's losses.")
    for task in tasks:
        if not task or GROUP_SEP in task:
            raise DataError(f"{path}: task column {task!r} needs a non-empty name without {GROUP_SEP!r}.")

    networks: list[Network] = []
    first_line: dict[str, int] = {}
    for line, raw in records[1:]:
        if not any(cell.strip() for cell in raw):
            continue  # a blank line, e.g. at the end of a hand-edited file
        if len(raw) != len(header):
            raise DataError(f"{path}, line {line}: {len(raw)} cells, but the header has {len(header)} columns.")
        row = dict(zip(header, (cell.strip() for cell in raw), strict=True))
        where = f"{path}, line {line}"
        name = row["network"]
        if not name or any(ch.isspace() for ch in name):
            raise DataError(f"{where}, column network: a network needs a name without spaces, got {name!r}.")
        if name in first_line:
            raise DataError(f"{where}, column network: network {name!r} is already named on line "
                            f"{first_line[name]}; names must be unique.")
        first_line[name] = line
        cost = _parse_number(row["cost"])
        if cost is None or cost < 0:
            raise DataError(f"{where}, column cost: network {name!r} has cost {row['cost']!r}; "
                            f"a cost must be a finite number >= 0.")
        if not row["group"]:
            raise DataError(f"{where}, column group: network {name!r} has no group; give the tasks it serves "
                            f"joined by {GROUP_SEP!r}.")
        members = [task.strip() for task in row["group"].split(GROUP_SEP)]
        unknown = [task for task in members if task not in tasks]
        if unknown:
            raise DataError(f"{where}, column group: network {name!r} has group {row['group']!r}, whose "
                            f"task(s) {', '.join(map(repr, unknown))} are not task columns "
                            f"(task columns: {', '.join(tasks)}).")
        if len(set(members)) != len(members):
            raise DataError(f"{where}, column group: network {name!r} has group {row['group']!r}, which names "
                            f"a task twice.")
        losses: dict[str, float] = {}
        for task in tasks:
            cell = row[task]
            if task not in members:
                if cell:
                    raise DataError(f"{where}, column {task}: network {name!r} has loss {cell!r} on task "
                                    f"{task!r}, which is not in its group {row['group']!r}; leave the cell "
                                    f"empty or add the task to the group.")
                continue
            if not cell:
                raise DataError(f"{where}, column {task}: network {name!r} has no loss on task {task!r} of its "
                                f"group {row['group']!r}; fill it in or drop the task from the group.")
            value = _parse_number(cell)
            if value is None:
                raise DataError(f"{where}, column {task}: network {name!r} has loss {cell!r}; a loss must be "
                                f"a finite number.")
            losses[task] = value
        networks.append(Network(name=name, group=GROUP_SEP.join(members), cost=cost, losses=losses))
    if not networks:
        raise DataError(f"{path}: the networks table has a header but no networks.")
    return networks, tasks


def _numbered_rows(reader: Any) -> Iterable[tuple[int, list[str]]]:
    """Rows with the file line each starts on (a quoted cell may span lines)."""
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1
