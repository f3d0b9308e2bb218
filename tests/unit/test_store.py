"""The Delta Lake store without Ray: commits, run records, schema, time travel, maintenance, migrate, readers."""

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


def test_plot_writes_curves_and_a_sweep_plot(tmp_path):
    store = Store(tmp_path / "store")
    space = {"train.lr": {"loguniform": [1e-4, 1e-1]}, "model.hidden1": {"choice": [64, 128]}}
    for i, (lr, hidden, status) in enumerate(
        [(1e-3, 64, "completed"), (1e-2, 128, "stopped_early"), (3e-4, 128, "completed")]
    ):
        n = 2 if status == "stopped_early" else 4
        store.append(
            "runs",
            [run_row(f"t{i}", best=0.5 + 0.1 * i, lr=lr, sweep_id="sw1", status=status, **{"model.hidden1": hidden})],
        )
        store.append("epochs", epoch_rows(f"t{i}", n=n, sweep_id="sw1"))
    store.append("sweeps", [{"sweep_id": "sw1", "workload": "mlp", "search_space_json": json.dumps(space)}])
    paths = store.plot(sweep_id="sw1", out=str(tmp_path / "plots"))
    assert [Path(p).name for p in paths] == ["curves-sw1.png", "sweep-sw1.png"]
    for p in paths:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 10_000
    assert (
        Path(store.plot(out=str(tmp_path / "plots"))[0]).name == "curves-mlp.png"
    )  # default: the leaderboard's top runs


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


def test_writers_compact_and_checkpoint_a_partition_on_their_own(tmp_path):
    store = Store(tmp_path / "store", compact_after=8)
    for i in range(20):
        store.append("epochs", epoch_rows(f"r{i}", "mlp" if i % 2 else "cnn"))
    store.wait_for_maintenance()  # the writer compacts in its maintenance thread, after the append returned
    files = store.files("epochs")
    assert len(files) < 20 and len(store.df("epochs")) == 60  # compacted: fewer files, every row
    assert "COMPACT" in [c["operation"] for c in store.versions("epochs", limit=None)]
    assert list((tmp_path / "store/epochs/_delta_log").glob("*.checkpoint.parquet"))
    assert [f for f in store.check() if f["kind"] != "many_files"] == []


def test_writers_checkpoint_the_log_every_few_commits_and_a_new_reader_loads_from_it(tmp_path):
    """The store's writers checkpoint every CHECKPOINT_INTERVAL commits (not delta-rs's 100): a handle's writes
    cost more the more commits it applied after its checkpoint. One checkpoint per interval, whoever committed it,
    written by its checkpoint thread; the writer's handle is then loaded from it."""
    from jobs.store.engine import CHECKPOINT_INTERVAL as every
    from jobs.store.engine import checkpoint_phase

    store = Store(tmp_path / "store", compact_after=10**6)  # no compaction: only the writers' own checkpoints
    runs = 2 * every + 3
    for i in range(runs):
        store.record_run(epoch_rows(f"r{i}"), run_row(f"r{i}"))
    store.wait_for_maintenance()  # the maintenance thread writes the checkpoints, after the write returned
    for table in ("epochs", "runs"):
        log = tmp_path / "store" / table / "_delta_log"
        due = [v for v in range(runs) if v and (v + checkpoint_phase(table)) % every == 0]
        assert sorted(int(p.name.split(".")[0]) for p in log.glob("*.checkpoint.parquet")) == due and len(due) >= 2
        assert json.loads((log / "_last_checkpoint").read_text())["version"] == due[-1]
        assert store.delta(table) is not None and store._loaded_at[table] >= due[-1]  # the writer's handle moved on
    assert checkpoint_phase("epochs") != checkpoint_phase("runs")  # a record never pays for two checkpoints
    fresh = Store(store.uri)
    assert len(fresh.df("epochs")) == 3 * runs and sorted(fresh.df("runs")["run_id"]) == sorted(
        f"r{i}" for i in range(runs)
    )
    assert store.record_run(epoch_rows("r0", n=2), run_row("r0", epochs=2))  # a re-recording still replaces
    assert len(Store(store.uri).df("epochs")) == 3 * runs - 1


