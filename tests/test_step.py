"""The device step (:mod:`mtl_search.step`), exercised on the CPU.

The CUDA-graph step protocol (:class:`mtl_search.step.GraphStep`) runs eagerly
here with ``capture=False``: everything but the capture itself (the fixed index
buffer, warm-up and restore, the eager final partial batch) is the code a GPU
trial runs, so it must train exactly like the plain step. The checks that decide
when a step is captured, bf16 autocast and the optimiser choice are plain logic
and are tested directly.
"""

from __future__ import annotations

import pytest
import torch

from mtl_search.config import TrainSpec
from mtl_search.data import PreparedData
from mtl_search.step import Distributed, GraphStep, Snapshot, capture_problems, make_optimizer, wants_capture
from mtl_search.train import TrainingLoop
from mtl_search.trial import TrialParams
from mtl_search.weighting import WEIGHTINGS, make_weighting

#: A pack: regression, binary, multiclass and regression tasks in groups of one, two and four.
TASKS = ["a0+a1+b0+b1", "b0", "a1+b1"]
CUDA = torch.device("cuda")  # a device description only: nothing is allocated on it
CPU = torch.device("cpu")


def params(**changes) -> TrialParams:
    base = dict(depth=2, sharing_depth=1, width=16, head_sizes=(8,), weighting="equal", lr=1e-2, epochs=3,
                batch_size=64)
    return TrialParams(**(base | changes))


def loops(data: PreparedData, trial: TrialParams, tasks=TASKS, **options) -> tuple[TrainingLoop, TrainingLoop]:
    """Two identical loops; the second runs the CUDA-graph protocol eagerly."""
    plain = TrainingLoop(data, tasks, trial, seed=3, options=TrainSpec(**options))
    graphed = TrainingLoop(data, tasks, trial, seed=3, options=TrainSpec(**options))
    graphed.step = GraphStep(graphed.step, trial.batch_size, capture=False)
    return plain, graphed


