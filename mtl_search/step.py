"""One optimisation step of a pack on the device (PyTorch, no Ray): the step a trial repeats, and how it runs fast.

* The training split lives on the trial's device (:class:`DeviceSplit`) and a
  step gathers its batch by index; the per-epoch sums of losses and weights are
  updated in place, so a whole epoch is queued without reading back to the host.
* The optimiser is AdamW, fused (one kernel for every parameter) on CUDA and on the CPU.
* On a CPU, sparse features (one-hot columns) are read as each row's non-zero
  ``(columns, values)`` (:func:`nonzero_lists`), so the first layer costs a tenth of a dense product.
* A gradient-level weighting scheme gets every task's gradient of each multi-task
  group's trunk (one batched backward for the whole pack) and sets their update
  (:func:`gradient_step`).
* With ``cuda_graphs`` (``auto``: on CUDA, single worker, a scheme whose step is
  graph-safe, see :attr:`mtl_search.schemes.Scheme.capturable`) the step for a full
  batch is captured once in a CUDA graph and replayed (:class:`GraphStep`); the
  final partial batch of each epoch runs the same step eagerly, so a captured
  epoch trains on exactly the rows and steps an eager one does.
* With ``amp: bf16`` the forward pass runs under ``torch.autocast`` in bfloat16;
  losses and their sums stay in float32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtl_search.config import TrainSpec
from mtl_search.data import SplitArrays
from mtl_search.losses import pack_losses
from mtl_search.packed import PackedNet
from mtl_search.schedule import lr_factor
from mtl_search.trial import TrialParams
from mtl_search.weighting import SharedGradients, Weighting


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
class DeviceSplit:
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
    #: Each row's non-zero features as ``(columns, values)``, ``[rows, m]`` each (padded with value 0),
    #: when the features are sparse enough for :class:`mtl_search.packed.PackedNet` to read them so.
    nonzeros: tuple[torch.Tensor, torch.Tensor] | None = None

    def select(self, tasks: Sequence[str]) -> DeviceSplit:
        """The same rows for ``tasks`` only (the features are shared, not copied)."""
        order = list(self.y)
        index = torch.tensor([order.index(task) for task in tasks], device=self.x.device)
        return DeviceSplit(x=self.x, y={t: self.y[t] for t in tasks}, mask={t: self.mask[t] for t in tasks},
                           targets=self.targets.index_select(0, index),
                           label_weights=self.label_weights.index_select(0, index), nonzeros=self.nonzeros)

    def inputs(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The network's inputs for the rows ``index``: dense rows, or their non-zero columns and values."""
        if self.nonzeros is None:
            return (self.x[index],)
        columns, values = self.nonzeros
        return columns[index], values[index]


#: Features are read as (column, value) lists when a row's non-zeros are at most this share of its features.
SPARSE_SHARE = 0.25


