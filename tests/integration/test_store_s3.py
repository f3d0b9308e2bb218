"""The store on s3:// against a real S3 API server (moto on 127.0.0.1), credentials from AWS_* variables."""

from __future__ import annotations

import json
import uuid

from conftest import base_env, run_job

from jobs.store import INFO_KINDS, Store


def test_store_on_s3_lists_appends_queries_compacts(s3_server):
    store = Store(f"{s3_server.make_bucket(f'unit-{uuid.uuid4().hex[:8]}')}/team/store")
    for i in range(3):
        store.append(
            "epochs", [{"run_id": f"r{i}", "workload": "mlp", "epoch": e, "val_accuracy": 0.1 * e} for e in (1, 2)]
        )
    store.append(
        "runs", [{"run_id": "r1", "workload": "mlp", "status": "completed", "best_metric": 0.2, "mode": "max"}]
    )
    assert store.tables() == ["epochs", "runs"] and len(store.files("epochs")) == 3
    assert store.sql("SELECT count(*) AS n FROM epochs JOIN runs USING (run_id)")["n"].tolist() == [2]
    assert store.leaderboard()["run_id"].tolist() == ["r1"]
    assert store.compact(["epochs"])[0]["files_after"] == 1
    fresh = Store(store.uri)
    assert len(fresh.files("epochs")) == 1 and len(fresh.df("epochs")) == 6
    assert [f for f in fresh.check() if f["kind"] not in INFO_KINDS] == []


def test_train_smoke_run_writes_to_s3_and_leaderboard_reads_it(ray_cluster, s3_server, tmp_path):
    uri = f"{s3_server.make_bucket(f'train-{uuid.uuid4().hex[:8]}')}/store"
    res = run_job(
        [
            "jobs.train",
            "--config",
            "configs/mlp.yaml",
            "--smoke-test",
            "--store",
            uri,
            f"run.storage_path={tmp_path / 'runs'}",
        ],
        ray_cluster.job_env(**s3_server.env),
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = Store(uri).df("runs")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "completed"
    assert sorted(Store(uri).history(runs.iloc[0]["run_id"])["epoch"]) == [1, 2]
    res = run_job(["jobs.store", "--store", uri, "--format", "json", "leaderboard"], base_env(**s3_server.env))
    assert res.returncode == 0, res.stderr
    assert [r["run_id"] for r in json.loads(res.stdout)] == [runs.iloc[0]["run_id"]]
