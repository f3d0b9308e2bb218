"""`python -m jobs.submit` against a real `ray start --head` cluster (token auth on), rows in a real store."""

from __future__ import annotations

import json
import re
import time
from zipfile import ZipFile

from conftest import base_env, free_port, one_error_line, run_job

from jobs.store import Store


def submit_cli(ray_cluster, store_dir, *args: str, timeout: float = 900):
    env = ray_cluster.env | {"RAY_ADDRESS": ray_cluster.dashboard}  # honours RAY_ADDRESS, as Ray's CLI does
    if args and args[0] == "submit":
        args = ("submit", "--store", str(store_dir), *args[1:])
    return run_job(["jobs.submit", *args], env, timeout=timeout)


def submission_id(res) -> str:
    match = re.search(r"^submitted (\S+):", res.stdout, re.M)
    assert match, res.stdout[-2000:] + res.stderr[-2000:]
    return match.group(1)


def wait_for(ray_cluster, store_dir, sid: str, statuses: tuple[str, ...], timeout: float = 600) -> dict:
    """Poll `list` (which records final rows it observes) until the job reaches one of ``statuses``."""
    deadline = time.time() + timeout
    while True:
        res = submit_cli(ray_cluster, store_dir, "--format", "json", "list")
        assert res.returncode == 0, res.stderr
        row = next(r for r in json.loads(res.stdout) if r["submission_id"] == sid)
        if row["status"] in statuses or time.time() > deadline:
            return row
        time.sleep(1)


