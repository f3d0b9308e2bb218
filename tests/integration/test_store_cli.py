"""`python -m jobs.store` as a user runs it: real subprocesses over a real Delta store (no Ray needed)."""

from __future__ import annotations

import datetime as dt
import io
import json
import time

import pandas as pd
import pytest
from conftest import base_env, run_job

from jobs.store import Store, StoreError

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def filled(tmp_path):
    """Three mlp runs with epochs (recorded as jobs.train records them) and one cnn run."""
    store = Store(tmp_path / "store")
    for i, (lr, best) in enumerate([(1e-3, 0.71), (3e-3, 0.83), (1e-2, 0.64)]):
        run_id = f"mlp-r{i}"
        config = {"workload": "mlp", "train": {"lr": lr, "epochs": 3}}
        store.record_run(
            [
                {"run_id": run_id, "workload": "mlp", "epoch": e, "train_loss": 2.0 / e, "val_accuracy": best - 0.1 / e}
                for e in (1, 2, 3)
            ],
            {
                "run_id": run_id,
                "workload": "mlp",
                "status": "completed",
                "metric": "val_accuracy",
                "mode": "max",
                "best_metric": best,
                "config_json": json.dumps(config),
                "train.lr": lr,
                "test_accuracy": best - 0.02,
                "finished_at": T0 + dt.timedelta(hours=i),
            },
        )
    store.append(
        "runs",
        [
            {
                "run_id": "cnn-r0",
                "workload": "cnn",
                "status": "completed",
                "metric": "val_accuracy",
                "mode": "max",
                "best_metric": 0.9,
                "finished_at": T0,
            }
        ],
    )
    return store


def store_cli(store: Store, *args: str):
    return run_job(["jobs.store", "--store", store.uri, *args], base_env(), timeout=300)


def test_leaderboard_formats_agree(filled):
    res = store_cli(filled, "--format", "json", "leaderboard", "--workload", "mlp", "--top", "2")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["rank"], r["run_id"]) for r in rows] == [(1, "mlp-r1"), (2, "mlp-r0")]
    res = store_cli(filled, "--format", "csv", "leaderboard")
    assert res.returncode == 0, res.stderr
    board = pd.read_csv(io.StringIO(res.stdout))
    assert board.groupby("workload")["run_id"].first().to_dict() == {"cnn": "cnn-r0", "mlp": "mlp-r1"}


def test_compare_and_history_and_sql(filled):
    res = store_cli(filled, "--format", "json", "compare", "mlp-r0", "mlp-r1")
    assert res.returncode == 0, res.stderr
    diff = {(r["section"], r["key"]): r for r in json.loads(res.stdout)}
    assert diff[("config", "train.lr")]["mlp-r1"] == "0.003"
    assert diff[("metric", "best_metric")]["delta"] == "+0.12"
    res = store_cli(
        filled, "--format", "csv", "sql", "SELECT run_id, max(epoch) AS last FROM epochs GROUP BY ALL ORDER BY 1"
    )
    assert res.returncode == 0, res.stderr
    assert pd.read_csv(io.StringIO(res.stdout)).values.tolist() == [["mlp-r0", 3], ["mlp-r1", 3], ["mlp-r2", 3]]
    res = store_cli(filled, "history", "mlp-r2")
    assert res.returncode == 0 and len(res.stdout.strip().splitlines()) == 4  # header + 3 epochs


def test_bad_input_is_one_line_and_exit_2(filled):
    for args, needle in (
        (["sql", "SELECT * FROM nope"], "tables: epochs, jobs, runs, sweeps"),
        (["compare", "mlp-r0", "missing"], "no run 'missing'"),
        (["runs", "--since", "someday"], "--since"),
        (["leaderboard", "--as-of", "someday"], "--as-of 'someday'"),
        (["leaderboard", "--as-of", "99"], "has versions 0-"),
        (["--as-of", "0", "vacuum"], "drop --as-of"),
        (["compact", "--table", "nope"], "no table 'nope'"),
    ):
        res = store_cli(filled, *args)
        assert res.returncode == 2, res.stderr
        assert needle in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_store_and_format_go_before_or_after_the_verb(filled):
    before = run_job(["jobs.store", "--store", filled.uri, "--format", "json", "leaderboard"], base_env())
    after = run_job(["jobs.store", "leaderboard", "--store", filled.uri, "--format", "json"], base_env())
    mixed = run_job(["jobs.store", "--format", "json", "leaderboard", "--top", "1", "--store", filled.uri], base_env())
    assert before.returncode == after.returncode == mixed.returncode == 0, before.stderr + after.stderr + mixed.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout) and len(json.loads(before.stdout)) == 4
    assert [r["run_id"] for r in json.loads(mixed.stdout)] == ["cnn-r0", "mlp-r1"]


def test_as_of_shows_the_leaderboard_as_it_was(filled):
    versions = json.loads(store_cli(filled, "--format", "json", "versions", "--table", "runs").stdout)
    before = max(v["version"] for v in versions)
    time.sleep(1.1)
    then = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(1.1)
    filled.record_run(
        [], {"run_id": "mlp-r9", "workload": "mlp", "status": "completed", "mode": "max", "best_metric": 0.99}
    )
    now_board = json.loads(store_cli(filled, "--format", "json", "leaderboard", "--workload", "mlp").stdout)
    assert now_board[0]["run_id"] == "mlp-r9"
    for as_of in (str(before), then):
        res = store_cli(filled, "--format", "json", "leaderboard", "--workload", "mlp", "--as-of", as_of)
        assert res.returncode == 0, res.stderr
        assert [r["run_id"] for r in json.loads(res.stdout)] == ["mlp-r1", "mlp-r0", "mlp-r2"]


def test_a_type_conflict_is_refused_then_compact_vacuum_and_check_run_clean(filled):
    bad = {"run_id": "bad", "workload": "mlp", "status": "completed", "best_metric": 0.5, "test_accuracy": "high"}
    with pytest.raises(StoreError, match="column 'test_accuracy'"):
        filled.append("runs", [bad])
    res = store_cli(filled, "--format", "json", "compact")
    assert res.returncode == 0, res.stderr
    summary = {(s["table"], s["partition"]): s for s in json.loads(res.stdout)}
    assert (
        summary[("epochs", "workload=mlp")]["files_before"] == 3
        and summary[("epochs", "workload=mlp")]["files_after"] == 1
    )
    assert len(Store(filled.uri).df("epochs")) == 9
    res = store_cli(filled, "--format", "json", "vacuum", "--dry-run")
    assert res.returncode == 0 and {r["table"] for r in json.loads(res.stdout)} == {"epochs", "runs"}, res.stderr
    res = store_cli(filled, "check")
    assert res.returncode == 0 and "no problems found" in res.stdout, res.stdout + res.stderr
    res = store_cli(filled, "--format", "json", "runs", "--workload", "mlp")
    assert sorted(r["run_id"] for r in json.loads(res.stdout)) == ["mlp-r0", "mlp-r1", "mlp-r2"]
