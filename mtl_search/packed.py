"""Many groups' networks in one module: a *pack*, trained with a few large batched kernels.

Group ``g`` of a pack is exactly the network
``MultiTaskNet(num_inputs, {t: units[t] for t in groups[g]}, architecture)`` of
:mod:`mtl_search.model`: the same layers and parameter count, and, since no
parameter or activation is shared between groups, exactly the gradient that
network would get trained alone on the same batch. A pack of one group is that
network; :meth:`PackedNet.load_group` and :meth:`PackedNet.export_group` move
weights between the two.

Units
-----
Every ``Linear`` of every group is one *unit*; the units of one layer position
are stacked along a leading dimension of one parameter (weight ``(K, out, in)``,
bias ``(K, out)``, each slice laid out like ``nn.Linear``). With
``s = min(sharing_depth, depth)``:

* hidden layer ``l < s`` has one unit per group (``K = G``): the group's trunk layer ``l``;
* hidden layer ``l >= s`` and every head hidden layer have one unit per *path* ``(group, task)``
  (``K = P``): a branch layer of a multi-task group, or a trunk layer of a one-task group (which
  shares everything: its only path's layers are its trunk);
* the output layer of task ``t`` has one unit per group holding ``t``, in :attr:`task_groups` order.

Paths are ordered task-major (all paths of the first task, groups in pack order, then the next
task), so the paths of one task are contiguous and the output layer is one batched product per task.

With TabM's ``k`` members (``backbone: tabm``) a unit's bias is per member, ``(K, k, out)``; each
hidden layer also has per-member scalings :attr:`PackedNet.scale_in` (``r``, none for the first
layer) and :attr:`PackedNet.scale_out` (``s``), ``(K, k, size)``; an output unit is ``k`` layers,
weight ``(K, k, out, in)``. Every slice is laid out like the matching module of a
:class:`mtl_search.model.MultiTaskNet` (:class:`mtl_search.model.BatchEnsembleLinear`,
:class:`mtl_search.model.LinearEnsemble`).

Computation
-----------
Activations are kept feature-major, ``(K, width, B)``, so every unit's activation is a contiguous
``(features, batch)`` matrix: the first hidden layer of all units reads the same batch and is ONE
``addmm`` (``W (K*width, D) @ x.T``), or, for sparse rows given as their non-zero ``(columns,
values)``, one ``embedding_bag`` over the ``(D, K*width)`` table (one-hot features make a dense
product mostly multiplications by zero); every later layer is one ``baddbmm`` over contiguous
operands (forward and both backward products need no transposing copies); the fan-out from group
units to path units is one ``index_select``; ReLU runs in place. A TabM pack computes the first
layer's product once and then each member's scaling and bias (one broadcast ``addcmul``); later
layers run on ``k*B`` columns, member ``i`` in columns ``i*B`` to ``(i+1)*B``.

Measured on one CPU thread (``benchmarks/packing.py``, docs/benchmarks.md), an epoch of the 31
groups of the default spec is 1.08-2.20x faster packed than one network at a time over the 19
points of its space (1.55x at its default point). Past a width of about 64 the batched products
are compute-bound either way, so the gain there comes from the sparse first layer and the
per-network overhead packing removes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtl_search.model import BatchEnsembleLinear, LinearEnsemble, MultiTaskNet, TaskParameters
from mtl_search.trial import Architecture


class PackedNet(nn.Module):
    """The networks of ``len(groups)`` groups, one :class:`Architecture`, parameters stacked.

    Args:
        num_inputs: encoded feature count ``D``.
        groups: each group's task names (a non-empty subset of ``outputs``).
        outputs: task name -> output units (1 for regression and binary, K for K classes), in the
            pack's task order; tasks no group holds are left out.
        architecture: the shape every group's network has.

    Attributes:
        groups: each group's tasks, in the pack's task order.
        tasks: the pack's tasks (the columns of its loss matrix).
        task_groups: per task, the groups holding it (the rows of its outputs), as a buffer.
        membership: ``(G, T)`` bool, whether group ``g`` holds task ``t``.
        shared: ``s``: hidden layers ``l < s`` are a multi-task group's trunk.
    """

    def __init__(self, num_inputs: int, groups: Sequence[Sequence[str]], outputs: Mapping[str, int],
                 architecture: Architecture) -> None:
        super().__init__()
        if not groups:
            raise ValueError(f"groups must hold at least one group, but got {groups=}.")
        for group in groups:
            if not group or len(set(group)) != len(group) or not set(group) <= set(outputs):
                raise ValueError(f"each group must be distinct tasks of outputs={list(outputs)}, but got {group=}.")
        self.num_inputs = num_inputs
        self.architecture = architecture
        self.tasks = tuple(task for task in outputs if any(task in group for group in groups))
        self.groups = tuple(tuple(task for task in self.tasks if task in group) for group in groups)
        self.units = {task: int(outputs[task]) for task in self.tasks}
        self.shared = min(architecture.sharing_depth, architecture.depth)
        self.membership = torch.tensor([[task in group for task in self.tasks] for group in self.groups])

        paths: list[tuple[int, str]] = []
        self._task_sizes: list[int] = []
        for task in self.tasks:
            holding = [g for g, group in enumerate(self.groups) if task in group]
            self.register_buffer(f"_groups_of_{task}", torch.tensor(holding, dtype=torch.long), persistent=False)
            self._task_sizes.append(len(holding))
            paths += [(g, task) for g in holding]
        self.paths = tuple(paths)
        self._path_index = {path: p for p, path in enumerate(paths)}
        self.register_buffer("path_group", torch.tensor([g for g, _ in paths], dtype=torch.long), persistent=False)
        # Where each task's per-group losses go in the (G, T) loss matrix: (group, task column) per path.
        self.register_buffer("loss_rows", self.path_group.clone(), persistent=False)
        self.register_buffer("loss_columns", torch.tensor([self.tasks.index(t) for _, t in paths], dtype=torch.long),
                             persistent=False)

        groups_n, paths_n, width = len(self.groups), len(paths), architecture.width
        self.members = architecture.members
        self.tabm = architecture.backbone == "tabm"
        ensemble = (self.members,) if self.tabm else ()
        #: TabM's per-member input (``r``) and output (``s``) scalings of each hidden layer, ``(K, k, size)``,
        #: keyed ``hidden<l>`` / ``head<l>`` (no ``r`` for the first layer); empty for an mlp.
        self.scale_in, self.scale_out = nn.ParameterDict(), nn.ParameterDict()
        self.hidden_weight, self.hidden_bias = nn.ParameterList(), nn.ParameterList()
        self.head_weight, self.head_bias = nn.ParameterList(), nn.ParameterList()
        sizes = [(f"hidden{layer}", groups_n if layer < self.shared else paths_n, width)
                 for layer in range(architecture.depth)]
        sizes += [(f"head{index}", paths_n, size) for index, size in enumerate(architecture.head_sizes)]
        fan_in = num_inputs
        for position, (name, units, size) in enumerate(sizes):
            weights, biases = ((self.hidden_weight, self.hidden_bias) if name.startswith("hidden")
                               else (self.head_weight, self.head_bias))
            weights.append(nn.Parameter(torch.empty(units, size, fan_in)))
            biases.append(nn.Parameter(torch.empty(units, *ensemble, size)))
            if self.tabm:
                if position > 0:
                    self.scale_in[name] = nn.Parameter(torch.ones(units, self.members, fan_in))
                self.scale_out[name] = nn.Parameter(torch.ones(units, self.members, size))
            fan_in = size
        self._names = [name for name, _, _ in sizes]
        self.out_weight, self.out_bias = TaskParameters(), TaskParameters()
        for task, holding in zip(self.tasks, self._task_sizes, strict=True):
            self.out_weight[task] = nn.Parameter(torch.empty(holding, *ensemble, self.units[task], fan_in))
            self.out_bias[task] = nn.Parameter(torch.empty(holding, *ensemble, self.units[task]))
        self.reset_parameters()

    # --------------------------------------------------------------------------- structure

    def task_groups(self, task: str) -> torch.Tensor:
        """The groups holding ``task``, in the order of its outputs' rows."""
        return getattr(self, f"_groups_of_{task}")

    def _stack(self) -> list[dict[str, nn.Parameter]]:
        """Every hidden layer (trunk and branch, then head hidden), in forward order: its stacked parameters
        under the names its module in a :class:`MultiTaskNet` gives them (``weight``, ``bias``; TabM's ``r``, ``s``)."""
        layers = []
        for name, weight, bias in zip(self._names, [*self.hidden_weight, *self.head_weight],
                                      [*self.hidden_bias, *self.head_bias], strict=True):
            layer = {"weight": weight, "bias": bias}
            if name in self.scale_in:
                layer["r"] = self.scale_in[name]
            if name in self.scale_out:
                layer["s"] = self.scale_out[name]
            layers.append(layer)
        return layers

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every unit as its module draws it: weights and biases uniform on ``+-1/sqrt(fan_in)``; TabM's
        scalings 1, but random signs for the first layer's ``s``."""
        outputs = [{"weight": self.out_weight[t], "bias": self.out_bias[t]} for t in self.tasks]
        for position, layer in enumerate([*self._stack(), *outputs]):
            bound = 1.0 / math.sqrt(layer["weight"].shape[-1])
            layer["weight"].uniform_(-bound, bound)
            layer["bias"].uniform_(-bound, bound)
            if "r" in layer:
                layer["r"].fill_(1.0)
            if "s" in layer:
                layer["s"].fill_(1.0)
                if position == 0:
                    layer["s"].mul_(torch.where(torch.rand_like(layer["s"]) < 0.5, -1.0, 1.0))

    def _units_of(self, group: int) -> Iterator[tuple[dict[str, nn.Parameter], int, tuple]]:
        """``(parameters, row, role)`` of every unit of ``group``; ``role`` names its layer in a MultiTaskNet."""
        members, single = self.groups[group], len(self.groups[group]) == 1
        stack, depth = self._stack(), self.architecture.depth
        for layer in range(depth):
            if layer < self.shared:
                yield stack[layer], group, ("trunk", layer)
            else:
                for task in members:
                    role = ("trunk", layer) if single else ("branch", task, layer - self.shared)
                    yield stack[layer], self._path_index[(group, task)], role
        for index in range(len(self.architecture.head_sizes)):
            for task in members:
                yield stack[depth + index], self._path_index[(group, task)], ("head", task, index)
        for task in members:
            row = self.task_groups(task).tolist().index(group)
            yield {"weight": self.out_weight[task], "bias": self.out_bias[task]}, row, ("out", task)

    @staticmethod
    def _layer_of(net: MultiTaskNet, role: tuple) -> nn.Module:
        def layers(module: nn.Module) -> list[nn.Module]:
            return [m for m in module.modules() if isinstance(m, (nn.Linear, BatchEnsembleLinear, LinearEnsemble))]

        if role[0] == "trunk":
            return layers(net.trunk)[role[1]]
        if role[0] == "branch":
            return layers(net.branches[role[1]])[role[2]]
        if role[0] == "head":
            return layers(net.heads[role[1]][0])[role[2]]
        return net.heads[role[1]][1]

    def group_network(self, group: int) -> MultiTaskNet:
        """A fresh (untrained) separate network of the shape of ``group``'s, tasks in the pack's order."""
        return MultiTaskNet(self.num_inputs, {task: self.units[task] for task in self.groups[group]},
                            self.architecture)

    @torch.no_grad()
    def load_group(self, group: int, net: MultiTaskNet) -> None:
        """Copy a separate network's weights into ``group``'s units."""
        for parameters, row, role in self._units_of(group):
            layer = self._layer_of(net, role)
            for name, stacked in parameters.items():
                stacked[row].copy_(getattr(layer, name))

    @torch.no_grad()
    def export_group(self, group: int) -> MultiTaskNet:
        """``group``'s current weights as a separate network."""
        net = self.group_network(group).to(self.hidden_weight[0])
        for parameters, row, role in self._units_of(group):
            layer = self._layer_of(net, role)
            for name, stacked in parameters.items():
                getattr(layer, name).copy_(stacked[row])
        return net

    def group_parameter_count(self, group: int) -> int:
        """``group``'s parameters: those of its separate network."""
        return sum(stacked[row].numel() for parameters, row, _ in self._units_of(group)
                   for stacked in parameters.values())

    def group_sharing(self, group: int) -> int:
        """Layers ``group``'s tasks actually share (all of them for a group of one task)."""
        return self.architecture.depth if len(self.groups[group]) == 1 else self.shared

    def _owners(self) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        """Every stacked parameter with, per unit (its leading index), the group that unit belongs to."""
        for layer, parameters in enumerate(self._stack()):
            owners = torch.arange(len(self.groups), device=self.path_group.device) if layer < self.shared \
                else self.path_group
            for parameter in parameters.values():
                yield parameter, owners
        for task in self.tasks:
            yield self.out_weight[task], self.task_groups(task)
            yield self.out_bias[task], self.task_groups(task)

    @torch.no_grad()
    def clip_grad_norms_(self, max_norm: float) -> None:
        """Scale each group's gradient so its network's norm is at most ``max_norm``, in place.

        What ``torch.nn.utils.clip_grad_norm_`` does to one network's parameters, done for every
        group of the pack at once (no host sync, so a CUDA graph can capture it).
        """
        owned = [(p, owners) for p, owners in self._owners() if p.grad is not None]
        if not owned:
            return
        squares = torch.zeros(len(self.groups), device=owned[0][0].device, dtype=torch.float32)
        for parameter, owners in owned:
            squares.index_add_(0, owners, parameter.grad.float().pow(2).flatten(1).sum(1))
        scale = (max_norm / (squares.sqrt() + 1e-6)).clamp_(max=1.0)
        for parameter, owners in owned:
            parameter.grad.mul_(scale[owners].view(-1, *[1] * (parameter.ndim - 1)).to(parameter.grad.dtype))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The stacked trunk parameters, one row per group, in a separate network's order (``W_0, b_0, W_1, ...``;
        TabM's scalings after each layer's bias).

        Row ``g`` of each is group ``g``'s trunk: what a gradient-level scheme steers for a multi-task
        group. Empty when nothing is shared.
        """
        stack = self._stack()
        return [p for layer in range(self.shared) for p in stack[layer].values()]

    def shared_weights(self) -> list[nn.Parameter]:
        """The weight matrices among :meth:`shared_parameters`."""
        return [self.hidden_weight[layer] for layer in range(self.shared)]

    # --------------------------------------------------------------------------- computation

    @staticmethod
    def _first_layer(weight: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor,
                     values: torch.Tensor | None) -> torch.Tensor:
        """Every unit's first layer, ``(K*width, B)``: one product with the dense rows ``h`` (``(D, B)``), or,
        from each row's non-zero ``(columns, values)``, a weighted sum of the columns of ``weight`` it reads."""
        if values is None:
            return weight @ h if bias is None else torch.addmm(bias, weight, h)
        # One contiguous copy of the (D, K*width) table, so each lookup reads one row of it.
        rows = F.embedding_bag(h, weight.t().contiguous(), per_sample_weights=values.to(weight.dtype), mode="sum")
        # Feature-major again, contiguous (an elementwise op on the transposed view would keep its strides).
        rows = rows.t().contiguous()
        return rows if bias is None else rows.add_(bias)

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        # In place: h is a fresh product, which no backward formula reads (ReLU's reads its output).
        h = torch.relu_(h)
        dropout = self.architecture.dropout
        return F.dropout(h, dropout, self.training) if dropout > 0 else h

    @staticmethod
    def _member_affine(h: torch.Tensor, layer: dict[str, nn.Parameter]) -> torch.Tensor:
        """TabM's per-member output scaling and bias: ``(K, width, k or 1, B)`` -> ``(K, width, k*B)``, fresh."""
        h = torch.addcmul(layer["bias"].transpose(1, 2).unsqueeze(-1), h, layer["s"].transpose(1, 2).unsqueeze(-1))
        return h.flatten(2)

    def forward(self, x: torch.Tensor, values: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every group's outputs on a batch of ``B`` rows.

        Args:
            x: the rows, ``(B, D)``; or, with ``values``, each row's non-zero columns ``(B, m)``.
            values: the values at those columns ``(B, m)`` (0 where a row has fewer than ``m``).

        Returns:
            per task of :attr:`tasks`, the outputs ``(G_t, units, B)`` of the groups holding it (rows in
            :meth:`task_groups` order); for TabM, ``(G_t, units, k*B)``: member ``i``'s in columns
            ``i*B`` to ``(i+1)*B``.
        """
        batch, members = x.shape[0], self.members
        h = x.t() if values is None else x  # (D, B): every unit of the first layer reads it
        stack = self._stack()
        for index, layer in enumerate(stack):
            weight, bias = layer["weight"], layer["bias"]
            units, width, fan_in = weight.shape
            if index == 0:
                flat = weight.reshape(units * width, fan_in)
                if not self.tabm:
                    h = self._first_layer(flat, bias.reshape(units * width, 1), h, values)
                    h = self._activate(h).view(units, width, batch)
                else:  # one product for every member, then each member's scaling and bias
                    h = self._first_layer(flat, None, h, values).view(units, width, 1, batch)
                    h = self._activate(self._member_affine(h, layer))
                continue
            if index == self.shared:
                h = h.index_select(0, self.path_group)  # group units -> path units
            if not self.tabm:
                h = self._activate(torch.baddbmm(bias.unsqueeze(-1), weight, h))
                continue
            h = h.view(units, fan_in, members, batch) * layer["r"].transpose(1, 2).unsqueeze(-1)
            h = torch.bmm(weight, h.view(units, fan_in, members * batch)).view(units, width, members, batch)
            h = self._activate(self._member_affine(h, layer))
        if self.shared == len(stack):  # everything shared: the paths start at the output layer
            h = h.index_select(0, self.path_group)
        paths = h.split(self._task_sizes)
        if not self.tabm:
            return [torch.baddbmm(self.out_bias[task].unsqueeze(-1), self.out_weight[task], task_paths)
                    for task, task_paths in zip(self.tasks, paths, strict=True)]
        outputs = []
        for task, task_paths in zip(self.tasks, paths, strict=True):
            held, fan_in = task_paths.shape[:2]
            units = self.units[task]
            # Member i of each path reads its own columns with its own output layer: one product per (path, member).
            per_member = task_paths.view(held, fan_in, members, batch).transpose(1, 2).reshape(
                held * members, fan_in, batch)
            y = torch.baddbmm(self.out_bias[task].reshape(held * members, units, 1),
                              self.out_weight[task].reshape(held * members, units, fan_in), per_member)
            outputs.append(y.view(held, members, units, batch).transpose(1, 2).reshape(held, units, members * batch))
        return outputs
