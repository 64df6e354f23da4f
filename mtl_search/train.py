"""The training core: plain PyTorch, no Ray.

:func:`fit` trains one group's network on prepared arrays. The whole training
split lives on the trial's device and batches are drawn by index (a
per-sample ``DataLoader`` is far slower for tabular data). Training losses are
accumulated on the device and read once per epoch; after each epoch the
network is scored on the validation split and a flat metrics dict is handed to
the ``report`` callable.

How a step runs on its device (the spec's ``train:`` section, :class:`TrainSpec`):

* the optimiser is AdamW: fused (one kernel for every parameter) on CUDA, ``foreach``
  (a few batched ops instead of ~10 per parameter) on the CPU;
* with ``cuda_graphs`` (``auto``: on CUDA, single worker, a scheme whose step is
  graph-safe, see ``Weighting.capturable``) the step for a full batch is captured
  once in a CUDA graph and replayed; the final partial batch of each epoch runs
  the same step eagerly, so a captured epoch trains on exactly the rows and
  steps an eager one does;
* with ``amp: bf16`` the forward pass runs under ``torch.autocast`` in bfloat16;
  losses, their sums and the validation metrics stay in float32.

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

import contextlib
import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtl_search.config import TrainSpec, parse_head_sizes
from mtl_search.data import PreparedData, SplitArrays
from mtl_search.metrics import BINARY, MULTICLASS, REGRESSION, evaluate_task, masked_loss
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
    """One split on the device.

    ``y`` and ``mask`` hold each task's labels as prepared; ``targets`` and
    ``label_weights`` hold the same, packed ``[tasks, rows]`` (labels as float32,
    class ids included; masks as 0/1 weights), so a training step gathers every
    task's batch with two indexing ops instead of two per task.
    """

    x: torch.Tensor
    y: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    targets: torch.Tensor
    label_weights: torch.Tensor


def _to_device(split: SplitArrays, tasks: Sequence[str], device: torch.device) -> _Tensors:
    y = {t: torch.as_tensor(split.y[t], device=device) for t in tasks}
    mask = {t: torch.as_tensor(split.mask[t], device=device) for t in tasks}
    # Class ids are exact in float32 below 2**24 classes; a step casts them back with one op per task.
    targets = torch.stack([y[t].to(torch.float32) for t in tasks])
    label_weights = torch.stack([mask[t].to(torch.float32) for t in tasks])
    return _Tensors(x=torch.as_tensor(split.x, device=device), y=y, mask=mask, targets=targets,
                    label_weights=label_weights)


@torch.no_grad()
def predict(model: MultiTaskNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs for every row of ``x``, in chunks, in evaluation mode."""
    was_training = model.training
    model.eval()
    parts = [model(x[start:start + _EVAL_CHUNK]) for start in range(0, x.shape[0], _EVAL_CHUNK)]
    model.train(was_training)
    return {task: torch.cat([p[task] for p in parts]) for task in model.task_names}


def batch_losses(kinds: Sequence[str], outputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 label_weights: torch.Tensor) -> torch.Tensor:
    """Every task's masked mean loss on one batch, as :func:`mtl_search.metrics.masked_loss` computes it.

    The per-row losses of all tasks are stacked ``[tasks, rows]`` and masked, summed
    and divided in three ops for all tasks together (per row and per task the same
    arithmetic, and for a batch the same reduction order, so the same numbers).
    Outputs are cast to float32 first, so a bf16 forward pass still gives float32 losses.

    Args:
        kinds: each task's type, in order.
        outputs: each task's network output for the batch.
        targets: ``[tasks, rows]`` labels (class ids as floats).
        label_weights: ``[tasks, rows]``, 1 where a task's label is present, else 0.
    """
    rows = []
    for kind, output, target in zip(kinds, outputs, targets, strict=True):
        output = output.float()
        if kind == REGRESSION:
            rows.append((output - target) ** 2)
        elif kind == BINARY:
            rows.append(F.binary_cross_entropy_with_logits(output, target, reduction="none"))
        elif kind == MULTICLASS:
            rows.append(F.cross_entropy(output, target.long(), reduction="none"))
        else:
            raise ValueError(f"unknown task type {kind!r}; valid: {BINARY}, {MULTICLASS}, {REGRESSION}")
    return (torch.stack(rows) * label_weights).sum(dim=1) / label_weights.sum(dim=1).clamp_min(1.0)


