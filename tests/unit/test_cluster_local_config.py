"""jobs.cluster_local without Ray: the rehearsal generated from cluster.yaml (local_config), and the CLI's refusals."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.cluster_local import LOCAL_HEAD_TYPE, MAX_LOCAL_NODES, local_config
from jobs.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CLOUD = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def workers(cfg: dict) -> dict:
    return {k: v for k, v in cfg["available_node_types"].items() if k != LOCAL_HEAD_TYPE}


def test_every_cloud_worker_type_becomes_a_one_cpu_local_type_with_its_name_as_a_resource():
    cfg = local_config(CLOUD, gcs_address="127.0.0.1:1234")
    cloud_workers = {k: v for k, v in CLOUD["available_node_types"].items() if k != CLOUD["head_node_type"]}
    assert set(workers(cfg)) == set(cloud_workers)
    for name, spec in workers(cfg).items():
        res = spec["resources"]
        assert res["CPU"] == 1 and res[name] == 1 and "GPU" not in res, (name, res)
        assert spec["min_workers"] == min(cloud_workers[name].get("min_workers", 0), MAX_LOCAL_NODES)
        assert spec["max_workers"] == min(cloud_workers[name]["max_workers"], MAX_LOCAL_NODES)
        assert spec["node_config"] == {}
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["max_workers"] == 0
    assert cfg["idle_timeout_minutes"] == CLOUD["idle_timeout_minutes"]
    assert cfg["max_workers"] == min(CLOUD["max_workers"], MAX_LOCAL_NODES)
    assert cfg["provider"]["type"] == "fake_multinode" and cfg["provider"]["gcs_address"] == "127.0.0.1:1234"


def test_a_change_to_cluster_yaml_changes_the_local_cluster():
    cloud = copy.deepcopy(CLOUD)
    cloud["available_node_types"]["gpu_8x"] = {
        "min_workers": 1,
        "max_workers": 9,
        "resources": {"CPU": 96, "GPU": 8, "gpu_8x": 1, "accelerator_a100": 8},
        "node_config": {"InstanceType": "p4d.24xlarge"},
    }
    del cloud["available_node_types"]["cpu_worker"]
    cfg = local_config(cloud, gcs_address="127.0.0.1:1", idle_timeout_minutes=0.2)
    assert "cpu_worker" not in cfg["available_node_types"]
    new = cfg["available_node_types"]["gpu_8x"]
    # custom resources of the cloud type survive; GPUs and CPU counts shrink to what a laptop holds
    assert {k: v for k, v in new["resources"].items() if k != "object_store_memory"} == {
        "CPU": 1,
        "gpu_8x": 1,
        "accelerator_a100": 8,
    }
    assert (new["min_workers"], new["max_workers"]) == (1, MAX_LOCAL_NODES)
    assert cfg["idle_timeout_minutes"] == 0.2


def test_the_generated_config_passes_rays_own_validator():
    from ray.autoscaler._private.util import validate_config

    # not prepare_config: it merges the provider's defaults from the example.yaml the wheel lacks
    validate_config(local_config(CLOUD, gcs_address="127.0.0.1:1234"))


def test_a_head_type_missing_from_available_node_types_is_refused():
    cloud = copy.deepcopy(CLOUD) | {"head_node_type": "boss"}
    with pytest.raises(ConfigError, match="head_node_type 'boss'"):
        local_config(cloud, gcs_address="127.0.0.1:1")


def test_cluster_refusals_before_any_worker_starts():
    from jobs.train import cluster_refusal

    cfg = local_config(CLOUD, gcs_address="127.0.0.1:1")
    kinds = {k: v["resources"] for k, v in workers(cfg).items()} | {"node head": {"CPU": 0.0}}
    s3 = "s3://bucket/runs"
    assert cluster_refusal({"CPU": 1}, s3, kinds, complete=True) == ""
    assert cluster_refusal({"CPU": 1, "gpu_4x": 0.001}, s3, kinds, complete=True) == ""
    too_big = cluster_refusal({"CPU": 4}, s3, kinds, complete=True)
    assert too_big.startswith("no node type of this cluster can hold one worker (CPU=4)")
    assert "the largest, cpu_worker, has CPU=1" in too_big
    assert "no node type" in cluster_refusal({"CPU": 1, "gpu_8x": 0.001}, s3, kinds, complete=True)
    assert cluster_refusal({"CPU": 4}, s3, kinds, complete=False) == ""  # unknown autoscaler: let Ray decide
    local = cluster_refusal({"CPU": 1}, "./runs", kinds, complete=True)
    assert "run.storage_path='./runs' is a folder on this machine" in local and "s3://" in local
    assert cluster_refusal({"CPU": 1}, "./runs", {"node a": {"CPU": 2.0}}, complete=True) == ""  # one machine
    assert cluster_refusal({"CPU": 1}, "file:///nfs/runs", kinds, complete=True) == ""


def test_down_never_ends_a_process_that_is_not_its_clusters_supervisor(tmp_path):
    """A cluster.json left behind names a PID that is now another program's (here: this test): no cluster there."""
    from jobs.cluster_local import STATE, LocalCluster

    state = {"supervisor_pid": os.getpid(), "address": "127.0.0.1:1", "dashboard": "http://127.0.0.1:2"}
    (tmp_path / STATE).write_text(json.dumps(state | {"config": None, "token_auth": True}))
    assert LocalCluster.attach(tmp_path) is None
    res = cli("down", "--dir", str(tmp_path))
    assert res.returncode == 0 and f"no local cluster runs from {tmp_path}" in res.stdout


def test_env_without_a_cluster_and_contradictory_flags_are_one_line_errors(tmp_path):
    res = cli("env", "--rehearsal", "--dir", str(tmp_path))
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"error: no local cluster runs from {tmp_path} — start one with 'make cluster-local'"
    ]
    res = cli("up", "--rehearsal", "--num-cpus", "2", "--dir", str(tmp_path))
    assert res.returncode == 2 and "--num-cpus is for the one-node cluster" in res.stderr
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cluster_local", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
