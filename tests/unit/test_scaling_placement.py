"""Where a run's workers go and how many sweep trials run at once on an autoscaling cluster (no Ray started).

Concurrency comes from the largest cluster cluster.yaml lets the autoscaler build, not from the nodes up
now: a cold cluster has none, and a sweep capped by today's nodes would never ask for a second node.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import config as config_lib
from jobs.cluster_check import load
from jobs.sweep import autoscaler_nodes, default_concurrency, trial_resources
from jobs.train import make_trainer

ROOT = Path(__file__).resolve().parents[2]


def cfg(*overrides: str):
    c = config_lib.load_config(ROOT / "configs" / "mlp.yaml", list(overrides))
    config_lib.check_values(c)
    return c


@pytest.fixture
def cluster_yaml(monkeypatch):
    """The autoscaler's config as a `ray up` head sees it (~/ray_bootstrap_config.yaml), here cluster.yaml."""
    monkeypatch.setenv("PERENNIAL_CLUSTER_CONFIG", str(ROOT / "cluster.yaml"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return load(ROOT / "cluster.yaml")


def largest(raw: dict, key: str, per_node_need: float = 1) -> int:
    """Workers of ``per_node_need`` of ``key`` on every worker node the autoscaler may launch, counted by hand."""
    types = raw["available_node_types"]
    nodes = [
        int(t["resources"].get(key, 0) // per_node_need)
        for name, t in types.items()
        if name != raw["head_node_type"]
        for _ in range(t["max_workers"])
    ]
    return sum(sorted(nodes, reverse=True)[: raw["max_workers"]])


def test_cold_cluster_sweep_runs_as_many_trials_as_the_largest_cluster_holds(cluster_yaml, capsys):
    # 1-CPU trials: the 8 biggest nodes cluster.yaml allows (2 x 48 + 4 x 16 + 2 x 4 CPUs), not the head's 0 CPUs
    assert default_concurrency(cfg("scaling.cpus_per_worker=1")) == largest(cluster_yaml, "CPU") == 168
    assert default_concurrency(cfg("scaling.cpus_per_worker=2")) == 84  # mlp.yaml's 2 CPUs per trial: half
    assert "fit the autoscaler's largest cluster" in capsys.readouterr().out


def test_gpu_trials_count_gpus_of_every_gpu_type(cluster_yaml):
    assert default_concurrency(cfg("scaling.use_gpu=true")) == largest(cluster_yaml, "GPU") == 12  # 4 x 1 + 2 x 4


def test_four_gpu_ddp_trials_on_gpu_4x_nodes(cluster_yaml):
    c = cfg("scaling.use_gpu=true", "scaling.num_workers=4", "scaling.node_type=gpu_4x", "scaling.cpus_per_worker=8")
    assert default_concurrency(c) == cluster_yaml["available_node_types"]["gpu_4x"]["max_workers"] == 2
    assert default_concurrency(cfg("scaling.use_gpu=true", "scaling.num_workers=4", "scaling.node_type=gpu_1x")) == 1
    strict = cfg("scaling.use_gpu=true", "scaling.num_workers=4", "scaling.placement_strategy=STRICT_PACK")
    assert default_concurrency(strict) == 2  # four ranks on one node: only gpu_4x nodes hold a trial


def test_autoscaler_nodes_reads_the_bootstrap_config_ray_up_writes(tmp_path, monkeypatch):
    monkeypatch.delenv("PERENNIAL_CLUSTER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a job driver on the head of a `ray up` cluster
    assert autoscaler_nodes() is None  # no `ray up` here: the nodes up now decide, as before
    (tmp_path / "ray_bootstrap_config.yaml").write_text("provider: {type: local}\n")
    assert autoscaler_nodes() is None  # a head whose file names only its provider (the tests' HOME): no autoscaler
    (tmp_path / "ray_bootstrap_config.yaml").write_text((ROOT / "cluster.yaml").read_text())
    monkeypatch.delenv("RAY_ADDRESS")
    assert autoscaler_nodes() is None  # an embedded local Ray is never sized by the cloud config
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    head, workers, max_workers, where = autoscaler_nodes()
    assert (
        head == [{"CPU": 0, "perennial_job_slot": 8}]
        and len(workers) == 4 + 4 + 2
        and max_workers == 8
        and where.endswith(".yaml")
    )


def test_explicit_max_concurrent_trials_is_not_overridden(cluster_yaml):
    c = cfg("sweep.max_concurrent_trials=3")
    assert (c.sweep.max_concurrent_trials or default_concurrency(c)) == 3


# ----------------------------------------------------------------------------- placement
def test_placement_strategy_and_node_type_reach_rays_scaling_config():
    trainer = make_trainer(cfg("scaling.num_workers=2", "scaling.cpus_per_worker=1"), "placement-unit")
    assert trainer.scaling_config.placement_strategy == "PACK"
    c = cfg(
        "scaling.num_workers=4",
        "scaling.cpus_per_worker=1",
        "scaling.placement_strategy=STRICT_PACK",
        "scaling.node_type=gpu_4x",
    )
    scaling = make_trainer(c, "placement-unit").scaling_config
    assert scaling.placement_strategy == "STRICT_PACK"
    assert scaling.resources_per_worker == {"CPU": 1, "gpu_4x": config_lib.NODE_TYPE_SHARE}
    assert 4 * config_lib.NODE_TYPE_SHARE <= 1  # four ranks fit one gpu_4x node's {gpu_4x: 1}


def test_in_process_trials_hold_the_same_resources_as_a_train_worker():
    c = cfg("scaling.node_type=gpu_1x", "scaling.use_gpu=true", "scaling.cpus_per_worker=1")
    assert trial_resources(c) == config_lib.worker_resources(c.scaling) == {"CPU": 1, "GPU": 1.0, "gpu_1x": 0.01}


@pytest.mark.parametrize(
    "override, message",
    [
        ("scaling.placement_strategy=pack", "placement_strategy must be PACK, STRICT_PACK or SPREAD"),
        ("scaling.placement_strategy=STRICT_SPREAD", "got 'STRICT_SPREAD'"),
        ("scaling.node_type=GPU", "node_type must name a worker type"),
        ("scaling.node_type=gpu 4x", "node_type must name a worker type"),
    ],
)
def test_bad_placement_values_are_one_line_config_errors(override, message):
    with pytest.raises(config_lib.ConfigError, match=message) as e:
        cfg(override)
    assert "\n" not in str(e.value)
