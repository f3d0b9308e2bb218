"""The Parquet store without Ray: appends, schema evolution, type conflicts, compaction, queries, plots."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.errors import UserError
from jobs.store import COMPACTED_SUFFIX, Store, StoreError, StoreWarning

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


def test_round_trip_keeps_types_and_partitions(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("a"), run_row("b", "cnn", best=0.9)])
    df = store.df("runs")
    assert sorted(df["run_id"]) == ["a", "b"]
    assert dict(zip(df["run_id"], df["workload"])) == {"a": "mlp", "b": "cnn"}
    assert str(df["finished_at"].dt.tz) == "UTC" and df["best_metric"].dtype == "float64"
    assert len(store.files("runs")) == 2  # one file per workload
    assert store.df("runs", workload="cnn")["run_id"].tolist() == ["b"]
    assert store.tables() == ["runs"]


def test_empty_store_reads_as_empty_tables_with_core_columns(tmp_path):
    store = Store(tmp_path / "nothing")
    assert len(store.df("runs")) == 0 and "best_metric" in store.df("runs").columns
    assert len(store.leaderboard()) == 0
    assert store.sql("SELECT count(*) AS n FROM jobs")["n"].tolist() == [0]


def test_concurrent_appends_from_four_processes_lose_nothing(tmp_path):
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
    assert len(df) == 4 * 25 * 4
    assert df.groupby("run_id").size().eq(4).all() and df["run_id"].nunique() == 100
    assert not [p for p in (tmp_path / "store").rglob("*") if p.name.startswith(".")]  # no temp file left


def test_a_metric_added_later_is_read_alongside_old_files(tmp_path):
    store = Store(tmp_path / "store")
    store.append("epochs", epoch_rows("old"))
    store.append("epochs", epoch_rows("new", val_f1=0.7))
    df = store.df("epochs")
    assert len(df) == 6
    assert df[df["run_id"] == "new"]["val_f1"].eq(0.7).all()
    assert df[df["run_id"] == "old"]["val_f1"].isna().all()


def test_type_conflict_skips_the_offending_file_with_a_warning_and_check_names_it(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("a", val_f1=0.5)])
    store.append("runs", [run_row("b", val_f1=0.6)])
    bad = store.append("runs", [run_row("c", val_f1="n/a")])[0]  # a string where the table has doubles
    store.append("runs", [run_row("d", note=None)])  # all-null double column ...
    store.append("runs", [run_row("e", note="kept")])  # ... then strings: no conflict, nothing lost
    with pytest.warns(StoreWarning, match=r"left out .*column 'val_f1' is string"):
        df = Store(store.uri).df("runs")
    assert sorted(df["run_id"]) == ["a", "b", "d", "e"]
    notes = df.set_index("run_id")["note"]
    assert notes["e"] == "kept" and notes.drop("e").isna().all()
    conflicts = [f for f in store.check() if f["kind"] == "type_conflict"]
    assert [f["path"] for f in conflicts] == [bad] and "val_f1" in conflicts[0]["detail"]


def test_core_column_type_wins_a_conflict(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("a")])
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "store" / "runs" / "workload=mlp"
    for i in range(3):  # more files with a string best_metric than with the CORE double
        pq.write_table(
            pa.table({"run_id": [f"s{i}"], "status": ["completed"], "best_metric": ["0.9"]}), folder / f"x{i}.parquet"
        )
    with pytest.warns(StoreWarning, match="best_metric"):
        df = store.df("runs")
    assert df["run_id"].tolist() == ["a"] and df["best_metric"].dtype == "float64"


def test_unreadable_file_is_skipped_and_reported(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("a")])
    broken = tmp_path / "store" / "runs" / "workload=mlp" / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.warns(StoreWarning, match="unreadable"):
        assert store.df("runs")["run_id"].tolist() == ["a"]
    assert [f["path"] for f in store.check() if f["kind"] == "unreadable"] == [str(broken)]


def test_check_suggests_compaction_for_many_small_files(tmp_path, monkeypatch):
    import jobs.store

    monkeypatch.setattr(jobs.store, "SMALL_FILES", 3)
    store = Store(tmp_path / "store")
    for i in range(3):
        store.append("epochs", epoch_rows(f"r{i}"))
    assert [(f["kind"], f["table"]) for f in store.check()] == [("many_files", "epochs")]
    store.compact()
    assert store.check() == []


def test_check_fix_removes_old_temp_files_only(tmp_path):
    store = Store(tmp_path / "store")
    store.append("runs", [run_row("a")])
    folder = tmp_path / "store" / "runs" / "workload=mlp"
    old, young = folder / ".crashed.parquet.1234.tmp", folder / ".writing.parquet.5678.tmp"
    old.write_bytes(b"partial")
    young.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    findings = store.check(fix=True)
    assert {f["kind"]: f["fixed"] for f in findings} == {"temp_file": True, "in_progress": False}
    assert not old.exists() and young.exists()
    assert store.df("runs")["run_id"].tolist() == ["a"]


def test_compact_keeps_every_row_and_later_appends_stay_visible(tmp_path):
    store = Store(tmp_path / "store")
    for i in range(6):
        store.append("epochs", epoch_rows(f"r{i}", "mlp" if i % 2 else "cnn", val_f1=0.5 if i > 3 else None))
    before = store.df("epochs").sort_values(["run_id", "epoch"]).reset_index(drop=True)
    summary = store.compact()
    assert sorted((s["partition"], s["files_before"], s["files_after"], s["rows"]) for s in summary) == [
        ("workload=cnn", 3, 1, 9),
        ("workload=mlp", 3, 1, 9),
    ]
    after = Store(store.uri).df("epochs").sort_values(["run_id", "epoch"]).reset_index(drop=True)
    assert after[before.columns].equals(before)
    compacted = Store(store.uri).files("epochs")
    assert all(p.endswith(COMPACTED_SUFFIX) for p in compacted)
    assert [pq.read_metadata(p).num_row_groups for p in compacted] == [1, 1]  # not one row group per input
    store.append("epochs", epoch_rows("late"))
    assert len(Store(store.uri).df("epochs")) == 21
    assert store.compact()[0]["files_after"] == 1 and len(Store(store.uri).df("epochs")) == 21  # compacting again


def test_readers_ignore_inputs_a_compacted_file_replaces(tmp_path):
    """The moment between 'compacted file visible' and 'inputs deleted' (or a crash there): no duplicates."""
    store = Store(tmp_path / "store")
    for i in range(3):
        store.append("epochs", epoch_rows(f"r{i}"))
    inputs = [Path(p) for p in store.files("epochs")]
    saved = {p: p.read_bytes() for p in inputs}
    store.compact()
    for p, data in saved.items():  # as if the compactor died before deleting its inputs
        p.write_bytes(data)
    assert len(Store(store.uri).df("epochs")) == 9
    assert len(Store(store.uri).sql("SELECT * FROM epochs")) == 9
    leftovers = [f for f in store.check() if f["kind"] == "superseded"]
    assert sorted(f["path"] for f in leftovers) == sorted(map(str, inputs))
    store.check(fix=True)
    assert not any(p.exists() for p in inputs) and len(Store(store.uri).df("epochs")) == 9


def test_a_reader_whose_files_were_compacted_away_lists_again(tmp_path):
    store = Store(tmp_path / "store")
    for i in range(3):
        store.append("epochs", epoch_rows(f"r{i}"))
    reader = Store(store.uri)
    assert len(reader.df("epochs")) == 9  # the reader has listed and cached the small files
    Store(store.uri).compact()
    assert len(reader.df("epochs")) == 9


def test_compaction_lock_refuses_a_second_compactor(tmp_path):
    store = Store(tmp_path / "store")
    store.append("epochs", epoch_rows("r"))
    (tmp_path / "store" / "_compact.lock").write_text("123 earlier\n")
    with pytest.raises(StoreError, match="another compaction"):
        store.compact()


def test_a_fixed_name_append_is_idempotent(tmp_path):
    store = Store(tmp_path / "store")
    row = {"submission_id": "mlp-train-1", "workload": "mlp", "status": "failed", "message": "boom"}
    store.append("jobs", [row], name="mlp-train-1-final")
    store.append("jobs", [row], name="mlp-train-1-final")
    assert len(store.df("jobs")) == 1
    with pytest.raises(StoreError):
        store.append("jobs", [row], name="../escape")


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
