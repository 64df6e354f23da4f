"""Starting or joining Ray for a run: the session's settings, quiet logs, GPUs and tracking callbacks."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import optuna
import ray

from mtl_search.config import ExperimentSpec
from mtl_search.errors import ClusterError, UserError
from mtl_search.jobs import token_path

#: Ray Train's controller polls its workers this often (seconds). Ray's default
#: (2 s) makes every per-epoch report cost about 1.9 s; measured here, 0.05 s cuts that to 0.055 s.
TRAIN_POLL_INTERVAL_S = "0.05"


def ray_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS``; None (start a local Ray) when both are empty
    (CI templates often export ``RAY_ADDRESS=``, which must not reach ``ray.init`` as an address)."""
    return (address or "").strip() or os.environ.get("RAY_ADDRESS", "").strip() or None


def connect_ray(address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None) -> None:
    """Start or join Ray, with Train's faster polling and quiet logs unless ``verbose``."""
    quiet_logs(verbose)
    address = ray_address(address)
    if address:
        check_reachable(address)
    if ray.is_initialized():
        return
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": TRAIN_POLL_INTERVAL_S}
    if not address:
        # A local machine has no spot preemption to watch for: skip the watcher actor each Train run starts.
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
        warn_about_other_local_ray()
        keep_token_private()
    ray.init(
        address=address,
        num_cpus=num_cpus,
        runtime_env={"env_vars": env},
        logging_level=logging.INFO if verbose else logging.WARNING,
        log_to_driver=verbose,
    )


def keep_token_private() -> Path | None:
    """Make sure the token a new local Ray uses is readable by its owner only; return the file, if any.

    Ray 2.60 turns token authentication on for a new local ``ray.init()`` and, when no token exists,
    writes one with the default umask (mode 644 here: every user of the machine could read it and use
    the local cluster). So a missing token is created here first, mode 600, as ``cluster/local.sh`` does;
    an existing one of ours that others can read is made owner-only (and that is said). Nothing is done
    when the token comes from ``RAY_AUTH_TOKEN`` or authentication is turned off (``RAY_AUTH_MODE``).
    """
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    path = token_path()
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))  # 256 random bits, as `ray get-auth-token --generate` makes
        return path
    info = path.stat()
    if info.st_mode & 0o077 and info.st_uid == os.getuid():
        path.chmod(0o600)
        print(f"note: {path} (Ray's authentication token) was readable by other users (mode "
              f"{info.st_mode & 0o777:o}); it is now readable by its owner only", file=sys.stderr)
    return path


#: How long to wait for a Ray head to answer before saying it cannot be reached (ray.init retries for minutes).
REACH_TIMEOUT_S = 10.0


def check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing answers at a Ray cluster's ``host:port`` (or ``ray://``).

    Raises:
        ClusterError: the host does not resolve, or nothing accepts a connection there within
            :data:`REACH_TIMEOUT_S` seconds.
    """
    target = address.removeprefix("ray://")
    if address == "auto" or "://" in target:
        return  # "auto" finds a local head itself; other schemes are not Ray's GCS or client addresses
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--address {address!r}: expected host:port (e.g. 10.0.0.5:6379), ray://host:10001 "
                           "or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): is `ray start "
                           f"--head` running there, and is port {port} open from this machine? Without --address "
                           "(and RAY_ADDRESS) mtl_search starts a local Ray") from None


def check_resources(cpus_per_worker: float, gpus_per_worker: float) -> None:
    """Refuse, before any trial is queued, a worker no node of the connected cluster can hold (Tune would
    wait for it forever).

    Raises:
        UserError: no alive node has ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs.
    """
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(r.get("CPU", 0) >= cpus_per_worker and r.get("GPU", 0) >= gpus_per_worker for r in nodes):
        return
    have = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in nodes) or "none alive"
    raise UserError(f"resources: each trial worker needs {cpus_per_worker:g} CPU and {gpus_per_worker:g} GPU on one "
                    f"node, and no node of this Ray cluster has that (its nodes: {have}); lower "
                    "resources.cpus_per_worker / gpus_per_worker, or add a larger node")


def warn_about_other_local_ray() -> None:
    """Say so when another Ray instance already runs on this machine (before this run starts its own).

    Ray Train's placement-group cleaner finds "its" cluster by address and, with two local
    instances and no address to tell them apart, fails; a Train trial stopped early then keeps its
    resources and the search can hang. Measured here with two searches started at once.
    """
    try:
        from ray._private.services import find_gcs_addresses  # no public API lists local instances
        running = find_gcs_addresses()
    except Exception:  # noqa: BLE001 - only a warning depends on it
        return
    if running:
        print(f"warning: another Ray instance is running on this machine ({', '.join(sorted(running))}). "
              "Two local Ray instances confuse Ray Train's clean-up and a search may hang: let the other one "
              "finish, or start one shared instance (`ray start --head`) and pass --address to every run.",
              file=sys.stderr)


def quiet_logs(verbose: bool) -> None:
    """Keep the console to mtl_search's own progress lines unless ``verbose``."""
    if verbose:
        return
    # Tune's newer console output prints banners even at verbose=0; the legacy reporter is silent at 0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Notes that say nothing a user of a local run can act on: "operation took 1.0 s" on a busy
    # machine, and that token authentication is on (it is, and should stay on; see cluster/README.md).
    for name in ("ray.tune.utils.util", "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Tune warns when short trials checkpoint every epoch ("snapshotting ... may become a bottleneck");
    # mtl_search checkpoints per epoch on purpose (resume), and the snapshot is small.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def resolve_gpus(spec: ExperimentSpec) -> float:
    """``resources.gpus_per_worker``; ``auto`` is 1 when the Ray cluster has a GPU, else 0."""
    requested = spec.resources.gpus_per_worker
    if requested == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(requested)


def tracking_callbacks(spec: ExperimentSpec, result_dir: Path) -> list[Any]:
    """Ray Tune logger callbacks for the spec's ``tracking`` (none, mlflow or tensorboard).

    MLflow logs to a local file store, ``<result dir>/mlruns`` (view it with ``mlflow ui
    --backend-store-uri <that folder>``); set ``MLFLOW_TRACKING_URI`` to log to a server instead.
    TensorBoard event files go into each trial's folder under ``tune/`` (``tensorboard --logdir``).

    Raises:
        UserError: the tracking package is not installed (``pip install 'mtl-search[tracking]'``).
    """
    if spec.tracking == "none":
        return []
    try:
        if spec.tracking == "mlflow":
            import mlflow  # noqa: F401 - fail here, clearly, rather than inside Tune
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:
                uri = (result_dir / "mlruns").as_uri()
                # MLflow 3 keeps its file store but asks for consent; a local folder needs no server.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=spec.name)]
        import tensorboardX  # noqa: F401
        from ray.tune.logger import TBXLoggerCallback

        return [TBXLoggerCallback()]
    except ImportError as exc:
        raise UserError(f"tracking: {spec.tracking} needs a package that is not installed ({exc.name}); "
                        "install it with pip install 'mtl-search[tracking]', or set tracking: none") from None