def test_submit_follow_succeeds_and_records_the_job(ray_cluster, store_dir, tmp_path):
    res = submit_cli(
        ray_cluster,
        store_dir,
        "submit",
        "configs/mlp.yaml",
        "--smoke-test",
        "--follow",
        f"run.storage_path={tmp_path / 'runs'}",
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sid = submission_id(res)
    assert re.fullmatch(r"mlp-train-[0-9a-f]{8}", sid)
    assert "epoch 2/2" in res.stdout and f"job {sid} succeeded" in res.stdout  # logs streamed, then the outcome
    store = Store(store_dir)
    jobs = store.df("jobs").set_index("status")
    assert sorted(jobs.index) == ["submitted", "succeeded"] and set(jobs["submission_id"]) == {sid}
    final = jobs.loc["succeeded"]
    assert final["finished_at"] > final["started_at"] and final["verb"] == "train" and len(final["config_hash"]) == 12
    assert "python -m jobs.train --config configs/mlp.yaml --smoke-test" in final["entrypoint"]
    run = store.df("runs").iloc[0]
    assert run["status"] == "completed" and run["job_id"] == sid  # PERENNIAL_JOB_ID reached the job
    assert run["git_sha"] == final["git_sha"] != ""
    res = submit_cli(ray_cluster, store_dir, "--format", "json", "list", "--workload", "mlp", "--status", "succeeded")
    assert [r["submission_id"] for r in json.loads(res.stdout)] == [sid]
    assert len(Store(store_dir).df("jobs")) == 2  # list found the final row there: no second one
    for follow in ((), ("--follow",)):  # the logs of a finished job, whole; --follow ends with the job's outcome
        logs = submit_cli(ray_cluster, store_dir, "logs", sid, *follow)
        assert logs.returncode == 0, logs.stderr[-2000:]
        assert "epoch 1/2" in logs.stdout and "epoch 2/2" in logs.stdout and "test: " in logs.stdout
        assert (f"job {sid} succeeded" in logs.stdout) == bool(follow)


def test_entrypoint_that_fails_at_once_is_recorded_failed_with_rays_message(ray_cluster, store_dir):
    # passes submit's local pre-flight (config, data, store), fails at once on the cluster: no parent run to start from
    res = submit_cli(
        ray_cluster, store_dir, "submit", "configs/mlp.yaml", "--smoke-test", "--verb", "continual", "--from", "best"
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sid = submission_id(res)
    row = wait_for(ray_cluster, store_dir, sid, ("failed", "succeeded", "stopped"))
    assert row["status"] == "failed" and "exit code 2" in row["message"]
    jobs = Store(store_dir).df("jobs")
    final = jobs[jobs["status"] == "failed"]
    assert len(final) == 1 and "no mlp runs" in final.iloc[0]["message"]  # Ray's message keeps the log tail
    assert len(Store(store_dir).df("runs")) == 0  # the entrypoint wrote nothing itself
    res = submit_cli(ray_cluster, store_dir, "status", sid)
    assert res.returncode == 0 and re.search(r"status: failed", res.stdout)
    assert len(Store(store_dir).df("jobs")) == 2


def test_stop_ends_a_running_job_and_records_stopped(ray_cluster, store_dir, tmp_path):
    res = submit_cli(
        ray_cluster,
        store_dir,
        "submit",
        "configs/mlp.yaml",
        "--smoke-test",
        "train.epochs=1000",
        f"run.storage_path={tmp_path / 'runs'}",
    )
    sid = submission_id(res)
    assert wait_for(ray_cluster, store_dir, sid, ("running", "failed", "succeeded"))["status"] == "running"
    res = submit_cli(ray_cluster, store_dir, "stop", sid)
    assert res.returncode == 0 and f"job {sid} stopped" in res.stdout, res.stdout + res.stderr
    jobs = Store(store_dir).df("jobs")
    assert sorted(jobs["status"]) == ["stopped", "submitted"]
    res = submit_cli(ray_cluster, store_dir, "--format", "json", "list", "--status", "stopped")
    assert [r["submission_id"] for r in json.loads(res.stdout)] == [sid]


def test_missing_token_and_missing_cluster_are_one_line_exit_1(ray_cluster, store_dir):
    no_token = {k: v for k, v in ray_cluster.env.items() if k != "RAY_AUTH_MODE"}
    res = run_job(["jobs.submit", "--address", ray_cluster.dashboard, "list"], no_token)
    assert res.returncode == 1 and "RAY_AUTH_MODE=token" in res.stderr, res.stderr
    res = run_job(["jobs.submit", "--address", f"http://127.0.0.1:{free_port()}", "status", "x"], base_env())
    assert res.returncode == 1 and "no Ray cluster at" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bad_override_exits_2_before_submitting(ray_cluster, store_dir):
    res = submit_cli(ray_cluster, store_dir, "submit", "configs/mlp.yaml", "train.lrr=0.1")
    assert "train.lrr" in one_error_line(res)
    assert not store_dir.exists()


def test_upload_leaves_out_venv_results_data_and_credentials(tmp_path):
    from conftest import ROOT
    from ray._private.runtime_env.packaging import _zip_files  # what Ray runs to package a working_dir

    from jobs.submit import EXCLUDES, upload_excludes

    repo = tmp_path / "repo"
    for name in [
        "jobs/train.py",
        "configs/mlp.yaml",
        ".env",
        ".env.local",
        ".aws/credentials",
        ".venv/bin/python",
        "runs/r1/state.pt",
        "store/runs/workload=mlp/x.parquet",
        "data/big.npz",
        "jobs/deploy.pem",
        "jobs/__pycache__/train.cpython-311.pyc",
        ".git/config",
    ]:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("x")
    _zip_files(str(repo), EXCLUDES, str(tmp_path / "fake.zip"), include_gitignore=True)
    assert sorted(n for n in ZipFile(tmp_path / "fake.zip").namelist() if not n.endswith("/")) == [
        "configs/mlp.yaml",
        "jobs/train.py",
    ]
    _zip_files(str(ROOT), upload_excludes("configs/mlp.yaml"), str(tmp_path / "repo.zip"), include_gitignore=True)
    names = [n for n in ZipFile(tmp_path / "repo.zip").namelist() if not n.endswith("/")]
    assert "jobs/train.py" in names and "configs/mlp.yaml" in names and "workloads/mlp.py" in names
    assert {n.split("/")[0] for n in names} <= {"jobs", "workloads", "configs", "pyproject.toml"}
    assert (tmp_path / "repo.zip").stat().st_size < 2**20  # the real repo: code and configs only
