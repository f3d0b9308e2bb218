"""cluster.yaml passes Ray's own offline validator and the project's rules; broken copies do not.

make cluster-check      (this file; no cloud access, < 2 s)
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cluster_check import ClusterConfigError, check_config, check_file, gpu_worker_types, load

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = sorted(p.name for p in ROOT.glob("cluster*.yaml"))


@pytest.fixture(scope="module")
def raw() -> dict:
    return load(ROOT / "cluster.yaml")


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_cluster_file_passes_rays_validator_and_project_rules(name):
    config = check_file(ROOT / name)
    assert config["head_node_type"] in config["available_node_types"]


def test_aws_cluster_has_cpu_head_and_autoscaling_gpu_workers(raw):
    config = check_config(raw)
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and "InstanceType" in head["node_config"]
    gpus = gpu_worker_types(config)
    assert len(gpus) >= 2 and 1 in gpus.values() and max(gpus.values()) > 1  # a sweep type and a multi-GPU type
    for name in gpus:
        node_type = raw["available_node_types"][name]
        assert node_type["min_workers"] == 0 and 1 <= node_type["max_workers"] <= raw["max_workers"]
        assert (
            node_type["resources"]["GPU"] == gpus[name] and node_type["node_config"]["IamInstanceProfile"]
        )  # S3 checkpoints
    assert raw["idle_timeout_minutes"] > 0


def test_aws_cluster_opens_only_ssh(raw):
    rules = raw["provider"]["security_group"]["IpPermissions"]
    assert all(
        (r["FromPort"], r["ToPort"]) == (22, 22) for r in rules
    )  # no dashboard (8265), GCS (6379), client (10001)
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_setup_installs_like_the_readme(raw):
    setup = "\n".join(raw["setup_commands"])
    torch_line = next(c for c in raw["setup_commands"] if "torch==2.13.0" in c)
    assert (
        "download.pytorch.org/whl/" in torch_line and "echo cu128" in torch_line and "echo cpu" in torch_line
    )  # same torch, CUDA or CPU build
    assert setup.index("torch==2.13.0") < setup.index("make setup")  # torch first, then the project
    assert "dataset-fashion-mnist" in setup
    assert raw["file_mounts"]["~/perennial"] == "." and ".venv" in raw["rsync_exclude"]


def _broken(raw: dict, change) -> dict:
    bad = copy.deepcopy(raw)
    change(bad)
    return bad


BROKEN = {
    "typo key": (lambda c: c.update(idle_timout_minutes=5), "idle_timout_minutes"),
    "typo key in a node type": (lambda c: c["available_node_types"]["gpu_1x"].update(min_worker=0), "min_worker"),
    "head type not in available_node_types": (lambda c: c.update(head_node_type="ray.head.default"), "head_node_type"),
    "GPU count not an integer": (lambda c: c["available_node_types"]["gpu_4x"]["resources"].update(GPU="4"), "GPU"),
    "public dashboard port": (
        lambda c: c["provider"]["security_group"]["IpPermissions"].append(
            {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ),
        "8265",
    ),
    "dashboard on all interfaces": (
        lambda c: c.update(
            head_start_ray_commands=[x.replace("127.0.0.1", "0.0.0.0") for x in c["head_start_ray_commands"]]
        ),
        "0.0.0.0",
    ),
    "always-on GPU worker": (
        lambda c: c["available_node_types"]["gpu_1x"].update(min_workers=1),
        "min_workers must be 0",
    ),
    "one GPU type only": (lambda c: c["available_node_types"].pop("gpu_4x"), "two GPU worker types"),
    "no idle timeout": (lambda c: c.pop("idle_timeout_minutes"), "idle_timeout_minutes"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copy_is_rejected_with_a_message_naming_the_problem(raw, case):
    change, expected = BROKEN[case]
    with pytest.raises(ClusterConfigError, match=expected):
        check_config(_broken(raw, change))


def test_cli_exits_2_with_one_line_for_a_broken_file(raw, tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text((ROOT / "cluster.yaml").read_text().replace("head_node_type: head", "head_node_type: hed"))
    res = subprocess.run(
        [sys.executable, "-m", "jobs.cluster_check", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and "head_node_type" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    ok = subprocess.run(
        [sys.executable, "-m", "jobs.cluster_check", "cluster.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "valid" in ok.stdout


def test_gcp_variant_keeps_gpus_on_terminate_and_off_the_default_network():
    raw = load(ROOT / "cluster-gcp.yaml")
    config = check_config(raw)
    assert config["provider"]["type"] == "gcp" and len(gpu_worker_types(config)) >= 2
    for name in gpu_worker_types(config):
        node_config = raw["available_node_types"][name]["node_config"]
        assert node_config["scheduling"]["onHostMaintenance"] == "TERMINATE"  # GCE refuses GPU VMs that live-migrate
    for node_type in raw["available_node_types"].values():  # GCP's "default" network also opens RDP to the world
        assert all("default" not in nic["subnetwork"] for nic in node_type["node_config"]["networkInterfaces"])
