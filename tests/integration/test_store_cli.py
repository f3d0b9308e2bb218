"""`python -m jobs.store` as a user runs it: real subprocesses over a real Parquet store (no Ray needed)."""

from __future__ import annotations

import datetime as dt
import io
import json

import pandas as pd
import pytest
from conftest import base_env, run_job

from jobs.store import Store

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def filled(tmp_path):
    """Three mlp runs with epochs, one cnn run, and a file with a conflicting column type."""
    store = Store(tmp_path / "store")
    for i, (lr, best) in enumerate([(1e-3, 0.71), (3e-3, 0.83), (1e-2, 0.64)]):
        run_id = f"mlp-r{i}"
        config = {"workload": "mlp", "train": {"lr": lr, "epochs": 3}}
        store.append(
            "runs",
            [
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
                }
            ],
        )
        store.append(
            "epochs",
            [
                {"run_id": run_id, "workload": "mlp", "epoch": e, "train_loss": 2.0 / e, "val_accuracy": best - 0.1 / e}
                for e in (1, 2, 3)
            ],
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
    ):
        res = store_cli(filled, *args)
        assert res.returncode == 2, res.stderr
        assert needle in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_plot_writes_pngs(filled, tmp_path):
    res = store_cli(filled, "plot", "--workload", "mlp", "--out", str(tmp_path / "plots"))
    assert res.returncode == 0, res.stderr
    png = tmp_path / "plots" / "curves-mlp.png"
    assert res.stdout.split() == [str(png)] and png.read_bytes()[:4] == b"\x89PNG"


def test_check_names_a_conflict_then_compact_keeps_rows(filled):
    filled.append(
        "runs",
        [{"run_id": "bad", "workload": "mlp", "status": "completed", "best_metric": 0.5, "test_accuracy": "high"}],
    )
    res = store_cli(filled, "--format", "json", "check")
    assert res.returncode == 1
    findings = json.loads(res.stdout)
    assert [(f["kind"], f["table"]) for f in findings] == [("type_conflict", "runs")] and "test_accuracy" in findings[
        0
    ]["detail"]
    res = store_cli(filled, "leaderboard")  # the conflict does not break queries: the file is left out, loudly
    assert res.returncode == 0 and "warning: store table 'runs': left out" in res.stderr and "mlp-r1" in res.stdout
    res = store_cli(filled, "--format", "json", "compact")
    assert res.returncode == 0, res.stderr
    assert {(s["table"], s["partition"]): s["rows"] for s in json.loads(res.stdout)}[("epochs", "workload=mlp")] == 9
    assert len(Store(filled.uri).files("epochs")) == 1
    res = store_cli(filled, "--format", "json", "runs", "--workload", "mlp")
    assert sorted(r["run_id"] for r in json.loads(res.stdout)) == ["mlp-r0", "mlp-r1", "mlp-r2"]
