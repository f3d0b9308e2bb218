"""A sweep on a remote cluster whose maximum size it cannot know, and whose nodes up now hold no trial,
stops at once with one line asking for sweep.max_concurrent_trials (exit 2), instead of crawling one
trial at a time on an autoscaling cluster. The sizing from the autoscaler's config is in
tests/unit/test_scaling_placement.py."""

from __future__ import annotations

from conftest import ROOT, run_job


def test_remote_sweep_of_unknown_size_that_holds_no_trial_asks_for_max_concurrent_trials(
    ray_cluster, store_dir, tmp_path
):
    args = [
        "jobs.sweep",
        "--config",
        str(ROOT / "configs" / "mlp.yaml"),
        "--smoke-test",
        "--store",
        str(store_dir),
        f"run.storage_path={tmp_path / 'runs'}",
        "scaling.num_workers=4",  # 4 x 1 CPU per trial on a 2-CPU cluster, no autoscaler config anywhere
        "scaling.cpus_per_worker=1",
    ]
    env = ray_cluster.job_env(PERENNIAL_CLUSTER_CONFIG=str(tmp_path / "no-such-cluster.yaml"))
    res = run_job(args, env, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(lines) == 1 and "set sweep.max_concurrent_trials=N" in lines[0], res.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # nothing started, nothing half-written