def test_a_compaction_never_lands_over_a_commit_that_removed_data_since_its_snapshot(tmp_path):
    """A compaction removes exactly the files it read and adds the merged one (``create_write_transaction``). Planned
    on a snapshot, it must not land over a re-recording or another compaction committed meanwhile (either would
    bring back replaced rows or read every row twice), and must land over blind appends, keeping their files."""
    from deltalake.exceptions import CommitFailedError

    from jobs.store.engine import Engine

    def partition(name: str) -> Engine:
        store = Store(tmp_path / name, compact_after=10**6)  # nothing compacted but by this test
        for i in range(4):
            store.record_run(epoch_rows(f"r{i}"), run_row(f"r{i}"))
        return store

    def compacts(store: Engine, meanwhile) -> bool:
        snapshot = Engine(store.uri).delta("epochs")
        meanwhile(store)
        try:
            Engine(store.uri)._compact_partition(snapshot, "mlp")
            return True
        except CommitFailedError:
            return False

    appended = partition("append")
    assert compacts(appended, lambda s: s.append("epochs", epoch_rows("new", n=2)))
    rows = Store(appended.uri).df("epochs")
    assert len(rows) == 14 and rows.groupby("run_id").size().to_dict() == {"new": 2, "r0": 3, "r1": 3, "r2": 3, "r3": 3}
    assert len(Store(appended.uri).files("epochs")) == 2  # the merged file and the append's

    recorded = partition("rerecord")
    assert not compacts(recorded, lambda s: s.record_run(epoch_rows("r1", n=1), run_row("r1", epochs=1)))
    assert len(Store(recorded.uri).df("epochs")) == 10  # r1's new recording only, the old rows not brought back

    twice = partition("twice")
    assert not compacts(twice, lambda s: Engine(s.uri)._compact_partition(Engine(s.uri).delta("epochs"), "mlp"))
    assert len(Store(twice.uri).df("epochs")) == 12 and len(Store(twice.uri).files("epochs")) == 1
    assert not [f for f in (tmp_path / "twice" / "epochs").rglob("*.parquet") if "compact" in f.name][
        1:
    ]  # the loser's file deleted


def test_a_compaction_of_many_runs_keeps_every_row_once(tmp_path):
    store = Store(tmp_path / "store", compact_after=30)
    store.append("runs", [run_row(f"old{i}", "cnn") for i in range(3)])  # another partition, untouched
    for i in range(30):
        store.record_run(epoch_rows(f"r{i:02d}"), run_row(f"r{i:02d}"))
    store.wait_for_maintenance()
    compactions = [c for c in store.delta("runs").history() if c.get("perennial.operation") == "COMPACT"]
    assert compactions
    fresh = Store(store.uri)
    runs, epochs = fresh.df("runs"), fresh.df("epochs")
    assert sorted(runs["run_id"]) == sorted([f"old{i}" for i in range(3)] + [f"r{i:02d}" for i in range(30)])
    assert len(epochs) == 90 and epochs.groupby("run_id").size().eq(3).all()
    assert len([f for f in fresh.files("runs") if "workload=mlp" in f]) < 30


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


def write_old_store(root: Path) -> dict[str, int]:
    """A store in the pre-Delta layout: per-workload files, a compacted file naming the two it replaced
    (still present, as after a compaction that died), a temp file, a column that later became double."""
    rows = {}

    def put(table, workload, name, data, replaces=None):
        folder = root / table / f"workload={workload}"
        folder.mkdir(parents=True, exist_ok=True)
        t = pa.table(data)
        if replaces:
            t = t.replace_schema_metadata({b"perennial.replaces": json.dumps(replaces).encode()})
        pq.write_table(t, folder / name)

    put("runs", "mlp", "a.parquet", {"run_id": ["a"], "best_metric": [0.5], "train.lr": [1]})
    put("runs", "mlp", "b.parquet", {"run_id": ["b"], "best_metric": [0.6], "train.lr": [0.01]})
    put("runs", "cnn", "c.parquet", {"run_id": ["c"], "best_metric": [None], "status": ["failed"]})
    rows["runs"] = 3
    put("epochs", "mlp", "1.parquet", {"run_id": ["a", "a"], "epoch": [1, 2]})
    put("epochs", "mlp", "2.parquet", {"run_id": ["b"], "epoch": [1]})
    put(
        "epochs",
        "mlp",
        "x-compacted.parquet",
        {"run_id": ["a", "a", "b"], "epoch": [1, 2, 1]},
        ["1.parquet", "2.parquet"],
    )
    put("epochs", "mlp", "3.parquet", {"run_id": ["c"], "epoch": [1], "val_f1": [0.7]})
    (root / "epochs/workload=mlp/.4.parquet.tmp").write_bytes(b"torn")
    rows["epochs"] = 4
    return rows


