"""The experiment spec: its schema, defaults in code, validation and the resolved copy.

Defaults live here, in code; a YAML file holds only what differs. Every error
names the dotted key path (``data.tasks.income.type``) and what is allowed
there, and unknown keys are errors with a "did you mean" suggestion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from mtl_search.baselines import BASELINES
from mtl_search.domain import (
    Domain,
    Interval,
    ValueCheck,
    check_head_sizes,
    format_head_sizes,
    parse_domain,
)
from mtl_search.errors import SpecError
from mtl_search.grouping import CANDIDATE_STRATEGIES, CandidateStrategy, make_strategy
from mtl_search.schedule import SCHEDULES
from mtl_search.schemes import SCHEMES, parse_scheme_params

BUILTIN_PREFIX = "builtin:"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TASK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- domains


def _domain_type(check: ValueCheck, normalise: Callable[[Any], Any] | None = None) -> Any:
    """A pydantic field type: a :class:`Domain` parsed from YAML, each value checked, written back as YAML."""
    def validate(raw: Any) -> Domain:
        domain = parse_domain(raw, check)
        if normalise is not None and domain.kind in ("const", "choice"):
            domain = Domain(domain.kind, tuple(normalise(v) for v in domain.values), domain.log)
        return domain

    return Annotated[Domain, BeforeValidator(validate), PlainSerializer(lambda d: d.to_yaml())]


#: The network families a trial can train (``space.backbone``; :mod:`mtl_search.model`).
BACKBONES = ("mlp", "tabm")
#: How numeric features reach the networks (``space.numeric_encoding``; :func:`mtl_search.encoding.encode_features`).
NUMERIC_ENCODINGS = ("standard", "quantile", "piecewise_linear", "periodic")


def _one_of(key: str, names: Sequence[str]) -> ValueCheck:
    """A value check accepting only the strings ``names`` (a list or mapping here is a typo too)."""
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or value not in names:
            return f"unknown {key}; valid: {', '.join(names)}"
        return None

    return check


_WeightingParams = Annotated[dict[str, Any], BeforeValidator(parse_scheme_params),
                             PlainSerializer(lambda params: {key: d.to_yaml() for key, d in params.items()})]


# --------------------------------------------------------------------------- schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_default=False)


class TaskSpec(_Strict):
    """One target: which column holds it and what kind of prediction it is.

    ``positive`` (binary only) derives a yes/no task from a column of many values:
    the listed values are the positive class, every other non-missing value the
    negative one, e.g. ``{column: marital_stat, type: binary, positive: [Never married]}``.
    """

    column: str
    type: Literal["regression", "binary", "multiclass"]
    positive: list[str | int | float] | None = None

    @model_validator(mode="after")
    def _positive_is_binary(self) -> TaskSpec:
        if self.positive is None:
            return self
        if self.type != "binary":
            raise ValueError(f"positive lists the values of a binary task's positive class, but type is "
                             f"{self.type!r}: use type binary, or remove positive")
        if not self.positive:
            raise ValueError("positive needs at least one value, e.g. positive: [Never married]")
        shown = [str(value) for value in self.positive]
        duplicates = sorted({value for value in shown if shown.count(value) > 1})
        if duplicates:
            raise ValueError(f"positive lists {', '.join(duplicates)} twice")
        return self


class SplitSpec(_Strict):
    """Fractions of rows held out for validation (model selection) and test (reporting).

    With ``column``, the split follows that column instead (e.g. a data set's original
    train/test files): its values ``train``, ``valid`` and ``test`` name each row's split,
    and ``test`` is unused. If it names no validation rows, a seeded fraction ``valid`` of
    the ``valid_from`` split (``train`` unless given) becomes the validation split.
    """

    valid: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    column: str | None = None
    valid_from: Literal["train", "test"] | None = None

    @model_validator(mode="after")
    def _valid_from_needs_column(self) -> SplitSpec:
        if self.valid_from is not None and self.column is None:
            raise ValueError("valid_from takes validation rows from a split that split.column names; "
                             "set split.column (a column holding train/valid/test) or remove valid_from")
        return self

    @model_validator(mode="after")
    def _leave_training_rows(self) -> SplitSpec:
        if self.column is None and self.valid + self.test > 0.9:
            raise ValueError(f"valid + test = {self.valid + self.test:g} leaves under 10% to train; keep it <= 0.9")
        return self


class DataSpec(_Strict):
    """Where the table comes from and which columns are features and targets."""

    source: str
    params: dict[str, Any] = Field(default_factory=dict)
    features: Any = "auto"
    drop: list[str] = Field(default_factory=list)
    tasks: dict[str, TaskSpec] | None = None
    split: SplitSpec = Field(default_factory=SplitSpec)
    #: The most one-hot columns a categorical feature becomes (its most frequent categories; the rest share one).
    max_categories: int = Field(256, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _encoding_moved(cls, values: Any) -> Any:
        if isinstance(values, dict) and "numeric_encoding" in values:
            raise ValueError(f"data.numeric_encoding is now space.numeric_encoding, a hyperparameter the search can "
                             f"choose: write space: {{numeric_encoding: {values['numeric_encoding']}}} (or a "
                             "{choice: [...]}) and remove it from data")
        return values

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ValueError("must be 'auto' or a non-empty list of column names")
        duplicates = sorted({v for v in value if value.count(v) > 1})
        if duplicates:
            raise ValueError(f"lists column(s) twice: {', '.join(duplicates)}")
        return value

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskSpec] | None) -> dict[str, TaskSpec] | None:
        if tasks is None:
            return None
        if not tasks:
            raise ValueError("needs at least one task (name: {column: ..., type: ...})")
        for name in tasks:
            if not _TASK_NAME_RE.match(name):
                raise ValueError(
                    f"task name {name!r} must start with a letter and hold only letters, digits and '_' "
                    "('+' and '|' separate tasks in group ids)"
                )
        columns = [t.column for t in tasks.values()]
        duplicates = sorted({c for c in columns if columns.count(c) > 1})
        if duplicates:
            raise ValueError(f"column(s) {', '.join(duplicates)} used by more than one task")
        return tasks


class AffinitySpec(_Strict):
    """The all-task run that measures inter-task affinity (``grouping.candidates: affinity``)."""

    epochs: int | None = Field(None, ge=1)
    every: int = Field(1, ge=1)


class GroupingSpec(_Strict):
    """How candidate groups of tasks are proposed, and which groupings are ranked."""

    candidates: str = "exhaustive"
    max_group_size: int | None = Field(None, ge=1)
    max_groups: int | None = Field(None, ge=1)
    top_k: int = Field(3, ge=1)
    cost: Literal["networks", "params"] = "networks"
    affinity: AffinitySpec = Field(default_factory=AffinitySpec)

    @field_validator("candidates")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in CANDIDATE_STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; valid: {', '.join(sorted(CANDIDATE_STRATEGIES))}")
        return value

    def strategy(self) -> CandidateStrategy:
        """The candidate strategy these settings name, with its options."""
        return make_strategy(self.candidates, max_group_size=self.max_group_size, top_k=self.top_k,
                             max_groups=self.max_groups)

    def check_size(self, tasks: Sequence[str]) -> None:
        """Refuse a strategy that would train more groups than a search can, before any is listed.

        Raises:
            SpecError: too many candidate groups (the message names the count and the keys to change).
        """
        try:
            self.strategy().check_size(tasks)
        except ValueError as error:
            raise SpecError(f"grouping.candidates: {error}") from None


class ConfirmSpec(_Strict):
    """Retrain the networks of the top groupings with fresh seeds and report test metrics."""

    top_k: int = Field(3, ge=1)
    seeds: int = Field(3, ge=1, le=1000)


_AT_LEAST_1 = Interval("int", 1)


class SpaceSpec(_Strict):
    """The per-trial hyperparameters: each a constant or a search domain."""

    depth: _domain_type(_AT_LEAST_1.check) = Domain("int", (1, 3))  # type: ignore[valid-type]
    sharing_depth: _domain_type(Interval("int", 0).check) = Domain("int", (0, 3))  # type: ignore[valid-type]
    width: _domain_type(_AT_LEAST_1.check) = Domain.choice(64, 128, 256)  # type: ignore[valid-type]
    head_sizes: _domain_type(check_head_sizes, format_head_sizes) = Domain.choice("", "32")  # type: ignore[valid-type]
    weighting: _domain_type(_one_of("weighting", sorted(SCHEMES))) = Domain.choice("equal", "uncertainty", "dwa")  # type: ignore[valid-type]
    lr: _domain_type(Interval("real", 0.0, None, closed="neither").check) = Domain(  # type: ignore[valid-type]
        "float", (1e-4, 1e-2), log=True)
    weight_decay: _domain_type(Interval("real", 0.0, 1.0).check) = Domain.const(0.0)  # type: ignore[valid-type]
    dropout: _domain_type(Interval("real", 0.0, 0.9).check) = Domain.const(0.0)  # type: ignore[valid-type]
    #: standard | quantile | piecewise_linear | periodic; every encoding the space may choose is prepared once.
    numeric_encoding: _domain_type(_one_of("numeric_encoding", NUMERIC_ENCODINGS)) = Domain.const("periodic")  # type: ignore[valid-type]
    #: ``mlp``, or ``tabm``: ``members`` implicit members sharing every weight matrix (:mod:`mtl_search.model`).
    backbone: _domain_type(_one_of("backbone", BACKBONES)) = Domain.const("mlp")  # type: ignore[valid-type]
    #: TabM's ensemble size ``k`` (ignored by ``mlp``).
    members: _domain_type(_AT_LEAST_1.check) = Domain.const(8)  # type: ignore[valid-type]
    #: ``constant``, ``cosine`` or ``linear`` (both with a short warm-up; :mod:`mtl_search.schedule`).
    lr_schedule: _domain_type(_one_of("lr_schedule", list(SCHEDULES))) = Domain.const("cosine")  # type: ignore[valid-type]
    #: Each network's gradient norm is clipped to this (0: no clipping).
    grad_clip: _domain_type(Interval("real", 0.0).check) = Domain.const(0.0)  # type: ignore[valid-type]
    #: A pack stops once none of its networks improved its validation score for this many epochs (0: never).
    patience: _domain_type(Interval("int", 0).check) = Domain.const(0)  # type: ignore[valid-type]
    batch_size: _domain_type(_AT_LEAST_1.check) = Domain.const(512)  # type: ignore[valid-type]
    epochs: _domain_type(_AT_LEAST_1.check) = Domain.const(20)  # type: ignore[valid-type]
    #: The weighting schemes' own hyperparameters, ``<scheme>.<param>`` -> a constant or a domain
    #: (e.g. ``dwa.temperature: {float: [1, 4]}``), replacing the scheme's default. The search samples
    #: them only in trials that use the scheme; unset ones keep the scheme's default (see README).
    weighting_params: _WeightingParams = Field(default_factory=dict)

    @model_validator(mode="after")
    def _epochs_fixed(self) -> SpaceSpec:
        if not self.epochs.is_constant:
            raise ValueError(
                "space.epochs must be a constant: it is the trial budget ASHA stops against "
                "(early stopping already shortens unpromising trials)"
            )
        return self

    @model_validator(mode="after")
    def _weighting_params_used(self) -> SpaceSpec:
        chosen = set(self.weighting.candidates())
        unused = sorted(key for key in self.weighting_params if key.partition(".")[0] not in chosen)
        if unused:
            raise ValueError(
                f"weighting_params sets {', '.join(unused)}, but space.weighting never chooses "
                f"{', '.join(sorted({key.partition('.')[0] for key in unused}))} (it chooses "
                f"{', '.join(map(str, self.weighting.candidates()))}): add the scheme to space.weighting "
                "or remove the key (--set 'space.weighting_params={}' clears them all)"
            )
        return self

    def domains(self) -> dict[str, Domain]:
        """Every top-level hyperparameter's domain, by name, in declaration order.

        The schemes' own hyperparameters are in :attr:`weighting_params`: they are
        searched only for the scheme they belong to.
        """
        return {name: getattr(self, name) for name in HYPERPARAMETERS}

    @property
    def max_epochs(self) -> int:
        return int(self.epochs.values[0])

    def defaults(self) -> dict[str, Any]:
        """Every hyperparameter at its domain's default (what a group's seed trial uses)."""
        return {name: domain.default() for name, domain in self.domains().items()}


#: The hyperparameters of every trial, in the spec's order (``trials.csv`` and ``groups.csv`` columns).
HYPERPARAMETERS: tuple[str, ...] = tuple(name for name in SpaceSpec.model_fields if name != "weighting_params")


class SchedulerSpec(_Strict):
    """Early stopping. ``asha`` stops a trial only against trials of the same group."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


