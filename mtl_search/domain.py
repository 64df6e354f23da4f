"""The search-space language: domains of hyperparameters and the values they accept.

A spec's ``space`` entry is a constant, ``{choice: [...]}``, ``{int: [lo, hi]}`` or
``{float: [lo, hi], log: true}``; :func:`parse_domain` turns one into a
:class:`Domain` and checks every value it names against an :class:`Interval`
(or another check), whose text is the error message.

A leaf module: it imports nothing of mtl_search, so the spec, the weighting
schemes and the search can all speak it (as Optuna's ``distributions.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

#: Why a value is refused (a phrase such as "must be an integer >= 1"), or None when it is accepted.
ValueCheck = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Interval:
    """The numbers a hyperparameter accepts; ``str()`` of it is how error messages describe them.

    Args:
        kind: ``int`` (whole numbers only) or ``real`` (any finite number, ints included).
        low, high: the bounds (``None``: unbounded on that side).
        closed: which bounds are included: ``both``, ``left``, ``right`` or ``neither``.
    """

    kind: Literal["int", "real"]
    low: float | None = None
    high: float | None = None
    closed: Literal["both", "left", "right", "neither"] = "both"

    def __contains__(self, value: object) -> bool:
        number = int if self.kind == "int" else (int, float)
        if not isinstance(value, number) or isinstance(value, bool) or not math.isfinite(value):
            return False
        left_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        right_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return left_ok and right_ok

    def __str__(self) -> str:
        what = "an integer" if self.kind == "int" else "a number"
        if self.low is not None and self.high is not None:
            left = "[" if self.closed in ("both", "left") else "("
            right = "]" if self.closed in ("both", "right") else ")"
            return f"{what} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{what} {'>=' if self.closed in ('both', 'left') else '>'} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<=' if self.closed in ('both', 'right') else '<'} {self.high:g}"
        return f"a finite {what.split()[-1]}"

    def check(self, value: Any) -> str | None:
        """``"must be <this interval>"`` when ``value`` lies outside it, else None."""
        return None if value in self else f"must be {self}"


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
        """The domain as the spec writes it."""
        if self.kind == "const":
            return self.values[0]
        if self.kind == "choice":
            return {"choice": list(self.values)}
        out: dict[str, Any] = {self.kind: list(self.values)}
        if self.log:
            out["log"] = True
        return out


#: The keys of a domain written as a mapping.
DOMAIN_KEYS = frozenset({"choice", "int", "float", "log"})


def parse_domain(raw: Any, check: ValueCheck) -> Domain:
    """Turn a YAML value into a :class:`Domain`, checking every value it names.

    Raises:
        ValueError: the value is not a domain, or one of its values fails ``check`` (the message says which).
    """
    if isinstance(raw, Domain):
        domain = raw
    elif isinstance(raw, dict):
        domain = _parse_mapping(raw)
    elif isinstance(raw, list):
        raise ValueError(f"a list is not a domain; to search over values write {{choice: {raw}}}")
    else:
        domain = Domain.const(raw)
    for value in domain.candidates():
        problem = check(value)
        if problem:
            raise ValueError(f"{value!r}: {problem}")
    return domain


def _parse_mapping(raw: dict[str, Any]) -> Domain:
    kinds = [k for k in ("choice", "int", "float") if k in raw]
    if len(kinds) != 1 or set(raw) - DOMAIN_KEYS:
        raise ValueError("a search domain is a constant, {choice: [...]}, {int: [lo, hi]} or "
                         f"{{float: [lo, hi], log: true}}; got keys {sorted(raw)}")
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
        return Domain("choice", tuple(values))
    number = int if kind == "int" else (int, float)
    if (not isinstance(values, list) or len(values) != 2
            or not all(isinstance(v, number) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"'{kind}' needs a list [lo, hi] of two {kind} numbers, got {values!r}")
    low, high = values
    if low > high:
        raise ValueError(f"'{kind}' range [{low}, {high}] has lo > hi")
    if log and low <= 0:
        raise ValueError(f"a log range needs lo > 0, got [{low}, {high}]")
    if kind == "float":
        low, high = float(low), float(high)
    return Domain(kind, (low, high), log)


_HEAD_SIZES_FORMAT = "head sizes are positive integers joined by commas, e.g. \"64,32\""


def parse_head_sizes(value: Any) -> tuple[int, ...]:
    """``"64,32"`` -> ``(64, 32)``; ``""``, ``"none"`` or ``0`` -> no hidden head layer.

    Raises:
        ValueError: ``value`` is not such a list.
    """
    if isinstance(value, bool):
        raise ValueError(_HEAD_SIZES_FORMAT)
    if isinstance(value, int):
        return () if value == 0 else (value,)
    if not isinstance(value, str):
        raise ValueError(_HEAD_SIZES_FORMAT)
    text = value.strip().lower()
    if text in ("", "none", "0"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(_HEAD_SIZES_FORMAT) from None
    if any(size < 1 for size in sizes):
        raise ValueError("head sizes must be positive")
    return sizes


def check_head_sizes(value: Any) -> str | None:
    """Why ``value`` is not a list of head sizes, or None (a :data:`ValueCheck`)."""
    try:
        parse_head_sizes(value)
    except ValueError as exc:
        return str(exc)
    return None


def format_head_sizes(value: Any) -> str:
    """The canonical text of head sizes (``"64, 32"`` -> ``"64,32"``): one Optuna choice per shape."""
    return ",".join(str(size) for size in parse_head_sizes(value))
