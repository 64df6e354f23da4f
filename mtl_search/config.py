"""The experiment spec: YAML schema, defaults, validation and the resolved copy.

Defaults live here, in code; a YAML file holds only what differs. Every error
names the dotted key path (``data.tasks.income.type``) and what is allowed
there, and unknown keys are errors with a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from mtl_search.errors import SpecError

TASK_TYPES = ("regression", "binary", "multiclass")
BUILTIN_PREFIX = "builtin:"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TASK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- domains


@dataclass(frozen=True)
class Domain:
    """One hyperparameter's search domain.

    ``kind`` is ``const`` (a fixed value), ``choice`` (categorical), ``int`` or
    ``float`` (a closed range, optionally log-uniform).
    """

    kind: Literal["const", "choice", "int", "float"]
    values: tuple[Any, ...]
    log: bool = False

    @classmethod
    def const(cls, value: Any) -> Domain:
        return cls("const", (value,))

    @classmethod
    def choice(cls, *options: Any) -> Domain:
        return cls("choice", tuple(options))

    @property
    def is_constant(self) -> bool:
        return self.kind == "const"

    def candidates(self) -> tuple[Any, ...]:
        """Every value this domain names explicitly (range ends for ranges)."""
        return self.values

    def low_high(self) -> tuple[Any, Any]:
        """The smallest and largest value the domain can produce."""
        if self.kind in ("int", "float"):
            return self.values[0], self.values[1]
        ordered = sorted(self.values)
        return ordered[0], ordered[-1]

    def default(self) -> Any:
        """A representative value: the constant, the first choice, or the range's middle."""
        if self.kind in ("const", "choice"):
            return self.values[0]
        low, high = self.values
        if self.kind == "int":
            return int(round(math.sqrt(low * high))) if self.log else (low + high) // 2
        return math.sqrt(low * high) if self.log else (low + high) / 2

    def to_yaml(self) -> Any:
        if self.kind == "const":
            return self.values[0]
        if self.kind == "choice":
            return {"choice": list(self.values)}
        out: dict[str, Any] = {self.kind: list(self.values)}
        if self.log:
            out["log"] = True
        return out


ValueCheck = Callable[[Any], "str | None"]


def _parse_domain(raw: Any, check: ValueCheck) -> Domain:
    """Turn a YAML value into a :class:`Domain`, checking every value it names."""
    if isinstance(raw, Domain):
        domain = raw
    elif isinstance(raw, dict):
        kinds = [k for k in ("choice", "int", "float") if k in raw]
        extra = set(raw) - {"choice", "int", "float", "log"}
        if len(kinds) != 1 or extra:
            raise ValueError(
                "a search domain is a constant, {choice: [...]}, {int: [lo, hi]} or "
                f"{{float: [lo, hi], log: true}}; got keys {sorted(raw)}"
            )
        kind = kinds[0]
        values = raw[kind]
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise ValueError(f"'log' must be true or false, got {log!r}")
        if kind == "choice":
            if not isinstance(values, list) or not values:
                raise ValueError("'choice' needs a non-empty list of values")
            if log:
                raise ValueError("'log' applies to int and float ranges only")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"'choice' lists a value twice: {values}")
            domain = Domain("choice", tuple(values))
        else:
            number = int if kind == "int" else (int, float)
            if (
                not isinstance(values, list)
                or len(values) != 2
                or not all(isinstance(v, number) and not isinstance(v, bool) for v in values)
            ):
                raise ValueError(f"'{kind}' needs a list [lo, hi] of two {kind} numbers, got {values!r}")
            low, high = values
            if low > high:
                raise ValueError(f"'{kind}' range [{low}, {high}] has lo > hi")
            if log and low <= 0:
                raise ValueError(f"a log range needs lo > 0, got [{low}, {high}]")
            domain = Domain(kind, (low if kind == "int" else float(low), high if kind == "int" else float(high)),
                            log)
    elif isinstance(raw, list):
        raise ValueError(f"a list is not a domain; to search over values write {{choice: {raw}}}")
    else:
        domain = Domain.const(raw)
    for value in domain.candidates():
        problem = check(value)
        if problem:
            raise ValueError(f"{value!r}: {problem}")
    return domain


def _domain_type(check: ValueCheck, normalise: Callable[[Any], Any] | None = None) -> Any:
    def validate(raw: Any) -> Domain:
        domain = _parse_domain(raw, check)
        if normalise is not None and domain.kind in ("const", "choice"):
            domain = Domain(domain.kind, tuple(normalise(v) for v in domain.values), domain.log)
        return domain

    return Annotated[Domain, BeforeValidator(validate), PlainSerializer(lambda d: d.to_yaml())]


