"""Where an experiment's results live, and writing them without ever losing any.

Files are written atomically (a temporary file in the same folder, then a
rename), so a crash leaves either the old file or the new one, never half of
one. An existing result directory is never overwritten unless asked, and then
only if it is one: :data:`MARKER_FILE` marks the folders mtl_search created, and
``--overwrite`` moves the old results aside, deleting them only once the new run
has started (:func:`discard_replaced`; :func:`restore_replaced` puts them back
if it could not). One run at a time holds a result directory: :data:`LOCK_FILE`,
created atomically with the holder's host and process id (a lock whose process
is gone on this host is stale and taken over).

``output`` may also be a storage URI (``s3://``, ``gs://``, ``file://``: what
``pyarrow.fs`` opens, as Ray Tune's storage does). Then the run writes to a
fresh local staging directory and :func:`publish_results` copies it to
``<output>/<name>/`` when the run ends (or fails); :mod:`mtl_search.results`
reads a result directory back from either kind of location. A shared folder
mounted at the same path on every node (NFS) is a plain local path.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mtl_search.errors import ResultsExistError, ResultsLockedError, ResultsMissingError, UserError

if TYPE_CHECKING:
    from mtl_search.config import ExperimentSpec

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
#: What a run started with (spec and data), checked by ``resume``.
FINGERPRINT_FILE = "fingerprint.json"
TRIALS_FILE = "trials.csv"
GROUPS_FILE = "groups.csv"
LEADERBOARD_FILE = "leaderboard.csv"
AFFINITY_FILE = "affinity.csv"
ESTIMATES_FILE = "estimates.csv"
CONFIRM_FILE = "confirm.csv"
SELECTION_FILE = "selection.csv"
PLOTS_DIR = "plots"
TUNE_DIR = "tune"
TRAIN_DIR = "train"
#: Complete copies of Tune's saved state, taken while a search runs (see ``tune_state``).
TUNE_STATE_DIR = ".tune_state"
#: Marks a folder as an mtl_search result directory: the only kind ``--overwrite`` deletes.
MARKER_FILE = ".mtl_search"
#: Held by the one run that writes a result directory (JSON: host, pid, started).
LOCK_FILE = ".mtl_search.lock"
#: How a URI run's local staging folder (``tempfile.mkdtemp``) is named.
STAGING_PREFIX = "mtl_search-"


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write a data frame as CSV (no index) atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def prepare_result_dir(path: Path, *, overwrite: bool = False) -> tuple[Path, Path | None]:
    """Create the result directory and lock it, refusing to reuse one that holds results.

    With ``overwrite``, an mtl_search result directory (one holding :data:`MARKER_FILE`) that no live
    run holds is renamed aside to a hidden sibling, returned second, for :func:`discard_replaced` or
    :func:`restore_replaced`; nothing else is ever replaced.

    Raises:
        ResultsExistError: ``path`` holds files and ``overwrite`` is False.
        ResultsLockedError: another live run holds ``path``.
        UserError: ``path`` is a file, not an mtl_search result directory (with ``overwrite``), or
            cannot be created.
    """
    if path.exists() and not path.is_dir():
        raise UserError(f"the result directory {path} is a file; choose another --name or --output")
    aside = None
    if path.exists() and any(path.iterdir()):
        _refuse_if_held(path)  # the more useful answer while another run writes there
        if not overwrite:
            raise ResultsExistError(
                f"{path} already holds results; pass --overwrite to replace them, --resume to continue an "
                "interrupted run, or choose another --name or --output"
            )
        if not (path / MARKER_FILE).is_file():
            raise UserError(
                f"--overwrite replaces only result directories mtl_search created, and {path} holds no "
                f"{MARKER_FILE} marker: nothing was deleted. Choose another --name or --output, or remove the "
                "folder yourself if you are sure"
            )
        lock_result_dir(path)  # refuses while a live run holds it, and keeps others out while it moves
        aside = path.with_name(f".{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        path.rename(aside)
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / MARKER_FILE).write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    except OSError as exc:
        if aside is not None:
            aside.rename(path)
        raise UserError(f"cannot create the result directory {path} ({exc.strerror}); choose another --output "
                        "(output: in the spec) where you may write") from None
    lock_result_dir(path)
    return path, aside


def _holder(lock: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _gone(holder: dict[str, Any] | None) -> bool:
    """Whether a lock's holder is certainly dead: a process of this host that no longer exists (an unreadable
    lock, as a crash between creating and writing it leaves, counts as gone)."""
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False  # another machine's run: nothing here can tell whether it still runs
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _is_mine(holder: dict[str, Any] | None) -> bool:
    return holder is not None and (holder.get("host"), holder.get("pid")) == (socket.gethostname(), os.getpid())


def _in_use(path: Path, holder: dict[str, Any]) -> ResultsLockedError:
    return ResultsLockedError(
        f"{path} is in use by another mtl_search run (host {holder.get('host')}, pid {holder.get('pid')}, "
        f"since {holder.get('started')}); wait for it to end, or choose another --name or --output. If "
        f"that run is certainly gone, delete {path / LOCK_FILE}"
    )


def _refuse_if_held(path: Path) -> None:
    """Raise :class:`ResultsLockedError` when another live run holds ``path``."""
    holder = _holder(path / LOCK_FILE)
    if holder is not None and not _is_mine(holder) and not _gone(holder):
        raise _in_use(path, holder)


def lock_result_dir(path: Path) -> None:
    """Hold ``path`` for this process: create :data:`LOCK_FILE` atomically, taking over a stale one.
    Holding it already (this process) is fine.

    Raises:
        ResultsLockedError: another live run holds it (the message names its host, pid and start).
    """
    lock = path / LOCK_FILE
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            holder = _holder(lock)
            if _is_mine(holder):
                return
            if not _gone(holder):
                raise _in_use(path, holder) from None  # type: ignore[arg-type]
            lock.unlink(missing_ok=True)
            continue
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(mine) + "\n")
        return
    raise ResultsLockedError(f"could not lock {path}: {lock} keeps reappearing; is another run starting there?")


def unlock_result_dir(path: Path) -> None:
    """Let go of ``path`` if this process holds it."""
    if _is_mine(_holder(path / LOCK_FILE)):
        (path / LOCK_FILE).unlink(missing_ok=True)


def discard_replaced(location: ResultLocation) -> None:
    """Delete the results ``--overwrite`` moved aside: the new run has started."""
    if location.replaced is not None:
        shutil.rmtree(location.replaced, ignore_errors=True)


def restore_replaced(location: ResultLocation) -> None:
    """Put the results ``--overwrite`` moved aside back in place: the new run could not start."""
    if location.replaced is not None and location.replaced.exists():
        shutil.rmtree(location.path, ignore_errors=True)
        location.replaced.rename(location.path)
        unlock_result_dir(location.path)


# --------------------------------------------------------------------------- shared storage (URIs)


def is_uri(location: str | Path) -> bool:
    """True for a storage URI (``s3://bucket/x``, ``gs://``, ``file:///abs``), False for a path."""
    return "://" in str(location)


def join_uri(base: str, *parts: str) -> str:
    """``base/part/...`` for a URI (``os.path.join`` would mangle ``s3://``)."""
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def open_uri(uri: str) -> tuple[Any, str]:
    """The ``pyarrow.fs`` filesystem and the path inside it for a storage URI.

    ``pyarrow`` itself opens ``file://``, ``s3://``, ``gs://`` and ``hdfs://``
    (credentials come from the environment, e.g. ``AWS_*`` variables or an
    instance profile); other schemes go through ``fsspec`` when it and the
    scheme's package (``s3fs``, ``gcsfs``, ...) are installed, as in Ray Tune.

    Raises:
        UserError: no installed filesystem understands the URI.
    """
    import pyarrow
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError) as arrow_error:
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as exc:
            raise UserError(
                f"output {uri!r}: no filesystem for this URI ({arrow_error}; fsspec: {exc}). Use s3://, gs:// "
                "or file:// (pyarrow), install the fsspec package for the scheme (e.g. pip install s3fs), or give "
                "a mounted shared folder as a plain path"
            ) from None
        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


