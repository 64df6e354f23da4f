"""Where an experiment's results live, and writing them without ever losing any.

Files are written atomically (a temporary file in the same folder, then a
rename), so a crash leaves either the old file or the new one, never half of
one. An existing result directory is never overwritten unless asked.

``output`` may also be a storage URI (``s3://``, ``gs://``, ``file://``: what
``pyarrow.fs`` opens, as Ray Tune's storage does). Then the run writes to a
fresh local staging directory and :func:`publish_results` copies it to
``<output>/<name>/`` when the run ends (or fails); :mod:`mtl_search.results`
reads a result directory back from either kind of location. A shared folder
mounted at the same path on every node (NFS) is a plain local path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mtl_search.errors import ResultsExistError, ResultsMissingError, UserError

if TYPE_CHECKING:
    from mtl_search.config import ExperimentSpec

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
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


def prepare_result_dir(path: Path, *, overwrite: bool = False) -> Path:
    """Create the result directory, refusing to reuse one that holds results.

    Raises:
        ResultsExistError: ``path`` holds files and ``overwrite`` is False.
        UserError: ``path`` is a file or cannot be created.
    """
    if path.exists() and not path.is_dir():
        raise UserError(f"the result directory {path} is a file; choose another --name or --output")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ResultsExistError(
                f"{path} already holds results; pass --overwrite to replace them, --resume to continue an "
                "interrupted run, or choose another --name or --output"
            )
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the result directory {path} ({exc.strerror}); choose another --output "
                        "(output: in the spec) where you may write") from None
    return path


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
        return ResultLocation(prepare_result_dir(spec.result_dir(), overwrite=overwrite))
    uri = join_uri(spec.output, spec.name)
    prepare_remote_dir(uri, overwrite=overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f"mtl_search-{spec.name}-")) / spec.name
    staging.mkdir()
    return ResultLocation(staging, uri)


def results_to_resume(spec: ExperimentSpec) -> ResultLocation:
    """The existing result directory of an interrupted run, to continue it.

    Raises:
        ResultsMissingError: there is no interrupted search there (or it is on remote storage).
    """
    if is_uri(spec.output):
        raise ResultsMissingError(
            f"resume works on a local result directory; copy {join_uri(spec.output, spec.name)} to this machine "
            "(e.g. `aws s3 sync`) and run `mtl-search resume <that folder>`"
        )
    path = spec.result_dir()
    if not (path / TUNE_DIR).is_dir():
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


def publish_results(location: ResultLocation, *, echo: Callable[[str], None] | None = None) -> None:
    """Copy a URI run's staged files to ``location.uri`` (nothing to do for a local path).

    Files are copied whole, each replacing its previous copy; an object store
    never shows a half-written object.
    """
    if location.uri is None:
        return
    import pyarrow.fs

    fs, path = open_uri(location.uri)
    pyarrow.fs.copy_files(str(location.path), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)
    if echo is not None:
        echo(f"results copied to {location.uri} (staged in {location.path})")