def nonzero_lists(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``x``'s rows as ``(columns, values)`` ``[rows, m]``, ``m`` the most non-zeros of a row; None if too dense.

    Rows with fewer non-zeros are padded with column 0 and value 0, which adds nothing.
    """
    rows, features = x.shape
    nonzero = x != 0
    width = int(nonzero.sum(dim=1).max()) if rows else 0
    if rows == 0 or width > SPARSE_SHARE * features:
        return None
    # A stable sort puts each row's non-zero columns first, in column order.
    order = torch.sort(nonzero.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :max(width, 1)]
    values = torch.gather(x, 1, order)
    return torch.where(values != 0, order, 0), values


def to_device(split: SplitArrays, tasks: Sequence[str], device: torch.device) -> DeviceSplit:
    """``split`` on ``device``; on a CPU, sparse features (one-hot columns) also as non-zero lists.

    Measured on one CPU thread (the default spec's 248 features, 25 non-zero per row, 31
    groups of width 64, batch 512), reading them so makes a pack's first layer, forward
    and weight gradient, about 2x faster than its dense product. A GPU keeps the dense
    product, which is fast there and captures in a CUDA graph.
    """
    y = {t: torch.as_tensor(split.y[t], device=device) for t in tasks}
    mask = {t: torch.as_tensor(split.mask[t], device=device) for t in tasks}
    # Class ids are exact in float32 below 2**24 classes; a step casts them back with one op per task.
    targets = torch.stack([y[t].to(torch.float32) for t in tasks])
    label_weights = torch.stack([mask[t].to(torch.float32) for t in tasks])
    x = torch.as_tensor(split.x, device=device)
    nonzeros = nonzero_lists(x) if device.type == "cpu" else None
    return DeviceSplit(x=x, y=y, mask=mask, targets=targets, label_weights=label_weights, nonzeros=nonzeros)


def capture_problems(device: torch.device, weighting: Weighting, distributed: Distributed) -> list[str]:
    """Why this trial's step cannot be captured in a CUDA graph (empty when it can).

    Args:
        device: the trial's device.
        weighting: the trial's scheme instance.
        distributed: the data-parallel settings.
    """
    problems = []
    if device.type != "cuda":
        problems.append(f"the device is {device.type}, not cuda")
    if not weighting.scheme.capturable:
        problems.append(f"weighting {weighting.name!r} runs host-side logic in its step (capturable = False)")
    if distributed.world_size > 1:
        problems.append(f"training is data-parallel (world_size={distributed.world_size})")
    return problems


def wants_capture(options: TrainSpec, device: torch.device, weighting: Weighting, distributed: Distributed,
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


def make_optimizer(parameters: Sequence[nn.Parameter], params: TrialParams, device: torch.device,
                    capturable: bool) -> torch.optim.AdamW:
    """AdamW, fused: one kernel updates every parameter (on a CPU too: 4-10% faster epochs than ``foreach``,
    measured with ``benchmarks/packing.py``); ``capturable`` keeps the step count on the device for a CUDA graph,
    and, under a learning-rate schedule, the learning rate too (a tensor the schedule fills in place, so a
    replayed graph reads the current value)."""
    options: dict[str, Any] = {"fused": True}
    lr: float | torch.Tensor = params.lr
    if device.type == "cuda":
        options["capturable"] = capturable
        if capturable and params.lr_schedule != "constant":
            lr = torch.tensor(params.lr, device=device)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=params.weight_decay, **options)


def make_lr_schedule(optimizer: torch.optim.Optimizer, params: TrialParams,
                     steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The trial's learning-rate schedule over its planned steps (:mod:`mtl_search.schedule`); None if constant."""
    if params.lr_schedule == "constant":
        return None
    total = params.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, params.lr_schedule,
                                                                          total=total))


