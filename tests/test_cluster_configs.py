"""The cluster configs in cluster/ parse, name this project, keep the dashboard closed, and offer the
resources the example GPU spec asks for. (Launching them needs a cloud account: see cluster/README.md.)"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtl_search.config import ExperimentSpec
from mtl_search.spec_file import load_spec

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


@pytest.fixture(scope="module")
def gpu_spec() -> ExperimentSpec:
    return load_spec(ROOT / "search_spaces" / "cluster_gpu.yaml")


@pytest.fixture(scope="module")
def aws() -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())


def trials_per_node(spec: ExperimentSpec, cpus: float, gpus: float) -> int:
    """How many of the spec's trials fit on a node with ``cpus`` and ``gpus`` (one Train worker each)."""
    resources = spec.resources
    assert resources.workers_per_trial == 1, "the example packs single-worker trials"
    fit = math.floor(cpus / resources.cpus_per_worker)
    if resources.gpus_per_worker not in ("auto", 0.0):
        fit = min(fit, math.floor(gpus / float(resources.gpus_per_worker) + 1e-9))
    return fit


def test_the_example_gpu_spec_is_valid_and_packs_trials_on_gpus(gpu_spec: ExperimentSpec):
    assert 0 < float(gpu_spec.resources.gpus_per_worker) < 1  # fractional: several trials per GPU
    assert gpu_spec.search.trial_executor == "train"
    assert gpu_spec.output.startswith("s3://")  # shared storage, not a path inside the job's working dir


def test_aws_config_is_a_valid_ray_cluster_config(aws: dict[str, Any]):
    util = pytest.importorskip("ray.autoscaler._private.util")  # Ray's own schema check (internal API)
    config = util.prepare_config(yaml.safe_load((CLUSTER / "aws.yaml").read_text()))
    util.validate_config(config)
    assert aws["provider"]["type"] == "aws"
    assert set(aws["available_node_types"]) == {aws["head_node_type"], "gpu_worker"}


def test_aws_nodes_match_the_spec(aws: dict[str, Any], gpu_spec: ExperimentSpec):
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the driver only: no trial lands on the head
    worker = aws["available_node_types"]["gpu_worker"]
    assert worker["resources"]["GPU"] >= 1 and worker["min_workers"] == 0
    per_node = trials_per_node(gpu_spec, worker["resources"]["CPU"], worker["resources"]["GPU"])
    assert per_node >= 1
    # The GPU share a trial asks for is what limits a node, not its CPUs.
    assert per_node == math.floor(worker["resources"]["GPU"] / float(gpu_spec.resources.gpus_per_worker))
    assert gpu_spec.search.max_concurrent_trials == per_node * worker["max_workers"]
    assert worker["max_workers"] <= aws["max_workers"]


def test_aws_installs_this_project_and_keeps_the_head_closed(aws: dict[str, Any]):
    assert aws["file_mounts"]["/home/ray/mtl_search"] == "."
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = " ; ".join(aws[key])
        assert "pip install --quiet /home/ray/mtl_search" in commands, key
        assert commands.index("torch==2.13.0") < commands.index("/home/ray/mtl_search"), key
    assert aws["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    head_start = " ".join(aws["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(aws["worker_start_ray_commands"])


def _ray_version(image: str) -> str:
    match = re.match(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-(cpu|gpu)$", image)
    assert match, image
    return match.group(1)


def test_one_ray_version_everywhere(aws: dict[str, Any], rayjob: dict[str, Any]):
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)  # type: ignore[union-attr]
    versions = {_ray_version(aws["docker"]["head_image"]), _ray_version(aws["docker"]["worker_image"]),
                _ray_version(base), rayjob["spec"]["rayClusterSpec"]["rayVersion"]}
    assert len(versions) == 1, versions
    major, minor, _ = (int(part) for part in versions.pop().split("."))
    assert (major, minor) >= (2, 52)  # token authentication


def test_dockerfile_installs_this_project():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "COPY --chown=ray:users mtl_search ./mtl_search" in dockerfile
    assert "COPY --chown=ray:users search_spaces ./search_spaces" in dockerfile
    assert "pip install --no-cache-dir ." in dockerfile and "torch==2.13.0" in dockerfile


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def test_rayjob_runs_this_project_on_a_gpu_worker_group(rayjob: dict[str, Any], gpu_spec: ExperimentSpec):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:4] == ["python", "-m", "mtl_search", "run"]
    shipped = entry[4].removeprefix("/home/ray/mtl_search/")
    assert (ROOT / shipped).is_file(), "the entrypoint's spec is copied into the image by cluster/Dockerfile"
    assert load_spec(ROOT / shipped).name == gpu_spec.name
    assert entry[5] == "--output" and entry[6].startswith("s3://")
    assert spec["shutdownAfterJobFinishes"] is True

    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    images = {c["image"] for c in _containers(head)}
    (group,) = cluster["workerGroupSpecs"]
    images |= {c["image"] for c in _containers(group)}
    assert len(images) == 1 and "mtl-search" in images.pop()

    (worker,) = _containers(group)
    limits = worker["resources"]["limits"]
    assert limits == worker["resources"]["requests"]
    per_pod = trials_per_node(gpu_spec, float(limits["cpu"]), float(limits["nvidia.com/gpu"]))
    assert per_pod >= 1 and gpu_spec.search.max_concurrent_trials == per_pod * group["maxReplicas"]
    assert group["minReplicas"] == 0


def test_local_head_script_is_loopback_only_with_its_own_temp_dir():
    script = CLUSTER / "local.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for needle in ("--node-ip-address 127.0.0.1", "--dashboard-host 127.0.0.1", '--temp-dir "$DIR"',
                   "RAY_AUTH_MODE=token", "--block"):
        assert needle in text, needle
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "start|stop|status" in usage.stderr


def test_the_readme_walks_through_every_config():
    readme = (CLUSTER / "README.md").read_text()
    for needle in ("cluster/local.sh start", "ray up cluster/aws.yaml", "ray dashboard cluster/aws.yaml",
                   "mtl_search submit", "ray down cluster/aws.yaml", "kubectl apply -f cluster/kuberay-rayjob.yaml",
                   "kubectl delete", "RAY_AUTH_TOKEN", "leaderboard.csv", "s3://", "gs://"):
        assert needle in readme, needle
