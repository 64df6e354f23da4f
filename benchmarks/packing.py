"""Packed trials vs one network at a time: seconds per epoch of all candidate groups of the default spec.

For every ``(depth, sharing_depth, width)`` of the default spec's space
(``search_spaces/tabular.yaml``: depth 1-3, sharing 0-3 clipped to depth, width 64 or
128; no head layer, plus the spec's default point with a head of 32), the 31 candidate
groups of its five Census-Income tasks train one epoch (14,000 rows, batch 512, AdamW,
``equal`` weighting) two ways:

* **one at a time**: one :class:`mtl_search.model.MultiTaskNet` per group with its own
  fused AdamW, trained on the same batch one after another (what a trial of
  ``search.unit: group`` trains, network by network);
* **packed**: one :class:`mtl_search.train.TrainingLoop` over all 31 groups
  (``mtl_search.packed.PackedNet``: stacked parameters, one wide product for every
  group's first layer, batched products after), exactly the loop a pack trial runs.

The two are timed back to back, ``--repeats`` times each, and the minimum per epoch is
reported (the machine's other load only ever adds time). ``--throughput`` instead
measures samples/s (rows x networks) of the packed loop against one network of the
reference size, the target being a GPU (``--device cuda``); on the CPU it runs with
small sizes so the CUDA code path's guards are exercised by the tests.

    python benchmarks/packing.py                             # CPU, one thread, every point (~6 min)
    python benchmarks/packing.py --points 2,1,64             # one point
    python benchmarks/packing.py --device cuda --throughput  # GPU: packed vs one network at batch 8192
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl_search.data import PreparedData, SplitArrays, prepare  # noqa: E402
from mtl_search.grouping import group_tasks  # noqa: E402
from mtl_search.losses import batch_losses  # noqa: E402
from mtl_search.model import MultiTaskNet  # noqa: E402
from mtl_search.spec_file import load_spec  # noqa: E402
from mtl_search.step import to_device  # noqa: E402
from mtl_search.train import TrainingLoop  # noqa: E402
from mtl_search.trial import TrialParams  # noqa: E402

DEFAULT_SPEC = ROOT / "search_spaces" / "tabular.yaml"


def default_points() -> list[tuple[int, int, int, tuple[int, ...]]]:
    """Every (depth, sharing, width, heads) of the default space, then its default point with its head of 32."""
    points = [(depth, sharing, width, ()) for depth in (1, 2, 3) for sharing in range(depth + 1) for width in (64, 128)]
    return [*points, (2, 1, 64, (32,))]


def params(depth: int, sharing: int, width: int, heads: tuple[int, ...], batch: int) -> TrialParams:
    return TrialParams(depth=depth, sharing_depth=sharing, width=width, head_sizes=heads, weighting="equal", lr=3e-3,
                       epochs=1, batch_size=batch)


class OneAtATime:
    """Every group's separate network, each with its own AdamW, stepped one after another on each batch."""

    def __init__(self, data: PreparedData, groups: list[str], trial: TrialParams, device: torch.device) -> None:
        self.device, self.trial = device, trial
        self.split = to_device(data.splits["train"], list(data.tasks), device)
        self.nets = []
        for group in groups:
            tasks = [t for t in data.tasks if t in group_tasks(group)]
            torch.manual_seed(0)
            net = MultiTaskNet(data.num_features, {t: data.tasks[t].outputs for t in tasks},
                               trial.architecture()).to(device)
            optimizer = torch.optim.AdamW(net.parameters(), lr=trial.lr, fused=True)  # as mtl_search's step
            rows = torch.tensor([list(data.tasks).index(t) for t in tasks], device=device)
            self.nets.append((net, optimizer, tasks, [data.tasks[t].type for t in tasks], rows))
        self.generator = torch.Generator(device=device).manual_seed(0)

    def run_epoch(self) -> None:
        rows = self.split.x.shape[0]
        order = torch.randperm(rows, generator=self.generator, device=self.device)
        for start in range(0, rows, self.trial.batch_size):
            index = order[start:start + self.trial.batch_size]
            x = self.split.x[index]
            for net, optimizer, tasks, kinds, task_rows in self.nets:
                out = net(x)
                losses = batch_losses(kinds, [out[t] for t in tasks], self.split.targets[task_rows][:, index],
                                      self.split.label_weights[task_rows][:, index])
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                optimizer.step()


