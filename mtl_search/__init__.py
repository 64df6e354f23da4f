"""mtl_search: decide which targets of a table to train together.

A YAML spec describes a table with several target columns and a search space
over task groupings, sharing depth, head sizes, loss weighting and optimiser
settings. ``python -m mtl_search run SPEC`` searches it with Ray Tune + Optuna
(each trial a Ray Train job) and writes leaderboard CSVs that compare every
grouping of the tasks with single-task baselines.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