def capture_problems(device: torch.device, weighting: Weighting, distributed: Distributed) -> list[str]:
    """Why this trial's step cannot be captured in a CUDA graph (empty when it can).

    Args:
        device: the trial's device.
        weighting: the trial's scheme instance (a group of one task always trains with ``equal``).
        distributed: the data-parallel settings.
    """
    problems = []
    if device.type != "cuda":
        problems.append(f"the device is {device.type}, not cuda")
    if not type(weighting).capturable:
        problems.append(f"weighting {weighting.name!r} runs host-side logic in its step (capturable = False)")
    if distributed.world_size > 1:
        problems.append(f"training is data-parallel (world_size={distributed.world_size})")
    return problems


def _wants_capture(options: TrainSpec, device: torch.device, weighting: Weighting, distributed: Distributed,
                   shard: int, batch_size: int) -> bool:
    """``train.cuda_graphs``: ``auto`` captures where it can, ``on`` insists, ``off`` never captures.

    Raises:
        ValueError: ``on`` where a capture is impossible (the message says why).
    """
    if options.cuda_graphs == "off":
        return False
    problems = capture_problems(device, weighting, distributed)
    if shard < batch_size:
        problems.append(f"an epoch ({shard} rows) is shorter than one batch ({batch_size}), so no step has the "
                        "fixed batch size a graph replays")
    if problems and options.cuda_graphs == "on":
        raise ValueError(f"train.cuda_graphs is 'on' but this trial's step cannot be captured: {'; '.join(problems)}; "
                         "use cuda_graphs 'auto' to capture only where possible")
    return not problems


def _make_optimizer(parameters: Sequence[nn.Parameter], params: TrialParams, device: torch.device,
                    capturable: bool) -> torch.optim.AdamW:
    """AdamW with the fastest implementation for the device; ``capturable`` for a CUDA-graph step."""
    if device.type == "cuda":
        # One fused kernel updates every parameter; a captured step also needs the step count on the device.
        options: dict[str, Any] = {"fused": True, "capturable": capturable}
    else:
        # The per-parameter loop costs ~10 small ops per tensor, which dominates small networks on a CPU;
        # foreach batches them (same arithmetic, same results).
        options = {"foreach": True}
    return torch.optim.AdamW(parameters, lr=params.lr, weight_decay=params.weight_decay, **options)


class _Step:
    """One optimisation step on a batch of training-row indices, written so a CUDA graph can capture it.

    Everything it touches keeps its address between calls: the training arrays,
    the parameters, their optimiser state and the per-epoch sums
    (:attr:`loss_sums`, :attr:`weight_sums`), which it updates in place. It reads
    nothing back to the host, so a whole epoch of steps is queued without waiting
    for the device.

    Args:
        model: the network (or its data-parallel wrapper).
        weighting: the group's scheme.
        optimizer: trains the network's and the scheme's parameters.
        train: the training split on the device.
        kinds: each task's type, in the scheme's task order.
        shared: the shared layers a gradient-level scheme steers (None: backpropagate the combined loss).
        amp: ``bf16`` runs the forward pass under autocast; ``none`` in float32.
        distributed: data-parallel settings (the scheme's own gradients are averaged by hand).
    """

    def __init__(self, model: nn.Module, weighting: Weighting, optimizer: torch.optim.Optimizer, train: _Tensors,
                 kinds: Sequence[str], *, shared: _SharedLayout | None = None, amp: str = "none",
                 distributed: Distributed | None = None) -> None:
        self.model, self.weighting, self.optimizer, self.train = model, weighting, optimizer, train
        self.kinds, self.shared = tuple(kinds), shared
        self.tasks = weighting.tasks
        device = train.x.device
        if amp == "bf16":
            # No weight-cast cache: each weight is used once per pass, and a cache must not outlive a graph capture.
            self._autocast: Callable[[], AbstractContextManager[Any]] = lambda: torch.autocast(
                device.type, dtype=torch.bfloat16, cache_enabled=False)
        elif amp == "none":
            self._autocast = contextlib.nullcontext
        else:
            raise ValueError(f"amp must be 'none' or 'bf16', but got {amp!r}.")
        world_size = distributed.world_size if distributed is not None else 1
        self.world_size = world_size
        self.sync_weighting = world_size > 1 and any(True for _ in weighting.parameters())
        self.loss_sums = torch.zeros(len(self.tasks), device=device)
        self.weight_sums = torch.zeros(len(self.tasks), device=device)

    def losses(self, index: torch.Tensor) -> torch.Tensor:
        """Every task's masked mean loss (float32) on the training rows ``index``."""
        with self._autocast():
            outputs = self.model(self.train.x[index])
        return batch_losses(self.kinds, [outputs[t] for t in self.tasks], self.train.targets[:, index],
                            self.train.label_weights[:, index])

    def __call__(self, index: torch.Tensor, *, grads_to_none: bool = True) -> None:
        """Train on the rows ``index`` and add their losses and weights to the epoch's sums.

        Args:
            index: training-row positions on the device.
            grads_to_none: drop the old gradients (backward then writes fresh ones); False zeroes them in
                place, so gradient tensors a CUDA graph writes keep their addresses.
        """
        losses = self.losses(index)
        self.optimizer.zero_grad(set_to_none=grads_to_none)
        if self.shared is None:
            self.weighting.combine(losses).backward()
        else:
            _gradient_step(self.weighting, losses, self.shared)
        if self.sync_weighting:
            _average_gradients(self.weighting.parameters(), self.world_size)
        self.optimizer.step()
        self.loss_sums += losses.detach()
        self.weight_sums += self.weighting.weights()


