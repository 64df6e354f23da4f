"""Loss-weighting schemes: a small base class and an explicit registry.

Use :func:`make_weighting` to build one by name; unknown names are rejected
with the list of valid ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtl_search.weighting._base import Weighting
from mtl_search.weighting._dwa import DWA
from mtl_search.weighting._equal import Equal
from mtl_search.weighting._uncertainty import Uncertainty

WEIGHTINGS: dict[str, type[Weighting]] = {
    Equal.name: Equal,
    Uncertainty.name: Uncertainty,
    DWA.name: DWA,
}


def make_weighting(name: str, tasks: Sequence[str], **params: Any) -> Weighting:
    """Build the scheme ``name`` for ``tasks``.

    A group of one task always trains plainly (:class:`Equal`): every scheme
    reduces to that, so its parameters are ignored.

    Raises:
        ValueError: ``name`` is not registered.
    """
    try:
        cls = WEIGHTINGS[name]
    except KeyError:
        raise ValueError(f"unknown weighting {name!r}; valid: {', '.join(sorted(WEIGHTINGS))}") from None
    if len(tasks) == 1:
        return Equal(tasks)
    return cls(tasks, **params)


__all__ = ["DWA", "WEIGHTINGS", "Equal", "Uncertainty", "Weighting", "make_weighting"]
