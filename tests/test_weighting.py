"""The weighting registry: the contract every scheme keeps, its declared hyperparameters, and how the
spec's ``space.weighting_params`` reaches a scheme. Each scheme's maths: ``test_weighting_schemes.py``."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from mtl_search.schemes import SCHEMES
from mtl_search.weighting import WEIGHTINGS, Equal, SharedGradients, Weighting, make_weighting

TASKS = ["a", "b", "c"]
GRADIENT_SCHEMES = sorted(name for name, scheme in SCHEMES.items() if scheme.needs_task_gradients)


def conflicting_gradients(seed: int = 0, tasks: int = 3, size: int = 7) -> SharedGradients:
    """Random task gradients, the first two made to conflict."""
    flat = torch.randn(tasks, size, generator=torch.Generator().manual_seed(seed))
    flat[1] = -flat[0] + 0.3 * flat[1]
    return SharedGradients(flat, slice(0, 4))


def step(scheme: Weighting, losses: torch.Tensor, gradients: SharedGradients) -> torch.Tensor | None:
    """One training step as the trainer runs it; the shared direction for a gradient-level scheme."""
    direction = scheme.shared_gradient(losses, gradients) if scheme.needs_task_gradients else None
    scheme.combine(losses)
    return direction


def test_every_declared_scheme_has_one_implementation_and_no_other():
    assert sorted(WEIGHTINGS) == sorted(SCHEMES)
    for name, cls in WEIGHTINGS.items():
        assert cls.scheme is SCHEMES[name]


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_contract(name: str):
    scheme = make_weighting(name, TASKS)
    assert isinstance(scheme, Weighting) and scheme.name == name and type(scheme) is WEIGHTINGS[name]
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    gradients = conflicting_gradients()
    if scheme.needs_task_gradients:
        direction = scheme.shared_gradient(losses.detach(), gradients)
        assert direction.shape == (7,) and torch.all(torch.isfinite(direction))
        # The documented meaning of a gradient scheme's weights: the update is sum_k w_k g_k.
        assert torch.allclose(direction, scheme.weights() @ gradients.flat, atol=1e-5)
    else:
        with pytest.raises(NotImplementedError):
            scheme.shared_gradient(losses.detach(), gradients)
    total = scheme.combine(losses)
    assert total.ndim == 0 and torch.isfinite(total)
    total.backward()
    assert losses.grad is not None and torch.all(losses.grad > 0)
    weights = scheme.weights()
    assert weights.shape == (3,) and not weights.requires_grad and torch.all(torch.isfinite(weights))
    scheme.end_epoch(torch.tensor([1.0, 1.0, 1.0]))


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
    """State (buffers, learned weights, the random generator) travels in ``state_dict``."""
    scheme = make_weighting(name, TASKS, seed=3)
    losses = torch.tensor([1.0, 0.7, 0.4])
    for i in range(3):
        step(scheme, losses * (1 - 0.1 * i), conflicting_gradients(i))
    scheme.end_epoch(losses)
    restored = make_weighting(name, TASKS, seed=99)
    restored.load_state_dict(copy.deepcopy(scheme.state_dict()))
    for i in range(3, 6):
        expected = step(scheme, losses * 0.5, conflicting_gradients(i))
        got = step(restored, losses * 0.5, conflicting_gradients(i))
        assert torch.equal(scheme.weights(), restored.weights()), i
        if expected is not None:
            assert torch.equal(expected, got)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_one_task_is_plain_training(name: str):
    scheme = make_weighting(name, ["a"])
    assert isinstance(scheme, Equal) and not scheme.needs_task_gradients
    assert scheme.combine(torch.tensor([2.5])).item() == 2.5


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="cagrad, dwa, equal, gradnorm, imtl, nash_mtl, pcgrad, rlw, static, "
                                         "uncertainty"):
        make_weighting("magic", TASKS)


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


def test_per_task_parameters_arrive_by_task_name():
    scheme = make_weighting("static", TASKS, weight_c=2.0, weight_a=1.0, weight_b=1.0)
    assert scheme.weights().tolist() == pytest.approx([0.75, 0.75, 1.5])