#: ``search.num_samples: auto`` with ``unit: pack``: configurations, each training every candidate group.
PACK_SAMPLES = 10


class SearchSpec(_Strict):
    """How many trials, how many at once, and how each trial runs.

    ``unit`` is what one trial trains: ``pack`` (the default) every candidate group's network under
    one sampled configuration, as one packed model (``pack_size`` networks at most per pack; more
    packs run in turn inside the trial), so every group sees every configuration; ``group`` one
    network of one group, the group being a searched hyperparameter.
    """

    unit: Literal["pack", "group"] = "pack"
    pack_size: int | None = Field(None, ge=1)
    objective: Literal["best_grouping", "mean"] = "best_grouping"
    num_samples: Any = "auto"
    #: Trials TPE samples at random before it models the scores (:meth:`ExperimentSpec.startup_trials`).
    startup_trials: Literal["auto"] | Annotated[int, Field(ge=1)] = "auto"
    max_concurrent_trials: int = Field(2, ge=1)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    trial_executor: Literal["train", "inline"] = "train"
    max_failures: int = Field(0, ge=0)
    checkpoint_every: int = Field(1, ge=0)

    @field_validator("num_samples", mode="before")
    @classmethod
    def _num_samples(cls, value: Any) -> Any:
        if value in ("auto", "groups"):
            return value
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"must be 'auto', 'groups' (unit group: one trial per group) or an integer >= 1 "
                             f"(unit pack: configurations; unit group: trials), got {value!r}")
        return value


