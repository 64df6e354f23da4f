"""Loss-weighting schemes (PyTorch), for a pack of groups at once: a small base class and an explicit registry.

Use :func:`make_weighting` to build one by name; unknown names are rejected
with the list of valid ones. What each scheme is (loss- or gradient-level, its
hyperparameters) is declared torch-free in :mod:`mtl_search.schemes`; this
package implements them, one module per scheme citing its paper. See
:mod:`mtl_search.weighting._base` for the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtl_search.schemes import get_scheme
from mtl_search.weighting._base import GramWeighting, SharedGradients, Weighting
from mtl_search.weighting._cagrad import CAGrad
from mtl_search.weighting._dwa import DWA
from mtl_search.weighting._equal import Equal
from mtl_search.weighting._gradnorm import GradNorm
from mtl_search.weighting._imtl import IMTL
from mtl_search.weighting._nash import NashMTL
from mtl_search.weighting._pcgrad import PCGrad
from mtl_search.weighting._rlw import RLW
from mtl_search.weighting._static import Static
from mtl_search.weighting._uncertainty import Uncertainty

#: Implementation of every scheme in :data:`mtl_search.schemes.SCHEMES`, by name (a contract test keeps them equal).
WEIGHTINGS: dict[str, type[Weighting]] = {cls.scheme.name: cls for cls in (
    Equal, Static, Uncertainty, DWA, RLW, GradNorm, PCGrad, CAGrad, IMTL, NashMTL)}


def make_weighting(name: str, tasks: Sequence[str], groups: Sequence[Sequence[str]] | None = None, *,
                   seed: int = 0, **params: Any) -> Weighting:
    """Build the scheme ``name`` for the groups of a pack (default: one group of all ``tasks``).

    ``params`` are the scheme's hyperparameters; a per-task one may be given as
    one ``<param>_<task>`` per task of ``tasks``, as the search samples it (see
    :meth:`mtl_search.schemes.Scheme.resolve_params`). A group of one task trains
    plainly whatever the scheme (every scheme reduces to that).

    Raises:
        ValueError: ``name`` is not registered, or a parameter is unknown or out of range.
    """
    scheme = get_scheme(name)
    return WEIGHTINGS[scheme.name](tasks, groups, seed=seed, **scheme.resolve_params(tasks, params))


__all__ = [
    "CAGrad", "DWA", "IMTL", "RLW", "WEIGHTINGS", "Equal", "GradNorm", "GramWeighting", "NashMTL", "PCGrad",
    "SharedGradients", "Static", "Uncertainty", "Weighting", "make_weighting",
]
