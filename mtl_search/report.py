"""Plots of an experiment's results (matplotlib, PNG files under ``plots/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (servers, CI, Ray workers)
    import matplotlib.pyplot as plt

    return plt


def plot_affinity(affinity: pd.DataFrame, path: Path) -> Path:
    """Heatmap of the inter-task affinity matrix (row = the task stepped on, column = the task affected)."""
    plt = _pyplot()
    values = affinity.to_numpy(dtype=float)
    off_diagonal = values[~np.eye(len(values), dtype=bool)]
    finite = off_diagonal[np.isfinite(off_diagonal)]
    limit = float(np.max(np.abs(finite))) if finite.size else 1.0
    size = 1.2 + 0.7 * len(affinity)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit)
    axes.set_xticks(range(len(affinity.columns)), affinity.columns, rotation=45, ha="right")
    axes.set_yticks(range(len(affinity.index)), affinity.index)
    axes.set_xlabel("affected task j")
    axes.set_ylabel("task i stepped on")
    for i in range(len(values)):
        for j in range(len(values)):
            if np.isfinite(values[i, j]):
                axes.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                          color="black" if abs(values[i, j]) < 0.6 * limit or i == j else "white")
    figure.colorbar(image, ax=axes, label="affinity Z(i→j) / Z(j→j)")
    axes.set_title("Inter-task affinity (lookahead)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
