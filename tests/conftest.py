"""Shared fixtures: a real local Ray (2 CPUs) and small specs and tables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtl_search.data import PreparedData, prepare
from mtl_search.spec_file import spec_from_dict

#: Fixtures that start Ray: a test using one is marked ``ray`` without saying so itself.
RAY_FIXTURES = {"ray_local", "local_head"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture
def ray_local():
    """A real local Ray instance in this process (2 CPUs, as on CI), kept from one test to the next."""
    import ray

    from mtl_search.ray_session import connect_ray

    connect_ray(num_cpus=2)  # joins the one still running, or starts it again
    return ray


@pytest.fixture(autouse=True)
def one_local_ray_at_a_time(request: pytest.FixtureRequest):
    """A Ray test that starts its own Ray (a `run` in a subprocess, a `ray start` head) gets the machine alone.

    The in-process instance of :func:`ray_local` is shut down first: two local instances on two cores slow
    each other down (an idle one measured here made the ten-kill test 60% slower) and confuse Ray Train's
    clean-up, which is why the README asks for one local search per machine.
    """
    if request.node.get_closest_marker("ray") is not None and "ray_local" not in request.fixturenames:
        _shut_down_local_ray()
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_the_end():
    yield
    _shut_down_local_ray()


def _shut_down_local_ray() -> None:
    """Stop this process's Ray, if one was started (without importing Ray where no test did)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def planted_spec_dict(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A tiny planted-cluster experiment (2 clusters x 2 tasks), inline executor, few epochs."""
    spec: dict[str, Any] = {
        "name": "planted",
        "seed": 0,
        "data": {"source": "builtin:planted", "params": {"rows": 600, "features": 8, "latent_dim": 3,
                                                         "missing": 0.2}},
        "space": {"depth": 1, "sharing_depth": 1, "width": 8, "head_sizes": "", "weighting": "equal",
                  "lr": 0.01, "batch_size": 128, "epochs": 2},
        "search": {"num_samples": "auto", "max_concurrent_trials": 2, "trial_executor": "inline"},
        "baselines": [],  # tests of baselines turn them on
        "output": str(tmp_path / "results"),
    }
    for key, value in overrides.items():
        node = spec
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return spec


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a spec dict as YAML and return its path."""

    def write(spec: dict[str, Any], name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def planted_data() -> PreparedData:
    """Prepared planted data: tasks a0 (regression), a1 (binary), b0 (multiclass), b1 (regression).

    Numbers standardised: the packing tests compare two float computations through AdamW, which turns
    rounding noise in a gradient below its ``eps`` (1e-8, a unit that is almost never active) into a
    step of the learning rate; with the default periodic encoding's inputs such gradients occur at
    their seeds, so they would compare noise. (Every encoding is trained in tests/test_packed.py.)
    """
    spec = spec_from_dict({"name": "t", "data": {"source": "builtin:planted",
                                                 "params": {"rows": 800, "features": 12, "missing": 0.2}},
                           "space": {"numeric_encoding": "standard"}})
    return prepare(spec)
