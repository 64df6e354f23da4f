"""The training core: plain PyTorch, no Ray.

:func:`fit` trains the networks of some groups under one configuration (a trial's
hyperparameters) as packs (:mod:`mtl_search.packed`): every group's network at
once, in one model with stacked parameters, or in turns of at most ``pack_size``
networks. A trial of ``unit: group`` is a pack of one group. The whole training
split lives on the trial's device and batches are drawn by index; training
losses are accumulated on the device and read once per epoch per pack. After
each epoch every network is scored on the validation split, keeps its own best
epoch, and a flat metrics dict is handed to the ``report`` callable. A network
whose training loss becomes non-finite is marked ``diverged`` and frozen; the
others train on exactly as before (groups share nothing).

How each step runs on the device (AdamW, CUDA graphs, bf16, gradient-level
schemes) is :mod:`mtl_search.step`; this module runs the epochs around it.

Metric names in a report (``<t>`` a task, ``<m>`` a metric of its type):

``epoch``, ``status``, ``reason``
    epochs completed; ``running`` / ``completed``, or ``diverged`` once every network has.
``score``
    what the search minimises (:mod:`mtl_search.objective`): for one network, its best
    validation score; for a pack, by default the validation score of the best grouping its
    networks form. ``NaN`` when no network can be scored.
``train_loop_s``, ``threads``, ``cuda_graph``
    seconds inside the training loop so far (training and evaluation), torch's CPU threads,
    whether steps replay a CUDA graph.
``networks``
    per network (keyed :func:`mtl_search.results.network_key`: the group id with ``-`` for ``+``), its
    own metrics:

    ``score``, ``best_epoch``, ``epoch_score``
        its best validation score (the mean normalised validation loss over its tasks, lower is
        better), the epoch it was reached, this epoch's score.
    ``valid/<t>/<m>``, ``test/<t>/<m>``, ``test/score``
        the metrics at its best epoch. Test numbers are reported, never used to choose anything.
    ``train_loss/<t>``, ``weight/<t>``
        this epoch's mean training loss, and the mean over the epoch's steps of the weight the
        scheme gave each task (see :mod:`mtl_search.weighting`).
    ``params``, ``sharing_depth``, ``status``, ``reason``
        its parameter count, the layers its tasks actually share, ``running`` / ``completed`` /
        ``diverged`` and why it diverged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mtl_search.config import TrainSpec
from mtl_search.data import PreparedData
from mtl_search.grouping import group_tasks
from mtl_search.losses import ensemble_mean, pack_losses
from mtl_search.metrics import MULTICLASS, evaluate_task
from mtl_search.objective import trial_score
from mtl_search.packed import PackedNet
from mtl_search.results import (
    NLOSS,
    TEST,
    TRAIN_LOSS,
    VALID,
    WEIGHT,
    Status,
    metric_key,
    network_key,
    score_key,
    task_key,
)
from mtl_search.schemes import get_scheme
from mtl_search.step import (
    DeviceSplit,
    Distributed,
    GraphStep,
    Step,
    make_lr_schedule,
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
    """What a finished :func:`fit` returns (the same numbers as its last report).

    Attributes:
        status: ``completed``, or ``diverged`` when every network diverged.
        epochs_run: epochs trained.
        score: the trial's score (see the module docstring).
        networks: group id -> that network's metrics.
        metrics: the last report.
    """

    status: str
    epochs_run: int
    score: float
    networks: dict[str, dict[str, Any]]
    metrics: dict[str, Any]


@torch.no_grad()
def predict(net: PackedNet, split: DeviceSplit, kinds: Sequence[str]) -> list[torch.Tensor]:
    """Every group's outputs (per task ``(G_t, units, N)``) for every row of ``split``, in chunks, in eval mode.

    A TabM pack's members are averaged into one prediction (:func:`mtl_search.losses.ensemble_mean`);
    ``kinds`` are the types of ``net.tasks``.
    """
    was_training = net.training
    net.eval()
    rows = torch.arange(split.x.shape[0], device=split.x.device)
    parts = []
    for start in range(0, len(rows), _EVAL_CHUNK):
        outputs = net(*split.inputs(rows[start:start + _EVAL_CHUNK]))
        parts.append([ensemble_mean(kind, output, net.members) for kind, output in zip(kinds, outputs, strict=True)])
    net.train(was_training)
    return [torch.cat(outputs, dim=2) for outputs in zip(*parts, strict=True)]


def split_packs(groups: Sequence[str], pack_size: int | None) -> list[list[str]]:
    """``groups`` in packs of at most ``pack_size`` networks (one pack when it is None), order kept."""
    if pack_size is not None and pack_size < 1:
        raise ValueError(f"pack_size must be >= 1, but got {pack_size=}.")
    size = len(groups) if pack_size is None else pack_size
    return [list(groups[start:start + size]) for start in range(0, len(groups), max(size, 1))]


class TrainingLoop:
    """One pack: its groups' networks, their scheme, optimiser and training split on the device, ready to run epochs.

    Every group's network starts from the weights its separate network would have with
    ``seed`` (:class:`mtl_search.model.MultiTaskNet` built after ``torch.manual_seed(seed)``).
    :func:`fit` builds the loops and adds evaluation, reporting and checkpoints; benchmarks
    time :meth:`run_epoch` to measure exactly the loop a trial runs.

    Args:
        data: prepared arrays (all splits), with the numeric encoding ``params`` chooses among its encodings.
        groups: the pack's group ids.
        params: hyperparameters (one configuration for every group).
        device: where the data and the networks live.
        seed: seeds initialisation, batch order and the scheme's draws.
        distributed: data-parallel settings (default: a single worker).
        options: the spec's ``train:`` section (default: its defaults).
        initial_state: a state from an earlier report, to resume after its epoch (loaded before any capture).
        train: the training split already on the device (default: moved there here).
    """

    def __init__(self, data: PreparedData, groups: Sequence[str], params: TrialParams, *,
                 device: str | torch.device = "cpu", seed: int = 0, distributed: Distributed | None = None,
                 options: TrainSpec | None = None, initial_state: Mapping[str, Any] | None = None,
                 train: DeviceSplit | None = None) -> None:
        self.distributed = distributed = distributed or Distributed()
        self.options = options = options or TrainSpec()
        self.device = device = torch.device(device)
        self.params = params
        data = data.encoded(params.numeric_encoding)
        self.groups = list(groups)
        members = [group_tasks(group) for group in self.groups]
        unknown = sorted({task for tasks in members for task in tasks} - set(data.tasks))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; valid: {', '.join(data.tasks)}")
        self.net = net = PackedNet(data.num_features, members, {t: info.outputs for t, info in data.tasks.items()},
                                   params.architecture())
        for index in range(len(self.groups)):
            torch.manual_seed(seed)
            net.load_group(index, net.group_network(index))
        net.to(device)
        self.tasks = list(net.tasks)
        self.kinds = [data.tasks[task].type for task in self.tasks]
        scheme = get_scheme(params.weighting)
        self.weighting = weighting = make_weighting(params.weighting, net.tasks, net.groups, seed=seed,
                                                    **scheme.params_for(net.tasks, params.weighting_params)).to(device)
        self.shared = shared_layout(net, weighting)
        if self.shared is not None and distributed.world_size > 1:
            raise ValueError(
                f"weighting {params.weighting!r} steers the shared layers' gradient, which data-parallel training "
                f"(world_size={distributed.world_size}) does not support; train it on one worker "
                "(resources.workers_per_trial: 1) or choose a loss-level weighting"
            )
        self.train = (train or to_device(data.splits["train"], list(data.tasks), device)).select(self.tasks)
        rows = self.train.x.shape[0]
        self.shard = rows // distributed.world_size
        self.steps = max(1, math.ceil(self.shard / params.batch_size))
        self.cuda_graph = wants_capture(options, device, weighting, distributed, self.shard, params.batch_size)
        self.trainable = net if distributed.wrap_model is None else distributed.wrap_model(net)
        self.optimizer = make_optimizer([*net.parameters(), *weighting.parameters()], params, device,
                                        capturable=self.cuda_graph)
        self.lr_schedule = make_lr_schedule(self.optimizer, params, self.steps)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        #: Epochs in a row in which none of the pack's networks improved its validation score.
        self.stale_epochs = 0
        step = Step(self.trainable, net, weighting, self.optimizer, self.train, self.kinds, shared=self.shared,
                    amp=options.amp, distributed=distributed, grad_clip=params.grad_clip)
        if initial_state is not None:
            net.load_state_dict(initial_state["net"])
            weighting.load_state_dict(initial_state["weighting"])
            self.optimizer.load_state_dict(initial_state["optimizer"])
            self.generator.set_state(initial_state["generator"])
            step.live.copy_(initial_state["live"])
            self.stale_epochs = initial_state.get("stale_epochs", 0)
            if self.lr_schedule is not None:
                self.lr_schedule.load_state_dict(initial_state["lr_schedule"])
        self.step: Step | GraphStep = (GraphStep(step, params.batch_size, capture=True) if self.cuda_graph
                                       else step)
        self._drop_frozen()

    @property
    def live(self) -> torch.Tensor:
        """``[G, 1]``: False for the groups that diverged (frozen)."""
        return self.step.live

    def freeze(self, group: int) -> None:
        """Stop training ``group`` (it diverged): its losses count as 0 and a gradient-level scheme drops it."""
        self.live[group] = False
        self._drop_frozen()

    def _drop_frozen(self) -> None:
        if self.shared is not None:
            self.shared.groups = self.shared.groups[self.live[self.shared.groups, 0]]

    def run_epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over this worker's shard; the ``[G, T]`` mean loss and mean weight of every group's tasks.

        Each batch goes through the loop's step (eager or replayed from a CUDA graph); with a
        gradient-level scheme and shared layers the step steers the trunks' update.
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
            if self.lr_schedule is not None:
                self.lr_schedule.step()
        return step.loss_sums / self.steps, step.weight_sums / self.steps

    def state(self) -> dict[str, Any]:
        """The training state a checkpoint holds (without the epoch bookkeeping :func:`fit` adds)."""
        return {"net": self.net.state_dict(), "weighting": self.weighting.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "live": self.live.clone(), "stale_epochs": self.stale_epochs,
                "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule is not None else None}

    @property
    def patient(self) -> bool:
        """Whether the pack trains on: its networks improved within the last ``patience`` epochs (or no patience)."""
        return self.params.patience == 0 or self.stale_epochs < self.params.patience


@dataclass
class Network:
    """One group's network in a trial: its bookkeeping across epochs (what its report shows)."""

    status: str = Status.RUNNING.value
    reason: str = ""
    score: float = math.inf  # best validation score so far
    best_epoch: int = 0
    epoch_score: float = math.nan
    best_metrics: dict[str, float] = field(default_factory=dict)
    valid_nloss: dict[str, float] = field(default_factory=dict)  # per task, at the best epoch
    train_loss: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    params: int = 0
    sharing_depth: int = 0

    def metrics(self) -> dict[str, Any]:
        """The network's entry in a report."""
        return {**self.best_metrics, "score": self.score if math.isfinite(self.score) else math.nan,
                "best_epoch": self.best_epoch, "epoch_score": self.epoch_score, "status": self.status,
                "reason": self.reason, "params": self.params, "sharing_depth": self.sharing_depth,
                **{task_key(TRAIN_LOSS, t): v for t, v in self.train_loss.items()},
                **{task_key(WEIGHT, t): w for t, w in self.weights.items()}}


