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
import time
from dataclasses import dataclass
from typing import Any

import ray

#: The run-wide settings every trial function receives as ``system``:
#: seed, workers, cpus_per_worker, gpus_per_worker, train_storage.


@dataclass(frozen=True)
class DataRef:
    """The object-store reference to the prepared data, wrapped so Tune passes it on unresolved."""

    ref: ray.ObjectRef

    def get(self) -> Any:
        return ray.get(self.ref)


def _threads(cpus: float) -> int:
    return max(1, math.floor(cpus))


def _fit_from_config(config: dict[str, Any], data: Any, device: Any, report: Any, distributed: Any = None,
                     initial_state: Any = None) -> None:
    """Train the trial's group; ``config`` holds the hyperparameters and the system settings."""
    import torch

    from mtl_search.grouping import group_tasks
    from mtl_search.train import TrialParams, fit

    # Each trial owns `cpus_per_worker` cores: more threads would oversubscribe concurrent trials.
    torch.set_num_threads(_threads(config["cpus_per_worker"]))
    fit(data, group_tasks(config["group"]), TrialParams.from_config(config), device=device, seed=config["seed"],
        report=report, distributed=distributed, initial_state=initial_state)


def worker_loop(config: dict[str, Any]) -> None:
    """Per-worker function of the ``TorchTrainer`` (runs inside a Ray Train worker)."""
    import ray.train
    import ray.train.torch

    from mtl_search.train import Distributed

    context = ray.train.get_context()
    world_size = context.get_world_size()
    distributed = Distributed(
        rank=context.get_world_rank(),
        world_size=world_size,
        wrap_model=ray.train.torch.prepare_model if world_size > 1 else None,
    )
    started = config["trial_started"]

    def report(metrics: dict[str, Any], state: Any) -> None:
        ray.train.report({**metrics, "wall_s": time.time() - started})

    _fit_from_config(config, config["data"].get(), ray.train.torch.get_device(), report, distributed)


def train_trial(config: dict[str, Any], data: DataRef, system: dict[str, Any]) -> None:
    """Tune function trainable: one trial as a Ray Train ``TorchTrainer`` job."""
    config = {**config, **system}
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    started = time.time()
    gpus = float(config["gpus_per_worker"])
    resources = {"CPU": float(config["cpus_per_worker"])}
    if gpus > 0:
        resources["GPU"] = gpus
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
        ray.tune.report({**metrics, "wall_s": time.time() - started})

    _fit_from_config(config, data.get(), "cuda" if use_gpu else "cpu", report)


def trial_resources(executor: str, *, cpus_per_worker: float, gpus_per_worker: float) -> dict[str, float]:
    """What the Tune trial itself holds.

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


TRIAL_FUNCTIONS = {"train": train_trial, "inline": inline_trial}
