"""Training throughput on one device: a naive loop, the project's loop, packed models and packed trials.

Needs no Ray and no Optuna: torch, numpy, pandas and the few libraries mtl_search's data
preparation uses (``pip install numpy pandas pydantic pyyaml scikit-learn`` next to torch;
the script finds the package from the repository, no install needed). Runs as-is on any
CUDA machine; ``--device cpu`` with small sizes runs anywhere. Samples/s of:

* **naive**: the textbook loop, a per-sample ``torch.utils.data.DataLoader`` over a
  ``TensorDataset`` (shuffle, default collate), each batch copied to the device,
  ``torch.optim.Adam``, the loss read back every step;
* **project**: ``mtl_search.train.TrainingLoop.run_epoch``, exactly the loop a trial
  runs (data resident on the device, index batches, fused AdamW on CUDA, one read per
  epoch), eager and, on CUDA, with the step replayed from a CUDA graph; ``--amp bf16``
  adds the same with bf16 autocast;
* **vmap**: ``--vmap-models N`` copies of the network trained at once, one batch each,
  with ``torch.func.stack_module_state`` + ``torch.vmap`` (one kernel per layer for all
  copies), eager;

for two networks: the reference model (3 x 256 trunk, 8 regression heads with a hidden
layer of 64, 64 inputs, MSE; synthetic rows) and the default spec's model (the seed trial
of ``search_spaces/tabular.yaml``: depth 2, width 64, all five Census-Income tasks).

``--packing 1 2 4 8`` instead runs that many trial processes at once on the device
(``torch.multiprocessing``, spawn; each a full ``mtl_search.train.fit`` of the default
spec's seed trial, over and over, for ``--seconds``), and prints their total samples/s,
trials per hour and, where ``nvidia-smi`` exists, the GPU's utilisation. In a search,
``resources.gpus_per_worker: 0.25`` is what makes Ray Tune place four trials on one GPU.

    python benchmarks/gpu_throughput.py                                  # CUDA: 1M rows, batch 1024/8192/65536
    python benchmarks/gpu_throughput.py --amp bf16 --vmap-models 64
    python benchmarks/gpu_throughput.py --packing 1 2 4 8 --seconds 60
    python benchmarks/gpu_throughput.py --device cpu                     # small sizes
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl_search.config import TrainSpec  # noqa: E402
from mtl_search.data import PreparedData, SplitArrays, prepare  # noqa: E402
from mtl_search.encoding import Task  # noqa: E402
from mtl_search.grouping import group_id  # noqa: E402
from mtl_search.losses import batch_losses, masked_loss  # noqa: E402
from mtl_search.metrics import MULTICLASS  # noqa: E402
from mtl_search.model import MultiTaskNet  # noqa: E402
from mtl_search.spec_file import load_spec  # noqa: E402
from mtl_search.train import TrainingLoop, fit  # noqa: E402
from mtl_search.trial import TrialParams  # noqa: E402

DEFAULT_SPEC = ROOT / "search_spaces" / "tabular.yaml"


# --------------------------------------------------------------------------- the two networks and their data


def reference_data(rows: int, *, features: int = 64, tasks: int = 8, seed: int = 0) -> PreparedData:
    """Synthetic rows for the reference model: standardised linear targets plus noise, every label present."""
    generator = np.random.default_rng(seed)
    coefficients = generator.standard_normal((features, tasks)).astype(np.float32) / math.sqrt(features)
    names = [f"t{i}" for i in range(tasks)]
    held_out = max(1000, min(rows // 10, 100_000))

    def split(n: int) -> SplitArrays:
        x = generator.standard_normal((n, features), dtype=np.float32)
        y = x @ coefficients + 0.5 * generator.standard_normal((n, tasks), dtype=np.float32)
        return SplitArrays(x=x, y={t: y[:, i] for i, t in enumerate(names)},
                           mask={t: np.ones(n, dtype=bool) for t in names}, trivial_loss={t: 1.0 for t in names})

    columns = [f"x{i}" for i in range(features)]
    splits = {"train": split(rows), "valid": split(held_out), "test": split(held_out)}
    return PreparedData(tasks={t: Task(t, t, "regression") for t in names}, feature_names=columns,
                        input_columns=columns, splits=splits,
                        source=f"synthetic: {rows:,} rows x {features} features, {tasks} regression tasks")


def reference_params(batch_size: int) -> TrialParams:
    return TrialParams(depth=3, sharing_depth=3, width=256, head_sizes=(64,), weighting="equal", lr=1e-3, epochs=1,
                       batch_size=batch_size)


def default_spec_trial() -> tuple[PreparedData, TrialParams]:
    """The default spec's data and its seed trial (every hyperparameter at its domain's default)."""
    spec = load_spec(DEFAULT_SPEC)
    return prepare(spec), TrialParams.from_config(spec.space.defaults())


def build(model: str, rows: int) -> tuple[PreparedData, TrialParams]:
    """Data and trial for ``model``: ``reference`` (``rows`` synthetic rows) or ``default`` (the spec's data)."""
    if model == "reference":
        return reference_data(rows), reference_params(8192)
    return default_spec_trial()


# --------------------------------------------------------------------------- the loops


def naive_samples_per_s(data: PreparedData, params: TrialParams, device: torch.device, seconds: float) -> float:
    """The textbook loop: per-sample DataLoader, a host-to-device copy per batch, the loss read every step."""
    tasks = list(data.tasks)
    kinds = [data.tasks[t].type for t in tasks]
    train = data.splits["train"]
    dataset = torch.utils.data.TensorDataset(
        torch.as_tensor(train.x), torch.as_tensor(np.stack([train.y[t] for t in tasks], axis=1).astype(np.float32)),
        torch.as_tensor(np.stack([train.mask[t] for t in tasks], axis=1)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=params.batch_size, shuffle=True)
    torch.manual_seed(0)
    model = MultiTaskNet(data.num_features, {t: data.tasks[t].outputs for t in tasks}, params.architecture()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    samples, started, warm = 0, 0.0, False
    while True:
        for x, y, mask in loader:
            x, y, mask = x.to(device), y.to(device), mask.to(device)
            outputs = model(x)
            loss = sum(masked_loss(kind, outputs[t], y[:, i].long() if kind == MULTICLASS else y[:, i], mask[:, i])
                       for i, (t, kind) in enumerate(zip(tasks, kinds, strict=True)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # logging the running loss: a host sync every step
            if not warm:  # the first batch pays for allocation and kernel selection
                warm, started = True, time.perf_counter()
                continue
            samples += x.shape[0]
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return samples / elapsed


def project_samples_per_s(data: PreparedData, params: TrialParams, device: torch.device, seconds: float,
                          options: TrainSpec) -> float:
    """``TrainingLoop.run_epoch``, whole epochs (the loop a trial runs), after one warm-up epoch."""
    loop = TrainingLoop(data, [group_id(data.tasks)], params, device=device, seed=0, options=options)
    loop.run_epoch()[0].sum().item()
    rows, epochs = loop.shard, 0
    started = time.perf_counter()
    while True:
        losses, _ = loop.run_epoch()
        losses.sum().item()  # fit reads the epoch's losses once, like this
        epochs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return rows * epochs / elapsed


def vmap_samples_per_s(data: PreparedData, params: TrialParams, device: torch.device, seconds: float,
                       models: int) -> float:
    """``models`` copies of the network trained at once, each on its own shuffled batches (total samples/s)."""
    from torch.func import functional_call, stack_module_state

    tasks = list(data.tasks)
    kinds = [data.tasks[t].type for t in tasks]
    outputs = {t: data.tasks[t].outputs for t in tasks}
    nets = []
    for seed in range(models):
        torch.manual_seed(seed)
        nets.append(MultiTaskNet(data.num_features, outputs, params.architecture()).to(device))
    weights, buffers = stack_module_state(nets)  # leaves [models, ...], trained by one optimiser
    base = copy.deepcopy(nets[0]).to("meta")
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(list(weights.values()), lr=params.lr, **fused)
    train = data.splits["train"]
    x = torch.as_tensor(train.x, device=device)
    targets = torch.stack([torch.as_tensor(train.y[t], device=device).float() for t in tasks])
    label_weights = torch.stack([torch.as_tensor(train.mask[t], device=device).float() for t in tasks])
    rows, batch = x.shape[0], params.batch_size
    steps = max(1, rows // batch)

    def model_losses(w: dict[str, torch.Tensor], b: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        out = functional_call(base, (w, b), (x[index],))
        return batch_losses(kinds, [out[t] for t in tasks], targets[:, index], label_weights[:, index])

    per_model = torch.vmap(model_losses, in_dims=(0, 0, 0))
    generator = torch.Generator(device=device).manual_seed(0)

    def epoch() -> torch.Tensor:
        order = torch.argsort(torch.rand(models, rows, generator=generator, device=device), dim=1)
        total = torch.zeros((), device=device)
        for step in range(steps):
            losses = per_model(weights, buffers, order[:, step * batch:(step + 1) * batch])
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            total += losses.detach().sum()
        return total

    epoch().item()
    done, started = 0, time.perf_counter()
    while True:
        epoch().item()
        done += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return models * steps * batch * done / elapsed


# --------------------------------------------------------------------------- packing: several trials on one device


class _WindowOver(Exception):
    """Raised from a trial's report callback when the measurement window has closed."""


def _trial_worker(rank: int, device: str, threads: int, seconds: float, options: dict[str, Any], barrier: Any,
                  results: Any) -> None:
    torch.set_num_threads(threads)  # what cpus_per_worker gives a trial
    data, params = default_spec_trial()
    tasks, rows = [group_id(data.tasks)], data.splits["train"].rows
    spec = TrainSpec(**options)
    fit(data, tasks, dataclasses.replace(params, epochs=1), device=device, options=spec)  # warm-up
    barrier.wait(timeout=900)
    deadline = time.perf_counter() + seconds
    epochs, trials, seed = 0, 0, rank * 1000

    def report(metrics: dict[str, Any], state: Callable[[], Any]) -> None:
        nonlocal epochs
        if time.perf_counter() > deadline:
            raise _WindowOver
        epochs += 1

    while time.perf_counter() < deadline:
        try:
            fit(data, tasks, params, device=device, seed=seed, report=report, options=spec)
        except _WindowOver:
            break
        trials, seed = trials + 1, seed + 1
    memory = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    results.put({"rank": rank, "samples": epochs * rows, "trials": trials, "peak_mib": memory,
                 "epochs_per_trial": params.epochs, "rows": rows})


def _gpu_utilisation() -> tuple[float, float] | None:
    """(GPU utilisation %, memory used MiB) of the visible GPU, from nvidia-smi; None without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    index = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    result = subprocess.run(["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu,memory.used",
                             "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
    try:
        util, memory = (float(v) for v in result.stdout.strip().splitlines()[0].split(","))
    except (ValueError, IndexError):
        return None
    return util, memory


def packing(counts: list[int], device: torch.device, seconds: float, options: TrainSpec, threads: int,
            ) -> pd.DataFrame:
    """Total throughput of ``n`` concurrent trial processes on ``device``, for each ``n`` in ``counts``.

    Each process trains with ``threads`` torch threads, as a trial does with that many ``cpus_per_worker``.
    """
    context = torch.multiprocessing.get_context("spawn")
    rows = []
    for n in counts:
        barrier, results = context.Barrier(n + 1), context.Queue()
        workers = [context.Process(target=_trial_worker, args=(rank, str(device), threads, seconds,
                                                               options.model_dump(), barrier, results))
                   for rank in range(n)]
        for worker in workers:
            worker.start()
        barrier.wait(timeout=900)  # each process prepares its data and warms up first; a crash breaks the barrier
        started, samples_util = time.perf_counter(), []
        while time.perf_counter() - started < seconds:
            reading = _gpu_utilisation()
            if reading is not None:
                samples_util.append(reading)
            time.sleep(0.5)
        outcome = [results.get(timeout=seconds + 900) for _ in workers]  # the trials' last epochs finish first
        for worker in workers:
            worker.join()
            if worker.exitcode != 0:
                raise RuntimeError(f"a trial process ended with exit code {worker.exitcode}")
        total = sum(r["samples"] for r in outcome)
        per_trial = outcome[0]["rows"] * outcome[0]["epochs_per_trial"]
        rows.append({
            "trials at once": n, "threads each": threads, "samples/s (total)": total / seconds,
            "trials/h (completed)": sum(r["trials"] for r in outcome) * 3600 / seconds,
            "trials/h (from samples)": total / per_trial * 3600 / seconds,
            "GPU util %": np.mean([u for u, _ in samples_util]) if samples_util else float("nan"),
            "GPU memory MiB": max((m for _, m in samples_util), default=float("nan")),
            "peak MiB per trial": max(r["peak_mib"] for r in outcome),
        })
    frame = pd.DataFrame(rows)
    frame["× 1 trial"] = frame["samples/s (total)"] / frame["samples/s (total)"].iloc[0]
    return frame


# --------------------------------------------------------------------------- output


def markdown_cell(value: Any) -> str:
    """Rates as whole numbers with thousands separators; ratios with two decimals; NaN as n/a."""
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    return (f"device: {where}; {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
            f"threads), Python {platform.python_version()}, {datetime.date.today().isoformat()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--rows", type=int, help="reference model's training rows (default 1M on CUDA, 16384 on CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="reference model (default 1024 8192 65536 on "
                        "CUDA, 256 1024 4096 on CPU); the default spec's model keeps its own batch size (512)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement (packing: per count)")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none", help="also time the loop with bf16")
    parser.add_argument("--vmap-models", type=int, help="copies trained at once with vmap (default 64 on CUDA, "
                        "4 on CPU; 0 skips), at the middle batch size")
    parser.add_argument("--models", nargs="+", choices=["reference", "default"], default=["reference", "default"])
    parser.add_argument("--packing", type=int, nargs="+", help="trial processes at once, e.g. 1 2 4 8")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as a trial with "
                        "cpus_per_worker: 1; with --packing, per trial process)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not cuda:
        parser.error("--device cuda, but torch sees no CUDA device; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine(device))
    if args.packing:
        print(f"packing: the default spec's seed trial (full fit, 12 epochs), {args.seconds:g} s per count")
        print(markdown(packing(args.packing, device, args.seconds, TrainSpec(amp=args.amp), args.threads)))
        return

    on_cuda = device.type == "cuda"
    rows = args.rows or (1_000_000 if on_cuda else 16_384)
    batch_sizes = args.batch_sizes or ([1024, 8192, 65536] if on_cuda else [256, 1024, 4096])
    vmap_models = args.vmap_models if args.vmap_models is not None else (64 if on_cuda else 4)
    variants = {"project (eager)": TrainSpec(cuda_graphs="off")}
    if on_cuda:
        variants["project (CUDA graph)"] = TrainSpec(cuda_graphs="on")
    if args.amp == "bf16":
        variants.update({f"{name[:-1]}, bf16)": spec.model_copy(update={"amp": "bf16"})
                         for name, spec in list(variants.items())})
    results = []
    for model in args.models:
        data, own = build(model, rows)
        sizes = batch_sizes if model == "reference" else [own.batch_size]
        print(f"{model} model: {data.source}; {data.splits['train'].rows:,} training rows", flush=True)
        for batch_size in sizes:
            params = dataclasses.replace(own, batch_size=batch_size)
            row: dict[str, Any] = {"model": model, "batch": batch_size,
                                   "naive": naive_samples_per_s(data, params, device, args.seconds)}
            for name, options in variants.items():
                row[name] = project_samples_per_s(data, params, device, args.seconds, options)
            if vmap_models and batch_size == sizes[len(sizes) // 2]:
                row[f"vmap x{vmap_models} (total)"] = vmap_samples_per_s(data, params, device, args.seconds,
                                                                         vmap_models)
            best = max(v for k, v in row.items() if k.startswith("project"))
            row["best project / naive"] = best / row["naive"]
            results.append(row)
            print("  " + ", ".join(f"{k} {markdown_cell(v)}" for k, v in row.items()), flush=True)
    frame = pd.DataFrame(results)
    frame = frame[[c for c in frame.columns if c != "best project / naive"] + ["best project / naive"]]
    print("\nsamples/s (project/naive: the faster project loop over the naive one)")
    print(markdown(frame))


if __name__ == "__main__":
    main()