@dataclass(frozen=True)
class ResultLocation:
    """Where a run writes its files (``path``, always local) and, for a URI output, where they end up."""

    path: Path
    uri: str | None = None
    #: The old results ``--overwrite`` moved aside, until the new run has started.
    replaced: Path | None = None

    def __str__(self) -> str:
        return self.uri or str(self.path)


def result_location_text(spec: ExperimentSpec) -> str:
    """Where a spec's results go, for messages: ``<output>/<name>`` as a URI or an absolute path."""
    return join_uri(spec.output, spec.name) if is_uri(spec.output) else str(spec.result_dir())


def prepare_results(spec: ExperimentSpec, *, overwrite: bool = False) -> ResultLocation:
    """Check and create a run's result location, refusing to reuse one that holds results.

    A path: :func:`prepare_result_dir` on ``spec.result_dir()``. A URI: the
    remote ``<output>/<name>/`` gets the same check (emptied only with
    ``overwrite``), and the run writes to a new local staging directory that
    :func:`publish_results` copies there.

    Raises:
        ResultsExistError: the location holds results and ``overwrite`` is False.
        UserError: the URI cannot be opened or written.
    """
    if not is_uri(spec.output):
        path, replaced = prepare_result_dir(spec.result_dir(), overwrite=overwrite)
        return ResultLocation(path, replaced=replaced)
    uri = join_uri(spec.output, spec.name)
    prepare_remote_dir(uri, overwrite=overwrite)
    staging, _ = prepare_result_dir(Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{spec.name}-")) / spec.name)
    return ResultLocation(staging, uri)


def results_to_resume(spec: ExperimentSpec) -> ResultLocation:
    """The existing result directory of an interrupted run, to continue it.

    Raises:
        ResultsMissingError: there is no interrupted search there (or it is on remote storage).
        ResultsLockedError: another live run holds it.
    """
    if is_uri(spec.output):
        raise ResultsMissingError(
            f"resume works on a local result directory; copy {join_uri(spec.output, spec.name)} to this machine "
            "(e.g. `aws s3 sync`) and run `mtl-search resume <that folder>`"
        )
    path = spec.result_dir()
    if path.is_dir():
        lock_result_dir(path)  # first: a run that holds it may not have started its search yet
    if not (path / TUNE_DIR).is_dir():
        if path.is_dir():
            unlock_result_dir(path)
        raise ResultsMissingError(f"nothing to resume at {path}: it holds no search ({TUNE_DIR}/); "
                                  "start one with `mtl-search run` instead")
    return ResultLocation(path)


def prepare_remote_dir(uri: str, *, overwrite: bool = False) -> None:
    """:func:`prepare_result_dir` for a storage URI.

    Raises:
        ResultsExistError: ``uri`` holds files (or is a file) and ``overwrite`` is False.
        UserError: the storage cannot be reached (credentials, bucket, permissions).
    """
    import pyarrow.fs

    fs, path = open_uri(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pyarrow.fs.FileType.File:
            raise ResultsExistError(f"{uri} is a file, not a folder; choose another --name or --output")
        if info.type == pyarrow.fs.FileType.Directory and fs.get_file_info(pyarrow.fs.FileSelector(path)):
            if not overwrite:
                raise ResultsExistError(
                    f"{uri} already holds results; pass --overwrite to replace them, or choose another --name or "
                    "--output"
                )
            fs.delete_dir_contents(path)
        fs.create_dir(path, recursive=True)
    except OSError as exc:  # pyarrow reports unreachable storage, refused credentials etc. as OSError
        raise UserError(f"cannot use {uri} for results: {exc}. Check the credentials and the bucket/path "
                        "(see cluster/README.md, 'Results on shared storage')") from None


def publish_results(location: ResultLocation, *, echo: Callable[[str], None] | None = None,
                    remove_staging: bool = False) -> None:
    """Copy a URI run's staged files to ``location.uri`` (nothing to do for a local path).

    Files are copied whole, each replacing its previous copy; an object store
    never shows a half-written object. With ``remove_staging`` (a finished run) the
    local staging folder is deleted afterwards; otherwise it stays, to resume from.
    """
    if location.uri is None:
        return
    import pyarrow.fs

    fs, path = open_uri(location.uri)
    pyarrow.fs.copy_files(str(location.path), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)
    staging = location.path.parent  # the mkdtemp folder around it; a folder the user chose is never removed
    remove_staging = remove_staging and staging.name.startswith(STAGING_PREFIX) and [
        entry.name for entry in staging.iterdir()] == [location.path.name]
    if remove_staging:
        shutil.rmtree(staging, ignore_errors=True)
    if echo is not None:
        echo(f"results copied to {location.uri}" + ("" if remove_staging else f" (staged in {location.path})"))
