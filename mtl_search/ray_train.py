"""The only Ray Train code: how one Tune trial trains its network.

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

Either way the prepared arrays travel once through Ray's object store; a trial
receives a reference, not a copy.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

if TYPE_CHECKING:
    from mtl_search.config import TrainSpec

#: The run-wide settings every trial function receives as ``system``:
#: seed, workers, cpus_per_worker, gpus_per_worker (may be fractional: Tune then packs several trials on
#: one GPU), train_storage, checkpoint_every and train_options (the spec's ``train:`` section as a dict).


@dataclass(frozen=True)
class DataRef:
    """The object-store reference to the prepared data, wrapped so Tune passes it on unresolved."""

    ref: ray.ObjectRef

    def get(self) -> Any:
        return ray.get(self.ref)


def _threads(cpus: float) -> int:
    return max(1, math.floor(cpus))


STATE_FILE = "state.pt"


def train_options(config: dict[str, Any]) -> TrainSpec:
    """The spec's ``train:`` section carried in a trial's config (``train_options``); its defaults if absent.

    A config from before the section existed (e.g. a resumed search's) has no such key.
    """
    from mtl_search.config import TrainSpec

    return TrainSpec.model_validate(config.get("train_options") or {})


def _fit_from_config(config: dict[str, Any], data: Any, device: Any, report: Any, distributed: Any = None,
                     initial_state: Any = None) -> None:
    """Train the trial's group; ``config`` holds the hyperparameters and the system settings."""
    import torch

    from mtl_search.grouping import group_tasks
    from mtl_search.train import TrialParams, fit

    # Each trial owns `cpus_per_worker` cores: more threads would oversubscribe concurrent trials.
    torch.set_num_threads(_threads(config["cpus_per_worker"]))
    _maybe_fail(config)
    fit(data, group_tasks(config["group"]), TrialParams.from_config(config), device=device, seed=config["seed"],
        report=report, distributed=distributed, initial_state=initial_state, options=train_options(config))


def _maybe_fail(config: dict[str, Any]) -> None:
    """Test hook: raise in trials of the groups named in ``MTL_SEARCH_FAIL_GROUPS`` (comma-separated).

    The reliability tests use it to check that one failing trial does not stop a
    search; it is off unless that variable is set in the Ray workers' environment.
    """
    failing = os.environ.get("MTL_SEARCH_FAIL_GROUPS", "")
    if config["group"] in [g.strip() for g in failing.split(",") if g.strip()]:
        raise RuntimeError(f"injected failure for group {config['group']} (MTL_SEARCH_FAIL_GROUPS)")


def _wants_checkpoint(config: dict[str, Any], metrics: dict[str, Any]) -> bool:
    every = int(config.get("checkpoint_every", 1))
    return every > 0 and (metrics["epoch"] % every == 0 or metrics.get("status") != "running")


def _report_with_checkpoint(send: Any, checkpoint_class: Any, metrics: dict[str, Any], state: Any) -> None:
    """Report ``metrics`` with the training state saved as a checkpoint (a temporary folder Ray copies)."""
    import torch

    with tempfile.TemporaryDirectory() as folder:
        torch.save(state(), Path(folder) / STATE_FILE)
        send(metrics, checkpoint=checkpoint_class.from_directory(folder))


def _state_from(checkpoint: Any) -> Any:
    """The training state in a checkpoint (None when there is none)."""
    import torch

    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, weights_only=False)


def worker_loop(config: dict[str, Any]) -> None:
    """Per-worker function of the ``TorchTrainer`` (runs inside a Ray Train worker)."""
    import ray.train
    import ray.train.torch

    from mtl_search.train import Distributed

    context = ray.train.get_context()
    world_size = context.get_world_size()
    rank = context.get_world_rank()
    distributed = Distributed(
        rank=rank,
        world_size=world_size,
        wrap_model=ray.train.torch.prepare_model if world_size > 1 else None,
    )
    started = config["trial_started"]

    def report(metrics: dict[str, Any], state: Any) -> None:
        metrics = {**metrics, "wall_s": time.time() - started}
        if rank == 0 and _wants_checkpoint(config, metrics):
            _report_with_checkpoint(ray.train.report, ray.train.Checkpoint, metrics, state)
        else:
            ray.train.report(metrics)

    # A retried or restored trial's Train run has the same name, so it finds its own last checkpoint.
    initial_state = _state_from(ray.train.get_checkpoint())
    _fit_from_config(config, config["data"].get(), ray.train.torch.get_device(), report, distributed,
                     initial_state)