def _int_at_least(minimum: int) -> ValueCheck:
    def check(value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            return f"must be an integer >= {minimum}"
        return None

    return check


def _float_in(low: float, high: float, *, low_open: bool = False) -> ValueCheck:
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (value > low if low_open else value >= low) and value <= high
        if not ok or not math.isfinite(value):
            if high == math.inf:
                return f"must be a finite number {'>' if low_open else '>='} {low:g}"
            return f"must be a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        return None

    return check


def parse_head_sizes(value: Any) -> tuple[int, ...]:
    """``"64,32"`` -> ``(64, 32)``; ``""``, ``"none"`` or ``0`` -> no hidden head layer."""
    if isinstance(value, bool):
        raise ValueError("head sizes are positive integers joined by commas, e.g. \"64,32\"")
    if isinstance(value, int):
        return () if value == 0 else (value,)
    if not isinstance(value, str):
        raise ValueError("head sizes are positive integers joined by commas, e.g. \"64,32\"")
    text = value.strip().lower()
    if text in ("", "none", "0"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError("head sizes are positive integers joined by commas, e.g. \"64,32\"") from None
    if any(size < 1 for size in sizes):
        raise ValueError("head sizes must be positive")
    return sizes


def _check_head_sizes(value: Any) -> str | None:
    try:
        parse_head_sizes(value)
    except ValueError as exc:
        return str(exc)
    return None


def _normalise_head_sizes(value: Any) -> str:
    # Optuna categoricals must be scalars; a canonical string keeps "64, 32" and "64,32" one choice.
    return ",".join(str(size) for size in parse_head_sizes(value))


def _check_weighting(value: Any) -> str | None:
    from mtl_search.weighting import WEIGHTINGS  # lazy: pulls in torch

    if not isinstance(value, str) or value not in WEIGHTINGS:  # a list or mapping here is a typo too
        return f"unknown weighting; valid: {', '.join(sorted(WEIGHTINGS))}"
    return None


_DOMAIN_KEYS = {"choice", "int", "float", "log"}


def _parse_weighting_params(raw: Any) -> dict[str, Domain]:
    """``space.weighting_params``: ``<scheme>.<param>`` -> a constant or a domain, each checked by its scheme.

    Also accepts the nested form ``{dwa: {temperature: ...}}`` (what
    ``--set space.weighting_params.dwa.temperature=3`` writes).
    """
    from mtl_search.weighting import WEIGHTINGS  # lazy: pulls in torch

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("must map <scheme>.<param> to a constant or a domain, e.g. {dwa.temperature: {float: [1, 4]}}")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if key in WEIGHTINGS and isinstance(value, dict) and not set(value) & _DOMAIN_KEYS:
            flat.update({f"{key}.{param}": inner for param, inner in value.items()})
        else:
            flat[str(key)] = value
    valid = sorted(f"{name}.{param}" for name, scheme in WEIGHTINGS.items() for param in scheme.hyperparameters)
    out: dict[str, Domain] = {}
    for key, value in flat.items():
        scheme, _, param = key.partition(".")
        hyperparameter = WEIGHTINGS[scheme].hyperparameters.get(param) if scheme in WEIGHTINGS else None
        if hyperparameter is None:
            hint = difflib.get_close_matches(key, valid, n=1)
            raise ValueError(f"{key}: unknown scheme parameter; valid: {', '.join(valid)}"
                             + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        try:
            out[key] = value if isinstance(value, Domain) else _parse_domain(value, hyperparameter.check)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return out


_WeightingParams = Annotated[dict[str, Any], BeforeValidator(_parse_weighting_params),
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
        from mtl_search.grouping import CANDIDATE_STRATEGIES

        if value not in CANDIDATE_STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; valid: {', '.join(sorted(CANDIDATE_STRATEGIES))}")
        return value


class ConfirmSpec(_Strict):
    """Retrain the networks of the top groupings with fresh seeds and report test metrics."""

    top_k: int = Field(3, ge=1)
    seeds: int = Field(3, ge=1)


class SpaceSpec(_Strict):
    """The per-trial hyperparameters: each a constant or a search domain."""

    depth: _domain_type(_int_at_least(1)) = Domain("int", (1, 3))  # type: ignore[valid-type]
    sharing_depth: _domain_type(_int_at_least(0)) = Domain("int", (0, 3))  # type: ignore[valid-type]
    width: _domain_type(_int_at_least(1)) = Domain.choice(64, 128, 256)  # type: ignore[valid-type]
    head_sizes: _domain_type(_check_head_sizes, _normalise_head_sizes) = Domain.choice("", "32")  # type: ignore[valid-type]
    weighting: _domain_type(_check_weighting) = Domain.choice("equal", "uncertainty", "dwa")  # type: ignore[valid-type]
    lr: _domain_type(_float_in(0.0, math.inf, low_open=True)) = Domain("float", (1e-4, 1e-2), log=True)  # type: ignore[valid-type]
    weight_decay: _domain_type(_float_in(0.0, 1.0)) = Domain.const(0.0)  # type: ignore[valid-type]
    dropout: _domain_type(_float_in(0.0, 0.9)) = Domain.const(0.0)  # type: ignore[valid-type]
    batch_size: _domain_type(_int_at_least(1)) = Domain.const(512)  # type: ignore[valid-type]
    epochs: _domain_type(_int_at_least(1)) = Domain.const(20)  # type: ignore[valid-type]
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
        return {name: getattr(self, name) for name in type(self).model_fields if name != "weighting_params"}

    @property
    def max_epochs(self) -> int:
        return int(self.epochs.values[0])


class SchedulerSpec(_Strict):
    """Early stopping. ``asha`` stops a trial only against trials of the same group."""

    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class SearchSpec(_Strict):
    """How many trials, how many at once, and how each trial runs."""

    num_samples: Any = "auto"
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
            raise ValueError(f"must be 'auto' (twice the number of candidate groups), 'groups' (one trial per "
                             f"group) or an integer >= 1, got {value!r}")
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
    seed: int = 0
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
        from mtl_search.baselines import BASELINES

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
        from mtl_search.weighting import WEIGHTINGS  # lazy: pulls in torch

        steering = sorted(str(name) for name in self.space.weighting.candidates()
                          if WEIGHTINGS[name].needs_task_gradients)
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
        from mtl_search.weighting import WEIGHTINGS  # lazy: pulls in torch

        problems = []
        if self.resources.gpus_per_worker == 0:
            problems.append("resources.gpus_per_worker is 0 (a CUDA graph needs a GPU)")
        if self.resources.workers_per_trial != 1:
            problems.append(f"resources.workers_per_trial is {self.resources.workers_per_trial} (captured steps "
                            "are single-worker)")
        eager = sorted(str(name) for name in self.space.weighting.candidates() if not WEIGHTINGS[name].capturable)
        if eager:
            problems.append(f"space.weighting may choose {', '.join(eager)}, whose step runs host-side logic")
        if problems:
            raise ValueError(f"train.cuda_graphs is 'on' but {'; '.join(problems)}: use train.cuda_graphs "
                             "'auto' (capture where possible) or change those settings")
        return self

    def result_dir(self) -> Path:
        """``<output>/<name>``, absolute."""
        return (Path(self.output).expanduser() / self.name).resolve()

    def to_yaml(self) -> str:
        """The resolved spec, every default filled in, as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- loading


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Read a YAML spec, apply ``--set`` overrides and validate it.

    A relative ``data.source`` path is resolved against the YAML file's folder.

    Raises:
        SpecError: the file is missing or unreadable, or the spec is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} does not exist; pass the path to a YAML spec such as "
                        "search_spaces/tabular.yaml")
    try:
        with path.open(encoding="utf-8") as stream:  # a stream, so YAML errors name the file
            raw = yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file {str(path)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(
            f"{path}: the spec must be a mapping of keys (name, data, space, ...), got {type(raw).__name__}"
        )
    raw = apply_overrides(raw, overrides)
    return spec_from_dict(raw, base_dir=path.resolve().parent, origin=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"a key must be a plain value (a word or a number), not a {type(key).__name__}",
                key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def spec_from_dict(raw: dict[str, Any], *, base_dir: Path | None = None, origin: str = "spec") -> ExperimentSpec:
    """Validate a spec given as a dict (already parsed YAML)."""
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [format_error(error) for error in exc.errors()]
        raise SpecError(f"invalid spec {origin}:\n  - " + "\n  - ".join(lines)) from None
    source = spec.data.source
    if not source.startswith(BUILTIN_PREFIX) and "://" not in source:
        resolved = Path(source).expanduser()
        if not resolved.is_absolute() and base_dir is not None:
            resolved = base_dir / resolved
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": str(resolved.resolve())})})
    return spec


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a copy of ``raw``."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected dotted.key=value, e.g. --set search.num_samples=4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"--set {item!r}: the value is not valid YAML: {exc}") from None
        parts = key.strip().split(".")
        if not all(part.strip() for part in parts):
            raise SpecError(f"--set {item!r}: {key.strip()!r} has an empty part; write the dotted path, "
                            "e.g. space.width")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None:
                    where = ".".join(parts[: depth + 1])
                    raise SpecError(f"--set {item!r}: {where} holds a value, not a mapping of keys")
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return out


def format_error(error: dict[str, Any]) -> str:
    """One readable line for a pydantic error: dotted path, problem, allowed values."""
    loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and "[" in part))
    path = ".".join(str(part) for part in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        text = f"{path}: unknown key; allowed here: {', '.join(allowed)}"
        return text + (f" (did you mean '{hint[0]}'?)" if hint else "")
    if kind == "missing":
        return f"{path}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across keys: its message names them itself
        return message
    if kind in ("value_error", "assertion_error") or "input" not in error:
        return f"{path}: {message}"
    return f"{path}: {message} (got {error['input']!r})"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found by walking ``loc`` from the top-level spec."""
    node: Any = ExperimentSpec
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return []
            node = field.annotation
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        else:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip ``X | None`` down to ``X``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation
