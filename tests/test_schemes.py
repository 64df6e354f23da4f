"""The schemes' declarations (torch-free): registry, hyperparameters, search domains, the spec's weighting_params."""

from __future__ import annotations

import pytest

from mtl_search.domain import Domain
from mtl_search.errors import SpecError
from mtl_search.schemes import SCHEMES, config_params, get_scheme, search_domains
from mtl_search.spec_file import spec_from_dict

TASKS = ["a", "b", "c"]


def test_unknown_scheme_lists_the_valid_ones():
    with pytest.raises(ValueError, match="cagrad, dwa, equal, gradnorm, imtl, nash_mtl, pcgrad, rlw, static, "
                                         "uncertainty"):
        get_scheme("magic")


def test_every_hyperparameter_default_is_accepted_and_documented():
    for scheme in SCHEMES.values():
        for name, spec in scheme.hyperparameters.items():
            assert spec.doc, (scheme.name, name)
            assert all(spec.check(value) is None for value in spec.default.candidates()), (scheme.name, name)


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
