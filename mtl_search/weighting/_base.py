"""The contract every loss-weighting scheme follows.

Two kinds of scheme share one base class:

*Loss-level* schemes (``needs_task_gradients = False``) turn the vector of
per-task losses into one scalar with :meth:`Weighting.combine`; the trainer
backpropagates it into every parameter.

*Gradient-level* schemes (``needs_task_gradients = True``) also see, every
step, each task's gradient of the group's shared parameters and return the
update direction for those parameters from :meth:`Weighting.shared_gradient`.
The trainer then backpropagates :meth:`Weighting.combine` into the task-specific
parameters only and writes the returned direction into the shared parameters'
gradients. It calls :meth:`Weighting.shared_gradient` first, then
:meth:`Weighting.combine`, so a scheme may compute this step's weights in the
former and use them in the latter. A group that shares no layer has no shared
gradient: the trainer then uses :meth:`Weighting.combine` alone, so every
gradient-level scheme falls back to its loss-level combination.

Conventions:

* weights are on the scale of the plain sum of the task losses (``equal``: every
  weight 1); schemes that normalise their weights make them sum to the number
  of tasks ``T``, unless the scheme's docstring says otherwise;
* :meth:`Weighting.weights` returns the weights of the last step on the
  scheme's device: for loss-level schemes the factor of each task loss, for
  gradient-level schemes the coefficient ``w_k`` of each task gradient in the
  shared update ``d = sum_k w_k g_k`` (exact: every scheme here returns a
  combination of the task gradients). The trainer logs their mean over each
  epoch as ``weight/<task>``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mtl_search.config import Domain


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of a scheme: its default search domain and the values it accepts.

    The spec's ``space.weighting_params`` may replace the default domain (key
    ``<scheme>.<name>``); the search then samples it only for trials that use the
    scheme. Values must lie in ``low..high`` (``low`` excluded when ``low_open``).

    Args:
        default: the domain searched when the spec says nothing (a constant: the paper's value).
        doc: one line for the README and error messages.
        low, high, low_open: the accepted values.
        per_task: one value per task of the group: sampled as ``<scheme>.<name>_<task>`` and
            passed to the scheme as a tuple in task order.
    """

    default: Domain
    doc: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    per_task: bool = False

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not accepted, or None."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > self.low if self.low_open else value >= self.low) and value <= self.high
        if ok:
            return None
        if math.isinf(self.high):
            return f"must be a number {'>' if self.low_open else '>='} {self.low:g}"
        return f"must be a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class SharedGradients:
    """Every task's gradient of the group's shared parameters, flattened.

    Args:
        flat: ``[T, P]``: row ``k`` is task ``k``'s gradient of all shared parameters,
            concatenated in ``model.shared_parameters()`` order.
        last_layer: the columns of ``flat`` holding the last shared layer's weight matrix
            (GradNorm's ``W``).
    """

    flat: torch.Tensor
    last_layer: slice


