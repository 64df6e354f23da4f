"""What one trial trains: its hyperparameters, the network shape they give, and the run's settings.

:class:`TrialParams` is a point of the spec's space (what Optuna sampled, typed);
:class:`Architecture` the shape of a network it gives; :class:`TrialSettings` what
every trial of a run shares and nothing samples (seed, resources, checkpoints,
the device settings). Settings travel beside a trial's sampled config, never
inside it, so they stay out of Optuna's state and ``trials.csv``. No torch, no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtl_search.config import BACKBONES, ExperimentSpec, TrainSpec
from mtl_search.domain import parse_head_sizes
from mtl_search.schemes import config_params


@dataclass(frozen=True)
class Architecture:
    """Shape of one group's network.

    Args:
        depth: hidden trunk layers per task path.
        sharing_depth: how many of them the group's tasks share; clipped to ``depth``.
            A group of one task shares everything (there is nothing to branch).
        width: units per trunk/branch layer.
        head_sizes: hidden layers of each task head before its output layer.
        dropout: dropout after each hidden layer (0 disables).
        backbone: ``mlp`` (plain layers) or ``tabm`` (``members`` implicit members sharing every
            weight matrix, BatchEnsemble-style, see :mod:`mtl_search.model`).
        members: TabM's ensemble size ``k`` (1 for ``mlp``).
    """

    depth: int
    sharing_depth: int
    width: int
    head_sizes: tuple[int, ...] = ()
    dropout: float = 0.0
    backbone: str = "mlp"
    members: int = 1

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, but got {self.depth=}.")
        if self.sharing_depth < 0:
            raise ValueError(f"sharing_depth must be >= 0, but got {self.sharing_depth=}.")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, but got {self.width=}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), but got {self.dropout=}.")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONES)}")
        if self.members < 1 or (self.backbone == "mlp" and self.members != 1):
            raise ValueError(f"members must be 1 for an mlp and >= 1 for tabm, but got {self.members=} "
                             f"for {self.backbone=}.")

    def effective_sharing(self, num_tasks: int) -> int:
        """Layers actually shared: clipped to depth, and all of them for one task."""
        return self.depth if num_tasks == 1 else min(self.sharing_depth, self.depth)


@dataclass(frozen=True)
class TrialParams:
    """The hyperparameters of one trial (the spec's ``space``, one value each)."""

    depth: int
    sharing_depth: int
    width: int
    head_sizes: tuple[int, ...]
    weighting: str
    lr: float
    epochs: int
    batch_size: int = 512
    weight_decay: float = 0.0
    dropout: float = 0.0
    #: The features' numeric encoding; None: the prepared data's own (:attr:`mtl_search.data.PreparedData.encoding`).
    numeric_encoding: str | None = None
    backbone: str = "mlp"
    members: int = 8
    lr_schedule: str = "constant"
    grad_clip: float = 0.0
    patience: int = 0
    weighting_params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialParams:
        """Build from a trial config (the sampled values of the spec's space).

        The chosen scheme's hyperparameters are the config's ``<weighting>.<param>``
        keys (e.g. ``dwa.temperature``, ``static.weight_<task>``); other schemes' keys are ignored.
        """
        weighting = str(config["weighting"])
        return cls(
            depth=int(config["depth"]),
            sharing_depth=int(config["sharing_depth"]),
            width=int(config["width"]),
            head_sizes=parse_head_sizes(config["head_sizes"]),
            weighting=weighting,
            lr=float(config["lr"]),
            epochs=int(config["epochs"]),
            batch_size=int(config["batch_size"]),
            weight_decay=float(config["weight_decay"]),
            dropout=float(config["dropout"]),
            numeric_encoding=None if config.get("numeric_encoding") is None else str(config["numeric_encoding"]),
            backbone=str(config.get("backbone", "mlp")),
            members=int(config.get("members", 8)),
            lr_schedule=str(config.get("lr_schedule", "constant")),
            grad_clip=float(config.get("grad_clip", 0.0)),
            patience=int(config.get("patience", 0)),
            weighting_params={**config_params(weighting, config), **dict(config.get("weighting_params", {}))},
        )

    def architecture(self) -> Architecture:
        """The network shape these hyperparameters give."""
        return Architecture(self.depth, self.sharing_depth, self.width, self.head_sizes, self.dropout,
                            self.backbone, self.members if self.backbone == "tabm" else 1)


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a run shares: resolved once by the search, never sampled.

    Args:
        seed: seeds each trial's initialisation and batch order (the spec's ``seed``).
        workers: Ray Train workers per trial (``resources.workers_per_trial``).
        cpus_per_worker: CPUs each worker holds; also its torch threads.
        gpus_per_worker: GPUs each worker holds, resolved (``auto`` -> 0 or 1); fractional shares pack trials.
        train_storage: where the ``train`` executor's Ray Train runs keep their checkpoints.
        checkpoint_every: checkpoint each trial every this many epochs (0: never).
        train: how the training loop runs on its device (the spec's ``train:`` section).
        groups: the candidate groups a trial of ``unit: pack`` trains (a ``unit: group`` trial's group is in
            its sampled config).
        pack_size: the most networks a pack trains at once (None: every group in one pack).
        objective: what a pack trial reports as its score (:mod:`mtl_search.objective`).
    """

    seed: int = 0
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    train_storage: str = ""
    checkpoint_every: int = 1
    train: TrainSpec = field(default_factory=TrainSpec)
    groups: tuple[str, ...] = ()
    pack_size: int | None = None
    objective: str = "best_grouping"

    @classmethod
    def from_spec(cls, spec: ExperimentSpec, *, gpus_per_worker: float, train_storage: str = "",
                  groups: Sequence[str] = ()) -> TrialSettings:
        """The settings a spec gives, with the GPU share resolved (``auto`` -> 0 or 1) by whoever knows the
        cluster, and the candidate groups (trained by every trial of ``unit: pack``)."""
        return cls(seed=spec.seed, workers=spec.resources.workers_per_trial,
                   cpus_per_worker=spec.resources.cpus_per_worker, gpus_per_worker=float(gpus_per_worker),
                   train_storage=train_storage, checkpoint_every=spec.search.checkpoint_every, train=spec.train,
                   groups=tuple(groups), pack_size=spec.search.pack_size, objective=spec.search.objective)

    def trial_groups(self, config: Mapping[str, Any]) -> list[str]:
        """What a trial with this sampled ``config`` trains: its group (``unit: group``), else every candidate."""
        return [str(config["group"])] if "group" in config else list(self.groups)

    @property
    def threads(self) -> int:
        """Torch CPU threads of each worker: its whole CPUs (at least 1), so concurrent trials do not oversubscribe."""
        return max(1, int(self.cpus_per_worker))