class ResourcesSpec(_Strict):
    """What each trial holds: Ray Train workers, CPUs and GPUs per worker."""

    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: Any = "auto"

    @field_validator("gpus_per_worker", mode="before")
    @classmethod
    def _gpus(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"must be 'auto' (1 if a GPU is visible, else 0) or a number >= 0, got {value!r}")
        return float(value)


class TrainSpec(_Strict):
    """How each trial's training loop runs on its device (speed settings; see ``mtl_search.train``).

    ``cuda_graphs``: ``auto`` captures the training step in a CUDA graph where that
    is possible (a CUDA device, one worker, a scheme whose step is graph-safe) and
    trains eagerly elsewhere; ``on`` insists (a trial that cannot be captured fails
    with the reason); ``off`` never captures. ``amp``: ``bf16`` runs the forward pass
    in bfloat16 under autocast (losses and metrics stay float32); ``none`` trains in float32.
    """

    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    amp: Literal["none", "bf16"] = "none"

    @field_validator("cuda_graphs", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off as true/false: take them as the words the user wrote.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class ExperimentSpec(_Strict):
    """A whole experiment: data, candidate groups, search space, search and resources."""

    name: str
    #: numpy and scikit-learn take seeds 0 .. 2^32 - 1; confirm adds up to 1,000 (confirm.seeds).
    seed: int = Field(0, ge=0, le=2**32 - 1 - 1000)
    data: DataSpec
    grouping: GroupingSpec = Field(default_factory=GroupingSpec)
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    confirm: ConfirmSpec | None = None
    baselines: list[str] = Field(default_factory=lambda: ["gbdt"])
    tracking: Literal["none", "mlflow", "tensorboard"] = "none"
    output: str = "results"

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {', '.join(map(repr, unknown))}; valid: "
                             f"{', '.join(sorted(BASELINES))} (an empty list [] turns baselines off)")
        if len(set(names)) != len(names):
            raise ValueError(f"lists a baseline twice: {names}")
        return names

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is used as a directory name: use letters, digits, '.', '_' and '-' only"
            )
        return value

    @model_validator(mode="after")
    def _sharing_reachable(self) -> ExperimentSpec:
        low_sharing, _ = self.space.sharing_depth.low_high()
        _, high_depth = self.space.depth.low_high()
        if low_sharing > high_depth:
            raise ValueError(
                f"space.sharing_depth is at least {low_sharing} but space.depth is at most {high_depth}: "
                "no trial can share more layers than the network has; lower sharing_depth or raise depth"
            )
        return self

    @model_validator(mode="after")
    def _inline_is_single_worker(self) -> ExperimentSpec:
        if self.search.trial_executor == "inline" and self.resources.workers_per_trial != 1:
            raise ValueError(
                f"search.trial_executor 'inline' trains in the trial's own process, so "
                f"resources.workers_per_trial must be 1 (got {self.resources.workers_per_trial}); "
                "use trial_executor 'train' for data-parallel trials"
            )
        return self

    @model_validator(mode="after")
    def _gradient_weightings_are_single_worker(self) -> ExperimentSpec:
        if self.resources.workers_per_trial == 1:
            return self
        steering = sorted(str(name) for name in self.space.weighting.candidates()
                          if SCHEMES[name].needs_task_gradients)
        if steering:
            raise ValueError(
                f"space.weighting may choose {', '.join(steering)}, which set the shared layers' gradient "
                f"from every task's gradient and do not support data-parallel trials, but "
                f"resources.workers_per_trial is {self.resources.workers_per_trial}: set "
                "resources.workers_per_trial to 1 or remove them from space.weighting"
            )
        return self

    @model_validator(mode="after")
    def _cuda_graphs_on_is_possible(self) -> ExperimentSpec:
        if self.train.cuda_graphs != "on":
            return self
        problems = []
        if self.resources.gpus_per_worker == 0:
            problems.append("resources.gpus_per_worker is 0 (a CUDA graph needs a GPU)")
        if self.resources.workers_per_trial != 1:
            problems.append(f"resources.workers_per_trial is {self.resources.workers_per_trial} (captured steps "
                            "are single-worker)")
        eager = sorted(str(name) for name in self.space.weighting.candidates() if not SCHEMES[name].capturable)
        if eager:
            problems.append(f"space.weighting may choose {', '.join(eager)}, whose step runs host-side logic")
        if problems:
            raise ValueError(f"train.cuda_graphs is 'on' but {'; '.join(problems)}: use train.cuda_graphs "
                             "'auto' (capture where possible) or change those settings")
        return self

    def startup_trials(self, num_samples: int) -> int:
        """Trials TPE samples at random before it models the scores (``search.startup_trials``; seed points count).

        ``auto``: Optuna's 10, or a third of a smaller budget: with Optuna's default a search of 8
        configurations (the default spec's) would never reach TPE at all.
        """
        requested = self.search.startup_trials
        return min(10, max(1, num_samples // 3)) if requested == "auto" else int(requested)

    def num_samples(self, groups: Sequence[str]) -> int:
        """Trials for these candidate groups (``search.num_samples``).

        ``unit: pack``: configurations, each training every group; ``auto`` is :data:`PACK_SAMPLES`.
        ``unit: group``: ``auto`` is twice the groups, ``groups`` one each.

        Raises:
            SpecError: ``groups`` with unit pack; fewer samples than groups with unit group (every group
                needs a seed trial).
        """
        requested = self.search.num_samples
        if self.search.unit == "pack":
            if requested == "groups":
                raise SpecError("search.num_samples 'groups' (one trial per group) is for search.unit 'group'; "
                                "with unit 'pack' every trial trains every group under one configuration: give "
                                f"the number of configurations, or 'auto' ({PACK_SAMPLES})")
            return PACK_SAMPLES if requested == "auto" else int(requested)
        if requested == "auto":
            return 2 * len(groups)
        if requested == "groups":
            return len(groups)
        if requested < len(groups):
            raise SpecError(
                f"search.num_samples={requested} is smaller than the {len(groups)} candidate groups, and every "
                f"group needs at least one trial: set search.num_samples >= {len(groups)} (or 'auto'), or "
                "propose fewer groups (grouping.max_group_size)"
            )
        return int(requested)

    def result_dir(self) -> Path:
        """``<output>/<name>``, absolute."""
        return (Path(self.output).expanduser() / self.name).resolve()

    def to_yaml(self) -> str:
        """The resolved spec, every default filled in, as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