class Step:
    """One optimisation step of a pack on a batch of training-row indices, written so a CUDA graph can capture it.

    Everything it touches keeps its address between calls: the training arrays,
    the parameters, their optimiser state, the live-group mask and the per-epoch
    sums (:attr:`loss_sums`, :attr:`weight_sums`, ``[G, T]``), which it updates in
    place. It reads nothing back to the host, so a whole epoch of steps is queued
    without waiting for the device.

    Args:
        model: the pack (or its data-parallel wrapper): what runs the forward pass.
        net: the pack itself (its groups and tasks).
        weighting: the pack's scheme.
        optimizer: trains the pack's and the scheme's parameters.
        train: the training split on the device, tasks in ``net.tasks`` order.
        kinds: each of ``net.tasks``' type.
        shared: the trunks a gradient-level scheme steers (None: backpropagate the combined loss).
        amp: ``bf16`` runs the forward pass under autocast; ``none`` in float32.
        distributed: data-parallel settings (the scheme's own gradients are averaged by hand).
        grad_clip: clip each network's gradient norm to this before the update (0: no clipping).
    """

    def __init__(self, model: nn.Module, net: PackedNet, weighting: Weighting, optimizer: torch.optim.Optimizer,
                 train: DeviceSplit, kinds: Sequence[str], *, shared: SharedLayout | None = None,
                 amp: str = "none", distributed: Distributed | None = None, grad_clip: float = 0.0) -> None:
        self.model, self.net, self.weighting, self.optimizer, self.train = model, net, weighting, optimizer, train
        self.kinds, self.shared, self.grad_clip = tuple(kinds), shared, grad_clip
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
        shape = (len(net.groups), len(net.tasks))
        self.loss_sums = torch.zeros(shape, device=device)
        self.weight_sums = torch.zeros(shape, device=device)
        #: ``[G, 1]``: False for a group that diverged. Its losses count as 0 from then on, so it stops
        #: training (groups share nothing: the others train exactly as before).
        self.live = torch.ones(len(net.groups), 1, dtype=torch.bool, device=device)

    def losses(self, index: torch.Tensor) -> torch.Tensor:
        """The ``[G, T]`` masked mean losses (float32) on the training rows ``index``."""
        with self._autocast():
            outputs = self.model(*self.train.inputs(index))
        return pack_losses(self.net, self.kinds, outputs, self.train.targets[:, index],
                           self.train.label_weights[:, index])

    def __call__(self, index: torch.Tensor, *, grads_to_none: bool = True) -> None:
        """Train on the rows ``index`` and add their losses and weights to the epoch's sums.

        Args:
            index: training-row positions on the device.
            grads_to_none: drop the old gradients (backward then writes fresh ones); False zeroes them in
                place, so gradient tensors a CUDA graph writes keep their addresses.
        """
        measured = self.losses(index)
        losses = torch.where(self.live, measured, torch.zeros((), device=measured.device))
        self.optimizer.zero_grad(set_to_none=grads_to_none)
        if self.shared is None:
            self.weighting.combine(losses).backward()
        else:
            gradient_step(self.weighting, losses, self.shared)
        if self.sync_weighting:
            _average_gradients(self.weighting.parameters(), self.world_size)
        if self.grad_clip > 0:
            self.net.clip_grad_norms_(self.grad_clip)
        self.optimizer.step()
        self.loss_sums += measured.detach()  # a diverged group's sums show it (non-finite)
        self.weight_sums += self.weighting.weights()


@dataclass
class Snapshot:
    """Copies of the training state, to undo the warm-up steps a graph capture needs, in place."""

    model: dict[str, torch.Tensor]
    weighting: dict[str, Any]
    optimizer: dict[int, dict[str, Any]]
    cpu_rng: torch.Tensor  # the warm-up's dropout draws on a CPU device come from torch's global generator

    @classmethod
    def take(cls, step: Step) -> Snapshot:
        state = step.optimizer.state
        return cls(
            model={k: v.detach().clone() for k, v in step.model.state_dict().items()},
            weighting=copy.deepcopy(step.weighting.state_dict()),
            optimizer={id(p): {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state[p].items()}
                       for p in state},
            cpu_rng=torch.get_rng_state(),
        )

    @torch.no_grad()
    def restore(self, step: Step) -> None:
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


