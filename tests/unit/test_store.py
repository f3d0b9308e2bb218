"""The Delta Lake store without Ray: commits, run records, schema, time travel, maintenance, readers."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.errors import UserError
from jobs.store import Store, StoreError

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def run_row(run_id: str, workload: str = "mlp", best: float = 0.5, **extra) -> dict:
    config = {"workload": workload, "train": {"lr": extra.pop("lr", 1e-3), "epochs": 3}, "model": {"hidden1": 64}}
    return {
        "run_id": run_id,
        "workload": workload,
        "status": "completed",
        "metric": "val_accuracy",
        "mode": "max",
        "best_metric": best,
        "best_epoch": 2,
        "epochs": 3,
        "config_json": json.dumps(config),
        "train.lr": config["train"]["lr"],
        "finished_at": T0,
        "wall_s": 10.0,
        **extra,
    }


def epoch_rows(run_id: str, workload: str = "mlp", n: int = 3, **extra) -> list[dict]:
    return [
        {
            "run_id": run_id,
            "workload": workload,
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_accuracy": 0.3 + 0.1 * e,
            **extra,
        }
        for e in range(1, n + 1)
    ]


def test_empty_store_reads_as_empty_tables_with_core_columns(tmp_path):
    store = Store(tmp_path / "nothing")
    assert len(store.df("runs")) == 0 and "best_metric" in store.df("runs").columns
    assert len(store.leaderboard()) == 0
    assert store.sql("SELECT count(*) AS n FROM jobs")["n"].tolist() == [0]


def test_a_metric_added_later_is_read_alongside_old_files(tmp_path):
    store = Store(tmp_path / "store")
    store.append("epochs", epoch_rows("old"))
    store.append("epochs", epoch_rows("new", val_f1=0.7))
    df = store.df("epochs")
    assert len(df) == 6
    assert df[df["run_id"] == "new"]["val_f1"].eq(0.7).all()
    assert df[df["run_id"] == "old"]["val_f1"].isna().all()


def test_leaderboard_ranks_by_each_workloads_mode(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("m1", best=0.7), run_row("m2", best=0.9), run_row("m3", best=0.8, status="failed")])
    store.append("runs", [run_row("l1", "reg", best=0.2, mode="min"), run_row("l2", "reg", best=0.1, mode="min")])
    board = store.leaderboard()
    assert board[board["workload"] == "mlp"]["run_id"].tolist() == ["m2", "m1"]  # failed runs are not ranked
    assert board[board["workload"] == "reg"]["run_id"].tolist() == ["l2", "l1"]
    assert board["rank"].tolist() == [1, 2, 1, 2]
    with pytest.raises(UserError, match="no column 'val_nope'"):
        store.leaderboard(metric="val_nope")


def test_runs_since_filters_by_finish_time(tmp_path):
    store = Store(tmp_path / "store")
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    store.append("runs", [run_row("old"), run_row("new", finished_at=recent)])
    assert store.runs(since="2h")["run_id"].tolist() == ["new"]
    assert store.runs(since="2025-12-31")["run_id"].tolist() == ["new", "old"]
    with pytest.raises(UserError, match="--since"):
        store.runs(since="yesterday")


def test_compare_shows_config_and_metric_differences(tmp_path):
    store = Store(tmp_path / "store")
    store.append(
        "runs", [run_row("a", best=0.5, lr=1e-3, val_accuracy=0.5), run_row("b", best=0.75, lr=1e-2, val_accuracy=0.75)]
    )
    diff = store.compare("a", "b")
    config = diff[diff["section"] == "config"]
    assert config["key"].tolist() == ["train.lr"] and config[["a", "b"]].values.tolist() == [["0.001", "0.01"]]
    metric = diff[diff["section"] == "metric"].set_index("key")
    assert metric.loc["best_metric", "delta"] == "+0.25" and metric.loc["val_accuracy", "b"] == "0.75"
    with pytest.raises(UserError, match="no run 'zzz'"):
        store.compare("a", "zzz")


def test_sql_sees_every_table_by_name(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("a"), run_row("b", "cnn")])
    store.append("epochs", epoch_rows("a") + epoch_rows("b", "cnn", n=5))
    out = store.sql("SELECT r.workload, count(*) AS n FROM epochs e JOIN runs r USING (run_id) GROUP BY ALL ORDER BY 1")
    assert out.to_dict("records") == [{"workload": "cnn", "n": 5}, {"workload": "mlp", "n": 3}]
    with pytest.raises(UserError, match="tables: epochs, jobs, runs, sweeps"):
        store.sql("SELECT * FROM nope")


def recorder_code() -> str:
    """A process recording run 'r' with its own history length (argv[2]) as jobs.train does."""
    return (
        "import sys; from jobs.store import Store; s = Store(sys.argv[1]); n = int(sys.argv[2])\n"
        "epochs = [{'run_id': 'r', 'workload': 'mlp', 'epoch': e, 'train_loss': float(n)} for e in range(1, n + 1)]\n"
        "for i in range(int(sys.argv[3])):\n"
        "    s.record_run(epochs, {'run_id': 'r', 'workload': 'mlp', 'status': 'completed', 'epochs': n})\n"
    )


def test_round_trip_keeps_types_and_partitions_in_one_delta_table(tmp_path):
    store = Store(tmp_path / "store")
    version = store.append("runs", [run_row("a"), run_row("b", "cnn", best=0.9)])
    df = store.df("runs")
    assert sorted(df["run_id"]) == ["a", "b"] and version == 0  # both workloads: one commit
    assert dict(zip(df["run_id"], df["workload"])) == {"a": "mlp", "b": "cnn"}
    assert str(df["finished_at"].dt.tz) == "UTC" and df["best_metric"].dtype == "float64"
    assert (tmp_path / "store" / "runs" / "_delta_log").is_dir() and (tmp_path / "store/runs/workload=cnn").is_dir()
    assert store.df("runs", workload="cnn")["run_id"].tolist() == ["b"]
    assert store.tables() == ["runs"]


def test_concurrent_appends_from_four_processes_lose_nothing(tmp_path):
    Store(tmp_path / "store").append("epochs", [{"run_id": "seed", "workload": "mlp", "epoch": 0}])
    code = (
        "import sys; from jobs.store import Store; s = Store(sys.argv[1]); w = sys.argv[2]\n"
        "for i in range(25): s.append('epochs', [{'run_id': f'{w}-{i}', 'workload': 'mlp', 'epoch': e} for e in range(4)])"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "store"), f"w{k}"], env=env) for k in range(4)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0, 0]
    df = Store(tmp_path / "store").df("epochs")
    assert len(df) == 4 * 25 * 4 + 1
    assert df[df["run_id"] != "seed"].groupby("run_id").size().eq(4).all() and df["run_id"].nunique() == 101


def test_a_type_conflict_is_refused_at_write_with_one_line_and_nothing_written(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("a", val_f1=0.5, note=None)])
    version = store.delta("runs").version()
    for bad, column in (({"val_f1": "n/a"}, "val_f1"), ({"epochs": 2.5}, "epochs"), ({"best_metric": "high"}, "best")):
        with pytest.raises(StoreError, match=f"column '{column}") as e:
            store.append("runs", [run_row("b", **bad)])
        assert "\n" not in str(e.value) and "nothing written" in str(e.value)
    assert store.delta("runs").version() == version and store.df("runs")["run_id"].tolist() == ["a"]
    store.append("runs", [run_row("c", val_f1=1)])  # an int into a double column: exact, so widened
    store.append("runs", [run_row("d", note=0.25)])  # the all-null column written before took double
    df = Store(store.uri).df("runs").set_index("run_id")
    assert df.loc["c", "val_f1"] == 1.0 and df["val_f1"].dtype == "float64" and df.loc["d", "note"] == 0.25


def test_recording_a_run_twice_replaces_its_rows_in_both_tables(tmp_path):
    store = Store(tmp_path / "store")
    store.record_run(epoch_rows("r", n=3), run_row("r", epochs=3))
    first = store.df("runs")["record_id"].iloc[0]
    assert store.record_run(epoch_rows("r", n=2), run_row("r", epochs=2))  # a later recording, fewer epochs
    epochs, runs = store.df("epochs"), store.df("runs")
    assert sorted(epochs["epoch"]) == [1, 2] and runs["epochs"].tolist() == [2]
    assert set(epochs["record_id"]) == set(runs["record_id"]) and runs["record_id"].iloc[0] > first
    history = [c["operation"] for c in store.versions("epochs")]
    assert history == ["WRITE", "WRITE"]  # the replacement was one commit: no version showed 0 or 5 rows


def test_concurrent_recorders_of_one_run_leave_one_whole_recording_in_each_table(tmp_path):
    """Four processes record run 'r' 5 times each, each with its own epoch count. Each table must hold
    exactly one recording (no rows added, none mixed), and both tables the same one once they all return."""
    Store(tmp_path / "store").record_run(epoch_rows("other"), run_row("other"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", recorder_code(), str(tmp_path / "store"), str(n), "5"], env=env)
        for n in (2, 3, 4, 5)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0, 0]
    store = Store(tmp_path / "store")
    epochs = store.df("epochs", filter=None)
    mine, runs = epochs[epochs["run_id"] == "r"], store.df("runs")
    n = int(runs[runs["run_id"] == "r"]["epochs"].iloc[0])
    assert len(runs) == 2 and sorted(mine["epoch"]) == list(range(1, n + 1))
    assert set(mine["train_loss"]) == {float(n)} and mine["record_id"].nunique() == 1
    assert mine["record_id"].iloc[0] == runs[runs["run_id"] == "r"]["record_id"].iloc[0]
    assert len(epochs[epochs["run_id"] == "other"]) == 3
    assert [f for f in store.check() if f["kind"] == "record_pending"] == []


def test_an_earlier_recording_never_replaces_a_later_one(tmp_path):
    store = Store(tmp_path / "store")
    store.record_run(epoch_rows("r", n=3), run_row("r", epochs=3))
    from jobs.store import engine

    later = store.df("runs")["record_id"].iloc[0]
    real_now = engine.now
    engine.now = lambda: real_now() - dt.timedelta(hours=1)  # a recorder whose recording is older
    try:
        assert store.record_run(epoch_rows("r", n=1), run_row("r", epochs=1)) is False
    finally:
        engine.now = real_now
    assert store.df("runs")["record_id"].tolist() == [later] and len(store.df("epochs")) == 3


def test_replace_is_idempotent_for_a_jobs_final_row(tmp_path):
    store = Store(tmp_path / "store")
    row = {"submission_id": "mlp-train-1", "workload": "mlp", "status": "failed", "message": "boom"}
    store.append("jobs", [{**row, "status": "submitted"}])
    key = {"submission_id": "mlp-train-1", "status": "failed"}
    store.replace("jobs", [row], key=key)
    store.replace("jobs", [row], key=key)
    assert sorted(store.df("jobs")["status"]) == ["failed", "submitted"]
    with pytest.raises(StoreError, match="does not match its key"):
        store.replace("jobs", [{**row, "status": "stopped"}], key=key)


def test_as_of_reads_a_version_and_a_time_and_refuses_writes(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("a")])
    time.sleep(1.1)  # commit timestamps are in ms; a clear gap between the two versions
    between = dt.datetime.now(dt.UTC)
    time.sleep(1.1)
    store.append("runs", [run_row("b")])
    assert Store(store.uri, as_of=0).df("runs")["run_id"].tolist() == ["a"]
    assert Store(store.uri, as_of="0").leaderboard()["run_id"].tolist() == ["a"]
    assert Store(store.uri, as_of=between.isoformat()).df("runs")["run_id"].tolist() == ["a"]
    assert sorted(Store(store.uri, as_of="1").df("runs")["run_id"]) == ["a", "b"]
    assert len(Store(store.uri, as_of="2020-01-01").df("runs")) == 0  # before the table existed: empty
    with pytest.raises(StoreError, match="versions 0-1"):
        Store(store.uri, as_of=7).df("runs")
    with pytest.raises(StoreError, match="read-only"):
        Store(store.uri, as_of=0).append("runs", [run_row("c")])
    with pytest.raises(StoreError, match="--as-of 'last tuesday'"):
        Store(store.uri, as_of="last tuesday")


def test_compact_command_merges_files_and_keeps_every_row(tmp_path):
    store = Store(tmp_path / "store")
    for i in range(6):
        store.append("epochs", epoch_rows(f"r{i}", "mlp" if i % 2 else "cnn", val_f1=0.5 if i > 3 else None))
    summary = store.compact()
    assert {(s["partition"], s["files_before"], s["files_after"]) for s in summary} == {
        ("workload=cnn", 3, 1),
        ("workload=mlp", 3, 1),
    }
    df = Store(store.uri).df("epochs")
    assert len(df) == 18 and df["val_f1"].notna().sum() == 6
    store.append("epochs", epoch_rows("late"))
    assert len(Store(store.uri).df("epochs")) == 21
    assert len(Store(store.uri, as_of=5).df("epochs")) == 18  # time travel to before the compaction


# ----------------------------------------------------------------------------- maintenance: delta-rs's, or one at a time
def log_actions(table_dir: Path, version: int) -> list[dict]:
    return [json.loads(line) for line in (table_dir / "_delta_log" / f"{version:020d}.json").read_text().splitlines()]


def test_writers_only_write_and_delta_rs_checkpoints_by_the_table_properties(tmp_path):
    """A writer commits and returns: no thread, no compaction. Tables carry delta.checkpointInterval and the
    log-cleanup properties, so delta-rs's post-commit hook checkpoints; a table made without them gets them on its
    next write; a new reader loads from the checkpoint."""
    from deltalake import write_deltalake

    from jobs.store.engine import CHECKPOINT_INTERVAL, TABLE_PROPERTIES

    threads = set(threading.enumerate())  # other tests of this process may have left theirs
    store = Store(tmp_path / "store", compact_after=2)
    runs = CHECKPOINT_INTERVAL + 2
    for i in range(runs):
        store.record_run(epoch_rows(f"r{i}"), run_row(f"r{i}"))
    assert set(threading.enumerate()) <= threads  # a writing process starts no thread
    assert len(store.files("epochs")) == runs  # and compacts nothing: that is compact_if_due's, elsewhere
    assert "COMPACT" not in [c["operation"] for c in store.versions("epochs", limit=None)]
    for table in ("epochs", "runs"):
        log = tmp_path / "store" / table / "_delta_log"
        assert store.delta(table).metadata().configuration == TABLE_PROPERTIES
        assert list(log.glob("*.checkpoint.parquet")) and (log / "_last_checkpoint").exists()
    fresh = Store(store.uri)
    assert len(fresh.df("epochs")) == 3 * runs and len(fresh.df("runs")) == runs
    write_deltalake(str(tmp_path / "old"), to_arrow_rows("runs", [run_row("a")]), partition_by=["workload"])
    old = Store(tmp_path)
    assert old.delta("old").metadata().configuration == {}
    old.append("old", [run_row("b")])
    assert old.delta("old").metadata().configuration == TABLE_PROPERTIES and len(old.df("old")) == 2


def to_arrow_rows(table: str, rows: list[dict]):
    from jobs.store.schema import to_arrow

    return to_arrow(table, rows)


def test_compact_if_due_compacts_a_partition_past_its_threshold_as_no_data_change(tmp_path):
    """The end of a job compacts its partition once it holds compact_after files; delta-rs's rewrite commits with
    dataChange=false (a streaming reader does not read the rows again); every row stays once; other partitions
    and tables below the threshold are left alone."""
    from jobs.store import compact_if_due

    store = Store(tmp_path / "store", compact_after=5)
    store.append("runs", [run_row(f"old{i}", "cnn") for i in range(3)])
    for i in range(4):
        store.record_run(epoch_rows(f"r{i}"), run_row(f"r{i}"))
    assert compact_if_due(store, "mlp") == []  # 4 files: not due
    store.record_run(epoch_rows("r4"), run_row("r4"))
    done = compact_if_due(store, "mlp")
    assert {(s["table"], s["files_before"], s["files_after"]) for s in done} == {("epochs", 5, 1), ("runs", 5, 1)}
    version = store.delta("epochs").version()
    actions = log_actions(tmp_path / "store" / "epochs", version)
    changes = [(kind, a[kind]["dataChange"]) for a in actions for kind in ("add", "remove") if kind in a]
    assert sorted(changes) == [("add", False)] + [("remove", False)] * 5
    assert store.versions("epochs", 1)[0]["operation"] == "COMPACT"
    fresh = Store(store.uri)
    assert len(fresh.df("epochs")) == 15 and fresh.df("epochs").groupby("run_id").size().eq(3).all()
    assert sorted(fresh.df("runs")["run_id"]) == sorted([f"old{i}" for i in range(3)] + [f"r{i}" for i in range(5)])
    assert len([f for f in fresh.files("runs") if "workload=cnn" in f]) == 1
    assert store.record_run(epoch_rows("r2", n=1), run_row("r2", epochs=1))  # a re-recording after it replaces
    assert len(Store(store.uri).df("epochs")) == 13


def test_a_compaction_never_lands_over_a_re_recording_and_keeps_appends(tmp_path):
    """delta-rs refuses a compaction planned before a run's re-recording committed ("a concurrent transaction
    deleted data this operation read"): the replaced rows never come back. Over a blind append it lands and
    the appended file stays."""
    from deltalake.exceptions import CommitFailedError

    store = Store(tmp_path / "store")
    for i in range(4):
        store.record_run(epoch_rows(f"r{i}"), run_row(f"r{i}"))
    snapshot = Store(store.uri).delta("epochs")
    store.record_run(epoch_rows("r1", n=1), run_row("r1", epochs=1))
    with pytest.raises(CommitFailedError, match="deleted data"):
        snapshot.optimize.compact()
    assert len(Store(store.uri).df("epochs")) == 10
    snapshot = Store(store.uri).delta("epochs")
    store.append("epochs", epoch_rows("new", n=2))
    snapshot.optimize.compact()
    rows = Store(store.uri).df("epochs")
    assert len(rows) == 12 and rows.groupby("run_id").size().to_dict() == {"new": 2, "r0": 3, "r1": 1, "r2": 3, "r3": 3}
    assert len(Store(store.uri).files("epochs")) == 2


def test_delta_rs_double_commits_two_compactions_and_the_lease_prevents_it(tmp_path):
    """delta-rs 1.6.6: two optimize.compact calls planned on the same snapshot both commit, and every row then reads
    twice. If this assertion fails, delta-rs fixed it: the lease may then go (jobs/store/maintenance.py).
    Through the store, two compactors in two processes at once: the lease lets one compact, the other skips."""
    from deltalake import DeltaTable

    bare = Store(tmp_path / "bare")
    for i in range(10):
        bare.append("epochs", epoch_rows(f"r{i}"))
    first, second = DeltaTable(bare.table_uri("epochs")), DeltaTable(bare.table_uri("epochs"))
    first.optimize.compact()
    second.optimize.compact()
    assert len(Store(bare.uri).df("epochs")) == 2 * 30, "delta-rs no longer double-commits compactions"

    store = Store(tmp_path / "leased", compact_after=2)
    for i in range(40):
        store.append("epochs", epoch_rows(f"r{i}"))
    code = "import sys, json; from jobs.store import Store; print(json.dumps(Store(sys.argv[1]).compact(['epochs'])))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", code, store.uri], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    fresh = Store(store.uri)
    assert len(fresh.df("epochs")) == 120 and len(fresh.files("epochs")) == 1, outs
    compactions = [c for c in fresh.versions("epochs", limit=None) if c["operation"] == "COMPACT"]
    assert len(compactions) == 1 and not list((tmp_path / "leased" / "epochs").glob("_compaction.lease"))


def test_the_lease_admits_one_compactor_and_expires(tmp_path):
    from jobs.store import maintenance

    store = Store(tmp_path / "store", compact_after=2)
    for i in range(3):
        store.append("epochs", epoch_rows(f"r{i}"))
    with maintenance.lease(store, "epochs") as held:
        assert held
        with maintenance.lease(store, "epochs") as second:
            assert not second  # another compactor, here or in any process, holds it
        assert store.compact() == [
            {"table": "epochs", "partition": "workload=mlp", "files_before": 3, "files_after": None, "version": 2}
        ]
    assert len(store.files("epochs")) == 3  # it skipped: nothing compacted, nothing lost
    lease = tmp_path / "store" / "epochs" / maintenance.LEASE
    lease.write_text("a compactor that crashed")
    with maintenance.lease(store, "epochs") as held:
        assert not held  # a young lease holds
    old = time.time() - maintenance.LEASE_S - 1
    os.utime(lease, (old, old))
    assert store.compact()[0]["files_after"] == 1  # an expired one is taken over
    assert not lease.exists() and len(store.df("epochs")) == 9


def test_vacuum_keeps_a_week_unless_told_otherwise(tmp_path):
    store = Store(tmp_path / "store")
    for i in range(3):
        store.append("epochs", epoch_rows(f"r{i}"))
    store.compact()
    assert store.vacuum() == [{"table": "epochs", "files_removed": 0}]  # the replaced files are minutes old
    assert len(Store(store.uri, as_of=0).df("epochs")) == 3
    assert store.vacuum(retention_hours=0) == [{"table": "epochs", "files_removed": 3}]
    assert len(list((tmp_path / "store/epochs").glob("workload=*/*.parquet"))) == 1 and len(store.df("epochs")) == 9


def test_check_reports_orphan_lost_and_non_delta_files(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("a")])
    orphan = tmp_path / "store/runs/workload=mlp/part-killed-writer.parquet"
    pq.write_table(pa.table({"x": [1]}), orphan)
    (tmp_path / "store/old").mkdir()
    assert {f["kind"] for f in store.check()} == {"in_progress", "not_delta"}  # a young file: maybe a writer
    findings = store.check(older_than_s=0)
    assert {(f["kind"], f["path"]) for f in findings if f["kind"] == "orphan_file"} == {
        ("orphan_file", "workload=mlp/part-killed-writer.parquet")
    }
    store.check(fix=True, older_than_s=0)
    assert not orphan.exists() and len(store.df("runs")) == 1
    lost = Path(store.files("runs")[0].removeprefix("file://"))
    lost.unlink()
    assert [f["kind"] for f in Store(store.uri).check() if f["kind"] != "not_delta"] == ["missing_file"]


def test_polars_duckdb_and_pandas_read_the_store_without_project_code(tmp_path):
    store = Store(tmp_path / "store")
    store.record_run(epoch_rows("a"), run_row("a"))
    store.record_run(epoch_rows("b", "cnn", n=5), run_row("b", "cnn"))
    path = str(tmp_path / "store" / "epochs")

    import duckdb
    import polars as pl
    from deltalake import DeltaTable

    assert pl.read_delta(path).group_by("workload").len().sort("workload").rows() == [("cnn", 5), ("mlp", 3)]
    data = DeltaTable(path).to_pyarrow_dataset()  # noqa: F841 - DuckDB finds it by its Python name
    assert duckdb.sql("SELECT count(*) FROM data WHERE workload = 'cnn'").fetchall() == [(5,)]
    assert len(DeltaTable(str(tmp_path / "store" / "runs")).to_pandas()) == 2


def test_delta_reads_leave_the_interpreter_free_to_exit(tmp_path):
    """The pyarrow exit abort ("terminate called without an active exception", exit -6) hit Parquet readers
    under load and was seen after a Delta read too: concurrent store readers must all exit with their code."""
    store = Store(tmp_path / "store")
    store.record_run(epoch_rows("a"), run_row("a"))
    code = (
        "import sys; from jobs.store import Store; s = Store(sys.argv[1]); "
        "assert len(s.df('epochs')) == 3 and s.sql('SELECT count(*) AS n FROM runs')['n'][0] == 1; sys.exit(3)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def one(_):
        p = subprocess.run(
            [sys.executable, "-c", code, store.uri], capture_output=True, text=True, env=env, timeout=300
        )
        return p.returncode, p.stderr.strip()[-200:]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(12)))
    bad = [r for r in results if r[0] != 3]
    assert not bad, f"{len(bad)}/12 readers did not exit cleanly: {bad[:3]}"


def test_the_store_cli_imports_no_torch_and_no_training_code(tmp_path):
    store = Store(tmp_path / "store")
    store.record_run(epoch_rows("a"), run_row("a"))
    code = (
        "import sys, time; t = time.process_time(); from jobs.store.cli import main; "
        "main(['--store', sys.argv[1], 'leaderboard']); "
        "heavy = [m for m in ('torch', 'ray', 'jobs.config', 'jobs.train', 'jobs.loop', 'workloads') if m in sys.modules]; "
        "print('heavy', heavy, 'cpu_s %.2f' % (time.process_time() - t))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, store.uri],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    print(f"\n`jobs.store leaderboard` in-process: {last}")
    assert last.startswith("heavy []"), last


def test_a_commit_reported_failed_after_it_landed_is_not_made_again(tmp_path, monkeypatch):
    """delta-rs lists the log after its commit; a listing that raced other writers' commits fails with
    "Expected ordered contiguous commit files" although the commit landed. The store finds its commit's token
    and does not append the rows a second time; a failure before the commit is retried and commits once."""
    import deltalake

    store = Store(tmp_path / "store")
    store.append("epochs", epoch_rows("a"))
    real, calls = deltalake.write_deltalake, []
    race = deltalake.exceptions.DeltaError("Generic delta kernel error: Expected ordered contiguous commit files [...]")

    def after_commit(*args, **kwargs):  # the commit lands, then the post-commit refresh "races"
        calls.append("after")
        real(*args, **kwargs)
        raise race

    monkeypatch.setattr(deltalake, "write_deltalake", after_commit)
    store.append("epochs", epoch_rows("b"))
    assert calls == ["after"] and len(store.df("epochs")) == 6  # one commit, rows once

    def before_commit(*args, **kwargs):  # the first attempt fails before committing, the retry commits
        calls.append("before")
        if calls.count("before") == 1:
            raise race
        real(*args, **kwargs)

    monkeypatch.setattr(deltalake, "write_deltalake", before_commit)
    store.record_run(epoch_rows("c"), run_row("c"))
    monkeypatch.setattr(deltalake, "write_deltalake", real)
    fresh = Store(store.uri)
    assert len(fresh.df("epochs")) == 9 and len(fresh.df("runs")) == 1
    writes = [c["operation"] for c in fresh.versions("epochs", limit=None) if c["operation"] == "WRITE"]
    assert len(writes) == 3  # a, b, c: nothing committed twice


def test_a_writer_that_found_no_table_lands_in_the_one_another_writer_created_first(tmp_path, monkeypatch):
    """Two trials of a sweep that end together both find no `runs` table; the other one creates it first, with
    fewer columns (a trial stopped early has no test metrics). The late writer's rows must land in that table with
    their extra columns merged, not fail with "Cannot cast schema, number of fields does not match" (seen in CI:
    the sweep then recorded a trial that had trained well as failed)."""
    import deltalake

    uri = tmp_path / "store"
    real, calls = deltalake.write_deltalake, []
    early = {"run_id": "b", "workload": "mlp", "status": "stopped_early"}

    def other_writer_first(target, *args, **kwargs):
        if not calls and isinstance(target, str) and target.endswith("/runs"):  # its create of `runs`: the other wins
            calls.append("create")
            Store(uri).append("runs", [early])
        return real(target, *args, **kwargs)

    monkeypatch.setattr(deltalake, "write_deltalake", other_writer_first)
    assert Store(uri).record_run(epoch_rows("a"), run_row("a", test_accuracy=0.75))
    monkeypatch.setattr(deltalake, "write_deltalake", real)
    assert calls == ["create"]
    runs = Store(uri).df("runs").set_index("run_id")
    assert sorted(runs.index) == ["a", "b"] and runs.loc["a", "test_accuracy"] == 0.75
    assert (
        runs.loc["b", "status"] == "stopped_early" and runs.loc["b", "test_accuracy"] != runs.loc["b", "test_accuracy"]
    )
    assert len(Store(uri).df("epochs")) == 3