@dataclass
class _Snapshot:
    """Copies of the training state, to undo the warm-up steps a graph capture needs, in place."""

    model: dict[str, torch.Tensor]
    weighting: dict[str, Any]
    optimizer: dict[int, dict[str, Any]]
    cpu_rng: torch.Tensor  # the warm-up's dropout draws on a CPU device come from torch's global generator

    @classmethod
    def take(cls, step: _Step) -> _Snapshot:
        state = step.optimizer.state
        return cls(
            model={k: v.detach().clone() for k, v in step.model.state_dict().items()},
            weighting=copy.deepcopy(step.weighting.state_dict()),
            optimizer={id(p): {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state[p].items()}
                       for p in state},
            cpu_rng=torch.get_rng_state(),
        )

    @torch.no_grad()
    def restore(self, step: _Step) -> None:
        """Put the state back without replacing any tensor (a captured graph holds their addresses).

        ``load_state_dict`` of a module copies into its tensors; an optimiser's would
        replace them, so its state is copied by hand. State the warm-up created
        (AdamW's moments and step count of a fresh optimiser) is zeroed, which is
        what AdamW's lazy initialisation gives.
        """
        step.model.load_state_dict(self.model)
        step.weighting.load_state_dict(self.weighting)
        for parameter, state in step.optimizer.state.items():
            saved = self.optimizer.get(id(parameter))
            for key, value in state.items():
                if not torch.is_tensor(value):
                    if saved is not None:
                        state[key] = saved[key]
                elif saved is None:
                    value.zero_()
                else:
                    value.copy_(saved[key])
        step.loss_sums.zero_()
        step.weight_sums.zero_()
        torch.set_rng_state(self.cpu_rng)


