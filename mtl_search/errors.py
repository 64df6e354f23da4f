"""Error types that separate the user's mistakes from ours.

The CLI maps :class:`UserError` (and its subclasses) to exit code 2 and prints
only the message, which must say what is wrong, where, and how to fix it.
Anything else is an internal failure (exit code 1, traceback kept).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a spec, a data file or a command-line argument."""


class SpecError(UserError):
    """The experiment spec (YAML or ``--set``) is invalid."""


class DataError(UserError):
    """The data file or its columns cannot serve the spec."""


class ResultsExistError(UserError):
    """The output directory already holds results and neither overwrite nor resume was asked."""


class ResultsMissingError(UserError):
    """There are no results where a command expects them (e.g. nothing to resume)."""