def train_trial(config: dict[str, Any], data: DataRef, system: dict[str, Any]) -> None:
    """Tune function trainable: one trial as a Ray Train ``TorchTrainer`` job."""
    config = {**config, **system}
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    started = time.time()
    gpus = float(config["gpus_per_worker"])
    resources = worker_resources(cpus_per_worker=config["cpus_per_worker"], gpus_per_worker=gpus)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={**config, "data": data, "trial_started": started},
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(config["workers"]), use_gpu=gpus > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=config["train_storage"],
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def inline_trial(config: dict[str, Any], data: DataRef, system: dict[str, Any]) -> None:
    """Tune function trainable: the trial trains in its own process (no Ray Train)."""
    config = {**config, **system}
    import ray.tune
    import torch

    started = time.time()
    use_gpu = float(config["gpus_per_worker"]) > 0 and torch.cuda.is_available()

    def report(metrics: dict[str, Any], state: Any) -> None:
        metrics = {**metrics, "wall_s": time.time() - started}
        if _wants_checkpoint(config, metrics):
            _report_with_checkpoint(ray.tune.report, ray.tune.Checkpoint, metrics, state)
        else:
            ray.tune.report(metrics)

    _fit_from_config(config, data.get(), "cuda" if use_gpu else "cpu", report,
                     initial_state=_state_from(ray.tune.get_checkpoint()))


def affinity_task(data: DataRef, tasks: list[str], params: Any, seed: int, every: int, cpus: float,
                  use_gpu: bool) -> Any:
    """Ray task body: the all-task affinity measurement, with a trial's threads and device."""
    import torch

    from mtl_search.affinity import measure_affinity

    torch.set_num_threads(_threads(cpus))
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    return measure_affinity(data.get(), tasks, params, device=device, seed=seed, every=every)


def confirm_task(data: DataRef, group: str, config: dict[str, Any], seed: int, cpus: float,
                 use_gpu: bool) -> dict[str, Any]:
    """Ray task body: retrain one group's network with ``seed``; returns the metrics at its best epoch."""
    import torch

    from mtl_search.grouping import group_tasks
    from mtl_search.train import TrialParams, fit

    torch.set_num_threads(_threads(cpus))
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    result = fit(data.get(), group_tasks(group), TrialParams.from_config(config), device=device, seed=seed,
                 options=train_options(config))
    return {"status": result.status, **result.metrics}


def trial_resources(executor: str, *, cpus_per_worker: float, gpus_per_worker: float) -> dict[str, float]:
    """What the Tune trial itself holds.

    A fractional ``gpus_per_worker`` (e.g. 0.25) lets Tune place several trials on one
    GPU (here 4); Ray only counts the share, so the trials must fit in its memory together.
    A ``train`` trial is only a driver: its Train workers hold the CPUs and GPUs,
    so it asks for no CPU (``{"cpu": 0}`` alone is an empty bundle, which Ray
    rejects, hence the token memory). An ``inline`` trial trains itself.
    """
    if executor == "train":
        return {"cpu": 0, "memory": 1}
    resources = {"cpu": cpus_per_worker}
    if gpus_per_worker > 0:
        resources["gpu"] = gpus_per_worker
    return resources


def worker_resources(*, cpus_per_worker: float, gpus_per_worker: float) -> dict[str, float]:
    """What each Train worker of a ``train`` trial holds (``ScalingConfig.resources_per_worker``).

    The GPU share is passed on as given: 0.25 lets four trials' workers share one GPU.
    """
    resources = {"CPU": float(cpus_per_worker)}
    if gpus_per_worker > 0:
        resources["GPU"] = float(gpus_per_worker)
    return resources


TRIAL_FUNCTIONS = {"train": train_trial, "inline": inline_trial}
