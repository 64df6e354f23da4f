"""The value every built-in table loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class BuiltinTable:
    """A built-in table and what it documents about itself.

    Attributes:
        frame: the rows.
        tasks: documented tasks, name -> (column, type).
        exclude: columns never used as features (e.g. survey weights).
        description: one line for ``validate`` and the README.
    """

    frame: pd.DataFrame
    tasks: dict[str, tuple[str, str]]
    exclude: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""
