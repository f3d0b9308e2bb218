"""jobs.tracking without Ray: a simulated run drives the Tracker as rank 0 does, killed after epoch 2 and
resumed from that checkpoint, against real local tracker stores — MLflow on SQLite (read back with
MlflowClient), W&B offline files (read back from the files), TensorBoard events (TensorBoard's own reader)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tracker_files import tensorboard_hparams, tensorboard_scalars, wandb_history, wandb_runs, wandb_summary

from jobs import config as config_lib
from jobs import tracking
from jobs.tracking import wandb_offline_files

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, STEPS = 4, 6

# One attempt of a run as jobs/loop.py drives it on rank 0; argv: storage, mlflow uri, first epoch, kill after.
ATTEMPT = """
import os, sys
from jobs import config as config_lib, tracking
storage, uri, first, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = config_lib.load_config("configs/mlp.yaml", ["tracking.mlflow_uri=" + uri, "tracking.wandb_project=perennial-test",
    "tracking.wandb_mode=offline", "log.every_steps=2", "log.every_s=0", "train.epochs=@EPOCHS"], smoke_test=True)
info = tracking.RunInfo(run_id="mlp-unit0001", workload="mlp", storage_path=storage, sweep_id="mlp-sweep-u1",
    trial_id="u1_00000", git_sha="abc123", data_fingerprint="fp1", metric="val_accuracy", mode="max",
    epochs=@EPOCHS)
def row(epoch):
    return {"epoch": epoch + 1, "train_loss": 1.0 / (epoch + 1), "val_accuracy": 0.5 + epoch / 10,
            "samples_per_s": 100.0, "note": "text is not a metric"}
tracker = tracking.Tracker(cfg, print)
tracker.start(info, config_lib.flatten(cfg), first, history=[row(e) for e in range(first)])  # the checkpoint's
for epoch in range(first, @EPOCHS):
    for step in range(1, @STEPS + 1):
        tracker.on_step(epoch, step, @STEPS, 1.0 / (epoch * @STEPS + step), 32, 0.01)
    tracker.on_epoch(row(epoch))
    if epoch + 1 == kill_after:
        os._exit(1)  # a killed worker: no finish, nothing flushed by hand
