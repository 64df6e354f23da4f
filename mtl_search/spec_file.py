"""Reading a spec: YAML (duplicate keys refused), ``--set`` overrides, and errors that name the key path.

Every error names the dotted key path (``data.tasks.income.type``) and what is
allowed there, and unknown keys are errors with a "did you mean" suggestion.
"""

from __future__ import annotations

import copy
import difflib
import json
import reprlib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mtl_search.config import BUILTIN_PREFIX, ExperimentSpec
from mtl_search.errors import SpecError


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


#: The most problems one message lists, and how much of a bad value it shows (a 645-byte YAML of nested
#: aliases expands to a value whose full repr is 140 MB).
MAX_ERRORS = 20
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 80, 80


def spec_from_dict(raw: dict[str, Any], *, base_dir: Path | None = None, origin: str = "spec") -> ExperimentSpec:
    """Validate a spec given as a dict (already parsed YAML)."""
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        lines = [format_error(error) for error in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            lines.append(f"... and {len(errors) - MAX_ERRORS} more")
        raise SpecError(f"invalid spec {origin}:\n  - " + "\n  - ".join(lines)) from None
    source = spec.data.source
    if not source.startswith(BUILTIN_PREFIX) and "://" not in source:
        resolved = Path(source).expanduser()
        if not resolved.is_absolute() and base_dir is not None:
            resolved = base_dir / resolved
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": str(resolved.resolve())})})
    return spec


def literal_override(key: str, value: object) -> str:
    """A ``key=value`` override whose value stays the literal string ``str(value)`` (quoted for YAML), so a
    name like ``2024`` or a folder like ``runs #2`` is not read as a number or cut at a comment."""
    return f"{key}={json.dumps(str(value))}"


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a copy of ``raw``."""
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
    return f"{path}: {message} (got {_SHORT.repr(error['input'])})"


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
