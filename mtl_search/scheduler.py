"""Early stopping that compares a trial only with trials of the same group.

Groups differ in difficulty even after normalisation. One ASHA over all trials
would stop a hard group's trials because an easy group scores better, under-
train the hard group and make the leaderboard confirm its own bias. This
scheduler keeps one ASHA per group and never stops a group's first (seed)
trial, so every group has at least one fully trained network.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler


class GroupedASHAScheduler(FIFOScheduler):
    """One :class:`AsyncHyperBandScheduler` per group (``trial.config[group_key]``).

    Args:
        time_attr: the result field that counts training progress (``epoch``).
        max_t: the most ``time_attr`` a trial can reach.
        grace_period: ``time_attr`` before a trial can be stopped.
        reduction_factor: ASHA's halving rate.
        group_key: config key holding the group id.
    """

    def __init__(
        self,
        *,
        time_attr: str = "epoch",
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 3.0,
        group_key: str = "group",
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        if max_t < 1:
            raise ValueError(f"max_t must be >= 1, but got {max_t=}.")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, but got {reduction_factor=}.")
        self._asha_options = {
            "time_attr": time_attr,
            "max_t": max_t,
            "grace_period": min(max(1, grace_period), max_t),
            "reduction_factor": reduction_factor,
        }
        self._group_key = group_key
        self._metric = metric
        self._mode = mode
        self._by_group: dict[str, AsyncHyperBandScheduler] = {}
        self._group_of: dict[str, str] = {}
        self._protected: set[str] = set()
        self.num_stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def _scheduler(self, trial: Trial) -> AsyncHyperBandScheduler:
        group = str(trial.config.get(self._group_key, ""))
        if group not in self._by_group:
            asha = AsyncHyperBandScheduler(metric=self._metric, mode=self._mode, **self._asha_options)
            self._by_group[group] = asha
        return self._by_group[group]

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        group = str(trial.config.get(self._group_key, ""))
        if group not in self._by_group:
            self._protected.add(trial.trial_id)
        self._group_of[trial.trial_id] = group
        self._scheduler(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        # The inner ASHA still records the seed trial's results: they are the bar later trials must clear.
        decision = self._scheduler(trial).on_trial_result(tune_controller, trial, result)
        finished = result.get(self._asha_options["time_attr"], 0) >= self._asha_options["max_t"]
        if decision != TrialScheduler.STOP or finished:
            return decision
        if trial.trial_id in self._protected:
            return TrialScheduler.CONTINUE
        self.num_stopped += 1
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._scheduler(trial).on_trial_error(tune_controller, trial)

    def is_protected(self, trial_id: str) -> bool:
        """Whether the trial is its group's seed trial (never stopped early)."""
        return trial_id in self._protected

    def debug_string(self) -> str:
        return f"GroupedASHA: {len(self._by_group)} groups, {self.num_stopped} trials stopped early"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
