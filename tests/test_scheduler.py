"""Early stopping compares trials only within their group and never stops a group's seed trial."""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from mtl_search.scheduler import GroupedASHAScheduler


def make(group: str) -> Trial:
    return Trial("trainable", config={"group": group}, stub=True)


def scheduler() -> GroupedASHAScheduler:
    sched = GroupedASHAScheduler(max_t=9, grace_period=1, reduction_factor=3)
    assert sched.set_search_properties("score", "min")
    return sched


def feed(sched: GroupedASHAScheduler, trial: Trial, epoch: int, score: float) -> str:
    return sched.on_trial_result(None, trial, {"epoch": epoch, "score": score})


def test_seed_trial_of_a_group_is_never_stopped_early():
    sched = scheduler()
    first, second = make("a"), make("a")
    sched.on_trial_add(None, first)
    sched.on_trial_add(None, second)
    assert sched.is_protected(first.trial_id) and not sched.is_protected(second.trial_id)
    # `second` sets a good bar at the first rung; `first` falls far behind it but keeps training.
    assert feed(sched, second, 1, 0.1) == TrialScheduler.CONTINUE
    assert feed(sched, first, 1, 5.0) == TrialScheduler.CONTINUE
    assert feed(sched, first, 3, 5.0) == TrialScheduler.CONTINUE


def test_a_poor_trial_is_stopped_against_its_own_group():
    sched = scheduler()
    seed, good, poor = make("a"), make("a"), make("a")
    for trial in (seed, good, poor):
        sched.on_trial_add(None, trial)
    feed(sched, seed, 1, 0.5)
    feed(sched, good, 1, 0.2)
    assert feed(sched, poor, 1, 0.9) == TrialScheduler.STOP
    assert sched.num_stopped == 1


def test_groups_do_not_compete():
    sched = scheduler()
    easy_seed, easy, hard_seed, hard = make("easy"), make("easy"), make("hard"), make("hard")
    for trial in (easy_seed, easy, hard_seed, hard):
        sched.on_trial_add(None, trial)
    feed(sched, easy_seed, 1, 0.10)
    feed(sched, easy, 1, 0.05)
    feed(sched, hard_seed, 1, 0.95)
    # 0.9 is far worse than every easy trial, but better than its own group's bar: it goes on.
    assert feed(sched, hard, 1, 0.90) == TrialScheduler.CONTINUE
    assert sched.num_stopped == 0


def test_trials_reaching_max_t_end_without_counting_as_early_stops():
    sched = scheduler()
    trial = make("a")
    sched.on_trial_add(None, trial)
    assert feed(sched, trial, 9, 0.3) == TrialScheduler.STOP
    sched.on_trial_complete(None, trial, {"epoch": 9, "score": 0.3})
    assert sched.num_stopped == 0


def test_state_survives_save_and_restore(tmp_path):
    sched = scheduler()
    trial = make("a")
    sched.on_trial_add(None, trial)
    path = str(tmp_path / "sched.pkl")
    sched.save(path)
    restored = GroupedASHAScheduler(max_t=1)
    restored.restore(path)
    assert restored.is_protected(trial.trial_id)
