"""What each loss-weighting scheme is, as the spec and the search see it: no torch.

A :class:`Scheme` declares a weighting scheme's name, whether it works on the
losses or on the tasks' gradients, whether its step can be replayed from a CUDA
graph, and its hyperparameters (default search domain and accepted values). The
spec validates ``space.weighting`` and ``space.weighting_params`` against
:data:`SCHEMES`, and the search samples from it, without importing torch; the
implementations (``mtl_search.weighting``, one module per scheme, each citing
its paper) train with these declarations.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mtl_search.domain import DOMAIN_KEYS, Domain, Interval, parse_domain


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a scheme: its default search domain and the values it accepts.

    The spec's ``space.weighting_params`` may replace the default domain (key
    ``<scheme>.<name>``); the search then samples it only for trials that use the scheme.

    Args:
        default: the domain searched when the spec says nothing (a constant: the paper's value).
        doc: one line for the README and error messages.
        values: the accepted values.
        per_task: one value per task of the group: sampled as ``<scheme>.<name>_<task>`` and
            passed to the scheme as a tuple in task order.
    """

    default: Domain
    doc: str
    values: Interval = Interval("real")
    per_task: bool = False

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not accepted, or None."""
        return self.values.check(value)


@dataclass(frozen=True)
class Scheme:
    """A weighting scheme's declaration.

    Args:
        name: the registry name (``space.weighting``).
        level: ``loss``: combines the task losses; ``gradient``: also sees every task's gradient of the
            shared layers each step and chooses their update.
        capturable: its per-step work is device-only (no host-side decisions, no CPU random generator,
            no reads back to the host), so the trainer may replay the step from a CUDA graph.
        hyperparameters: keyword arguments of the implementation that the search may sample.
    """

    name: str
    level: Literal["loss", "gradient"]
    capturable: bool = False
    hyperparameters: Mapping[str, Hyperparameter] = field(default_factory=dict)

    @property
    def needs_task_gradients(self) -> bool:
        """Whether the trainer must hand the scheme every task's gradient of the shared parameters."""
        return self.level == "gradient"

    def check(self, values: Mapping[str, Any]) -> None:
        """Validate keyword arguments against the declarations (per-task values each).

        Raises:
            ValueError: naming the scheme, the argument and its value.
        """
        for name, value in values.items():
            spec = self.hyperparameters[name]
            for item in (value if spec.per_task else (value,)):
                problem = spec.check(item)
                if problem:
                    raise ValueError(f"{self.name} {name} {problem}, but got {item!r}.")

    def params_for(self, tasks: Sequence[str], params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` without the per-task values of tasks outside ``tasks`` (a pack holding only some tasks)."""
        per_task = [name for name, spec in self.hyperparameters.items() if spec.per_task]
        others = {f"{name}_{task}" for name in per_task for task in set(_task_suffixes(params, name)) - set(tasks)}
        return {key: value for key, value in params.items() if key not in others}

    def resolve_params(self, tasks: Sequence[str], params: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the implementation from sampled values.

        A per-task hyperparameter ``p`` may come as ``p`` (a sequence in task order)
        or as one ``p_<task>`` per task (how the search samples it).

        Raises:
            ValueError: an unknown parameter, or a per-task one given for only some tasks.
        """
        out: dict[str, Any] = {}
        rest = dict(params)
        for name, spec in self.hyperparameters.items():
            if name in rest:
                out[name] = rest.pop(name)
            elif spec.per_task:
                keys = [f"{name}_{task}" for task in tasks]
                given = [key for key in keys if key in rest]
                if given and len(given) != len(keys):
                    missing = sorted(set(keys) - set(given))
                    raise ValueError(f"{self.name}: {name} needs one value per task; missing {', '.join(missing)}")
                if given:
                    out[name] = tuple(float(rest.pop(key)) for key in keys)
        if rest:
            valid = [f"{n}_<task>" if s.per_task else n for n, s in self.hyperparameters.items()]
            raise ValueError(f"{self.name}: unknown parameter(s) {', '.join(sorted(rest))}; "
                             f"valid: {', '.join(valid) or '(none)'}")
        return out


def _task_suffixes(params: Mapping[str, Any], name: str) -> list[str]:
    return [key[len(name) + 1:] for key in params if key.startswith(f"{name}_")]


_POSITIVE = Interval("real", 0.0, None, closed="neither")

SCHEMES: dict[str, Scheme] = {scheme.name: scheme for scheme in (
    # capturable: the step only combines device tensors (fixed buffers, learned parameters, or weights that
    # change in place between epochs); rlw draws on a CPU generator and the gradient-level schemes solve
    # their small problems on the host, so they train eagerly.
    Scheme("equal", "loss", capturable=True),
    Scheme("static", "loss", capturable=True, hyperparameters={
        "weight": Hyperparameter(Domain("float", (0.1, 10.0), log=True),
                                 "raw weight of each task (normalised to sum to T)", _POSITIVE, per_task=True)}),
    Scheme("uncertainty", "loss", capturable=True),
    Scheme("dwa", "loss", capturable=True, hyperparameters={
        "temperature": Hyperparameter(Domain.const(2.0), "softmax temperature T (larger: flatter weights)",
                                      _POSITIVE)}),
    Scheme("rlw", "loss"),
    Scheme("gradnorm", "gradient", hyperparameters={
        "alpha": Hyperparameter(Domain.const(1.5), "asymmetry: how strongly slow tasks are favoured",
                                Interval("real", 0.0, 10.0)),
        "lr": Hyperparameter(Domain.const(0.025), "step size of the loss weights",
                             Interval("real", 0.0, 1.0, closed="right"))}),
    Scheme("pcgrad", "gradient"),
    Scheme("cagrad", "gradient", hyperparameters={
        "c": Hyperparameter(Domain.const(0.4), "radius around the average gradient, relative to its norm",
                            Interval("real", 0.0, 0.999))}),
    Scheme("imtl", "gradient"),
    Scheme("nash_mtl", "gradient"),
)}


def get_scheme(name: str) -> Scheme:
    """The scheme registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown weighting {name!r}; valid: {', '.join(sorted(SCHEMES))}") from None


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
    for param, spec in get_scheme(name).hyperparameters.items():
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


def parse_scheme_params(raw: Any) -> dict[str, Domain]:
    """``space.weighting_params``: ``<scheme>.<param>`` -> a constant or a domain, each checked by its scheme.

    Also accepts the nested form ``{dwa: {temperature: ...}}`` (what
    ``--set space.weighting_params.dwa.temperature=3`` writes).
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("must map <scheme>.<param> to a constant or a domain, e.g. {dwa.temperature: {float: [1, 4]}}")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SCHEMES and isinstance(value, dict) and not set(value) & DOMAIN_KEYS:
            flat.update({f"{key}.{param}": inner for param, inner in value.items()})
        else:
            flat[str(key)] = value
    valid = sorted(f"{name}.{param}" for name, scheme in SCHEMES.items() for param in scheme.hyperparameters)
    out: dict[str, Domain] = {}
    for key, value in flat.items():
        scheme, _, param = key.partition(".")
        hyperparameter = SCHEMES[scheme].hyperparameters.get(param) if scheme in SCHEMES else None
        if hyperparameter is None:
            hint = difflib.get_close_matches(key, valid, n=1)
            raise ValueError(f"{key}: unknown scheme parameter; valid: {', '.join(valid)}"
                             + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        try:
            out[key] = value if isinstance(value, Domain) else parse_domain(value, hyperparameter.check)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return out
