"""The Delta store on s3:// against a real S3 API server (moto on 127.0.0.1), credentials from AWS_* variables."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from conftest import PY, base_env, run_job

from jobs.store import INFO_KINDS, Store, maintenance


def test_store_on_s3_appends_records_queries_compacts(s3_server):
    store = Store(f"{s3_server.make_bucket(f'unit-{uuid.uuid4().hex[:8]}')}/team/store")
    for i in range(3):
        store.append(
            "epochs", [{"run_id": f"r{i}", "workload": "mlp", "epoch": e, "val_accuracy": 0.1 * e} for e in (1, 2)]
        )
    run = {"run_id": "r1", "workload": "mlp", "status": "completed", "best_metric": 0.2, "mode": "max"}
    store.record_run([{"run_id": "r1", "workload": "mlp", "epoch": e, "val_accuracy": 0.1 * e} for e in (1, 2)], run)
    store.record_run([{"run_id": "r1", "workload": "mlp", "epoch": e, "val_accuracy": 0.1 * e} for e in (1, 2)], run)
    assert store.tables() == ["epochs", "runs"] and len(store.df("epochs")) == 6  # r1 recorded twice: replaced
    assert store.sql("SELECT count(*) AS n FROM epochs JOIN runs USING (run_id)")["n"].tolist() == [2]
    assert store.leaderboard()["run_id"].tolist() == ["r1"]
    with maintenance.lease(store, "epochs") as held:  # the lease is a conditional put (If-None-Match), moto serves it
        assert held and store.compact(["epochs"])[0]["files_after"] is None  # another compactor holds it: skipped
    assert store.compact(["epochs"])[0]["files_after"] == 1
    fresh = Store(store.uri)
    assert len(fresh.files("epochs")) == 1 and len(fresh.df("epochs")) == 6
    assert len(Store(store.uri, as_of=0).df("epochs")) == 2  # time travel on S3
    assert [f for f in fresh.check() if f["kind"] not in INFO_KINDS] == []


WRITER = """
import sys
from jobs.store import Store
store, w = Store(sys.argv[1]), sys.argv[2]
for i in range(10):
    store.append("epochs", [{"run_id": f"{w}-{i}", "workload": "mlp", "epoch": e} for e in range(3)])
epochs = [{"run_id": "shared", "workload": "mlp", "epoch": e, "train_loss": float(len(w))} for e in range(len(w))]
store.record_run(epochs, {"run_id": "shared", "workload": "mlp", "status": "completed", "epochs": len(w)})
"""


def test_processes_commit_concurrently_to_s3_and_lose_nothing(s3_server):
    """Delta on S3 commits with conditional writes (moto honours them): no lock, no lost or doubled row."""
    uri = f"{s3_server.make_bucket(f'conc-{uuid.uuid4().hex[:8]}')}/store"
    Store(uri).append("epochs", [{"run_id": "seed", "workload": "mlp", "epoch": 0}])  # create before the writers
    writers = [f"w{'x' * k}" for k in range(1, 5)]  # history lengths 2..5 for the shared run
    t0 = time.monotonic()
    procs = [
        subprocess.Popen([PY, "-c", WRITER, uri, w], env=base_env(**s3_server.env), stderr=subprocess.PIPE, text=True)
        for w in writers
    ]
    errors = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-1500:] for e in errors]
    store = Store(uri)
    df = store.df("epochs")
    plain = df[~df["run_id"].isin(["seed", "shared"])]
    assert len(plain) == 4 * 10 * 3 and plain.groupby("run_id").size().eq(3).all() and plain["run_id"].nunique() == 40
    shared, runs = df[df["run_id"] == "shared"], store.df("runs")
    n = int(runs["epochs"].iloc[0])
    assert len(runs) == 1 and sorted(shared["epoch"]) == list(range(n)) and set(shared["train_loss"]) == {float(n)}
    assert shared["record_id"].nunique() == 1 and shared["record_id"].iloc[0] == runs["record_id"].iloc[0]
    print(
        f"\n4 processes x (10 appends + 1 record of a shared run) on moto S3: {len(df)} rows, {time.monotonic() - t0:.1f} s"
    )


def test_cli_on_s3_takes_store_after_the_verb_and_readers_exit_cleanly(s3_server):
    """The pyarrow exit abort was seen after a Delta read on S3: each reader must exit with its own code."""
    uri = f"{s3_server.make_bucket(f'cli-{uuid.uuid4().hex[:8]}')}/store"
    Store(uri).record_run(
        [{"run_id": "r", "workload": "mlp", "epoch": 1, "val_accuracy": 0.5}],
        {"run_id": "r", "workload": "mlp", "status": "completed", "best_metric": 0.5, "mode": "max"},
    )
    env = base_env(**s3_server.env)

    def one(i):
        if i % 2:
            p = run_job(["jobs.store", "leaderboard", "--store", uri, "--format", "json"], env)
            return p.returncode, p.stdout, p.stderr.strip()[-300:]
        code = (
            "import sys; from jobs.store import Store; s = Store(sys.argv[1]); print(len(s.df('epochs'))); sys.exit(3)"
        )
        p = subprocess.run([PY, "-c", code, uri], env=env, capture_output=True, text=True, timeout=300)
        return p.returncode - 3, p.stdout, p.stderr.strip()[-300:]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(10)))
    bad = [r for r in results if r[0] != 0]
    assert not bad, f"{len(bad)}/10 readers did not exit cleanly: {bad[:2]}"
    assert [row["run_id"] for row in json.loads(results[1][1])] == ["r"] and results[0][1].strip() == "1"


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
    res = run_job(["jobs.store", "leaderboard", "--store", uri, "--format", "json"], base_env(**s3_server.env))
    assert res.returncode == 0, res.stderr
    assert [r["run_id"] for r in json.loads(res.stdout)] == [runs.iloc[0]["run_id"]]
