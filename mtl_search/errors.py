"""Error types that separate the user's mistakes from ours, and the two styles of their messages.

The CLI maps :class:`UserError` (and its subclasses) to exit code 2 and prints
only the message; anything else is an internal failure (exit code 1, traceback kept).

* A **user error** (bad spec, data, result directory or argument) says where, what,
  the valid values and how to fix it, in that order:
  ``data.tasks.income.column: column 'incme' not found in census.csv (close: income); ...``.
  The spec's validators raise ``ValueError`` with the part after the key path; the
  loader adds the dotted path and raises :class:`SpecError`.
* A **programmer error** (a library function called with a bad argument) follows
  Optuna's style, naming the argument and its value: ``depth must be >= 1, but got self.depth=0.``
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


class ResultsLockedError(UserError):
    """Another live run holds the result directory (its lock file names the host and process)."""


class ResultsMissingError(UserError):
    """There are no results where a command expects them (e.g. nothing to resume)."""


class ResumeRefused(UserError):
    """A resume would continue a search with another spec or other data than it started with."""


class ClusterError(UserError):
    """The cluster cannot be reached, refuses us, or does not know the job."""


class NothingToDo(Exception):
    """A request that needs no work (e.g. resuming a finished run): the CLI prints why and exits 0."""


class Interrupted(Exception):
    """The run was stopped by a signal (Ctrl-C, SIGTERM): what finished is kept and ``resume`` continues it.

    Args:
        signum: the signal (its exit code is 128 + signum: 130 for SIGINT, 143 for SIGTERM).
        result_dir: the result directory to resume, when there is one.
    """

    def __init__(self, signum: int, result_dir: object = None) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.result_dir = result_dir