export = os.path.join(storage, "export")
os.makedirs(export, exist_ok=True)
open(os.path.join(export, "model.json"), "w").write("{}")
tracker.on_test({"epoch": @EPOCHS, "best_metric": 0.8, "best_epoch": 4, "test_accuracy": 0.77, "val_accuracy": 0.8})
tracker.finish("completed", export)
""".replace("@EPOCHS", str(EPOCHS)).replace("@STEPS", str(STEPS))


def attempt(tmp_path: Path, first: int, kill_after: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_DIR=str(tmp_path / "wandb"), WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    (tmp_path / "wandb").mkdir(exist_ok=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-c", ATTEMPT, str(tmp_path / "runs"), uri, str(first), str(kill_after)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tracking")
    first = attempt(tmp_path, first=0, kill_after=2)
    assert first.returncode == 1, first.stdout + first.stderr  # killed after epoch 2, as planned
    # wandb-core flushes its file every 15 s and a killed process loses the rest: the restart backfills
    second = attempt(tmp_path, first=2, kill_after=0)  # resumed from the epoch 2 checkpoint
    assert second.returncode == 0, second.stdout + second.stderr
    assert "warning" not in second.stdout, second.stdout  # no tracker turned itself off
    return tmp_path


def test_mlflow_has_one_run_with_one_entry_per_epoch_across_the_restart(killed_and_resumed):
    from mlflow.tracking import MlflowClient

    tmp_path = killed_and_resumed
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mlp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # the restart continued the same MLflow run
    run = runs[0]
    for key in ("val_accuracy", "train_loss", "epoch", "samples_per_s"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4], (key, steps)
    assert "note" not in run.data.metrics
    assert run.data.metrics["test_accuracy"] == pytest.approx(0.77) and run.data.metrics["best_metric"] == 0.8
    loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "step/train_loss")]
    assert sorted(loss_steps) == list(range(2, EPOCHS * STEPS + 1, 2))  # every 2 steps, none twice
    assert run.data.params["train.lr"] == str(config_lib.load_config("configs/mlp.yaml", smoke_test=True).train.lr)
    assert "tracking.mlflow_uri" not in run.data.params  # trackers are not hyperparameters
    tags = run.data.tags
    assert (tags["run_id"], tags["sweep_id"], tags["git_sha"], tags["data_fingerprint"]) == (
        "mlp-unit0001",
        "mlp-sweep-u1",
        "abc123",
        "fp1",
    )
    assert run.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "export")]
    assert artifacts == ["export/model.json"]
    assert (tmp_path / "mlartifacts").is_dir()  # beside the SQLite file, not in the process's cwd


def test_wandb_offline_files_hold_one_entry_per_epoch_across_the_restart(killed_and_resumed):
    wandb_dir = killed_and_resumed / "wandb"
    history = wandb_history(wandb_dir, "mlp-unit0001")
    epochs = sorted(row["epoch"] for row in history if "epoch" in row)
    assert epochs == [1, 2, 3, 4], epochs
    assert [row["val_accuracy"] for row in sorted(history, key=lambda r: r.get("epoch", 0)) if "epoch" in row] == [
        pytest.approx(0.5 + e / 10) for e in range(EPOCHS)
    ]
    steps = [row["global_step"] for row in history if "global_step" in row]
    # per-step entries the killed attempt had not flushed are gone (epochs are backfilled, steps are not)
    assert steps == list(range(2 * STEPS + 2, EPOCHS * STEPS + 1, 2))
    runs = wandb_runs(wandb_dir, "mlp-unit0001")
    assert len(wandb_offline_files(wandb_dir, "mlp-unit0001")) == 2  # two attempts of one W&B run id
    assert runs and {r.run_id for r in runs} == {"mlp-unit0001"}
    assert {r.run_group for r in runs} == {"mlp-sweep-u1"}  # a sweep's trials are grouped
    config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert config["git_sha"] == "abc123" and "train.lr" in config
    assert wandb_summary(wandb_dir, "mlp-unit0001")["test_accuracy"] == pytest.approx(0.77)


def test_tensorboard_events_hold_every_metric_once(killed_and_resumed):
    logdir = killed_and_resumed / "runs" / "mlp-unit0001" / "tensorboard"
    scalars = tensorboard_scalars(logdir)
    for tag in ("train_loss", "val_accuracy", "samples_per_s"):
        assert [step for step, _ in scalars[tag]] == [1, 2, 3, 4], (tag, scalars[tag])
    assert scalars["test_accuracy"] == [(4, pytest.approx(0.77))]
    assert [s for s, _ in scalars["step/train_loss"]] == list(range(2, EPOCHS * STEPS + 1, 2))
    assert scalars["step/lr"][0][1] == pytest.approx(0.01)
    hp = tensorboard_hparams(logdir)
    assert "train.lr" in hp["hparams"] and "hparams/best_val_accuracy" in hp["metrics"]
    assert scalars["hparams/best_val_accuracy"] == [(4, pytest.approx(0.8))]


def test_progress_line_every_interval_with_eta():
    lines: list[str] = []
    progress = tracking.Progress(every_s=1e-9, log=lines.append, tty=False)
    info = tracking.RunInfo(run_id="r", workload="mlp", epochs=3, world_size=2)
    progress.start(info, {}, 0)
    for step in range(1, 5):
        progress.on_step(0, step, 10, 0.5, 16, 1e-3)
    assert len(lines) == 3  # the first step starts the clock; each later one is past the (tiny) interval
    assert lines[-1].startswith("  epoch 1/3  step 4/10 (40%)") and "loss 0.5000  lr 0.001" in lines[-1]
    assert "samples/s" in lines[-1] and "ETA epoch 0:00:00  run 0:00:00" in lines[-1]
    quiet: list[str] = []
    off = tracking.Progress(every_s=0, log=quiet.append, tty=False)  # a sweep's trials: no step lines
    off.start(info, {}, 0)
    for step in range(1, 5):
        off.on_step(0, step, 10, 0.5, 16, 1e-3)
    assert quiet == []


def test_a_failing_tracker_is_turned_off_with_one_warning(tmp_path):
    cfg = config_lib.load_config(ROOT / "configs/mlp.yaml", ["tracking.tensorboard=false", "log.every_s=0"])
    lines: list[str] = []
    tracker = tracking.Tracker(cfg, lines.append)

    class Broken:
        def start(self, *args):
            raise OSError("disk full")

    tracker.sinks.append(Broken())
    tracker.start(tracking.RunInfo(run_id="r", workload="mlp"), {}, 0)
    tracker.on_epoch({"epoch": 1})
    assert lines == ["warning: Broken tracking turned off after start: OSError: disk full"]


@pytest.mark.parametrize(
    ("key", "extra"), [("tracking.mlflow_uri=sqlite:///x.db", "mlflow"), ("tracking.wandb_project=p", "wandb")]
)
def test_configured_tracker_not_installed_exits_2_naming_the_extra(tmp_path, key, extra):
    # sys.modules[name] = None is how Python marks a module as absent: find_spec returns None for it
    code = (
        f"import sys; sys.modules[{extra!r}] = None; from jobs.config import cli_main; from jobs.train import main; "
        "cli_main(main)"
    )
    cmd = [sys.executable, "-c", code, "--config", "configs/mlp.yaml", "--store", str(tmp_path / "store"), key]
    res = subprocess.run(
        cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip() == (
        f"error: {key.split('=')[0]} is set but {extra} is not installed — pip install -e .[{extra}], or set {key.split('=')[0]}="
    )
    assert not (tmp_path / "store").exists()


def test_bad_log_values_are_config_errors():
    with pytest.raises(config_lib.ConfigError, match="log.every_s must be >= 0"):
        config_lib.load_config(ROOT / "configs/mlp.yaml", ["log.every_s=-1"])
    with pytest.raises(config_lib.ConfigError, match="unknown config key 'tracking.mlflow'"):
        config_lib.load_config(ROOT / "configs/mlp.yaml", ["tracking.mlflow=x"])


def store_frames(tmp_path: Path):
    from jobs.store import Store

    store = Store(tmp_path / "store")
    cfg = config_lib.load_config(ROOT / "configs/mlp.yaml", smoke_test=True)
    config_json = json.dumps(config_lib.to_dict(cfg), sort_keys=True)
    runs = [
        {"run_id": "mlp-a", "workload": "mlp", "sweep_id": "mlp-sweep-1", "trial_id": "t1", "status": "completed",
         "metric": "val_accuracy", "mode": "max", "best_metric": 0.9, "epochs": 2, "config_json": config_json,
         "test_accuracy": 0.88, "git_sha": "s", "data_fingerprint": "f"},
        {"run_id": "mlp-b", "workload": "mlp", "sweep_id": "", "trial_id": "", "status": "stopped_early",
         "metric": "val_accuracy", "mode": "max", "best_metric": 0.5, "epochs": 1, "config_json": config_json,
         "test_accuracy": None, "git_sha": "s", "data_fingerprint": "f"},
    ]  # fmt: skip
    epochs = [
        {"run_id": "mlp-a", "workload": "mlp", "epoch": 1, "train_loss": 1.0, "val_accuracy": 0.8},
        {"run_id": "mlp-a", "workload": "mlp", "epoch": 2, "train_loss": 0.5, "val_accuracy": 0.9},
        {"run_id": "mlp-b", "workload": "mlp", "epoch": 1, "train_loss": 2.0, "val_accuracy": 0.5},
    ]
    store.append("epochs", epochs)
    store.append("runs", runs)
    return store


def test_export_to_mlflow_and_tensorboard_backfill_the_store_once(tmp_path):
    from mlflow.tracking import MlflowClient

    store = store_frames(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.export_to_mlflow(store, uri) == {"runs": 2, "epochs": 3}
    assert tracking.export_to_mlflow(store, uri) == {"runs": 0, "epochs": 0}  # found again by run_id tag
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mlp")
    runs = {r.data.tags.get("run_id", r.info.run_name): r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"mlp-a", "mlp-b", "mlp-sweep-1"}  # the sweep's parent run too
    a = runs["mlp-a"]
    assert a.data.tags["mlflow.parentRunId"] == runs["mlp-sweep-1"].info.run_id
    assert [m.step for m in client.get_metric_history(a.info.run_id, "val_accuracy")] == [1, 2]
    assert a.data.metrics["test_accuracy"] == pytest.approx(0.88) and a.data.params["train.epochs"] == "2"
    assert runs["mlp-b"].info.status == "FINISHED" and "test_accuracy" not in runs["mlp-b"].data.metrics

    logdir = tmp_path / "tb"
    assert tracking.export_to_tensorboard(store, logdir) == {"runs": 2, "epochs": 3}
    assert tracking.export_to_tensorboard(store, logdir) == {"runs": 0, "epochs": 0}
    scalars = tensorboard_scalars(logdir / "mlp-sweep-1" / "mlp-a")
    assert scalars["val_accuracy"] == [(1, pytest.approx(0.8)), (2, pytest.approx(0.9))]
    assert scalars["test_accuracy"] == [(2, pytest.approx(0.88))]
    assert "train.lr" in tensorboard_hparams(logdir / "mlp-b")["hparams"]


def test_store_export_verb_backfills_and_names_a_missing_target(tmp_path):
    """`python -m jobs.store export` is the command line of the two functions above."""
    import subprocess
    import sys

    store = store_frames(tmp_path)
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    root = Path(__file__).resolve().parents[2]

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "jobs.store", "export", *args, "--store", store.uri],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )

    res = cli("--mlflow", uri, "--tensorboard", str(tmp_path / "tb-cli"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 run(s) created, 3 epoch(s) logged" in res.stdout and "2 run(s) written" in res.stdout
    again = cli("--mlflow", uri)
    assert again.returncode == 0 and "0 run(s) created" in again.stdout
    none = cli()
    assert none.returncode == 2 and none.stderr.strip().startswith("error: export needs a target")