class GraphStep:
    """A :class:`Step` over a fixed-size index buffer, replayed from a CUDA graph for every full batch.

    Construction runs a few warm-up steps (on a side stream on CUDA: they create
    the optimiser state and let libraries allocate their workspaces outside the
    graph), captures one step into a CUDA graph when ``capture`` is set, and then
    restores the training state the warm-up changed, so training starts from
    exactly where it was. A call with a full batch copies its indices into the
    static buffer and replays the graph; a shorter batch (an epoch's last) runs
    the same step eagerly, writing into the same gradient tensors. The learning
    rate is read from a device tensor under a schedule (:func:`make_optimizer`), so the schedule's
    in-place updates reach the replayed steps.

    With ``capture`` False everything but the capture itself runs (eagerly, on any
    device), which is how the protocol is tested without a GPU.

    Args:
        step: the step to replay.
        batch_size: rows per full batch.
        capture: capture a CUDA graph (the device must be CUDA).
        warmup_steps: eager steps before the capture (the PyTorch documentation's example uses 3).
    """

    def __init__(self, step: Step, batch_size: int, *, capture: bool, warmup_steps: int = 3) -> None:
        device = step.loss_sums.device
        if capture and device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA device, but the step is on {device}.")
        self.step, self.batch_size = step, batch_size
        rows = step.train.x.shape[0]
        self.index = torch.arange(batch_size, device=device) % max(rows, 1)
        self.graph: Any = None
        snapshot = Snapshot.take(step)
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

    @property
    def live(self) -> torch.Tensor:
        return self.step.live

    def __call__(self, index: torch.Tensor) -> None:
        if index.shape[0] != self.batch_size:
            self.step(index, grads_to_none=False)
            return
        self.index.copy_(index)
        if self.graph is None:
            self.step(self.index)
        else:
            self.graph.replay()


@dataclass
class SharedLayout:
    """What a gradient-level scheme steers: the multi-task groups' trunks in the pack's stacked parameters.

    Args:
        parameters: the stacked trunk parameters (row ``g``: group ``g``'s), in a separate network's order.
        groups: the steered groups (multi-task groups still training), on the device; the trainer drops a
            group that diverges.
        last_layer: the columns of a group's flat trunk gradient holding its last trunk weight matrix.
    """

    parameters: list[nn.Parameter]
    groups: torch.Tensor
    last_layer: slice


def shared_layout(net: PackedNet, weighting: Weighting) -> SharedLayout | None:
    """The layout for a scheme that needs per-task gradients, or None (loss-level, or no multi-task trunk)."""
    parameters = net.shared_parameters()
    steered = [g for g, group in enumerate(net.groups) if len(group) > 1]
    if not weighting.needs_task_gradients or not parameters or not steered:
        return None
    offset, last_layer = 0, slice(0, 0)
    weights = {id(weight) for weight in net.shared_weights()}
    for parameter in parameters:
        size = parameter[0].numel()
        if id(parameter) in weights:
            last_layer = slice(offset, offset + size)
        offset += size
    return SharedLayout(parameters, torch.tensor(steered, device=parameters[0].device), last_layer)


def gradient_step(weighting: Weighting, losses: torch.Tensor, shared: SharedLayout) -> None:
    """Gradients for a gradient-level scheme: its directions for the steered trunks, its loss for the rest.

    Groups share nothing, so the backward pass of task ``t``'s losses summed over the groups gives every
    group its own task-``t`` gradient: one batched backward (over the ``T`` tasks) serves the whole pack.
    """
    groups, tasks = losses.shape
    rows = shared.groups
    columns = torch.eye(tasks, device=losses.device, dtype=losses.dtype)
    per_task = torch.autograd.grad(losses, shared.parameters, grad_outputs=columns[:, None, :].expand(-1, groups, -1),
                                   retain_graph=True, is_grads_batched=True, materialize_grads=True)
    # [T, G, ...] per parameter -> [S, T, P]: each steered group's task gradients of its whole trunk.
    flat = torch.cat([g[:, rows].reshape(tasks, len(rows), -1) for g in per_task], dim=2).transpose(0, 1)
    directions = weighting.shared_gradient(losses.detach(), SharedGradients(flat, rows, shared.last_layer))
    weighting.combine(losses).backward()
    offset = 0
    for parameter in shared.parameters:
        size = parameter[0].numel()
        parameter.grad[rows] = directions[:, offset:offset + size].reshape(len(rows), *parameter.shape[1:]).to(
            parameter.dtype)
        offset += size


def _average_gradients(parameters: Any, world_size: int) -> None:
    # The weighting's own parameters sit outside the DDP-wrapped network, so average them by hand.
    for parameter in parameters:
        if parameter.grad is not None:
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= world_size


