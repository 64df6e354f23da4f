"""The weighting registry: the contract every scheme keeps, its declared hyperparameters, and how the
spec's ``space.weighting_params`` reaches a scheme. Each scheme's maths: ``test_weighting_schemes.py``."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from mtl_search.config import Domain, spec_from_dict
from mtl_search.errors import SpecError
from mtl_search.weighting import (
    WEIGHTINGS,
    Equal,
    SharedGradients,
    Weighting,
    config_params,
    make_weighting,
    search_domains,
)

TASKS = ["a", "b", "c"]
GRADIENT_SCHEMES = sorted(name for name, cls in WEIGHTINGS.items() if cls.needs_task_gradients)


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
    for param, spec in cls.hyperparameters.items():
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


def test_search_domains_expand_per_task_parameters_and_take_overrides():
    assert search_domains("dwa", TASKS, {}) == {"dwa.temperature": Domain.const(2.0)}
    wide = Domain("float", (1.0, 4.0))
    assert search_domains("dwa", TASKS, {"dwa.temperature": wide}) == {"dwa.temperature": wide}
    static = search_domains("static", ["x", "y"], {})
    assert list(static) == ["static.weight_x", "static.weight_y"]
    assert static["static.weight_x"] == Domain("float", (0.1, 10.0), log=True)
    assert search_domains("gradnorm", TASKS, {}) == {"gradnorm.alpha": Domain.const(1.5),
                                                     "gradnorm.lr": Domain.const(0.025)}
    assert search_domains("equal", TASKS, {}) == {}
    assert search_domains("dwa", ["a"], {"dwa.temperature": wide}) == {}  # one task trains plainly


def test_config_params_takes_only_the_chosen_scheme():
    config = {"weighting": "dwa", "dwa.temperature": 3.0, "gradnorm.alpha": 1.0, "lr": 0.1}
    assert config_params("dwa", config) == {"temperature": 3.0}
    assert config_params("equal", config) == {}


# --------------------------------------------------------------------------- the spec's weighting_params


def space(**space: object) -> dict:
    return {"name": "t", "data": {"source": "builtin:planted"}, "space": space}


def test_spec_weighting_params_accept_constants_ranges_and_the_nested_form():
    spec = spec_from_dict(space(weighting={"choice": ["equal", "dwa", "gradnorm", "static"]},
                                weighting_params={"dwa.temperature": {"float": [1, 4]}, "gradnorm.alpha": 0.5,
                                                  "static": {"weight": {"float": [0.5, 2.0], "log": True}}}))
    params = spec.space.weighting_params
    assert params == {"dwa.temperature": Domain("float", (1.0, 4.0)), "gradnorm.alpha": Domain.const(0.5),
                      "static.weight": Domain("float", (0.5, 2.0), log=True)}
    assert "weighting_params" not in spec.space.domains()
    dumped = spec.model_dump(mode="json")["space"]["weighting_params"]
    assert dumped == {"dwa.temperature": {"float": [1.0, 4.0]}, "gradnorm.alpha": 0.5,
                      "static.weight": {"float": [0.5, 2.0], "log": True}}
    assert spec_from_dict(space(weighting={"choice": ["equal", "dwa", "gradnorm", "static"]},
                                weighting_params=dumped)).space.weighting_params == params


@pytest.mark.parametrize(("params", "message"), [
    ({"dwa.temprature": 3}, r"space.weighting_params: dwa.temprature: unknown scheme parameter; valid: cagrad.c, "
                            r"dwa.temperature, gradnorm.alpha, gradnorm.lr, static.weight \(did you mean "
                            r"'dwa.temperature'\?\)"),
    ({"magic.x": 3}, r"magic.x: unknown scheme parameter; valid: cagrad.c"),
    ({"dwa.temperature": {"float": [-1, 4]}}, r"dwa.temperature: -1.0: must be a number > 0"),
    ({"cagrad.c": 0.2}, r"weighting_params sets cagrad.c, but space.weighting never chooses cagrad"),
])
def test_spec_weighting_params_errors_name_the_key(params: dict, message: str):
    with pytest.raises(SpecError, match=message):
        spec_from_dict(space(weighting={"choice": ["equal", "dwa"]}, weighting_params=params))


def test_spec_rejects_gradient_schemes_with_data_parallel_trials():
    raw = space(weighting={"choice": ["equal", "pcgrad"]})
    with pytest.raises(SpecError, match=r"space.weighting may choose pcgrad.*resources.workers_per_trial is 2"):
        spec_from_dict({**raw, "resources": {"workers_per_trial": 2}})
    spec_from_dict({**space(weighting={"choice": ["equal", "dwa"]}), "resources": {"workers_per_trial": 2}})
