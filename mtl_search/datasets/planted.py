"""Synthetic tables with planted task clusters, for testing grouping search.

Every cluster ``k`` has its own latent of ``latent_dim`` ReLU units,
``u_k = relu(x W_k)``, where the columns of all ``W_k`` together are random
orthonormal directions: the clusters' latents are independent. Each task of
cluster ``k`` reads out a direction of ``u_k`` at cosine
``correlation`` to the cluster's shared direction, plus noise; a fraction
``missing`` of each task's labels is removed at random.

So tasks inside a cluster need the same hidden units, and training them
together pools their (scarce) labels, while tasks of different clusters need
unrelated units: a trunk of fewer than ``2 * latent_dim`` units cannot serve
two clusters. The defaults were chosen by measurement so that a one-layer trunk
of 8 units ranks the planted grouping first among all 15 groupings of
2 x 2 tasks on each of the 8 data seeds tried (tests/test_planted_recovery.py
runs seed 0 through the whole search).

The planted structure lives in the features as generated: searches meant to recover it read them with
``space.numeric_encoding: standard`` (the periodic default re-describes each number with sines and
cosines, and the 8-unit bottleneck was measured on the plain features).

Clusters may differ in size (``sizes: [3, 3, 1]`` plants two clusters of three and one task that
shares with nobody). Task names are a cluster letter and an index: ``a0, a1, b0, b1``. Types cycle
through regression, binary and multiclass (3 ordered classes) across all tasks, so every cluster of
two or more tasks mixes types, and a cluster of three holds one of each. The grouping that matches the
clusters is ``a0+a1|b0+b1`` (see :func:`planted_grouping`).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mtl_search.datasets._table import BuiltinTable
from mtl_search.grouping import group_id, grouping_id

TYPES = ("regression", "binary", "multiclass")


def cluster_sizes(clusters: int = 2, tasks_per_cluster: int = 2, sizes: Sequence[int] | None = None) -> list[int]:
    """The tasks of each cluster: ``sizes`` when given, else ``clusters`` clusters of ``tasks_per_cluster``."""
    return list(sizes) if sizes is not None else [tasks_per_cluster] * clusters


def task_names(clusters: int = 2, tasks_per_cluster: int = 2, sizes: Sequence[int] | None = None) -> list[list[str]]:
    """Task names per cluster: ``[["a0", "a1"], ["b0", "b1"]]``."""
    return [[f"{string.ascii_lowercase[k]}{j}" for j in range(size)]
            for k, size in enumerate(cluster_sizes(clusters, tasks_per_cluster, sizes))]


def planted_grouping(clusters: int = 2, tasks_per_cluster: int = 2, sizes: Sequence[int] | None = None) -> str:
    """The grouping id that matches the planted clusters."""
    return grouping_id(group_id(names) for names in task_names(clusters, tasks_per_cluster, sizes))


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def generate(
    *,
    clusters: int = 2,
    tasks_per_cluster: int = 2,
    sizes: Sequence[int] | None = None,
    rows: int = 4000,
    features: int | None = None,
    latent_dim: int = 6,
    noise: float = 0.3,
    correlation: float = 1.0,
    missing: float = 0.7,
    seed: int = 0,
) -> BuiltinTable:
    """Generate a planted-cluster table.

    Args:
        clusters: number of independent task clusters (at most 26).
        tasks_per_cluster: tasks reading out each cluster's latent.
        sizes: the tasks of each cluster, when they differ (replaces ``clusters`` and ``tasks_per_cluster``;
            a cluster of one is a task that shares with nobody).
        rows: table rows.
        features: standard-normal input columns ``x0 .. x{features-1}`` (default: 48, or twice the
            clusters' latent units when that is more).
        latent_dim: ReLU units in each cluster's latent ``u_k``.
        noise: standard deviation of the noise added to each standardised readout.
        correlation: cosine between the readout directions of two tasks in one cluster
            (1: the same signal with independent noise; 0: unrelated directions of the same latent).
        missing: fraction of each task's labels removed at random (rows stay).
        seed: random seed; the same arguments give the same table.
    """
    if sizes is not None:
        if isinstance(sizes, str) or not all(isinstance(size, int) and size >= 1 for size in sizes):
            raise ValueError(f"sizes must be a list of positive integers, but got {sizes=}.")
        clusters = len(sizes)
    if not 1 <= clusters <= 26:
        raise ValueError(f"clusters must be in [1, 26], but got {clusters=}.")
    if features is None:
        features = max(48, 2 * clusters * latent_dim) if isinstance(latent_dim, int) else 48
    if features < clusters * latent_dim:
        raise ValueError(f"features must be >= clusters * latent_dim = {clusters * latent_dim} so the clusters' "
                         f"latents can be independent, but got {features=}.")
    for name, value in (("tasks_per_cluster", tasks_per_cluster), ("rows", rows), ("features", features),
                        ("latent_dim", latent_dim)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, but got {name}={value!r}.")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, but got {noise=}.")
    if not 0 <= correlation <= 1:
        raise ValueError(f"correlation must be in [0, 1], but got {correlation=}.")
    if not 0 <= missing < 1:
        raise ValueError(f"missing must be in [0, 1), but got {missing=}.")

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(features)])
    # Orthonormal projections: every latent unit's input is a standard normal, uncorrelated with (hence
    # independent of) every other unit's, so clusters share nothing but the input columns.
    projections, _ = np.linalg.qr(rng.standard_normal((features, clusters * latent_dim)))
    tasks: dict[str, tuple[str, str]] = {}
    index = 0
    for k, names in enumerate(task_names(clusters, tasks_per_cluster, sizes)):
        latent = np.maximum(x @ projections[:, k * latent_dim:(k + 1) * latent_dim], 0.0)
        shared = _unit(rng.standard_normal(latent_dim))
        for name in names:
            # A unit direction at cosine `correlation` to the cluster's shared direction.
            own = rng.standard_normal(latent_dim)
            own = _unit(own - (own @ shared) * shared) if latent_dim > 1 else shared
            direction = correlation * shared + np.sqrt(1 - correlation**2) * own
            signal = latent @ direction
            signal = (signal - signal.mean()) / signal.std()
            noisy = signal + noise * rng.standard_normal(rows)
            kind = TYPES[index % len(TYPES)]
            index += 1
            if kind == "regression":
                label: np.ndarray = noisy
            elif kind == "binary":
                label = (noisy > 0).astype(np.float64)
            else:
                label = np.digitize(noisy, np.quantile(noisy, [1 / 3, 2 / 3])).astype(np.float64)
            if missing > 0:
                label = np.where(rng.random(rows) < missing, np.nan, label)
            frame[name] = label
            tasks[name] = (name, kind)
    for name, (_, kind) in tasks.items():
        if kind != "regression" and missing == 0:
            frame[name] = frame[name].astype(np.int64)
    shape = f"{clusters} x {tasks_per_cluster}" if sizes is None else "+".join(map(str, sizes))
    return BuiltinTable(
        frame=frame,
        tasks=tasks,
        description=f"planted clusters: {shape} tasks, {rows} rows, seed {seed}",
    )
