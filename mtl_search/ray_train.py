"""How one Tune trial trains its network: the only Ray Train code.

Two executors, chosen by ``search.trial_executor``:

``train`` (default)
    The Tune trial is a driver that launches a ``TorchTrainer`` with
    ``ScalingConfig(num_workers, use_gpu, resources_per_worker)``; each Train
    worker runs :func:`worker_loop`, which calls :func:`mtl_search.train.fit`
    and forwards every epoch's metrics with ``ray.train.report``. This is the
    path for GPUs and multi-worker trials.
``inline``
    The Tune trial trains in its own process and reports with
    ``ray.tune.report``. No worker start-up, so small CPU searches run several
    times faster; one worker only.

Either way a trial function receives its sampled ``config`` (the hyperparameters
and the group) and, beside it, the run's :class:`~mtl_search.trial.TrialSettings`
and the prepared arrays, which travel once through Ray's object store (a trial
gets a reference, not a copy).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from mtl_search.results import Status
from mtl_search.step import Distributed
from mtl_search.train import Report, fit
from mtl_search.trial import TrialParams, TrialSettings

#: The training state's file inside a checkpoint folder.
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class DataRef:
    """The object-store reference to the prepared data, wrapped so Tune passes it on unresolved."""

    ref: ray.ObjectRef

    def get(self) -> Any:
        return ray.get(self.ref)


def trial_device(settings: TrialSettings) -> str:
    """The device of a trial that trains in its own process: ``cuda`` when it holds a GPU share and sees one."""
    return "cuda" if settings.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"


def _fit_from_config(config: dict[str, Any], settings: TrialSettings, data: Any, device: Any, report: Report,
                     distributed: Distributed | None = None, initial_state: Any = None) -> None:
    """Train the trial's networks: ``config`` holds its hyperparameters (and, for ``unit: group``, its group),
    ``settings`` the rest (for ``unit: pack``, the groups every trial trains)."""
    # Each trial owns `cpus_per_worker` cores: more threads would oversubscribe concurrent trials.
    torch.set_num_threads(settings.threads)
    groups = settings.trial_groups(config)
    _maybe_fail(groups)
    fit(data, groups, TrialParams.from_config(config), device=device, seed=settings.seed, report=report,
        distributed=distributed, initial_state=initial_state, options=settings.train, objective=settings.objective,
        pack_size=settings.pack_size)


def _maybe_fail(groups: list[str]) -> None:
    """Test hook: raise in trials training a group named in ``MTL_SEARCH_FAIL_GROUPS`` (comma-separated).

    The reliability tests use it to check that one failing trial does not stop a
    search; it is off unless that variable is set in the Ray workers' environment.
    """
    failing = {g.strip() for g in os.environ.get("MTL_SEARCH_FAIL_GROUPS", "").split(",") if g.strip()}
    if failing & set(groups):
        raise RuntimeError(f"injected failure for group {', '.join(sorted(failing & set(groups)))} "
                           "(MTL_SEARCH_FAIL_GROUPS)")


def _reporter(send: Callable[..., None], checkpoint_class: Any, settings: TrialSettings, started: float, *,
              checkpoints: bool = True) -> Report:
    """A ``report`` for :func:`mtl_search.train.fit`: adds the trial's wall time and, when due, a checkpoint.

    A checkpoint is the training state saved in a temporary folder that Ray copies; it is due every
    ``checkpoint_every`` epochs and at the last report (``checkpoints`` False: never, e.g. on a worker of rank > 0).
    """
    every = settings.checkpoint_every

    def report(metrics: dict[str, Any], state: Callable[[], dict[str, Any]]) -> None:
        metrics = {**metrics, "wall_s": time.time() - started}
        due = every > 0 and (metrics["epoch"] % every == 0 or metrics.get("status") != Status.RUNNING)
        if not (checkpoints and due):
            send(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state(), Path(folder) / STATE_FILE)
            send(metrics, checkpoint=checkpoint_class.from_directory(folder))

    return report


def _state_from(checkpoint: Any) -> Any:
    """The training state in a checkpoint (None when there is none)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, weights_only=False)


def worker_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker function of the ``TorchTrainer`` (runs inside a Ray Train worker)."""
    context = ray.train.get_context()
    world_size, rank = context.get_world_size(), context.get_world_rank()
    distributed = Distributed(rank=rank, world_size=world_size,
                              wrap_model=ray.train.torch.prepare_model if world_size > 1 else None)
    settings: TrialSettings = loop_config["settings"]
    report = _reporter(ray.train.report, ray.train.Checkpoint, settings, loop_config["trial_started"],
                       checkpoints=rank == 0)
    # A retried or restored trial's Train run has the same name, so it finds its own last checkpoint.
    initial_state = _state_from(ray.train.get_checkpoint())
    _fit_from_config(loop_config["config"], settings, loop_config["data"].get(), ray.train.torch.get_device(),
                     report, distributed, initial_state)


def train_trial(config: dict[str, Any], data: DataRef, settings: TrialSettings) -> None:
    """Tune function trainable: one trial as a Ray Train ``TorchTrainer`` job."""
    started = time.time()
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"config": config, "settings": settings, "data": data, "trial_started": started},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpus_per_worker > 0,
                                               resources_per_worker=worker_resources(settings)),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=settings.train_storage,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def inline_trial(config: dict[str, Any], data: DataRef, settings: TrialSettings) -> None:
    """Tune function trainable: the trial trains in its own process (no Ray Train)."""
    report = _reporter(ray.tune.report, ray.tune.Checkpoint, settings, time.time())
    _fit_from_config(config, settings, data.get(), trial_device(settings), report,
                     initial_state=_state_from(ray.tune.get_checkpoint()))


def trial_resources(executor: str, settings: TrialSettings) -> dict[str, float]:
    """What the Tune trial itself holds.

    A fractional ``gpus_per_worker`` (e.g. 0.25) lets Tune place several trials on one
    GPU (here 4); Ray only counts the share, so the trials must fit in its memory together.
    A ``train`` trial is only a driver: its Train workers hold the CPUs and GPUs,
    so it asks for no CPU (``{"cpu": 0}`` alone is an empty bundle, which Ray
    rejects, hence the token memory). An ``inline`` trial trains itself.
    """
    if executor == "train":
        return {"cpu": 0, "memory": 1}
    resources = {"cpu": settings.cpus_per_worker}
    if settings.gpus_per_worker > 0:
        resources["gpu"] = settings.gpus_per_worker
    return resources


def worker_resources(settings: TrialSettings) -> dict[str, float]:
    """What each Train worker of a ``train`` trial holds (``ScalingConfig.resources_per_worker``).

    The GPU share is passed on as given: 0.25 lets four trials' workers share one GPU.
    """
    resources = {"CPU": float(settings.cpus_per_worker)}
    if settings.gpus_per_worker > 0:
        resources["GPU"] = float(settings.gpus_per_worker)
    return resources


#: The trial function of each ``search.trial_executor``.
TRIAL_FUNCTIONS = {"train": train_trial, "inline": inline_trial}
