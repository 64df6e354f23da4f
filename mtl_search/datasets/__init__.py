"""Built-in tables: embedded real data and synthetic generators.

A spec names one as ``data.source: builtin:<name>`` and passes generator
options as ``data.params``. Each returns a :class:`BuiltinTable` with its
documented tasks, used when the spec gives no ``data.tasks``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from mtl_search.datasets import census_income, nhefs, planted
from mtl_search.datasets._table import BuiltinTable
from mtl_search.errors import DataError

BUILTINS: dict[str, Callable[..., BuiltinTable]] = {
    "census_income": census_income.load,
    "nhefs": nhefs.load,
    "planted": planted.generate,
}


def load_builtin(name: str, params: dict[str, Any]) -> BuiltinTable:
    """Load the built-in table ``name`` with ``params``.

    Raises:
        DataError: unknown name, unknown parameter, or a parameter value the generator rejects.
    """
    if name not in BUILTINS:
        hint = difflib.get_close_matches(name, BUILTINS, n=1)
        raise DataError(
            f"data.source: unknown built-in table 'builtin:{name}'; valid: "
            + ", ".join(f"builtin:{n}" for n in sorted(BUILTINS))
            + (f" (did you mean 'builtin:{hint[0]}'?)" if hint else "")
        )
    loader = BUILTINS[name]
    allowed = list(inspect.signature(loader).parameters)
    for key in params:
        if key not in allowed:
            raise DataError(
                f"data.params.{key}: unknown parameter for builtin:{name}; "
                f"allowed: {', '.join(allowed) if allowed else '(none)'}"
            )
    try:
        return loader(**params)
    except (TypeError, ValueError) as exc:
        raise DataError(f"data.params: builtin:{name} rejected its parameters: {exc}") from None


__all__ = ["BUILTINS", "BuiltinTable", "load_builtin"]
