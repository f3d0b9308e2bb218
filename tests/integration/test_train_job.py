"""jobs.train end to end on a real Ray cluster: rows in the store, exit codes, `ray job submit`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import PY, ROOT, RayCluster, one_error_line, run_job, smoke_train

from jobs.store import Store


def test_train_two_workers_writes_one_run_and_its_epochs(ray_cluster, store_dir, tmp_path):
    res = run_job(
        smoke_train(
            store_dir, "scaling.num_workers=2", "scaling.cpus_per_worker=1", f"run.storage_path={tmp_path / 'runs'}"
        ),
        ray_cluster.job_env(),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    store = Store(store_dir)
    runs = store.df("runs")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "completed" and run["workload"] == "mlp" and run["num_workers"] == 2
    assert 0.0 <= run["best_metric"] <= 1.0 and run["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    epochs = store.df("epochs")
    assert sorted(epochs["epoch"]) == [1, 2] and set(epochs["run_id"]) == {run["run_id"]}
    assert (Path(run["export_uri"]) / "model.safetensors").is_file()
    assert "epoch 2/2" in res.stdout  # progress per epoch reaches the driver's console


def test_another_cluster_named_as_the_machines_current_one_does_not_end_a_run_on_this_one(
    ray_cluster, store_dir, tmp_path
):
    """Ray Train's placement-group cleaner, an actor, looks its cluster up by RAY_ADDRESS, else by the cluster named
    in <temp>/ray/ray_current_cluster: the last one started on the machine. Named there, a cluster without token
    auth (as ray.cluster_utils starts them) answered that it had no such run controller; the cleaner took the live
    controller for dead and removed its placement group, and the run failed (seen in CI, beside the multi-node
    tests). jobs.train now gives the job's actors RAY_ADDRESS. This cluster's processes read their own temp dir
    (RAY_TMPDIR), so the other cluster is named there, not in the machine's /tmp/ray."""
    other = RayCluster(num_cpus=0, token_auth=False)
    named = ray_cluster.ray_tmpdir / "ray" / "ray_current_cluster"
    named.parent.mkdir(parents=True, exist_ok=True)
    # put back afterwards: without the file, a later job's supervisor picks any Ray instance it finds on the machine
    before = named.read_text() if named.exists() else None
    named.write_text(other.address)
    try:
        res = run_job(
            smoke_train(store_dir, "scaling.num_workers=1", f"run.storage_path={tmp_path / 'runs'}"),
            ray_cluster.job_env(),
        )
    finally:
        named.write_text(before) if before is not None else named.unlink(missing_ok=True)
        other.stop()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # the cleaner neither took the controller for dead nor left: it would have said so
    for said in ("is dead. cleaning up placement group", "register placement group with cleaner", "group was removed"):
        assert said not in res.stderr.lower(), res.stderr[-3000:]
    runs = Store(store_dir).df("runs")
    assert list(runs["status"]) == ["completed"]


def test_bad_override_exits_2_and_writes_nothing(ray_cluster, store_dir):
    res = run_job(
        ["jobs.train", "--config", "configs/mlp.yaml", "--smoke-test", "--store", str(store_dir), "train.lrr=0.1"],
        ray_cluster.job_env(),
    )
    assert "train.lrr" in one_error_line(res)
    assert not store_dir.exists()


def test_ray_job_submit_lands_run_in_store(ray_cluster, store_dir, tmp_path):
    cmd = [
        str(Path(PY).parent / "ray"),
        "job",
        "submit",
        "--address",
        ray_cluster.dashboard,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "jobs.train",
        "--config",
        "configs/mlp.yaml",
        "--smoke-test",
        "--store",
        str(store_dir),
        f"run.storage_path={tmp_path / 'runs'}",
    ]
    res = subprocess.run(cmd, env=ray_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "succeeded" in res.stdout
    runs = Store(store_dir).df("runs")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "completed"