def _evaluate(data: PreparedData, loop: TrainingLoop, index: int, outputs: Mapping[str, list[torch.Tensor]],
              ) -> dict[str, float]:
    """Network ``index`` of ``loop``'s full validation and test metrics from the pack's outputs."""
    net, metrics, test_nloss = loop.net, {}, []
    for split, split_outputs in outputs.items():
        arrays = data.splits[split]
        for task in net.groups[index]:
            position = net.tasks.index(task)
            row = net.task_groups(task).tolist().index(index)
            output = split_outputs[position][row].float().cpu().numpy()  # (units, N)
            info = data.tasks[task]
            output = output.T if info.type == MULTICLASS else output[0]
            values = evaluate_task(info.type, output, arrays.y[task], arrays.mask[task], target_std=info.std)
            nloss = values["loss"] / arrays.trivial_loss[task]
            metrics[metric_key(split, task, NLOSS)] = nloss
            metrics.update({metric_key(split, task, name): value for name, value in values.items()})
            if split == TEST:
                test_nloss.append(nloss)
    metrics[score_key(TEST)] = float(np.mean(test_nloss))
    return metrics


def fit(
    data: PreparedData,
    groups: Sequence[str],
    params: TrialParams,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    report: Report | None = None,
    distributed: Distributed | None = None,
    initial_state: Mapping[str, Any] | None = None,
    options: TrainSpec | None = None,
    objective: str = "best_grouping",
    pack_size: int | None = None,
) -> FitResult:
    """Train the networks of ``groups`` under one configuration and report after every epoch.

    Args:
        data: prepared arrays (all splits).
        groups: the group ids to train (one for a trial of ``unit: group``).
        params: hyperparameters.
        device: where the data and the networks live.
        seed: seeds initialisation and batch order (every group's network starts as it would alone).
        report: called after each epoch with the metrics dict (see the module docstring) and a
            function returning the training state, for checkpoints.
        distributed: data-parallel settings (default: a single worker).
        initial_state: a state from an earlier report, to resume after its epoch.
        options: how the loop runs on its device (the spec's ``train:`` section; default: its defaults).
        objective: the trial's score over its networks (:func:`mtl_search.objective.trial_score`).
        pack_size: train at most this many networks at once (the packs take turns each epoch); None: all.

    Raises:
        ValueError: an unknown task; a gradient-level scheme with data-parallel workers;
            ``cuda_graphs: on`` where the step cannot be captured.
    """
    if initial_state is not None and (initial_state["epoch"] >= params.epochs or initial_state["last_metrics"].get(
            "status") in (Status.COMPLETED, Status.DIVERGED)):
        # Restored after its last epoch (the run finished just before an interruption): there is nothing
        # left to train, so report the final metrics again for whoever is waiting for them.
        final = dict(initial_state["last_metrics"])
        if report is not None:
            report(final, lambda: dict(initial_state))
        networks = {group: Network(**values).metrics() for group, values in initial_state["networks"].items()}
        return FitResult(final["status"], initial_state["epoch"], final["score"], networks, final)

    device = torch.device(device)
    data = data.encoded(params.numeric_encoding)
    saved = initial_state["packs"] if initial_state is not None else None
    train = to_device(data.splits["train"], list(data.tasks), device)
    loops = [TrainingLoop(data, chunk, params, device=device, seed=seed, distributed=distributed, options=options,
                          initial_state=saved[index] if saved else None, train=train)
             for index, chunk in enumerate(split_packs(groups, pack_size))]
    evaluated = {split: to_device(data.splits[split], list(data.tasks), device) for split in (VALID, TEST)}
    trivial = {t: data.splits[VALID].trivial_loss[t] for t in data.tasks}
    tasks = [task for task in data.tasks if any(task in loop.tasks for loop in loops)]

    networks = {group: Network(params=loop.net.group_parameter_count(index),
                               sharing_depth=loop.net.group_sharing(index))
                for loop in loops for index, group in enumerate(loop.groups)}
    start_epoch, loop_seconds = 0, 0.0
    if initial_state is not None:
        start_epoch, loop_seconds = initial_state["epoch"], initial_state["train_loop_s"]
        networks = {group: Network(**values) for group, values in initial_state["networks"].items()}

    metrics: dict[str, Any] = {}

    def state() -> dict[str, Any]:
        return {"packs": [loop.state() for loop in loops], "epoch": epoch + 1, "train_loop_s": loop_seconds,
                "networks": {group: asdict(network) for group, network in networks.items()},
                "last_metrics": metrics}

    constant = {"threads": torch.get_num_threads(), "cuda_graph": any(loop.cuda_graph for loop in loops)}
    result = FitResult(Status.COMPLETED.value, start_epoch, math.nan, {}, {})
    for epoch in range(start_epoch, params.epochs):
        started = time.perf_counter()
        for loop in loops:
            if loop.patient:
                _train_and_score(data, loop, networks, evaluated, trivial, epoch)
                if not loop.patient:  # out of patience: its networks keep their best epochs and stop here
                    for group in loop.groups:
                        if networks[group].status == Status.RUNNING:
                            networks[group].status = Status.COMPLETED.value
                            networks[group].reason = (f"stopped after epoch {epoch + 1}: no network of its pack "
                                                      f"improved for {params.patience} epochs (patience)")
        loop_seconds += time.perf_counter() - started
        scored = {group: network.valid_nloss for group, network in networks.items()
                  if network.status != Status.DIVERGED and network.valid_nloss}
        diverged = [group for group, network in networks.items() if network.status == Status.DIVERGED]
        last = epoch + 1 == params.epochs or not any(loop.patient for loop in loops)
        status = Status.DIVERGED if len(diverged) == len(networks) else Status.COMPLETED if last else Status.RUNNING
        for network in networks.values():
            if last and network.status == Status.RUNNING:
                network.status = Status.COMPLETED.value
        reason = networks[diverged[0]].reason if status == Status.DIVERGED and len(networks) == 1 else (
            f"every network diverged by epoch {epoch + 1}" if status == Status.DIVERGED else "")
        metrics = {"epoch": epoch + 1, "score": trial_score(scored, tasks, objective), **constant,
                   "train_loop_s": loop_seconds, "status": status.value, "reason": reason,
                   "networks": {network_key(group): network.metrics() for group, network in networks.items()}}
        if report is not None:
            report(metrics, state)
        result = FitResult(status.value, epoch + 1, metrics["score"],
                           {group: network.metrics() for group, network in networks.items()}, metrics)
        if status != Status.RUNNING:  # the last epoch, every pack out of patience, or every network diverged
            break
    return result


