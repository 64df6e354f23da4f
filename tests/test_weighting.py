"""The weighting registry: the contract every scheme keeps over a pack of groups, its declared
hyperparameters, and that a pack's weights are each group's own. Each scheme's maths:
``test_weighting_schemes.py``; the declarations and the spec's weighting_params: ``test_schemes.py``."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting import WEIGHTINGS, SharedGradients, Weighting, make_weighting

TASKS = ["a", "b", "c"]
#: A pack with a single-task group, two multi-task groups and every task in some group.
GROUPS = [("a", "b"), ("c",), ("a", "b", "c"), ("b", "c")]
GRADIENT_SCHEMES = sorted(name for name, scheme in SCHEMES.items() if scheme.needs_task_gradients)


def conflicting_gradients(scheme: Weighting, seed: int = 0, size: int = 7) -> SharedGradients:
    """Random task gradients for every multi-task group of ``scheme`` (zero for tasks a group lacks), the
    first two tasks made to conflict."""
    steered = [g for g, group in enumerate(scheme.groups) if len(group) > 1]
    flat = torch.randn(len(steered), scheme.num_tasks, size, generator=torch.Generator().manual_seed(seed))
    flat[:, 1] = -flat[:, 0] + 0.3 * flat[:, 1]
    flat *= scheme.membership[steered].unsqueeze(-1)
    return SharedGradients(flat, torch.tensor(steered), slice(0, 4))


def step(scheme: Weighting, losses: torch.Tensor, gradients: SharedGradients) -> torch.Tensor | None:
    """One training step as the trainer runs it; the shared directions for a gradient-level scheme."""
    direction = scheme.shared_gradient(losses, gradients) if scheme.needs_task_gradients else None
    scheme.combine(losses)
    return direction


def test_every_declared_scheme_has_one_implementation_and_no_other():
    assert sorted(WEIGHTINGS) == sorted(SCHEMES)
    for name, cls in WEIGHTINGS.items():
        assert cls.scheme is SCHEMES[name]


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_contract(name: str):
    scheme = make_weighting(name, TASKS, GROUPS)
    assert isinstance(scheme, Weighting) and scheme.name == name and type(scheme) is WEIGHTINGS[name]
    losses = torch.tensor([[1.0, 2.0, 3.0]] * len(GROUPS), requires_grad=True)
    gradients = conflicting_gradients(scheme)
    if scheme.needs_task_gradients:
        direction = scheme.shared_gradient(losses.detach(), gradients)
        assert direction.shape == (3, 7) and torch.all(torch.isfinite(direction))
        # The documented meaning of a gradient scheme's weights: each update is sum_k w_k g_k.
        weights = scheme.weights()[gradients.groups]
        assert torch.allclose(direction, torch.einsum("gt,gtp->gp", weights, gradients.flat), atol=1e-5)
    else:
        with pytest.raises(NotImplementedError):
            scheme.shared_gradient(losses.detach(), gradients)
    total = scheme.combine(losses)
    assert total.ndim == 0 and torch.isfinite(total)
    total.backward()
    held = scheme.membership
    assert torch.all(losses.grad[held] > 0) and torch.all(losses.grad[~held] == 0)
    weights = scheme.weights()
    assert weights.shape == (4, 3) and not weights.requires_grad and torch.all(torch.isfinite(weights))
    assert torch.all(weights[~held] == 0)
    assert weights[1, 2] == 1.0  # the group of one task trains plainly
    scheme.end_epoch(torch.ones(4, 3))


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_a_pack_weighs_each_group_as_the_group_alone(name: str):
    """Groups share nothing: over several steps and epochs a pack's weights (and shared updates) for a
    group equal those of the same scheme built for that group alone."""
    pack = make_weighting(name, TASKS, GROUPS, seed=5)
    alone = [make_weighting(name, TASKS, [group], seed=5) for group in GROUPS]
    generator = torch.Generator().manual_seed(1)
    for epoch in range(3):
        for _ in range(3):
            losses = torch.rand(len(GROUPS), 3, generator=generator) + 0.1
            gradients = conflicting_gradients(pack, seed=int(torch.randint(0, 1000, (1,), generator=generator)))
            directions = step(pack, losses, gradients)
            steered = gradients.groups.tolist()
            for g, scheme in enumerate(alone):
                if directions is not None and g in steered:
                    row = steered.index(g)
                    own = SharedGradients(gradients.flat[row:row + 1], torch.tensor([0]), gradients.last_layer)
                    torch.testing.assert_close(step(scheme, losses[g:g + 1], own)[0], directions[row],
                                               rtol=1e-6, atol=1e-7)
                else:  # a loss-level scheme, or a group of one task: nothing to steer
                    scheme.combine(losses[g:g + 1])
                torch.testing.assert_close(pack.weights()[g], scheme.weights()[0], rtol=1e-6, atol=1e-7)
        epoch_losses = torch.rand(len(GROUPS), 3, generator=generator) + 0.1 * epoch
        pack.end_epoch(epoch_losses)
        for g, scheme in enumerate(alone):
            scheme.end_epoch(epoch_losses[g:g + 1])


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_declared_hyperparameters_are_constructor_arguments_with_valid_defaults(name: str):
    cls = WEIGHTINGS[name]
    signature = inspect.signature(cls.__init__)
    for param, spec in cls.scheme.hyperparameters.items():
        assert signature.parameters[param].kind is inspect.Parameter.KEYWORD_ONLY, param
        assert spec.doc, param
        for value in spec.default.candidates():
            assert spec.check(value) is None, (param, value)
        value = spec.default.default()
        make_weighting(name, TASKS, **{param: (value,) * 3 if spec.per_task else value})


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_a_checkpoint_resumes_the_same_sequence(name: str):
    """State (buffers, learned weights, the random generators) travels in ``state_dict``."""
    scheme = make_weighting(name, TASKS, GROUPS, seed=3)
    losses = torch.tensor([[1.0, 0.7, 0.4]] * len(GROUPS))
    for i in range(3):
        step(scheme, losses * (1 - 0.1 * i), conflicting_gradients(scheme, i))
    scheme.end_epoch(losses)
    restored = make_weighting(name, TASKS, GROUPS, seed=99)
    restored.load_state_dict(copy.deepcopy(scheme.state_dict()))
    for i in range(3, 6):
        expected = step(scheme, losses * 0.5, conflicting_gradients(scheme, i))
        got = step(restored, losses * 0.5, conflicting_gradients(restored, i))
        assert torch.equal(scheme.weights(), restored.weights()), i
        if expected is not None:
            assert torch.equal(expected, got)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_groups_of_one_task_are_plain_training(name: str):
    scheme = make_weighting(name, ["a", "b"], [("a",), ("b",)])
    losses = torch.tensor([[2.5, 9.0], [9.0, 1.5]])
    assert scheme.combine(losses).item() == 4.0
    assert scheme.weights().tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_a_diverged_group_stays_in_its_row():
    scheme = make_weighting("uncertainty", TASKS, GROUPS)
    losses = torch.tensor([[float("nan"), 1.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]],
                          requires_grad=True)
    scheme.combine(losses).backward()
    grad = scheme.log_vars.grad
    assert torch.isnan(grad[0]).any() and torch.isfinite(grad[1:]).all()


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="cagrad, dwa, equal, gradnorm, imtl, nash_mtl, pcgrad, rlw, static, "
                                         "uncertainty"):
        make_weighting("magic", TASKS)


def test_a_group_must_hold_tasks_of_the_pack():
    with pytest.raises(ValueError, match=r"each group must hold some of tasks=\('a', 'b', 'c'\)"):
        make_weighting("equal", TASKS, [("a", "z")])


def test_the_issue_schemes_are_registered():
    assert {"equal", "static", "uncertainty", "dwa", "rlw", "gradnorm", "pcgrad", "cagrad"} <= set(WEIGHTINGS)
    assert {"imtl", "nash_mtl"} & set(WEIGHTINGS)
    assert set(GRADIENT_SCHEMES) == {"gradnorm", "pcgrad", "cagrad", "imtl", "nash_mtl"}


def test_unknown_or_bad_parameters_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"dwa: unknown parameter\(s\) temprature; valid: temperature"):
        make_weighting("dwa", TASKS, temprature=3.0)
    with pytest.raises(ValueError, match="dwa temperature must be a number > 0, but got -1"):
        make_weighting("dwa", TASKS, temperature=-1.0)
    with pytest.raises(ValueError, match="cagrad c must be a number in"):
        make_weighting("cagrad", TASKS, c=1.5)
    with pytest.raises(ValueError, match="missing weight_c"):
        make_weighting("static", TASKS, weight_a=1.0, weight_b=2.0)


def test_per_task_parameters_arrive_by_task_name_and_normalise_per_group():
    scheme = make_weighting("static", TASKS, [("a", "b", "c"), ("a", "c")], weight_c=2.0, weight_a=1.0,
                            weight_b=1.0)
    torch.testing.assert_close(scheme.weights(), torch.tensor([[0.75, 0.75, 1.5], [2 / 3, 0.0, 4 / 3]]))