def run_epochs(loop: TrainingLoop, epochs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for _ in range(epochs):
        losses, weights = loop.run_epoch()
        loop.weighting.end_epoch(losses)  # as fit does: DWA's weights change between epochs
        out.append((losses.clone(), weights.clone()))
    return out


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def assert_same_training(plain: TrainingLoop, graphed: TrainingLoop, epochs: int) -> None:
    torch.manual_seed(11)  # dropout draws from the global generator: both runs start from the same state
    plain_sums = run_epochs(plain, epochs)
    torch.manual_seed(11)
    graphed_sums = run_epochs(graphed, epochs)
    for (loss_a, weight_a), (loss_b, weight_b) in zip(plain_sums, graphed_sums, strict=True):
        assert torch.equal(loss_a, loss_b) and torch.equal(weight_a, weight_b)
    for (name, a), b in zip(plain.net.state_dict().items(), graphed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert same(plain.weighting.state_dict(), graphed.weighting.state_dict())
    assert same(dict(enumerate(plain.optimizer.state.values())), dict(enumerate(graphed.optimizer.state.values())))


def test_the_epoch_ends_in_a_partial_batch(planted_data: PreparedData):
    # The protocol tests below need the last batch of an epoch to be short (the eager path of a graph step).
    assert planted_data.splits["train"].rows % params().batch_size != 0


def test_graph_step_protocol_trains_exactly_like_the_plain_step(planted_data: PreparedData):
    plain, graphed = loops(planted_data, params(dropout=0.2))
    assert_same_training(plain, graphed, epochs=3)


def test_snapshot_restore_undoes_the_warm_up_with_fresh_adamw_state(planted_data: PreparedData):
    loop = TrainingLoop(planted_data, TASKS, params(dropout=0.2), seed=0)
    before = {k: v.clone() for k, v in loop.net.state_dict().items()}
    rng = torch.get_rng_state()
    assert not loop.optimizer.state  # AdamW creates its state lazily, at the first step
    GraphStep(loop.step, 64, capture=False, warmup_steps=3)
    for name, value in loop.net.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert torch.equal(torch.get_rng_state(), rng)  # the warm-up's dropout draws are undone too
    # The warm-up created the state; the restore leaves it as AdamW's lazy initialisation would.
    assert len(loop.optimizer.state) == len(list(loop.net.parameters()))
    for state in loop.optimizer.state.values():
        assert float(state["step"]) == 0
        assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    assert not loop.step.loss_sums.any() and not loop.step.weight_sums.any()


def test_snapshot_restore_puts_back_trained_optimizer_state(planted_data: PreparedData):
    loop = TrainingLoop(planted_data, TASKS, params(weighting="uncertainty"), seed=0)
    loop.run_epoch()
    snapshot = Snapshot.take(loop.step)
    saved = {id(p): {k: v.clone() for k, v in s.items()} for p, s in loop.optimizer.state.items()}
    weights = loop.weighting.log_vars.detach().clone()
    tensors = [s["exp_avg"] for s in loop.optimizer.state.values()]
    loop.run_epoch()
    assert not torch.equal(loop.weighting.log_vars.detach(), weights)
    snapshot.restore(loop.step)
    assert torch.equal(loop.weighting.log_vars.detach(), weights)
    for parameter, state in loop.optimizer.state.items():
        for key, value in state.items():
            assert torch.equal(value, saved[id(parameter)][key]), key
    # Restored in place: a captured graph keeps pointing at the same tensors.
    assert all(a is s["exp_avg"] for a, s in zip(tensors, loop.optimizer.state.values(), strict=True))


def test_bf16_autocast_trains_on_the_cpu_with_float32_losses(planted_data: PreparedData):
    loop = TrainingLoop(planted_data, TASKS, params(), seed=0, options=TrainSpec(amp="bf16"))
    reference = TrainingLoop(planted_data, TASKS, params(), seed=0)
    index = torch.arange(64)
    low, full = loop.step.losses(index), reference.step.losses(index)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, rtol=0.05, atol=0.02)  # the same network ...
    assert not torch.equal(low, full)  # ... whose forward pass ran in bfloat16
    epochs = [loop.run_epoch()[0] for _ in range(4)]
    assert all(e.dtype == torch.float32 and torch.isfinite(e).all() for e in epochs)
    held = loop.net.membership
    assert (epochs[-1][held] < epochs[0][held]).all() and not epochs[-1][~held].any()
    assert all(p.dtype == torch.float32 for p in loop.net.parameters())


def test_unknown_amp_is_refused():
    with pytest.raises(ValueError, match="amp"):
        TrainSpec(amp="fp16")


def test_capture_problems_name_each_reason():
    equal = make_weighting("equal", ["a", "b"])
    assert capture_problems(CUDA, equal, Distributed()) == []
    assert capture_problems(CPU, equal, Distributed()) == ["the device is cpu, not cuda"]
    (problem,) = capture_problems(CUDA, make_weighting("rlw", ["a", "b"]), Distributed())
    assert "'rlw'" in problem and "capturable" in problem
    (problem,) = capture_problems(CUDA, equal, Distributed(rank=0, world_size=2))
    assert "world_size=2" in problem


def test_wants_capture_auto_on_off():
    equal = make_weighting("equal", ["a", "b"])
    auto, on, off = TrainSpec(cuda_graphs="auto"), TrainSpec(cuda_graphs="on"), TrainSpec(cuda_graphs="off")
    assert wants_capture(auto, CUDA, equal, Distributed(), shard=1000, batch_size=64)
    assert wants_capture(on, CUDA, equal, Distributed(), shard=1000, batch_size=64)
    assert not wants_capture(off, CUDA, equal, Distributed(), shard=1000, batch_size=64)
    assert not wants_capture(auto, CPU, equal, Distributed(), shard=1000, batch_size=64)
    assert not wants_capture(auto, CUDA, equal, Distributed(), shard=50, batch_size=64)
    with pytest.raises(ValueError, match=r"shorter than one batch \(64\)"):
        wants_capture(on, CUDA, equal, Distributed(), shard=50, batch_size=64)
    with pytest.raises(ValueError, match="device is cpu.*world_size=2"):
        wants_capture(on, CPU, equal, Distributed(rank=0, world_size=2), shard=1000, batch_size=64)


def test_cuda_graphs_on_fails_a_cpu_trial_with_the_reason(planted_data: PreparedData):
    with pytest.raises(ValueError, match="cuda_graphs is 'on'.*the device is cpu"):
        TrainingLoop(planted_data, TASKS, params(), options=TrainSpec(cuda_graphs="on"))
    # auto trains eagerly on the CPU, and the report says so.
    loop = TrainingLoop(planted_data, TASKS, params(), options=TrainSpec(cuda_graphs="auto"))
    assert not loop.cuda_graph and not isinstance(loop.step, GraphStep)


def test_capturing_a_cpu_step_is_refused(planted_data: PreparedData):
    loop = TrainingLoop(planted_data, TASKS, params())
    with pytest.raises(ValueError, match="needs a CUDA device, but the step is on cpu"):
        GraphStep(loop.step, 64, capture=True)


def test_optimizer_is_fused_on_both_devices():
    parameters = list(torch.nn.Linear(3, 2).parameters())
    cpu = make_optimizer(parameters, params(), CPU, capturable=False)
    assert cpu.defaults["fused"] is True and not cpu.defaults["capturable"]
    cuda = make_optimizer(parameters, params(), CUDA, capturable=True)  # built, never stepped, here
    assert cuda.defaults["fused"] is True and cuda.defaults["capturable"] is True


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_capturable_schemes_train_identically_through_the_graph_protocol(planted_data: PreparedData, name: str):
    """The contract behind ``Scheme.capturable``: a marked scheme's step replays exactly."""
    scheme = WEIGHTINGS[name].scheme
    if not scheme.capturable:
        problems = capture_problems(CUDA, make_weighting(name, ["a", "b"]), Distributed())
        assert any(repr(name) in p for p in problems)
        return
    # A gradient-level step assigns fresh gradient tensors, which a graph cannot replay.
    assert not scheme.needs_task_gradients
    plain, graphed = loops(planted_data, params(weighting=name))
    assert_same_training(plain, graphed, epochs=3)  # 3 epochs: DWA's weights move after the second