class _GraphStep:
    """A :class:`_Step` over a fixed-size index buffer, replayed from a CUDA graph for every full batch.

    Construction runs a few warm-up steps (on a side stream on CUDA: they create
    the optimiser state and let libraries allocate their workspaces outside the
    graph), captures one step into a CUDA graph when ``capture`` is set, and then
    restores the training state the warm-up changed, so training starts from
    exactly where it was. A call with a full batch copies its indices into the
    static buffer and replays the graph; a shorter batch (an epoch's last) runs
    the same step eagerly, writing into the same gradient tensors. The learning
    rate is baked into the graph (mtl_search uses a constant one).

    With ``capture`` False everything but the capture itself runs (eagerly, on any
    device), which is how the protocol is tested without a GPU.

    Args:
        step: the step to replay.
        batch_size: rows per full batch.
        capture: capture a CUDA graph (the device must be CUDA).
        warmup_steps: eager steps before the capture (the PyTorch documentation's example uses 3).
    """

    def __init__(self, step: _Step, batch_size: int, *, capture: bool, warmup_steps: int = 3) -> None:
        device = step.loss_sums.device
        if capture and device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA device, but the step is on {device}.")
        self.step, self.batch_size = step, batch_size
        rows = step.train.x.shape[0]
        self.index = torch.arange(batch_size, device=device) % max(rows, 1)
        self.graph: Any = None
        snapshot = _Snapshot.take(step)
        if capture:
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup_steps):
                    step(self.index)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                step(self.index)  # recorded, not run: grads are set to None first, so backward allocates them
        else:
            for _ in range(warmup_steps):
                step(self.index)
        snapshot.restore(step)

    @property
    def loss_sums(self) -> torch.Tensor:
        return self.step.loss_sums

    @property
    def weight_sums(self) -> torch.Tensor:
        return self.step.weight_sums

    def __call__(self, index: torch.Tensor) -> None:
        if index.shape[0] != self.batch_size:
            self.step(index, grads_to_none=False)
            return
        self.index.copy_(index)
        if self.graph is None:
            self.step(self.index)
        else:
            self.graph.replay()


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
        self.shared = _shared_layout(model, weighting)
        if self.shared is not None and distributed.world_size > 1:
            raise ValueError(
                f"weighting {params.weighting!r} steers the shared layers' gradient, which data-parallel training "
                f"(world_size={distributed.world_size}) does not support; train it on one worker "
                "(resources.workers_per_trial: 1) or choose a loss-level weighting"
            )
        self.train = _to_device(data.splits["train"], self.tasks, device)
        rows = self.train.x.shape[0]
        self.shard = rows // distributed.world_size
        self.steps = max(1, math.ceil(self.shard / params.batch_size))
        self.cuda_graph = _wants_capture(options, device, weighting, distributed, self.shard, params.batch_size)
        self.trainable = model if distributed.wrap_model is None else distributed.wrap_model(model)
        self.optimizer = _make_optimizer([*model.parameters(), *weighting.parameters()], params, device,
                                         capturable=self.cuda_graph)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        if initial_state is not None:
            model.load_state_dict(initial_state["model"])
            weighting.load_state_dict(initial_state["weighting"])
            self.optimizer.load_state_dict(initial_state["optimizer"])
            self.generator.set_state(initial_state["generator"])
        step = _Step(self.trainable, weighting, self.optimizer, self.train,
                     [info.type for info in self.task_info.values()], shared=self.shared, amp=options.amp,
                     distributed=distributed)
        self.step: _Step | _GraphStep = (_GraphStep(step, params.batch_size, capture=True) if self.cuda_graph
                                         else step)

    def run_epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over this worker's shard; the mean loss and mean weight per task (on the device).

        Each batch goes through the loop's step (eager or replayed from a CUDA graph); with a
        gradient-level scheme and shared layers the step steers the shared update (:func:`_gradient_step`).
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
        return FitResult(final.get("status", "completed"), initial_state["epoch"], initial_state["best_score"],
                         initial_state["best_epoch"], final)

    loop = TrainingLoop(data, tasks, params, device=device, seed=seed, distributed=distributed, options=options,
                        initial_state=initial_state)
    model, weighting, task_info, device = loop.model, loop.weighting, loop.task_info, loop.device
    valid = _to_device(data.splits["valid"], tasks, device)
    test = _to_device(data.splits["test"], tasks, device)
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
    result = FitResult("completed", start_epoch, best_score, best_epoch, {})
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
                           train_loop_s=loop_seconds, status="diverged", reason=reason)
            if report is not None:
                report(metrics, state)
            return FitResult("diverged", epoch + 1, float("nan"), best_epoch, metrics, reason)
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
            status="completed" if epoch + 1 == params.epochs else "running",
            reason="",
            **{f"train_loss/{t}": float(v) for t, v in zip(tasks, losses_cpu, strict=True)},
            **{f"weight/{t}": float(w) for t, w in zip(tasks, used_weights, strict=True)},
        )
        if report is not None:
            report(metrics, state)
        result = FitResult(metrics["status"], epoch + 1, metrics["score"], best_epoch, metrics)
    return result


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
