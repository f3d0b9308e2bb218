"""Watching real runs on the shared Ray cluster: a sweep mirrored to MLflow (SQLite), W&B (offline files) and
TensorBoard with a Train worker killed mid-trial, and progress lines in a submitted job's logs.

The sweep is submitted with ``ray job submit`` so that the W&B variables reach the Train workers through the
runtime environment, as on a cluster; the test hook ``tests.plugins.faults:FaultAfterEpoch`` comes in ``run.hooks``. Its trials run
as Train runs (``sweep.in_process=false``) with ``failure.max_failures=1``: the worker of each trial dies after
epoch 1 and its Train run resumes from the epoch 1 checkpoint. Every tracker must still hold exactly one entry
per epoch, in one tracker run per trial.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import PY, ROOT
from tracker_files import tensorboard_hparams, tensorboard_scalars, wandb_history, wandb_runs

from jobs.store import Store
from tests.plugins import faults

EPOCHS = 3
SWEEP = "workload: mlp\nsweep:\n  search: grid\n  scheduler: fifo\n  num_samples: 1\n  search_space:\n    train.lr: {grid: [0.01, 0.003]}\n"


def ray_submit(ray_cluster, env_vars: dict, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    cmd = [
        str(Path(PY).parent / "ray"),
        "job",
        "submit",
        "--address",
        ray_cluster.dashboard,
        "--runtime-env-json",
        json.dumps({"env_vars": env_vars}),
        "--",
        "python",
        "-m",
        *args,
    ]
    return subprocess.run(cmd, env=ray_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tracked_sweep(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracked-sweep")
    (tmp / "wandb").mkdir()
    config = tmp / "sweep.yaml"
    config.write_text(SWEEP)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env_vars = {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp / "wandb"),
        "RAY_DEDUP_LOGS": "0",
    }
    res = ray_submit(
        ray_cluster,
        env_vars,
        "jobs.sweep",
        "--verbose",  # the workers' lines, where the injected fault shows
        "--config",
        str(config),
        "--smoke-test",
        "--store",
        str(tmp / "store"),
        f"run.storage_path={tmp / 'runs'}",
        f"train.epochs={EPOCHS}",
        "sweep.in_process=false",
        "failure.max_failures=1",
        faults.after_epoch(1),
        "scaling.cpus_per_worker=1",
        "log.every_s=0.01",  # a sweep still prints no step lines
        "log.every_steps=4",
        f"tracking.mlflow_uri={uri}",
        "tracking.experiment=perennial-test",
        "tracking.wandb_project=perennial-test",
        "tracking.wandb_mode=offline",
    )
    assert res.returncode == 0 and "succeeded" in res.stdout, res.stdout[-5000:] + res.stderr[-3000:]
    store = Store(tmp / "store")
    return {"tmp": tmp, "uri": uri, "log": res.stdout, "runs": store.df("runs"), "epochs": store.df("epochs")}


def test_the_sweep_ran_two_trials_each_restarted_once(tracked_sweep):
    runs, log = tracked_sweep["runs"], tracked_sweep["log"]
    assert len(runs) == 2 and set(runs["status"]) == {"completed"}, runs[["run_id", "status", "error"]]
    assert log.count("fault injection: rank 0 exits after epoch 1") >= 1, log[-4000:]  # a worker did die
    assert len(re.findall(r"resumed from the epoch 1 checkpoint", log)) >= 1, log[-4000:]
    assert sorted(tracked_sweep["epochs"]["epoch"]) == [1, 1, 2, 2, 3, 3]
    assert not re.search(r"^\s*(\(.*\)\s*)?epoch \d+/\d+\s+step \d+", log, re.M)  # no per-step lines in a sweep
    assert "warning:" not in log, log[-4000:]  # no tracker turned itself off


def test_mlflow_holds_one_run_per_trial_under_the_sweep_with_one_entry_per_epoch(tracked_sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracked_sweep["uri"])
    experiment = client.get_experiment_by_name("perennial-test")
    mlflow_runs = client.search_runs([experiment.experiment_id])
    sweep_id = tracked_sweep["runs"]["sweep_id"].iloc[0]
    parents = [r for r in mlflow_runs if r.data.tags.get("perennial.sweep") == sweep_id]
    children = {r.data.tags.get("run_id"): r for r in mlflow_runs if "perennial.sweep" not in r.data.tags}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert set(children) == set(tracked_sweep["runs"]["run_id"])  # one MLflow run per trial, despite the restart
    for row in tracked_sweep["runs"].to_dict("records"):
        run = children[row["run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["sweep_id"] == sweep_id and run.data.tags["trial_id"] == row["trial_id"]
        assert run.data.tags["data_fingerprint"] == row["data_fingerprint"] != ""
        for key in ("val_accuracy", "train_loss"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (row["run_id"], key, steps)
        stored = tracked_sweep["epochs"].query("run_id == @row['run_id']").set_index("epoch")["val_accuracy"]
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        assert logged == pytest.approx(stored.to_dict())  # the same values the store holds
        assert run.data.metrics["test_accuracy"] == pytest.approx(row["test_accuracy"])
        assert run.data.params["train.lr"] == str(row["train.lr"]) and run.info.status == "FINISHED"
        assert "export/model.safetensors" in [a.path for a in client.list_artifacts(run.info.run_id, "export")]


def test_wandb_offline_files_hold_one_entry_per_epoch_in_the_sweeps_group(tracked_sweep):
    wandb_dir = tracked_sweep["tmp"] / "wandb"
    sweep_id = tracked_sweep["runs"]["sweep_id"].iloc[0]
    for run_id in tracked_sweep["runs"]["run_id"]:
        history = wandb_history(wandb_dir, run_id)
        epochs = sorted(row["epoch"] for row in history if "epoch" in row and "val_accuracy" in row)
        assert epochs == list(range(1, EPOCHS + 1)), (run_id, epochs)
        assert {r.run_group for r in wandb_runs(wandb_dir, run_id)} == {sweep_id}


def test_tensorboard_events_hold_every_metric_once_per_epoch(tracked_sweep):
    sweep_id = tracked_sweep["runs"]["sweep_id"].iloc[0]
    for row in tracked_sweep["runs"].to_dict("records"):
        logdir = tracked_sweep["tmp"] / "runs" / sweep_id / row["run_id"] / "tensorboard"
        scalars = tensorboard_scalars(logdir)
        for tag in ("train_loss", "val_accuracy", "val_loss", "samples_per_s"):
            assert [step for step, _ in scalars[tag]] == list(range(1, EPOCHS + 1)), (row["run_id"], tag, scalars[tag])
        assert scalars["test_accuracy"] == [(EPOCHS, pytest.approx(row["test_accuracy"]))]
        assert scalars["step/train_loss"] and scalars["step/lr"][0][1] == pytest.approx(row["train.lr"])
        hp = tensorboard_hparams(logdir)
        assert hp["hparams"]["train.lr"] == pytest.approx(row["train.lr"])
        assert "hparams/best_val_accuracy" in hp["metrics"]


PROGRESS = re.compile(
    r"epoch (\d+)/(\d+)  step (\d+)/(\d+) \(\d+%\)  (\d+) samples/s  loss ([\d.]+)  lr \S+  "
    r"ETA epoch \d+:\d\d:\d\d  run \d+:\d\d:\d\d"
)


def test_progress_lines_appear_at_the_configured_interval_in_a_submitted_jobs_logs(ray_cluster, tmp_path):
    every_s = 0.1
    res = ray_submit(
        ray_cluster,
        {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"},
        "jobs.train",
        "--config",
        str(ROOT / "configs" / "mlp.yaml"),
        "--smoke-test",
        "--store",
        str(tmp_path / "store"),
        f"run.storage_path={tmp_path / 'runs'}",
        "train.batch_size=2",  # ~1,000 steps an epoch (~1 s on 2 idle cores): long enough for several lines
        f"log.every_s={every_s}",
        timeout=600,
    )
    assert res.returncode == 0 and "succeeded" in res.stdout, res.stdout[-4000:] + res.stderr[-2000:]
    lines = PROGRESS.findall(res.stdout)
    epochs = Store(tmp_path / "store").df("epochs").set_index("epoch")
    for epoch in (1, 2):
        steps = [int(m[2]) for m in lines if int(m[0]) == epoch]
        total = {int(m[3]) for m in lines}
        assert len(total) == 1 and steps == sorted(steps) and all(0 < s <= min(total) for s in steps)
        # one line per interval: neither every step nor fewer than the epoch's length allows
        most = epochs.loc[epoch, "train_time_s"] / every_s + 1
        assert 1 <= len(steps) <= most, (epoch, len(steps), most)
        assert len(steps) >= min(3, int(most) // 2), (epoch, len(steps), most)
    assert all(float(m[5]) > 0 and int(m[4]) > 0 for m in lines)


def test_tensorboard_events_reach_an_s3_storage_path(s3_server, tmp_path):
    """With run.storage_path=s3://..., events are written locally and copied to the run's folder in the bucket."""
    import uuid

    import boto3

    from jobs import tracking

    bucket = s3_server.make_bucket(f"perennial-{uuid.uuid4().hex[:8]}")
    writer = tracking.TensorBoard(every_steps=1)
    info = tracking.RunInfo(run_id="mlp-s3tb", workload="mlp", storage_path=f"{bucket}/runs", metric="val_accuracy")
    writer.start(info, {"train.lr": 0.1}, 0)
    writer.on_step(0, 1, 1, 0.5, 8, 0.1)
    writer.on_epoch({"epoch": 1, "val_accuracy": 0.5})
    writer.on_test({"epoch": 1, "test_accuracy": 0.4, "best_metric": 0.5})
    staging = Path(writer.writer.log_dir)
    assert staging.is_dir() and str(staging) != writer.target
    writer.finish("completed", None)
    assert not staging.exists()  # one staging folder per run would otherwise pile up in /tmp
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket.removeprefix("s3://"))["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("runs/mlp-s3tb/tensorboard/events.out.tfevents."), keys
    local = tmp_path / "tb"
    local.mkdir()
    s3.download_file(bucket.removeprefix("s3://"), keys[0], str(local / Path(keys[0]).name))
    scalars = tensorboard_scalars(local)
    assert scalars["val_accuracy"] == [(1, 0.5)] and scalars["test_accuracy"] == [(1, pytest.approx(0.4))]
