"""Running a search on a Ray cluster as a Ray Job: package it, submit it, watch it.

The job runs ``python -m mtl_search run spec.yaml`` on the cluster's head node:
the same driver as a local ``run``, not a second implementation. What travels
with the job (Ray's runtime environment, uploaded by the Jobs SDK):

- ``working_dir``: a temporary folder holding the spec as given (``--set``
  overrides applied) and, when ``data.source`` is a file on this machine, a
  copy of that file (the spec is pointed at the copy);
- ``py_modules``: this machine's ``mtl_search`` package, so the cluster runs
  the code that validated the spec (``use_installed=True`` runs the copy
  installed on the cluster instead). Its dependencies (Ray, torch, Optuna, ...)
  must be installed on every node; ``cluster/`` shows how.

The spec is validated here first: a bad key fails with exit code 2 before
anything is sent. Results go to the spec's ``output`` *as the cluster sees it*,
so it must be an absolute path on the head node (a folder every node mounts on
a multi-node cluster) or a storage URI such as ``s3://bucket/prefix``; a
relative path would land in the job's temporary working directory.

Authentication: a Ray 2.60 head requires a token (``RAY_AUTH_MODE=token``, on
by default). Ray's Jobs SDK sends it only from a process that is itself in
token mode, so this module reads the token where Ray looks for it
(``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``,
``~/.ray/auth_token``) and sends it as a bearer header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mtl_search import __version__, storage
from mtl_search.config import BUILTIN_PREFIX, ExperimentSpec
from mtl_search.errors import ClusterError, DataError, SpecError
from mtl_search.spec_file import apply_overrides, load_spec

#: Where an address comes from when ``--address`` is not given, in Ray's order.
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
SPEC_FILE = "spec.yaml"
DATA_DIR = "data"
#: Never upload these with the package (Ray's gitignore-style patterns).
EXCLUDES = ["__pycache__/", "*.pyc"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

START_HINT = (
    "Pass --address http://HEAD:8265 (the head's Ray dashboard / Jobs API; for a cloud cluster tunnel it first: "
    "`ray dashboard cluster/aws.yaml` or `ssh -L 8265:localhost:8265 HEAD`) or set RAY_API_SERVER_ADDRESS. "
    "To try on this machine: `cluster/local.sh start`, then --address http://127.0.0.1:8265"
)
TOKEN_HINT = (
    "The head requires Ray's authentication token: copy it from the head (`ray get-auth-token` there, or its "
    "~/.ray/auth_token) and set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it, or put it in "
    "~/.ray/auth_token here (mode 600). See cluster/README.md, 'Security'"
)

Echo = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- address and authentication


def resolve_address(address: str | None) -> str:
    """The Jobs API address: ``address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``.

    Raises:
        ClusterError: none is given.
    """
    if address:
        return address
    for variable in ADDRESS_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    raise ClusterError(f"no cluster address. {START_HINT}")


def token_path() -> Path:
    """Where Ray reads its authentication token: ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def auth_token() -> str | None:
    """Ray's authentication token for this user, looked up as Ray does; None when there is none.

    Raises:
        ClusterError: ``RAY_AUTH_TOKEN_PATH`` names a file that cannot be read or is empty.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    try:
        token = token_path().read_text().strip()
    except OSError as exc:
        if named:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={named} cannot be read ({exc.strerror}). {TOKEN_HINT}") from None
        return None
    if not token and named:
        raise ClusterError(f"RAY_AUTH_TOKEN_PATH={named} is empty. {TOKEN_HINT}")
    return token or None


@contextlib.contextmanager
def _address_variables_hidden() -> Iterator[None]:
    # Ray's SDK lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override an explicit address; ours comes first.
    saved = {name: os.environ.pop(name) for name in ADDRESS_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None) -> Any:
    """A ``JobSubmissionClient`` for the cluster, with the authentication header when a token exists.

    Raises:
        ClusterError: the address is missing or unreachable, or the head refuses the token.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    token = auth_token()
    # "Uploading package ..." and "WebSocket closed ..." say nothing a user acts on; warnings still show.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with _address_variables_hidden():
            return JobSubmissionClient(url, headers=headers)
    except AuthenticationError as exc:
        detail = "no token was found here" if token is None else "the head refused this token"
        raise ClusterError(f"{url} requires authentication and {detail} ({_first_line(exc)}). {TOKEN_HINT}") from None
    except (ConnectionError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray Jobs API at {url} ({_first_line(exc)}). {START_HINT}") from None
    except Exception as exc:  # requests' own errors (bad URL, TLS) and Ray's version check
        if type(exc).__module__.startswith(("requests", "urllib3")):
            raise ClusterError(f"cannot reach the Ray Jobs API at {url} ({exc}). {START_HINT}") from None
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class JobRequest:
    """Everything ``JobSubmissionClient.submit_job`` is given for one search."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    results: str
    """Where the results will be, as the cluster sees it."""


def check_cluster_output(spec: ExperimentSpec) -> str:
    """``<output>/<name>`` as the cluster will resolve it.

    Raises:
        SpecError: ``output`` is a relative path (it would resolve inside the job's temporary working directory).
    """
    output = spec.output
    if storage.is_uri(output):
        return storage.join_uri(output, spec.name)
    if output.startswith("~") or Path(output).is_absolute():
        return f"{output.rstrip('/')}/{spec.name}"
    raise SpecError(
        f"output {output!r} is a relative path: on the cluster it would resolve inside the job's temporary working "
        "directory, which Ray deletes. Pass --output with an absolute path the head node can write (on a multi-node "
        "cluster, a folder every node mounts) or a storage URI such as s3://bucket/mtl_search or gs://bucket/x "
        "(see cluster/README.md, 'Results')"
    )


def build_job(
    spec_path: str | Path,
    overrides: Sequence[str],
    workdir: Path,
    *,
    overwrite: bool = False,
    verbose: bool = False,
    use_installed: bool = False,
    data_on_cluster: bool = False,
) -> tuple[ExperimentSpec, JobRequest]:
    """Validate the spec here, then fill ``workdir`` with what the job needs and describe the job.

    Args:
        spec_path: the YAML spec.
        overrides: ``dotted.key=value`` overrides, as for ``run --set``.
        workdir: an empty folder that becomes the job's ``working_dir``; upload it before deleting it.
        overwrite: pass ``--overwrite`` to the job's ``run``.
        verbose: pass ``--verbose`` (Ray's own logs) to the job's ``run``.
        use_installed: run the ``mtl_search`` installed on the cluster instead of uploading this one.
        data_on_cluster: ``data.source`` is an absolute path on the cluster; do not upload it.

    Raises:
        SpecError: the spec is invalid, or its ``output`` cannot work on a cluster.
        DataError: the data file named by the spec is missing here.
    """
    spec = load_spec(spec_path, overrides)  # the same checks and messages as `run`, before anything is sent
    results = check_cluster_output(spec)
    raw = apply_overrides(yaml.safe_load(Path(spec_path).read_text()) or {}, overrides)
    source = spec.data.source
    if not source.startswith(BUILTIN_PREFIX) and not storage.is_uri(source):
        raw["data"]["source"] = _ship_data(raw["data"]["source"], Path(source), workdir, data_on_cluster)
    shipped = workdir / SPEC_FILE
    shipped.write_text(yaml.safe_dump(raw, sort_keys=False))
    if data_on_cluster:
        load_spec(shipped)
    else:  # what travels must be exactly as valid as what was checked
        spec = load_spec(shipped)

    command = ["python", "-m", "mtl_search", "run", SPEC_FILE]
    command += ["--overwrite"] * overwrite + ["--verbose"] * verbose
    runtime_env: dict[str, Any] = {"working_dir": str(workdir), "excludes": list(EXCLUDES)}
    if not use_installed:
        import mtl_search

        runtime_env["py_modules"] = [str(Path(mtl_search.__file__).parent)]
    request = JobRequest(
        submission_id=f"mtl_search-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
        entrypoint=shlex.join(command),
        runtime_env=runtime_env,
        metadata={"mtl_search_version": __version__, "experiment": spec.name, "results": results},
        results=results,
    )
    return spec, request


def _ship_data(written: str, resolved: Path, workdir: Path, data_on_cluster: bool) -> str:
    """Copy a local data file into the job's folder; return the spec's new ``data.source``."""
    if data_on_cluster:
        if not Path(written).expanduser().is_absolute() and not written.startswith("~"):
            raise SpecError(
                f"data.source {written!r} is relative; with --data-on-cluster it must be an absolute path on the "
                "cluster (or a builtin: source)"
            )
        return written
    if not resolved.is_file():
        raise DataError(
            f"data file {resolved} does not exist here (data.source). submit uploads the data file with the job; "
            "if the file lives on the cluster instead, give its absolute path there and pass --data-on-cluster"
        )
    target = workdir / DATA_DIR / resolved.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(resolved, target)
    return f"{DATA_DIR}/{resolved.name}"  # relative to the shipped spec, which is how `run` resolves it


def submit(client: Any, request: JobRequest) -> str:
    """Submit the job (uploading its working_dir and package); return its id.

    Raises:
        ClusterError: the cluster refused the job.
    """
    try:
        return client.submit_job(
            entrypoint=request.entrypoint,
            submission_id=request.submission_id,
            runtime_env=request.runtime_env,
            metadata=request.metadata,
        )
    except RuntimeError as exc:  # Ray's SDK reports an HTTP refusal (and an oversize upload) as RuntimeError
        raise ClusterError(
            f"the cluster refused the job: {_first_line(exc)}. A data file too large to upload (Ray's limit is "
            "about 500 MiB) can live on shared storage instead: see --data-on-cluster"
        ) from None


def job_info(client: Any, job_id: str) -> Any:
    """The job's ``JobDetails`` (status, message, driver exit code, times, metadata).

    Raises:
        ClusterError: the cluster has no such job.
    """
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        raise ClusterError(f"job {job_id}: {_first_line(exc)} (`submit` printed the id, "
                           "mtl_search-<name>-<time>-<hex>; the dashboard's Jobs page lists them all)") from None


def follow(client: Any, job_id: str, *, write: Callable[[str], None] | None = None, poll_s: float = 1.0) -> Any:
    """Stream the job's log until it ends; return its final ``JobDetails``."""
    def default_write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    write = write or default_write

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the log stream closed early (head restarting, proxy timeout): poll instead
        _stderr(f"[log stream interrupted: {_first_line(exc)}; waiting for the job to end]")
    info = job_info(client, job_id)
    while str(info.status) not in TERMINAL:  # the stream can end a moment before the status does
        time.sleep(poll_s)
        info = job_info(client, job_id)
    return info


def exit_code(info: Any) -> int:
    """0 when the job succeeded; 2 when its ``run`` rejected its input (exit code 2 there); else 1."""
    status = str(info.status)
    if status == "SUCCEEDED":
        return 0
    if status == "FAILED" and getattr(info, "driver_exit_code", None) == 2:
        return 2
    return 1


def describe(info: Any) -> str:
    """A few lines about a job: status, why, when, where its results go."""
    lines = [f"job {info.submission_id}: {info.status}"]
    if info.message:
        lines.append(f"  message: {info.message}")
    if getattr(info, "driver_exit_code", None) is not None:
        lines.append(f"  driver exit code: {info.driver_exit_code}")
    for label, stamp in (("started", info.start_time), ("ended", info.end_time)):
        if stamp:
            lines.append(f"  {label}: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stamp / 1000))}")
    results = (info.metadata or {}).get("results")
    if results:
        lines.append(f"  results: {results}")
    lines.append(f"  entrypoint: {info.entrypoint}")
    return "\n".join(lines)


def dashboard_url(client: Any, job_id: str) -> str:
    """The job's page on the Ray dashboard."""
    return f"{client.get_address()}/#/jobs/{job_id}"


def submit_search(
    spec_path: str | Path,
    overrides: Sequence[str],
    *,
    address: str | None,
    wait: bool = False,
    overwrite: bool = False,
    verbose: bool = False,
    use_installed: bool = False,
    data_on_cluster: bool = False,
    info: Echo = _stderr,
) -> int:
    """``mtl-search submit``: validate, package, submit; print the job id; with ``wait``, follow it.

    Returns:
        0 once submitted (without ``wait``), else the job's :func:`exit_code`.

    Raises:
        UserError: a bad spec or data file (before anything is sent), or the cluster's refusal.
    """
    with tempfile.TemporaryDirectory(prefix="mtl_search-job-") as folder:
        spec, request = build_job(spec_path, overrides, Path(folder), overwrite=overwrite, verbose=verbose,
                                  use_installed=use_installed, data_on_cluster=data_on_cluster)
        client = connect(address)
        job_id = submit(client, request)  # uploads the folder: it can go once this returns
    print(job_id, flush=True)  # alone on stdout without --wait: JOB=$(mtl-search submit ...)
    info(f"submitted {spec.name!r} as job {job_id}; results: {request.results}")
    info(f"watch: {dashboard_url(client, job_id)}  |  mtl-search status|logs|stop {job_id}")
    if not wait:
        return 0
    try:
        final = follow(client, job_id)
    except KeyboardInterrupt:
        info(f"\nstopped watching; job {job_id} keeps running (mtl-search logs --follow {job_id}; "
             f"mtl-search stop {job_id} ends it)")
        return 130
    info(describe(final))
    return exit_code(final)
