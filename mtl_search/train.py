"""The training core: plain PyTorch, no Ray.

:func:`fit` trains one group's network on prepared arrays. The whole training
split lives on the trial's device and batches are drawn by index (a
per-sample ``DataLoader`` is far slower for tabular data). Training losses are
accumulated on the device and read once per epoch; after each epoch the
network is scored on the validation split and a flat metrics dict is handed to
the ``report`` callable.

How each step runs on the device (AdamW, CUDA graphs, bf16, gradient-level
schemes) is :mod:`mtl_search.step`; this module runs the epochs around it.

Metric names in a report (``<t>`` a task, ``<m>`` a metric of its type):

``epoch``
    epochs completed.
``score``
    the best validation score so far: the mean normalised validation loss
    over the group's tasks at the best epoch (lower is better). Selection uses
    only this. ``NaN`` once the trial diverged.
``epoch_score``
    this epoch's validation score.
``best_epoch``, ``valid/<t>/<m>``, ``test/<t>/<m>``, ``test/score``
    the best epoch and the metrics at that epoch. Test numbers are reported,
    never used to choose anything.
``train_loss/<t>``, ``weight/<t>``
    this epoch's mean training loss, and the mean over the epoch's steps of the
    weight the scheme gave each task (for a gradient-level scheme: the
    coefficient of the task's gradient in the shared layers' update; see
    :mod:`mtl_search.weighting`).
``train_loop_s``
    seconds spent inside the training loop so far (training and evaluation).
``params``, ``sharing_depth``, ``threads``, ``cuda_graph``, ``status``, ``reason``
    parameter count, layers actually shared, torch's CPU threads, whether the
    step replays a CUDA graph, ``running`` / ``completed`` / ``diverged`` and why
    a trial diverged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mtl_search.config import TrainSpec
from mtl_search.data import PreparedData
from mtl_search.losses import masked_loss
from mtl_search.metrics import evaluate_task
from mtl_search.model import MultiTaskNet
from mtl_search.results import NLOSS, TEST, TRAIN_LOSS, VALID, WEIGHT, Status, metric_key, score_key, task_key
from mtl_search.step import (
    DeviceSplit,
    Distributed,
    GraphStep,
    Step,
    make_optimizer,
    shared_layout,
    to_device,
    wants_capture,
)
from mtl_search.trial import TrialParams
from mtl_search.weighting import make_weighting

Report = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]
_EVAL_CHUNK = 65536


@dataclass
class FitResult:
    """What a finished :func:`fit` returns (the same numbers as its last report)."""

    status: str
    epochs_run: int
    score: float
    best_epoch: int
    metrics: dict[str, Any]
    reason: str = ""


@torch.no_grad()
def predict(model: MultiTaskNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs for every row of ``x``, in chunks, in evaluation mode."""
    was_training = model.training
    model.eval()
    parts = [model(x[start:start + _EVAL_CHUNK]) for start in range(0, x.shape[0], _EVAL_CHUNK)]
    model.train(was_training)
    return {task: torch.cat([p[task] for p in parts]) for task in model.task_names}