def _train_and_score(data: PreparedData, loop: TrainingLoop, networks: dict[str, Network],
                     evaluated: Mapping[str, DeviceSplit], trivial: Mapping[str, float],
                     epoch: int) -> None:
    """One epoch of one pack: train, score every network on validation, note divergence and new bests."""
    net = loop.net
    epoch_losses, epoch_weights = loop.run_epoch()
    valid = evaluated[VALID].select(net.tasks)
    valid_outputs = predict(net, valid, loop.kinds)
    valid_losses = pack_losses(net, loop.kinds, valid_outputs, valid.targets, valid.label_weights)
    # The epoch's one host sync: training losses, weights and validation losses in one copy.
    losses_cpu, weights_cpu, valid_cpu = torch.stack([epoch_losses, epoch_weights, valid_losses]).cpu()
    improved = []
    for index, group in enumerate(loop.groups):
        network = networks[group]
        if network.status == Status.DIVERGED:
            continue
        columns = [net.tasks.index(task) for task in net.groups[index]]
        train_losses = {task: float(losses_cpu[index, c]) for task, c in zip(net.groups[index], columns, strict=True)}
        bad = [task for task, value in train_losses.items() if not math.isfinite(value)]
        if bad:
            network.status, network.score = Status.DIVERGED.value, math.nan
            network.reason = f"training loss of {', '.join(bad)} became non-finite in epoch {epoch + 1}"
            loop.freeze(index)
            continue
        network.train_loss = train_losses
        network.weights = {task: float(weights_cpu[index, c]) for task, c in zip(net.groups[index], columns,
                                                                                 strict=True)}
        nloss = {task: float(valid_cpu[index, c]) / trivial[task]
                 for task, c in zip(net.groups[index], columns, strict=True)}
        network.epoch_score = float(np.mean(list(nloss.values())))
        if network.epoch_score < network.score:
            network.score, network.best_epoch, network.valid_nloss = network.epoch_score, epoch + 1, nloss
            improved.append(index)
    loop.weighting.end_epoch(epoch_losses)
    loop.stale_epochs = 0 if improved else loop.stale_epochs + 1
    if improved:
        test = evaluated[TEST].select(net.tasks)
        outputs = {VALID: valid_outputs, TEST: predict(net, test, loop.kinds)}
        for index in improved:
            networks[loop.groups[index]].best_metrics = _evaluate(data, loop, index, outputs)
