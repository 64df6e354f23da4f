"""The training core: plain PyTorch, no Ray.

:func:`fit` trains one group's network on prepared arrays. The whole training
split lives on the trial's device and batches are drawn by index (a
per-sample ``DataLoader`` is far slower for tabular data). Training losses are
accumulated on the device and read once per epoch; after each epoch the
network is scored on the validation split and a flat metrics dict is handed to
the ``report`` callable.

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
``params``, ``sharing_depth``, ``threads``, ``status``, ``reason``
    parameter count, layers actually shared, torch's CPU threads, ``running`` /
    ``completed`` / ``diverged`` and why a trial diverged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mtl_search.config import parse_head_sizes
from mtl_search.data import PreparedData, SplitArrays
from mtl_search.metrics import evaluate_task, masked_loss
from mtl_search.model import Architecture, MultiTaskNet
from mtl_search.weighting import SharedGradients, Weighting, config_params, make_weighting

Report = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]
_EVAL_CHUNK = 65536


@dataclass(frozen=True)
class TrialParams:
    """The hyperparameters of one trial."""

    depth: int
    sharing_depth: int
    width: int
    head_sizes: tuple[int, ...]
    weighting: str
    lr: float
    epochs: int
    batch_size: int = 512
    weight_decay: float = 0.0
    dropout: float = 0.0
    weighting_params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialParams:
        """Build from a trial config (the sampled values of the spec's space).

        The chosen scheme's hyperparameters are the config's ``<weighting>.<param>``
        keys (e.g. ``dwa.temperature``, ``static.weight_<task>``); other schemes' keys are ignored.
        """
        weighting = str(config["weighting"])
        return cls(
            depth=int(config["depth"]),
            sharing_depth=int(config["sharing_depth"]),
            width=int(config["width"]),
            head_sizes=parse_head_sizes(config["head_sizes"]),
            weighting=weighting,
            lr=float(config["lr"]),
            epochs=int(config["epochs"]),
            batch_size=int(config["batch_size"]),
            weight_decay=float(config["weight_decay"]),
            dropout=float(config["dropout"]),
            weighting_params={**config_params(weighting, config), **dict(config.get("weighting_params", {}))},
        )

    def architecture(self) -> Architecture:
        return Architecture(self.depth, self.sharing_depth, self.width, self.head_sizes, self.dropout)


@dataclass(frozen=True)
class Distributed:
    """How :func:`fit` cooperates with other data-parallel workers.

    Args:
        rank, world_size: this worker's place; each trains on its shard of every epoch.
        wrap_model: wraps the network for gradient synchronisation (e.g. DDP).
    """

    rank: int = 0
    world_size: int = 1
    wrap_model: Callable[[nn.Module], nn.Module] | None = None


@dataclass
class FitResult:
    """What a finished :func:`fit` returns (the same numbers as its last report)."""

    status: str
    epochs_run: int
    score: float
    best_epoch: int
    metrics: dict[str, Any]
    reason: str = ""


@dataclass
class _Tensors:
    x: torch.Tensor
    y: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]


def _to_device(split: SplitArrays, tasks: Sequence[str], device: torch.device) -> _Tensors:
    return _Tensors(
        x=torch.as_tensor(split.x, device=device),
        y={t: torch.as_tensor(split.y[t], device=device) for t in tasks},
        mask={t: torch.as_tensor(split.mask[t], device=device) for t in tasks},
    )


@torch.no_grad()
def predict(model: MultiTaskNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs for every row of ``x``, in chunks, in evaluation mode."""
    was_training = model.training
    model.eval()
    parts = [model(x[start:start + _EVAL_CHUNK]) for start in range(0, x.shape[0], _EVAL_CHUNK)]
    model.train(was_training)
    return {task: torch.cat([p[task] for p in parts]) for task in model.task_names}


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
    """
    distributed = distributed or Distributed()
    device = torch.device(device)
    unknown = [t for t in tasks if t not in data.tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid: {', '.join(data.tasks)}")
    task_info = {t: data.tasks[t] for t in tasks}

    torch.manual_seed(seed)
    model = MultiTaskNet(data.num_features, {t: info.outputs for t, info in task_info.items()},
                         params.architecture()).to(device)
    weighting = make_weighting(params.weighting, list(tasks), seed=seed, **params.weighting_params).to(device)
    shared = _shared_layout(model, weighting)
    if shared is not None and distributed.world_size > 1:
        raise ValueError(
            f"weighting {params.weighting!r} steers the shared layers' gradient, which data-parallel training "
            f"(world_size={distributed.world_size}) does not support; train it on one worker "
            "(resources.workers_per_trial: 1) or choose a loss-level weighting"
        )
    trainable = model if distributed.wrap_model is None else distributed.wrap_model(model)
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *weighting.parameters()], lr=params.lr, weight_decay=params.weight_decay,
        **({"fused": True} if device.type == "cuda" else {}),
    )
    generator = torch.Generator(device=device).manual_seed(seed)

    train = _to_device(data.splits["train"], tasks, device)
    valid = _to_device(data.splits["valid"], tasks, device)
    test = _to_device(data.splits["test"], tasks, device)
    trivial_valid = torch.tensor([data.splits["valid"].trivial_loss[t] for t in tasks], device=device)

    rows = train.x.shape[0]
    shard = rows // distributed.world_size
    steps = max(1, math.ceil(shard / params.batch_size))
    best_score, best_epoch, best_metrics = math.inf, 0, {}
    start_epoch, loop_seconds = 0, 0.0
    if initial_state is not None:
        model.load_state_dict(initial_state["model"])
        weighting.load_state_dict(initial_state["weighting"])
        optimizer.load_state_dict(initial_state["optimizer"])
        generator.set_state(initial_state["generator"])
        start_epoch = initial_state["epoch"]
        best_score, best_epoch = initial_state["best_score"], initial_state["best_epoch"]
        best_metrics, loop_seconds = dict(initial_state["best_metrics"]), initial_state["train_loop_s"]

    def state() -> dict[str, Any]:
        return {
            "model": model.state_dict(), "weighting": weighting.state_dict(), "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(), "epoch": epoch + 1, "best_score": best_score,
            "best_epoch": best_epoch, "best_metrics": best_metrics, "train_loop_s": loop_seconds,
            "last_metrics": metrics,
        }

    if initial_state is not None and start_epoch >= params.epochs:
        # Restored after its last epoch (the run finished just before an interruption): there is nothing
        # left to train, so report the final metrics again for whoever is waiting for them.
        final = dict(initial_state.get("last_metrics", {}))
        if report is not None and final:
            report(final, lambda: dict(initial_state))
        return FitResult(final.get("status", "completed"), start_epoch, best_score, best_epoch, final)

    constant = {"params": model.num_parameters(), "sharing_depth": model.sharing_depth,
                "threads": torch.get_num_threads()}
    result = FitResult("completed", start_epoch, best_score, best_epoch, {})
    for epoch in range(start_epoch, params.epochs):
        started = time.perf_counter()
        epoch_losses, epoch_weights = _train_epoch(trainable, weighting, optimizer, train, task_info,
                                                   params.batch_size, steps, generator, distributed, shared)
        losses_cpu, used_weights = torch.stack([epoch_losses, epoch_weights]).cpu()  # the epoch's one host sync
        diverged = [t for t, value in zip(tasks, losses_cpu.tolist(), strict=True) if not math.isfinite(value)]
        metrics: dict[str, Any] = {"epoch": epoch + 1, **constant}
        if diverged:
            loop_seconds += time.perf_counter() - started
            reason = f"training loss of {', '.join(diverged)} became non-finite in epoch {epoch + 1}"
            metrics.update(best_metrics)
            metrics.update(score=float("nan"), epoch_score=float("nan"), best_epoch=best_epoch,
                           train_loop_s=loop_seconds, status="diverged", reason=reason)
            if report is not None:
                report(metrics, state)
            return FitResult("diverged", epoch + 1, float("nan"), best_epoch, metrics, reason)
        weighting.end_epoch(epoch_losses)

        valid_out = predict(model, valid.x)
        valid_losses = torch.stack([masked_loss(task_info[t].type, valid_out[t], valid.y[t], valid.mask[t])
                                    for t in tasks])
        epoch_score = float((valid_losses / trivial_valid).mean())
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
            status="completed" if epoch + 1 == params.epochs else "running",
            reason="",
            **{f"train_loss/{t}": float(v) for t, v in zip(tasks, losses_cpu, strict=True)},
            **{f"weight/{t}": float(w) for t, w in zip(tasks, used_weights, strict=True)},
        )
        if report is not None:
            report(metrics, state)
        result = FitResult(metrics["status"], epoch + 1, metrics["score"], best_epoch, metrics)
    return result


def _train_epoch(
    model: nn.Module,
    weighting: Weighting,
    optimizer: torch.optim.Optimizer,
    train: _Tensors,
    task_info: Mapping[str, Any],
    batch_size: int,
    steps: int,
    generator: torch.Generator,
    distributed: Distributed,
    shared: _SharedLayout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over this worker's shard; returns the mean loss and mean weight per task (on the device).

    With ``shared`` (a gradient-level scheme and a group that shares layers) each step
    goes through :func:`_gradient_step`; otherwise the scheme's combined loss is backpropagated.
    """
    model.train()
    tasks = list(task_info)
    rows = train.x.shape[0]
    order = torch.randperm(rows, generator=generator, device=train.x.device)
    if distributed.world_size > 1:
        shard = rows // distributed.world_size
        order = order[distributed.rank::distributed.world_size][:shard]
    sums = torch.zeros(len(tasks), device=train.x.device)
    weight_sums = torch.zeros(len(tasks), device=train.x.device)
    sync_weighting = distributed.world_size > 1 and any(True for _ in weighting.parameters())
    for step in range(steps):
        index = order[step * batch_size:(step + 1) * batch_size]
        outputs = model(train.x[index])
        losses = torch.stack([
            masked_loss(task_info[t].type, outputs[t], train.y[t][index], train.mask[t][index]) for t in tasks
        ])
        optimizer.zero_grad(set_to_none=True)
        if shared is None:
            weighting.combine(losses).backward()
        else:
            _gradient_step(weighting, losses, shared)
        if sync_weighting:
            _average_gradients(weighting.parameters(), distributed.world_size)
        optimizer.step()
        sums += losses.detach()
        weight_sums += weighting.weights()
    return sums / steps, weight_sums / steps


@dataclass(frozen=True)
class _SharedLayout:
    """What a gradient-level scheme steers: the shared parameters, and everything else that trains."""

    parameters: list[nn.Parameter]
    others: list[nn.Parameter]
    last_layer: slice  # columns of the flat shared gradient holding the last shared weight matrix


def _shared_layout(model: MultiTaskNet, weighting: Weighting) -> _SharedLayout | None:
    """The layout for a scheme that needs per-task gradients, or None (loss-level, or nothing shared)."""
    parameters = model.shared_parameters()
    if not weighting.needs_task_gradients or not parameters:
        return None
    ids = {id(p) for p in parameters}
    others = [p for p in (*model.parameters(), *weighting.parameters()) if id(p) not in ids and p.requires_grad]
    offset, last_layer = 0, slice(0, 0)
    for parameter in parameters:
        if parameter.ndim == 2:
            last_layer = slice(offset, offset + parameter.numel())
        offset += parameter.numel()
    return _SharedLayout(parameters, others, last_layer)


def _gradient_step(weighting: Weighting, losses: torch.Tensor, shared: _SharedLayout) -> None:
    """Gradients for a gradient-level scheme: its direction for the shared layers, its loss for the rest."""
    tasks = losses.shape[0]
    # One batched backward (vmap over the rows of the identity) gives every task's shared gradient.
    per_task = torch.autograd.grad(losses, shared.parameters, grad_outputs=torch.eye(tasks, device=losses.device,
                                   dtype=losses.dtype), retain_graph=True, is_grads_batched=True,
                                   materialize_grads=True)
    flat = torch.cat([g.reshape(tasks, -1) for g in per_task], dim=1)
    direction = weighting.shared_gradient(losses.detach(), SharedGradients(flat, shared.last_layer))
    weighting.combine(losses).backward(inputs=shared.others)
    offset = 0
    for parameter in shared.parameters:
        size = parameter.numel()
        parameter.grad = direction[offset:offset + size].view_as(parameter).to(parameter.dtype)
        offset += size


def _average_gradients(parameters: Any, world_size: int) -> None:
    # The weighting's own parameters sit outside the DDP-wrapped network, so average them by hand.
    for parameter in parameters:
        if parameter.grad is not None:
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= world_size


def _best_metrics(
    model: MultiTaskNet,
    data: PreparedData,
    task_info: Mapping[str, Any],
    valid_out: dict[str, torch.Tensor],
    test: _Tensors,
) -> dict[str, Any]:
    """Full validation and test metrics at a new best epoch."""
    test_out = predict(model, test.x)
    metrics: dict[str, Any] = {}
    test_nloss = []
    for split, outputs in (("valid", valid_out), ("test", test_out)):
        arrays = data.splits[split]
        for task, info in task_info.items():
            values = evaluate_task(info.type, outputs[task].float().cpu().numpy(), arrays.y[task],
                                   arrays.mask[task], target_std=info.std)
            nloss = values["loss"] / arrays.trivial_loss[task]
            metrics[f"{split}/{task}/nloss"] = nloss
            for name, value in values.items():
                metrics[f"{split}/{task}/{name}"] = value
            if split == "test":
                test_nloss.append(nloss)
    metrics["test/score"] = float(np.mean(test_nloss))
    return metrics
