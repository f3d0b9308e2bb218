"""jobs.continual on a real Ray cluster: chained rounds from one parent, lineage in the store, exit 2 on a missing
model."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from conftest import one_error_line, run_job

from jobs.store import Store
from workloads.data import load_images


def test_rounds_chained_with_from_best_start_from_the_parents_weights(ray_cluster, store_dir, tmp_path):
    # round 2's "new data": the same digits with inverted pixels — a domain shift the round-1 model fails on
    arrays, _, _ = load_images("digits")
    (x, y), (xt, yt) = arrays["train"], arrays["test"]
    inverted = tmp_path / "inverted_digits.npz"
    np.savez(inverted, x_train=1.0 - x, y_train=y, x_test=1.0 - xt, y_test=yt)
    common = ["--smoke-test", "--store", str(store_dir)]
    runs_dir = f"run.storage_path={tmp_path / 'runs'}"

    r1 = run_job(
        ["jobs.train", "--config", "configs/mlp.yaml", *common, "data.source=digits", runs_dir], ray_cluster.job_env()
    )
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    r2 = run_job(
        [
            "jobs.continual",
            "--config",
            "configs/mlp.yaml",
            "--from",
            "best",
            *common,
            f"data.source={inverted}",
            "continual.replay_fraction=0.2",
            runs_dir,
        ],
        ray_cluster.job_env(),
    )
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]

    store = Store(store_dir)
    runs = store.df("runs").sort_values("finished_at")
    assert len(runs) == 2
    parent, child = runs.iloc[0], runs.iloc[1]
    assert child["parent_run_id"] == parent["run_id"] and child["round"] == 2 and child["run_id"] != parent["run_id"]
    assert child["data_fingerprint"] and child["data_fingerprint"] != parent["data_fingerprint"]
    assert child["parent_old_test_accuracy"] == parent["test_accuracy"]  # forgetting is measured against this
    assert math.isclose(child["gain"], child["test_accuracy"] - child["parent_new_test_accuracy"])
    assert math.isclose(child["forgetting"], parent["test_accuracy"] - child["old_test_accuracy"])
    assert child["gain"] > 0  # the parent is near chance on inverted digits; any training on them helps
    assert child["replay_samples"] > 0 and child["continual.replay_fraction"] == 0.2
    assert f"from run {parent['run_id']}" in r2.stdout and "gain" in r2.stdout

    lineage = run_job(["jobs.store", "--store", str(store_dir), "lineage", child["run_id"]], ray_cluster.job_env())
    assert lineage.returncode == 0, lineage.stderr[-2000:]
    lines = [ln for ln in lineage.stdout.splitlines() if ln.strip()]
    assert parent["run_id"] in lines[1] and child["run_id"] in lines[2] and lines[2].split()[0] == "2"

    # A child that trained from scratch would pass the checks above. A round with train.lr=0 on the parent's own
    # data does not: if (and only if) its weights start as the parent's export, its first-epoch val accuracy is the
    # parent's best, its test score is the parent's score on the new test split (parent_new_test_*), and its score
    # on the old test split is the parent's own (forgetting 0).
    r3 = run_job(
        ["jobs.continual", "--config", "configs/mlp.yaml", "--from", parent["run_id"], *common, "data.source=digits"]
        + [runs_dir, "train.lr=0", "train.epochs=1"],
        ray_cluster.job_env(),
    )
    assert r3.returncode == 0, r3.stdout[-3000:] + r3.stderr[-3000:]
    store = Store(store_dir)
    same = store.df("runs").sort_values("finished_at").iloc[-1]
    first = store.history(same["run_id"]).iloc[0]
    assert first["val_accuracy"] == parent["best_metric"]  # the parent's best epoch, not a random init
    assert same["continual.init_from"] == parent["export_uri"]  # recorded in the runs row
    assert same["parent_new_test_accuracy"] == same["test_accuracy"]  # the new test split, same weights
    assert same["old_test_accuracy"] == parent["test_accuracy"] and same["forgetting"] == 0.0
    assert same["gain"] == 0.0

    # the parent's checkpoint is gone: exit 2, one line, nothing written
    shutil.rmtree(Path(parent["export_uri"]).parent)
    before = sorted(p for p in Path(store_dir).rglob("*") if p.is_file())
    gone = run_job(
        [
            "jobs.continual",
            "--config",
            "configs/mlp.yaml",
            "--from",
            parent["run_id"],
            *common,
            f"data.source={inverted}",
            runs_dir,
        ],
        ray_cluster.job_env(),
    )
    assert "is missing" in one_error_line(gone)
    assert sorted(p for p in Path(store_dir).rglob("*") if p.is_file()) == before
