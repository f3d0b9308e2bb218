"""DDP ranks land where scaling.placement_strategy / scaling.node_type say, on a real multi-node local Ray.

Three nodes on this host, shaped like cluster.yaml's types: a CPU-less head, one "gpu_4x" node with room for
two ranks and one "gpu_1x" node with room for one, each with its type's custom resource. The trainer is the
one jobs.train builds (``make_trainer``: its ScalingConfig), run with a train function that writes down the
node of each rank.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from conftest import free_port

from jobs import config as config_lib
from jobs.train import loopback_only, make_trainer


@pytest.fixture(scope="module")
def nodes():
    """{type name: node id} of a head (0 CPUs) + a 2-CPU gpu_4x node + a 1-CPU gpu_1x node, connected."""
    import ray
    from ray.cluster_utils import Cluster

    loopback_only()  # every node's servers on 127.0.0.1 (Ray would bind 0.0.0.0 and an outward IP)
    local = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024**2}
    head = {"dashboard_port": free_port()}  # not 8265: an embedded cluster of a test beside it may hold that one
    for attempt in range(3):  # Ray gives a raylet 30 s to register (fixed): an overloaded host can miss it
        cluster = Cluster(initialize_head=False)
        try:
            cluster.add_node(**local, **head, num_cpus=0, dashboard_host="127.0.0.1")  # the head
            ids = {
                "gpu_4x": cluster.add_node(**local, num_cpus=2, resources={"gpu_4x": 1}).node_id,
                "gpu_1x": cluster.add_node(**local, num_cpus=1, resources={"gpu_1x": 1}).node_id,
            }
            break
        except Exception as e:
            cluster.shutdown()
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = cluster.address  # Train's own helpers find this cluster, not another on the host
    ray.init(address=cluster.address, runtime_env={"env_vars": {"RAY_ADDRESS": cluster.address}})
    cluster.wait_for_nodes()
    yield ids
    ray.shutdown()
    cluster.shutdown()
    if saved is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = saved


def rank_nodes(tmp_path: Path, overrides: list[str]) -> list[str]:
    """Node id of each rank for a 2-worker, 1-CPU-per-worker run of the mlp config with ``overrides``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    def record_node(config: dict) -> None:  # nested: pickled by value (workers cannot import this test module)
        rank = ray.train.get_context().get_world_rank()
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps(ray.get_runtime_context().get_node_id()))

    cfg = config_lib.load_config("configs/mlp.yaml", ["scaling.num_workers=2", "scaling.cpus_per_worker=1", *overrides])
    config_lib.check_values(cfg)
    name = f"placement-{uuid.uuid4().hex[:8]}"
    scaling = make_trainer(cfg, name).scaling_config  # exactly what jobs.train would hand Ray
    out = tmp_path / name
    out.mkdir()
    TorchTrainer(
        record_node,
        train_loop_config={"out": str(out)},
        scaling_config=scaling,
        run_config=ray.train.RunConfig(name=name, storage_path=str(tmp_path / "runs")),
    ).fit()
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_pack_by_default_keeps_both_ranks_on_the_one_node_that_fits_them(nodes, tmp_path):
    assert config_lib.Scaling().placement_strategy == "PACK"
    assert rank_nodes(tmp_path, []) == [nodes["gpu_4x"]] * 2


def test_strict_pack_puts_all_ranks_on_one_node(nodes, tmp_path):
    assert rank_nodes(tmp_path, ["scaling.placement_strategy=STRICT_PACK"]) == [nodes["gpu_4x"]] * 2


def test_spread_puts_ranks_on_different_nodes(nodes, tmp_path):
    assert sorted(rank_nodes(tmp_path, ["scaling.placement_strategy=SPREAD"])) == sorted(nodes.values())


def test_node_type_wins_over_spread(nodes, tmp_path):
    overrides = ["scaling.placement_strategy=SPREAD", "scaling.node_type=gpu_4x"]
    assert rank_nodes(tmp_path, overrides) == [nodes["gpu_4x"]] * 2