class TrainingLoop:
    """A group's network, its scheme, optimiser and training split on the device, ready to run epochs.

    :func:`fit` builds one and adds evaluation, reporting and checkpoints; benchmarks
    time :meth:`run_epoch` to measure exactly the loop a trial runs.

    Args:
        data: prepared arrays (all splits).
        tasks: the group's task names.
        params: hyperparameters.
        device: where the data and the network live.
        seed: seeds initialisation and batch order.
        distributed: data-parallel settings (default: a single worker).
        options: the spec's ``train:`` section (default: its defaults).
        initial_state: a state from an earlier report, to resume after its epoch (loaded before any capture).
    """

    def __init__(self, data: PreparedData, tasks: Sequence[str], params: TrialParams, *,
                 device: str | torch.device = "cpu", seed: int = 0, distributed: Distributed | None = None,
                 options: TrainSpec | None = None, initial_state: Mapping[str, Any] | None = None) -> None:
        self.distributed = distributed = distributed or Distributed()
        self.options = options = options or TrainSpec()
        self.device = device = torch.device(device)
        self.params = params
        unknown = [t for t in tasks if t not in data.tasks]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; valid: {', '.join(data.tasks)}")
        self.tasks = list(tasks)
        self.task_info = {t: data.tasks[t] for t in tasks}

        torch.manual_seed(seed)
        self.model = model = MultiTaskNet(data.num_features, {t: info.outputs for t, info in self.task_info.items()},
                                          params.architecture()).to(device)
        self.weighting = weighting = make_weighting(params.weighting, self.tasks, seed=seed,
                                                    **params.weighting_params).to(device)
        self.shared = shared_layout(model, weighting)
        if self.shared is not None and distributed.world_size > 1:
            raise ValueError(
                f"weighting {params.weighting!r} steers the shared layers' gradient, which data-parallel training "
                f"(world_size={distributed.world_size}) does not support; train it on one worker "
                "(resources.workers_per_trial: 1) or choose a loss-level weighting"
            )
        self.train = to_device(data.splits["train"], self.tasks, device)
        rows = self.train.x.shape[0]
        self.shard = rows // distributed.world_size
        self.steps = max(1, math.ceil(self.shard / params.batch_size))
        self.cuda_graph = wants_capture(options, device, weighting, distributed, self.shard, params.batch_size)
        self.trainable = model if distributed.wrap_model is None else distributed.wrap_model(model)
        self.optimizer = make_optimizer([*model.parameters(), *weighting.parameters()], params, device,
                                         capturable=self.cuda_graph)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        if initial_state is not None:
            model.load_state_dict(initial_state["model"])
            weighting.load_state_dict(initial_state["weighting"])
            self.optimizer.load_state_dict(initial_state["optimizer"])
            self.generator.set_state(initial_state["generator"])
        step = Step(self.trainable, weighting, self.optimizer, self.train,
                     [info.type for info in self.task_info.values()], shared=self.shared, amp=options.amp,
                     distributed=distributed)
        self.step: Step | GraphStep = (GraphStep(step, params.batch_size, capture=True) if self.cuda_graph
                                         else step)

    def run_epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over this worker's shard; the mean loss and mean weight per task (on the device).

        Each batch goes through the loop's step (eager or replayed from a CUDA graph); with a
        gradient-level scheme and shared layers the step steers the shared update (:func:`gradient_step`).
        """
        self.trainable.train()
        rows, batch_size, distributed = self.train.x.shape[0], self.params.batch_size, self.distributed
        order = torch.randperm(rows, generator=self.generator, device=self.train.x.device)
        if distributed.world_size > 1:
            order = order[distributed.rank::distributed.world_size][:self.shard]
        step = self.step
        step.loss_sums.zero_()
        step.weight_sums.zero_()
        for index in range(self.steps):
            step(order[index * batch_size:(index + 1) * batch_size])
        return step.loss_sums / self.steps, step.weight_sums / self.steps

    def state(self) -> dict[str, Any]:
        """The training state a checkpoint holds (without the epoch bookkeeping :func:`fit` adds)."""
        return {"model": self.model.state_dict(), "weighting": self.weighting.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}


def fit(
    data: PreparedData,
    tasks: Sequence[str],
    params: TrialParams,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    report: Report | None = None,
    distributed: Distributed | None = None,
    initial_state: Mapping[str, Any] | None = None,
    options: TrainSpec | None = None,
) -> FitResult:
    """Train one network for the group ``tasks`` and report after every epoch.

    Args:
        data: prepared arrays (all splits).
        tasks: the group's task names.
        params: hyperparameters.
        device: where the data and the network live.
        seed: seeds initialisation and batch order.
        report: called after each epoch with the metrics dict (see the module
            docstring) and a function returning the training state, for checkpoints.
        distributed: data-parallel settings (default: a single worker).
        initial_state: a state from an earlier report, to resume after its epoch.
        options: how the loop runs on its device (the spec's ``train:`` section; default: its defaults).

    Raises:
        ValueError: an unknown task; a gradient-level scheme with data-parallel workers;
            ``cuda_graphs: on`` where the step cannot be captured.
    """
    if initial_state is not None and initial_state["epoch"] >= params.epochs:
        # Restored after its last epoch (the run finished just before an interruption): there is nothing
        # left to train, so report the final metrics again for whoever is waiting for them.
        final = dict(initial_state.get("last_metrics", {}))
        if report is not None and final:
            report(final, lambda: dict(initial_state))
        return FitResult(final.get("status", Status.COMPLETED.value), initial_state["epoch"],
                         initial_state["best_score"], initial_state["best_epoch"], final)

    loop = TrainingLoop(data, tasks, params, device=device, seed=seed, distributed=distributed, options=options,
                        initial_state=initial_state)
    model, weighting, task_info, device = loop.model, loop.weighting, loop.task_info, loop.device
    valid = to_device(data.splits["valid"], tasks, device)
    test = to_device(data.splits["test"], tasks, device)
    trivial_valid = torch.tensor([data.splits["valid"].trivial_loss[t] for t in tasks])

    best_score, best_epoch, best_metrics = math.inf, 0, {}
    start_epoch, loop_seconds = 0, 0.0
    if initial_state is not None:
        start_epoch = initial_state["epoch"]
        best_score, best_epoch = initial_state["best_score"], initial_state["best_epoch"]
        best_metrics, loop_seconds = dict(initial_state["best_metrics"]), initial_state["train_loop_s"]

    def state() -> dict[str, Any]:
        return {
            **loop.state(), "epoch": epoch + 1, "best_score": best_score,
            "best_epoch": best_epoch, "best_metrics": best_metrics, "train_loop_s": loop_seconds,
            "last_metrics": metrics,
        }

    constant = {"params": model.num_parameters(), "sharing_depth": model.sharing_depth,
                "threads": torch.get_num_threads(), "cuda_graph": loop.cuda_graph}
    result = FitResult(Status.COMPLETED.value, start_epoch, best_score, best_epoch, {})
    for epoch in range(start_epoch, params.epochs):
        started = time.perf_counter()
        epoch_losses, epoch_weights = loop.run_epoch()
        valid_out = predict(model, valid.x)
        valid_losses = torch.stack([masked_loss(task_info[t].type, valid_out[t], valid.y[t], valid.mask[t])
                                    for t in tasks])
        # The epoch's one host sync: training losses, weights and validation losses in one copy.
        losses_cpu, used_weights, valid_cpu = torch.stack([epoch_losses, epoch_weights, valid_losses]).cpu()
        diverged = [t for t, value in zip(tasks, losses_cpu.tolist(), strict=True) if not math.isfinite(value)]
        metrics: dict[str, Any] = {"epoch": epoch + 1, **constant}
        if diverged:
            loop_seconds += time.perf_counter() - started
            reason = f"training loss of {', '.join(diverged)} became non-finite in epoch {epoch + 1}"
            metrics.update(best_metrics)
            metrics.update(score=float("nan"), epoch_score=float("nan"), best_epoch=best_epoch,
                           train_loop_s=loop_seconds, status=Status.DIVERGED.value, reason=reason)
            if report is not None:
                report(metrics, state)
            return FitResult(Status.DIVERGED.value, epoch + 1, float("nan"), best_epoch, metrics, reason)
        weighting.end_epoch(epoch_losses)

        epoch_score = float((valid_cpu / trivial_valid).mean())
        if epoch_score < best_score:
            best_score, best_epoch = epoch_score, epoch + 1
            best_metrics = _best_metrics(model, data, task_info, valid_out, test)
        loop_seconds += time.perf_counter() - started

        metrics.update(best_metrics)
        metrics.update(
            score=best_score if math.isfinite(best_score) else float("nan"),
            epoch_score=epoch_score,
            best_epoch=best_epoch,
            train_loop_s=loop_seconds,
            status=(Status.COMPLETED if epoch + 1 == params.epochs else Status.RUNNING).value,
            reason="",
            **{task_key(TRAIN_LOSS, t): float(v) for t, v in zip(tasks, losses_cpu, strict=True)},
            **{task_key(WEIGHT, t): float(w) for t, w in zip(tasks, used_weights, strict=True)},
        )
        if report is not None:
            report(metrics, state)
        result = FitResult(metrics["status"], epoch + 1, metrics["score"], best_epoch, metrics)
    return result


def _best_metrics(
    model: MultiTaskNet,
    data: PreparedData,
    task_info: Mapping[str, Any],
    valid_out: dict[str, torch.Tensor],
    test: DeviceSplit,
) -> dict[str, Any]:
    """Full validation and test metrics at a new best epoch."""
    test_out = predict(model, test.x)
    metrics: dict[str, Any] = {}
    test_nloss = []
    for split, outputs in ((VALID, valid_out), (TEST, test_out)):
        arrays = data.splits[split]
        for task, info in task_info.items():
            values = evaluate_task(info.type, outputs[task].float().cpu().numpy(), arrays.y[task],
                                   arrays.mask[task], target_std=info.std)
            nloss = values["loss"] / arrays.trivial_loss[task]
            metrics[metric_key(split, task, NLOSS)] = nloss
            for name, value in values.items():
                metrics[metric_key(split, task, name)] = value
            if split == TEST:
                test_nloss.append(nloss)
    metrics[score_key(TEST)] = float(np.mean(test_nloss))
    return metrics
