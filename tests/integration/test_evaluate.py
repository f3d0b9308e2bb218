"""ner and cnn under jobs.train on a real 2-worker Ray run, then jobs.evaluate re-scoring the stored run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import base_env, one_error_line, run_job

from jobs.store import Store


def train(ray_cluster, store_dir: Path, tmp_path: Path, config: str, *overrides: str) -> dict:
    res = run_job(
        [
            "jobs.train",
            "--config",
            config,
            "--smoke-test",
            "--store",
            str(store_dir),
            f"run.storage_path={tmp_path / 'runs'}",
            *overrides,
        ],
        ray_cluster.job_env(),
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = Store(store_dir).df("runs")
    assert len(runs) == 1
    return runs.iloc[0].to_dict()


def evaluate(store_dir: Path, run_id: str, *args: str):
    # 300 s: on a loaded CI machine a ner evaluate took more than 120 s (load average 40)
    return run_job(["jobs.evaluate", "--run", run_id, "--store", str(store_dir), *args], base_env(), timeout=300)


@pytest.mark.parametrize(
    "config, metric",
    [("configs/ner.yaml", "test_f1"), ("configs/cnn.yaml", "test_accuracy")],
)
def test_two_worker_smoke_run_then_evaluate_matches_the_stored_test_metric(
    ray_cluster, store_dir, tmp_path, config, metric
):
    run = train(ray_cluster, store_dir, tmp_path, config, "scaling.num_workers=2", "scaling.cpus_per_worker=1")
    assert run["status"] == "completed" and run["num_workers"] == 2 and run["epochs"] == 2
    epochs = Store(store_dir).history(run["run_id"])
    assert list(epochs["epoch"]) == [1, 2] and epochs[run["metric"]].notna().all()
    assert 0.0 <= run[metric] <= 1.0 and run["test_loss"] > 0.0
    res = evaluate(store_dir, run["run_id"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    evaluation = Store(store_dir).df("evaluations").iloc[0]
    assert evaluation["run_id"] == run["run_id"] and evaluation["split"] == "test"
    # the stored export is exactly what was tested: same metric, same loss (continuous: any weight change shows)
    assert evaluation[metric] == pytest.approx(run[metric], abs=1e-6)
    assert evaluation["test_loss"] == pytest.approx(run["test_loss"], rel=1e-5)
    assert f"{metric}" in res.stdout


def test_early_stop_restores_the_best_epoch_and_a_missing_run_or_export_exits_2(ray_cluster, store_dir, tmp_path):
    # 8x8 digits, many epochs, patience 1: val accuracy stops improving long before epoch 30
    run = train(
        ray_cluster,
        store_dir,
        tmp_path,
        "configs/cnn.yaml",
        "data.source=digits",
        "train.epochs=30",
        "train.patience=1",
        "train.lr=0.01",
        "scaling.cpus_per_worker=1",
    )
    assert run["status"] == "stopped_early" and run["best_epoch"] == run["epochs"] - 1
    history = Store(store_dir).history(run["run_id"]).set_index("epoch")
    res = evaluate(store_dir, run["run_id"], "--split", "val", "--no-record")
    assert res.returncode == 0, res.stderr[-3000:]
    rescored = float(next(line.split()[1] for line in res.stdout.splitlines() if line.strip().startswith("val_loss")))
    assert rescored == pytest.approx(history.loc[run["best_epoch"], "val_loss"], abs=1e-4)  # the best epoch's weights
    assert rescored != pytest.approx(history.loc[run["epochs"], "val_loss"], abs=1e-4)  # not the last epoch's
    assert "unknown run 'cnn-doesnotexist'" in one_error_line(evaluate(store_dir, "cnn-doesnotexist"))
    shutil.rmtree(run["export_uri"])
    assert "missing" in one_error_line(evaluate(store_dir, run["run_id"]))
    assert not Path(store_dir, "evaluations").exists()


def test_bad_conll_file_exits_2_before_ray_and_writes_nothing(store_dir, tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_text("EU B-ORG\nrejects VBZ O\n")
    res = run_job(
        ["jobs.train", "--config", "configs/ner.yaml", "--store", str(store_dir), f"data.train={bad}"],
        base_env(),
        timeout=120,
    )
    assert f"{bad}:2:" in one_error_line(res)
    assert not store_dir.exists()