def timed(run: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def epoch_times(data: PreparedData, groups: list[str], point: tuple, batch: int, repeats: int,
                device: torch.device) -> tuple[float, float]:
    """(one at a time, packed) seconds per epoch: the minimum of ``repeats`` interleaved epochs, after a warm-up."""
    trial = params(*point, batch)
    sequential = OneAtATime(data, groups, trial, device)
    packed = TrainingLoop(data, groups, trial, device=device, seed=0)

    def pack_epoch() -> None:
        packed.run_epoch()[0].sum().item()

    sequential.run_epoch()
    pack_epoch()
    one, pack = math.inf, math.inf
    for _ in range(repeats):
        one = min(one, timed(sequential.run_epoch, device))
        pack = min(pack, timed(pack_epoch, device))
    return one, pack


def throughput(data: PreparedData, groups: list[str], batch: int, seconds: float, device: torch.device) -> None:
    """Samples/s (rows x networks) of the packed loop vs the default point's all-task network alone."""
    trial = params(2, 1, 64, (), batch)
    results = {}
    for name, members in (("one network", [groups[-1]]), (f"{len(groups)} packed", groups)):
        loop = TrainingLoop(data, members, trial, device=device, seed=0)
        loop.run_epoch()[0].sum().item()
        epochs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            loop.run_epoch()[0].sum().item()  # fit reads the epoch's losses once, like this
            epochs += 1
        elapsed = time.perf_counter() - started
        results[name] = epochs * loop.shard * len(members) / elapsed
        print(f"{name:>14}: {results[name] / 1e6:8.3f} M samples/s (rows x networks), batch {batch}")
    one, packed = results.values()
    print(f"packed / one network: {packed / one:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a trial's cpus_per_worker)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=None, help="use only this many training rows (quick runs)")
    parser.add_argument("--points", default=None,
                        help="depth,sharing,width[,head];... (default: every point of the default space)")
    parser.add_argument("--encoding", default="standard",
                        help="space.numeric_encoding of the data (default standard: the one docs/benchmarks.md's "
                             "figures were measured with; the default spec's periodic makes rows dense)")
    parser.add_argument("--throughput", action="store_true", help="samples/s of packed vs one network")
    parser.add_argument("--seconds", type=float, default=10.0, help="--throughput: measuring time per loop")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here; use --device cpu")
    torch.set_num_threads(args.threads)
    spec = load_spec(DEFAULT_SPEC, overrides=[f"space.numeric_encoding={args.encoding}"])
    data = prepare(spec)
    if args.rows:
        train = data.splits["train"]
        data.splits["train"] = SplitArrays(x=train.x[:args.rows], y={t: v[:args.rows] for t, v in train.y.items()},
                                           mask={t: v[:args.rows] for t, v in train.mask.items()},
                                           trivial_loss=train.trivial_loss)
    groups = spec.grouping.strategy().propose(list(data.tasks))
    where = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else f"{args.threads} thread(s)"
    print(f"{datetime.date.today()}, {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, device {device} ({where}); {len(groups)} groups, "
          f"{data.splits['train'].rows:,} training rows x {data.num_features} features")
    if args.throughput:
        batch = args.batch if args.batch != 512 or device.type != "cuda" else 8192
        throughput(data, groups, batch, args.seconds, device)
        return
    points = default_points() if args.points is None else [
        (*(int(v) for v in item.split(",")[:3]), tuple(int(v) for v in item.split(",")[3:]))
        for item in args.points.split(";")]
    print(f"seconds per epoch (batch {args.batch}, minimum of {args.repeats}, back to back):")
    print(f"{'depth':>5} {'shared':>6} {'width':>5} {'head':>5} {'one at a time':>14} {'packed':>8} {'speed-up':>9}")
    for depth, sharing, width, heads in points:
        one, pack = epoch_times(data, groups, (depth, sharing, width, heads), args.batch, args.repeats, device)
        head = ",".join(map(str, heads)) or "-"
        print(f"{depth:>5} {sharing:>6} {width:>5} {head:>5} {one:>14.3f} {pack:>8.3f} {one / pack:>8.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