def test_migrate_converts_an_old_store_in_place_and_keeps_the_old_files(tmp_path):
    root = tmp_path / "store"
    expected = write_old_store(root)
    old_files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    from jobs.store.migrate import migrate

    summary = {s["table"]: s for s in migrate(str(root))}
    store = Store(root)
    assert {t: len(store.df(t)) for t in ("runs", "epochs")} == expected == {t: s["rows"] for t, s in summary.items()}
    runs = store.df("runs").set_index("run_id")
    assert runs.loc["a", "train.lr"] == 1.0 and runs.loc["c", "status"] == "failed"
    assert sorted(store.df("epochs")["run_id"]) == ["a", "a", "b", "c"]
    moved = sorted(p.relative_to(root / "_legacy").as_posix() for p in (root / "_legacy").rglob("*") if p.is_file())
    assert moved == old_files  # every old file kept, none left among the Delta files
    assert store.check() == []
    with pytest.raises(StoreError, match="nothing to migrate"):
        migrate(str(root))
    store.record_run(epoch_rows("d"), run_row("d"))  # a migrated table takes new records (record_id merges in)
    assert len(Store(root).df("runs")) == 4


def test_migrate_refuses_a_file_whose_column_type_conflicts_and_changes_nothing(tmp_path):
    root = tmp_path / "store"
    write_old_store(root)
    pq.write_table(pa.table({"run_id": ["z"], "best_metric": ["n/a"]}), root / "runs/workload=mlp/z.parquet")
    from jobs.store.migrate import migrate

    with pytest.raises(StoreError, match="z.parquet"):
        migrate(str(root))
    assert not (root / "runs/_delta_log").exists() and (root / "runs/workload=mlp/a.parquet").exists()


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a per-thread nice value is Linux's")
def test_the_maintenance_thread_runs_at_low_priority_and_the_writer_does_not():
    """A compaction takes the cores the writes leave idle: only the maintenance thread's nice value changes."""
    from jobs.store.engine import MAINTENANCE_NICE, _lower_thread_priority

    before, seen = os.getpriority(os.PRIO_PROCESS, 0), []

    def maintenance():
        _lower_thread_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, 0))

    thread = threading.Thread(target=maintenance)
    thread.start()
    thread.join()
    assert seen == [max(before, MAINTENANCE_NICE)] and os.getpriority(os.PRIO_PROCESS, 0) == before


def test_a_writer_waits_for_a_maintenance_thread_that_fell_behind(tmp_path, monkeypatch):
    """The maintenance thread runs at low priority; on a busy machine a writer could outrun it. Once a partition
    holds BACKLOG x compact_after small files, the writer waits for the thread: the file count stays bounded."""
    from jobs.store.engine import BACKLOG, Engine, _small_files

    slow = Engine._maintain

    def behind(self, *args):
        time.sleep(0.5)  # a starved thread
        return slow(self, *args)

    monkeypatch.setattr(Engine, "_maintain", behind)
    store, most = Store(tmp_path / "store", compact_after=2), 0
    for i in range(4 * BACKLOG):
        store.append("epochs", epoch_rows(f"r{i:02d}", n=1))
        most = max(most, len(_small_files(store.actions(store.delta("epochs"), "epochs")).get("mlp", [])))
    store.wait_for_maintenance()
    assert most <= BACKLOG * 2 and len(store.df("epochs")) == 4 * BACKLOG


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


def test_a_compaction_starts_only_once_the_writes_paused(tmp_path, monkeypatch):
    """On a machine with few cores a compaction beside a write doubled the write's time: the maintenance thread
    starts each compaction only when no write of its Engine is in progress and the last one ended IDLE_S ago."""
    from jobs.store.engine import IDLE_S, Engine

    writes, starts = [], []
    commit, compact = Engine._commit, Engine._compact_partition

    def timed_commit(self, *args, **kwargs):
        began = time.monotonic()
        try:
            return commit(self, *args, **kwargs)
        finally:
            writes.append((began, time.monotonic()))

    def noted_compaction(self, *args, **kwargs):
        starts.append(time.monotonic())
        return compact(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "_commit", timed_commit)
    monkeypatch.setattr(Engine, "_compact_partition", noted_compaction)
    store = Store(tmp_path / "store", compact_after=3)
    for i in range(6):  # back to back: below the backlog at which a writer waits for the thread
        store.append("epochs", epoch_rows(f"r{i}", n=1))
    store.wait_for_maintenance()
    assert starts and len(store.df("epochs")) == 6
    for start in starts:
        before = [end for began, end in writes if began <= start]
        assert all(end <= start for began, end in writes if began <= start)  # no write in progress
        assert start - max(before) >= IDLE_S  # and the last one ended IDLE_S before