class Weighting(nn.Module, ABC):
    """Combines a group's per-task losses (and, optionally, gradients) into one update.

    A scheme is an ``nn.Module`` so that learned weights (e.g. uncertainty's
    log-variances) are trained by the same optimiser as the network, and so that
    its state (buffers, random generator) travels in checkpoints.

    Subclasses set ``name``, declare ``hyperparameters`` (keyword arguments of
    ``__init__``) and implement :meth:`combine` and :meth:`weights`; gradient-level
    schemes set ``needs_task_gradients`` and implement :meth:`shared_gradient`.
    Schemes that adapt between epochs override :meth:`end_epoch`.

    Args:
        tasks: the group's task names, in the order losses are given.
        seed: seeds the scheme's own random generator (:attr:`generator`).
    """

    name: ClassVar[str]
    #: Whether the trainer must hand the scheme per-task gradients of the shared
    #: parameters (gradient-manipulation schemes); loss-level schemes leave it False.
    needs_task_gradients: ClassVar[bool] = False
    #: Whether the scheme's per-step work (:meth:`combine`, :meth:`weights`) is safe to capture in a
    #: CUDA graph and replay: device tensors only, no host-side decisions, no CPU random generator, no
    #: reading values back to the host. The trainer replays a captured step only for such schemes.
    capturable: ClassVar[bool] = False
    #: Keyword arguments of ``__init__`` that the search may sample, with their defaults.
    hyperparameters: ClassVar[Mapping[str, Hyperparameter]] = {}

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a weighting needs at least one task")
        self.tasks = tuple(tasks)
        self.seed = seed
        # On the CPU whatever the device: a scheme draws a few numbers per step, and a CPU generator's
        # state is the same on every machine, so a checkpoint resumes anywhere.
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @abstractmethod
    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """The scalar to backpropagate, from a vector of per-task losses.

        For a gradient-level scheme this trains the task-specific parameters only
        (and everything when the group shares no layer).
        """

    @abstractmethod
    def weights(self) -> torch.Tensor:
        """The per-task weights of the last step (detached), for logging; see the module docstring."""

    def shared_gradient(self, losses: torch.Tensor, gradients: SharedGradients) -> torch.Tensor:
        """The update direction ``[P]`` of the shared parameters (gradient-level schemes only).

        Args:
            losses: this step's per-task losses (detached).
            gradients: every task's gradient of the shared parameters.
        """
        raise NotImplementedError(f"{type(self).__name__} is a loss-level scheme: it has no shared_gradient")

    def end_epoch(self, epoch_losses: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Called after each epoch with the epoch's mean training loss per task."""

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    @classmethod
    def resolve_params(cls, tasks: Sequence[str], params: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``__init__`` from sampled values.

        A per-task hyperparameter ``p`` may come as ``p`` (a sequence in task order)
        or as one ``p_<task>`` per task (how the search samples it).

        Raises:
            ValueError: an unknown parameter, or a per-task one given for only some tasks.
        """
        out: dict[str, Any] = {}
        rest = dict(params)
        for name, spec in cls.hyperparameters.items():
            if name in rest:
                out[name] = rest.pop(name)
            elif spec.per_task:
                keys = [f"{name}_{task}" for task in tasks]
                given = [key for key in keys if key in rest]
                if given and len(given) != len(keys):
                    missing = sorted(set(keys) - set(given))
                    raise ValueError(f"{cls.name}: {name} needs one value per task; missing {', '.join(missing)}")
                if given:
                    out[name] = tuple(float(rest.pop(key)) for key in keys)
        if rest:
            valid = [f"{n}_<task>" if s.per_task else n for n, s in cls.hyperparameters.items()]
            raise ValueError(f"{cls.name}: unknown parameter(s) {', '.join(sorted(rest))}; "
                             f"valid: {', '.join(valid) or '(none)'}")
        return out


def check_hyperparameters(scheme: type[Weighting], values: Mapping[str, Any]) -> None:
    """Validate constructor arguments against the scheme's declarations (per-task values each).

    Raises:
        ValueError: naming the scheme, the argument and its value.
    """
    for name, value in values.items():
        spec = scheme.hyperparameters[name]
        for item in (value if spec.per_task else (value,)):
            problem = spec.check(item)
            if problem:
                raise ValueError(f"{scheme.name} {name} {problem}, but got {item!r}.")


class GramWeighting(Weighting):
    """A gradient-level scheme that weighs the tasks' shared gradients by solving a ``T x T`` problem.

    Subclasses implement :meth:`coefficients`: per-task weights ``w`` from the Gram
    matrix ``G G^T`` of the task gradients; the shared layers then move along
    ``sum_k w_k g_k``, and ``weight/<task>`` logs ``w``. Task-specific layers train
    on the plain sum of the losses.
    """

    needs_task_gradients = True

    def __init__(self, tasks: Sequence[str], *, seed: int = 0) -> None:
        super().__init__(tasks, seed=seed)
        self.register_buffer("_weights", torch.ones(self.num_tasks))

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.sum()

    def weights(self) -> torch.Tensor:
        return self._weights.clone()

    @abstractmethod
    def coefficients(self, products: torch.Tensor) -> torch.Tensor:
        """Per-task weights of the shared update, from ``products = G G^T`` (float64, CPU)."""

    def shared_gradient(self, losses: torch.Tensor, gradients: SharedGradients) -> torch.Tensor:
        weights = self.coefficients(gram(gradients.flat))
        self._weights.copy_(weights)
        return combination(weights, gradients.flat)


def gram(flat: torch.Tensor) -> torch.Tensor:
    """``G G^T`` of the task gradients, in float64 on the CPU.

    The gradient-level schemes solve small ``T x T`` problems: doing them on the CPU
    costs one small device-to-host copy per step and keeps the solvers exact and simple.
    """
    return (flat @ flat.T).to("cpu", torch.float64)


def combination(weights: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``sum_k weights_k * flat_k``, with the weights moved to ``flat``'s device and dtype."""
    return weights.to(flat.device, flat.dtype) @ flat
