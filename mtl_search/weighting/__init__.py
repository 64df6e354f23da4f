"""Loss-weighting schemes: a small base class and an explicit registry.

Use :func:`make_weighting` to build one by name; unknown names are rejected
with the list of valid ones. Loss-level schemes: ``equal``, ``static``,
``uncertainty``, ``dwa``, ``rlw``. Gradient-level schemes (they need every
task's gradient of the shared layers each step): ``gradnorm``, ``pcgrad``,
``cagrad``, ``imtl``, ``nash_mtl``. See :mod:`mtl_search.weighting._base` for
the contract and each scheme's module for its paper and hyperparameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtl_search.config import Domain
from mtl_search.weighting._base import GramWeighting, Hyperparameter, SharedGradients, Weighting
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

WEIGHTINGS: dict[str, type[Weighting]] = {
    Equal.name: Equal,
    Static.name: Static,
    Uncertainty.name: Uncertainty,
    DWA.name: DWA,
    RLW.name: RLW,
    GradNorm.name: GradNorm,
    PCGrad.name: PCGrad,
    CAGrad.name: CAGrad,
    IMTL.name: IMTL,
    NashMTL.name: NashMTL,
}


def get_weighting(name: str) -> type[Weighting]:
    """The scheme registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    try:
        return WEIGHTINGS[name]
    except KeyError:
        raise ValueError(f"unknown weighting {name!r}; valid: {', '.join(sorted(WEIGHTINGS))}") from None


def make_weighting(name: str, tasks: Sequence[str], *, seed: int = 0, **params: Any) -> Weighting:
    """Build the scheme ``name`` for ``tasks``.

    ``params`` are the scheme's hyperparameters; a per-task one may be given as
    one ``<param>_<task>`` per task, as the search samples it (see
    :meth:`Weighting.resolve_params`). A group of one task always trains plainly
    (:class:`Equal`): every scheme reduces to that, so its parameters are ignored.

    Raises:
        ValueError: ``name`` is not registered, or a parameter is unknown or out of range.
    """
    cls = get_weighting(name)
    if len(tasks) == 1:
        return Equal(tasks, seed=seed)
    return cls(tasks, seed=seed, **cls.resolve_params(tasks, params))


def search_domains(name: str, tasks: Sequence[str], overrides: Mapping[str, Domain]) -> dict[str, Domain]:
    """What a trial of the group ``tasks`` using scheme ``name`` samples (or fixes), by trial-config key.

    Keys are ``<scheme>.<param>``, and ``<scheme>.<param>_<task>`` for a per-task
    parameter; domains are the scheme's defaults unless ``overrides`` (the spec's
    ``space.weighting_params``, keyed ``<scheme>.<param>``) replaces them. A group
    of one task trains plainly: nothing.
    """
    if len(tasks) == 1:
        return {}
    out: dict[str, Domain] = {}
    for param, spec in get_weighting(name).hyperparameters.items():
        key = f"{name}.{param}"
        domain = overrides.get(key, spec.default)
        if spec.per_task:
            out.update({f"{key}_{task}": domain for task in tasks})
        else:
            out[key] = domain
    return out


def config_params(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The scheme's hyperparameters in a flat trial config (keys ``<name>.<param>``), prefix removed."""
    prefix = f"{name}."
    return {key[len(prefix):]: value for key, value in config.items() if key.startswith(prefix)}


__all__ = [
    "CAGrad", "DWA", "IMTL", "RLW", "WEIGHTINGS", "Equal", "GradNorm", "GramWeighting", "Hyperparameter", "NashMTL",
    "PCGrad",
    "SharedGradients", "Static", "Uncertainty", "Weighting", "config_params", "get_weighting", "make_weighting",
    "search_domains",
]
