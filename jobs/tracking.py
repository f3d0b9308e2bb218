"""Watch a run while it runs: progress lines, TensorBoard, MLflow and Weights & Biases (docs/tracking.md). Rank 0
drives one :class:`Tracker`; a restarted worker group continues the same tracker runs; ``export_to_*`` replay the
store's runs through the same trackers."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs import config as config_lib

MLFLOW_STATUS = {"completed": "FINISHED", "stopped_early": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
SWEEP_TAG = "perennial.sweep"  # marks the MLflow parent run of a sweep


@dataclasses.dataclass
class RunInfo:
    run_id: str
    workload: str
    storage_path: str = ""  # the run's Ray Train storage path: its folder is <storage_path>/<run_id>
    sweep_id: str = ""
    trial_id: str = ""
    git_sha: str = ""
    data_fingerprint: str = ""
    metric: str = ""
    mode: str = ""
    epochs: int = 0
    world_size: int = 1
    mlflow_parent_run_id: str = ""  # set by jobs.sweep: trials are children of the sweep's run

    def tags(self) -> dict[str, str]:
        keys = ("run_id", "workload", "sweep_id", "trial_id", "git_sha", "data_fingerprint")
        return {k: str(getattr(self, k)) for k in keys if getattr(self, k)}


def _numeric(row: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    return {k: "" if v is None else v if isinstance(v, (int, float, bool, str)) else str(v) for k, v in config.items()}


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Sink:
    """A tracker: the loop's five calls; a subclass's ``log_step`` gets the mean step loss every ``every_steps``
    steps, its ``log_epoch`` each epoch past the checkpoint's."""

    every_steps, resumed_from, window = 0, 0, ()

    def start(self, info: RunInfo, config: dict, resumed_from_epoch: int, history: list[dict] = ()) -> None:
        self.resumed_from, self.window = resumed_from_epoch, []

    def on_step(self, epoch: int, step: int, total: int, loss: float, samples: int, lr: float) -> None:
        self.window.append(loss)
        if self.every_steps and step % self.every_steps == 0:
            self.log_step(epoch * total + step, sum(self.window) / len(self.window), lr)
            self.window = []

    def on_epoch(self, row: dict) -> None:
        self.window = []
        if int(row["epoch"]) > self.resumed_from:
            self.log_epoch(row)

    def on_test(self, final: dict) -> None: ...


class Progress(Sink):
    """Within an epoch: a line every ``every_s`` seconds (samples/s, loss, lr, ETA), or a tqdm bar on a TTY."""

    def __init__(self, every_s: float, log: Callable[[str], None], tty: bool | None = None):
        self.every_s, self.log = every_s, log
        self.tty = (sys.__stdout__ or sys.stdout).isatty() if tty is None else tty
        self.epochs, self.world, self.bar, self.epoch_wall = 0, 1, None, None  # epoch_wall: the last epoch's, for ETA

    def start(self, info: RunInfo, config: dict, resumed_from_epoch: int, history: list[dict] = ()) -> None:
        self.epochs, self.world, self.epoch = info.epochs, max(1, info.world_size), -1

    def on_step(self, epoch: int, step: int, total: int, loss: float, samples: int, lr: float) -> None:
        now = time.perf_counter()
        if epoch != self.epoch:  # the first step of an epoch: its clock starts at the previous step's end
            self.epoch, self.t0, self.last = epoch, now, now
            self.loss_sum, self.steps, self.samples = 0.0, 0, 0
            if self.tty and self.every_s > 0:
                from tqdm import tqdm

                self.bar = tqdm(total=total or None, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False)
        self.loss_sum, self.steps, self.samples = self.loss_sum + loss, self.steps + 1, self.samples + samples
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.loss_sum / self.steps:.4f}", lr=f"{lr:.2e}", refresh=False)
        elif self.every_s > 0 and now - self.last >= self.every_s:
            self.last = now
            self.log(self.line(epoch, step, total, lr, now))

    def line(self, epoch: int, step: int, total: int, lr: float, now: float) -> str:
        elapsed = max(now - self.t0, 1e-9)
        per_step = elapsed / self.steps
        left_epoch = (total - step) * per_step if total else math.nan
        epoch_wall = self.epoch_wall or (total * per_step if total else math.nan)
        left_run = left_epoch + (self.epochs - epoch - 1) * epoch_wall
        share = f" ({step / total:.0%})" if total else ""
        return (
            f"  epoch {epoch + 1}/{self.epochs}  step {step}/{total or '?'}{share}  "
            f"{self.samples * self.world / elapsed:.0f} samples/s  loss {self.loss_sum / self.steps:.4f}  lr {lr:.3g}  "
            f"ETA epoch {_clock(left_epoch)}  run {_clock(left_run)}"
        )

    def on_epoch(self, row: dict) -> None:
        self.finish("", None)
        if self.epoch >= 0:
            self.epoch_wall = time.perf_counter() - self.t0

    def finish(self, status: str, export_dir: str | os.PathLike | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoard(Sink):
    """Event files: step loss and lr, each epoch's metrics, test metrics, hparams. A remote (s3://) folder is
    staged locally and copied up after each epoch and at the end."""

    def __init__(self, every_steps: int, log_dir: str | None = None):
        self.every_steps, self.log_dir = every_steps, log_dir
        self.writer = self.final = None

    def start(self, info: RunInfo, config: dict, resumed_from_epoch: int, history: list[dict] = ()) -> None:
        from torch.utils.tensorboard import SummaryWriter

        super().start(info, config, resumed_from_epoch)
        self.info, self.config = info, config
        # next to the run's checkpoints, so that `tensorboard --logdir runs/` finds every run
        self.target = self.log_dir or f"{info.storage_path.rstrip('/')}/{info.run_id}/tensorboard"
        self.remote = "://" in self.target
        local = tempfile.mkdtemp(prefix="perennial-tb-") if self.remote else self.target
        # a restarted attempt writes a new event file beside the old ones; TensorBoard merges them by step
        self.writer = SummaryWriter(log_dir=local, flush_secs=30)

    def log_step(self, global_step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("step/train_loss", loss, global_step)
        self.writer.add_scalar("step/lr", lr, global_step)

    def log_epoch(self, row: dict) -> None:
        for key, value in _numeric(row).items():
            if key != "epoch":
                self.writer.add_scalar(key, value, int(row["epoch"]))
        self._flush()

    def on_test(self, final: dict) -> None:
        self.final = final
        for key, value in _numeric(final).items():
            if key.startswith("test_"):
                self.writer.add_scalar(key, value, int(final.get("epoch") or 0))

    def finish(self, status: str, export_dir: str | os.PathLike | None) -> None:
        if self.writer is None:
            return
        if self.final is not None:  # the HParams tab: this run's config against its final metrics
            from torch.utils.tensorboard.summary import hparams

            numbers = _numeric(self.final)
            metrics = {f"hparams/{k}": v for k, v in numbers.items() if k.startswith(("test_", "val_"))}
            if "best_metric" in numbers and self.info.metric:
                metrics[f"hparams/best_{self.info.metric}"] = numbers["best_metric"]
            for summary in hparams(_hparams(self.config), metrics):
                self.writer.file_writer.add_summary(summary)
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, int(self.final.get("epoch") or 0))
        self._flush()
        self.writer.close()
        if self.remote:  # the staging folder: every event is in the bucket now
            shutil.rmtree(self.writer.log_dir, ignore_errors=True)
        self.writer = None

    def _flush(self) -> None:
        self.writer.flush()
        if self.remote:
            import pyarrow.fs as pafs

            fs, path = pafs.FileSystem.from_uri(self.target)
            pafs.copy_files(self.writer.log_dir, path, destination_filesystem=fs)


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def mlflow_experiment(client, name: str, uri: str) -> str:
    """The experiment's id, created if new; a SQLite store keeps artifacts beside its file, not in a temp dir."""
    if (found := client.get_experiment_by_name(name)) is not None:
        return found.experiment_id
    database = uri.removeprefix("sqlite:///")
    location = str(Path(database).resolve().parent / "mlartifacts") if database != uri else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another trial created it first
        if (found := client.get_experiment_by_name(name)) is None:
            raise
        return found.experiment_id


def mlflow_find_run(client, experiment_id: str, tag: str, value: str):
    """The run tagged ``tag=value`` (oldest first), or None: how a restarted run finds its MLflow run again."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{tag}` = '{value}'", order_by=["attributes.start_time ASC"]
    )
    return runs[0] if runs else None


def mlflow_log(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)  # log_batch splits a long list into MLflow's per-request limits itself
    client.log_batch(run_id, metrics=[Metric(k, v, now_ms, step) for k, v in metrics.items()], synchronous=True)


def mlflow_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()], synchronous=True)


class MLflow(Sink):
    """One MLflow run per perennial run, tagged with its run_id, metrics at step = epoch. Not Ray's
    ``setup_mlflow``: it opens a new run on each restart and cannot attach a parent run."""

    def __init__(self, uri: str, experiment: str, every_steps: int, log_model: bool):
        self.uri, self.experiment, self.every_steps, self.log_model = uri, experiment, every_steps, log_model
        self.run_id = None

    def start(self, info: RunInfo, config: dict, resumed_from_epoch: int, history: list[dict] = ()) -> None:
        super().start(info, config, resumed_from_epoch)
        self.client = client = mlflow_client(self.uri)
        self.experiment_id = mlflow_experiment(client, self.experiment or info.workload, self.uri)
        run = mlflow_find_run(client, self.experiment_id, "run_id", info.run_id)
        if run is None:
            parent = {"mlflow.parentRunId": info.mlflow_parent_run_id} if info.mlflow_parent_run_id else {}
            run = client.create_run(self.experiment_id, run_name=info.run_id, tags=info.tags() | parent)
            mlflow_params(client, run.info.run_id, _hparams(config))
        else:  # a restarted worker group: the same MLflow run goes on, past what it logged
            client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        self.logged_epochs = {m.step for m in client.get_metric_history(self.run_id, "epoch")}
        self.last_step = max((m.step for m in client.get_metric_history(self.run_id, "step/train_loss")), default=-1)
        for row in history:  # the checkpoint's epochs this MLflow run lacks (say, tracking turned on at a restart)
            if row["epoch"] <= resumed_from_epoch:
                self.log_epoch(row)

    def log_step(self, global_step: int, loss: float, lr: float) -> None:
        if global_step > self.last_step:  # steps an earlier attempt logged stay as they were
            mlflow_log(self.client, self.run_id, {"step/train_loss": loss, "step/lr": lr}, global_step)

    def log_epoch(self, row: dict) -> None:
        if int(row["epoch"]) not in self.logged_epochs:
            mlflow_log(self.client, self.run_id, _numeric(row), int(row["epoch"]))
            self.logged_epochs.add(int(row["epoch"]))

    def on_test(self, final: dict) -> None:
        metrics = {k: v for k, v in _numeric(final).items() if k.startswith(("test_", "best_"))}
        mlflow_log(self.client, self.run_id, metrics, int(final.get("epoch") or 0))

    def finish(self, status: str, export_dir: str | os.PathLike | None) -> None:
        if self.run_id is None:
            return
        if export_dir and self.log_model and Path(export_dir).is_dir():
            self.client.log_artifacts(self.run_id, str(export_dir), "export")
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FINISHED"))


def wandb_run_id(run_id: str) -> str:
    """W&B refuses /\\#?%: and more than 128 chars."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[-128:]


def wandb_dir(info: RunInfo) -> str:
    """``$WANDB_DIR``, else the run's folder if local (W&B writes only to local disk), else a temp dir."""
    if info.storage_path and "://" not in info.storage_path and not os.environ.get("WANDB_DIR"):
        (path := Path(info.storage_path, info.run_id)).mkdir(parents=True, exist_ok=True)
        return str(path)
    return os.environ.get("WANDB_DIR") or tempfile.mkdtemp(prefix="perennial-wandb-")


WANDB_HEADER, WANDB_BLOCK = 7, 32768  # ":W&B" + 2-byte magic + version; then LevelDB-log records in 32 KiB blocks


def wandb_records(path: str | os.PathLike):
    """The protobuf ``Record``s of one ``run-<id>.wandb`` file (LevelDB log format); wandb ships no reader."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = WANDB_HEADER, b""
    while pos + 7 <= len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < 7:  # a block's tail too short for a header is padding
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_offline_files(wandb_dir: str | os.PathLike, wandb_id: str) -> list[Path]:
    return sorted(Path(wandb_dir).rglob(f"offline-run-*-{wandb_id}/run-{wandb_id}.wandb"))


def wandb_offline_history(files: list[Path]) -> list[dict]:
    records = [r for path in files for r in wandb_records(path) if r.WhichOneof("record_type") == "history"]
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records]


class Wandb(Sink):
    """One W&B run per perennial run, id = run id, group = sweep id. Not Ray's ``setup_wandb``: it wants an API
    key even offline, and its rank-0 check reads the Train V1 session (None under V2)."""

    def __init__(self, project: str, mode: str, every_steps: int):
        self.project, self.mode, self.every_steps = project, mode, every_steps
        self.run = None

    def start(self, info: RunInfo, config: dict, resumed_from_epoch: int, history: list[dict] = ()) -> None:
        import wandb

        super().start(info, config, resumed_from_epoch)
        directory = wandb_dir(info)
        earlier = wandb_offline_files(directory, wandb_run_id(info.run_id))
        self.run = wandb.init(
            project=self.project,
            id=wandb_run_id(info.run_id),
            name=info.run_id,
            group=info.sweep_id or None,
            job_type="trial" if info.sweep_id else "train",
            tags=[info.workload],
            config=_hparams(config) | info.tags(),
            resume="allow",  # a restarted worker group continues the run (online; offline writes a second file)
            dir=directory,
            mode=self.mode or os.environ.get("WANDB_MODE") or "online",
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        for name, step in (("epoch", None), ("global_step", None), ("step/*", "global_step")):
            self.run.define_metric(name, step_metric=step)
        self.defined: set[str] = set()
        # a killed process loses what wandb-core had not flushed: a restart logs the checkpoint's epochs W&B lacks
        if resumed_from_epoch:
            done = self.run.summary.get("epoch") or 0
            done = max([done] + [r["epoch"] for r in wandb_offline_history(earlier) if "epoch" in r])
            for row in history:
                if done < row["epoch"] <= resumed_from_epoch:
                    self.log_epoch(row)

    def log_step(self, global_step: int, loss: float, lr: float) -> None:
        self.run.log({"global_step": global_step, "step/train_loss": loss, "step/lr": lr})

    def log_epoch(self, row: dict) -> None:
        metrics = _numeric(row)
        for key in metrics.keys() - self.defined - {"epoch"}:
            self.run.define_metric(key, step_metric="epoch")
            self.defined.add(key)
        self.run.log(metrics)

    def on_test(self, final: dict) -> None:
        self.run.summary.update({k: v for k, v in _numeric(final).items() if k.startswith(("test_", "best_"))})

    def finish(self, status: str, export_dir: str | os.PathLike | None) -> None:
        if self.run is not None:
            self.run.summary["status"] = status
            self.run.finish(exit_code=0 if status != "failed" else 1)
            self.run = None


class Tracker:
    """Every tracker the config turns on; one that fails is reported once and turned off, the run goes on."""

    def __init__(self, cfg, log: Callable[[str], None] = print):
        self.log, self.finished = log, False
        self.sinks: list = [Progress(cfg.log.every_s, log)]
        t = cfg.tracking
        if t.tensorboard:
            self.sinks.append(TensorBoard(cfg.log.every_steps))
        if t.mlflow_uri:
            self.sinks.append(MLflow(t.mlflow_uri, t.experiment, cfg.log.every_steps, t.log_model))
        if t.wandb_project:
            self.sinks.append(Wandb(t.wandb_project, t.wandb_mode, cfg.log.every_steps))

    def _each(self, method: str, *args) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as e:  # any tracker error: say so once, train on
                self.sinks.remove(sink)
                self.log(f"warning: {type(sink).__name__} tracking turned off after {method}: {type(e).__name__}: {e}")

    def start(self, info: RunInfo, config: dict, resumed_from_epoch: int = 0, history: list[dict] = ()) -> None:
        self._each("start", info, config, resumed_from_epoch, list(history))

    on_step = functools.partialmethod(_each, "on_step")  # the arguments of Sink's
    on_epoch = functools.partialmethod(_each, "on_epoch")
    on_test = functools.partialmethod(_each, "on_test")

    def finish(self, status: str, export_dir: str | os.PathLike | None = None) -> None:
        if not self.finished:
            self.finished = True
            self._each("finish", status, export_dir)


def sweep_run(client, experiment_id: str, sweep_id: str, workload: str) -> tuple[str, bool]:
    """The MLflow parent run of a sweep, found by its tag or created: ``(run id, created)``."""
    run = mlflow_find_run(client, experiment_id, SWEEP_TAG, sweep_id)
    if run is not None:
        return run.info.run_id, False
    tags = {SWEEP_TAG: sweep_id, "sweep_id": sweep_id, "workload": workload}
    return client.create_run(experiment_id, run_name=sweep_id, tags=tags).info.run_id, True


def start_sweep(cfg, sweep_id: str, search_space: dict) -> dict:
    """On the sweep driver: the MLflow parent run (found again on --resume) trials need; W&B groups by sweep_id."""
    if not cfg.tracking.mlflow_uri:
        return {}
    client = mlflow_client(cfg.tracking.mlflow_uri)  # also creates a new SQLite store once, not in each trial
    experiment_id = mlflow_experiment(client, cfg.tracking.experiment or cfg.workload, cfg.tracking.mlflow_uri)
    parent, created = sweep_run(client, experiment_id, sweep_id, cfg.workload)
    if created:
        params = {f"sweep.{k}": v for k, v in cfg.sweep.model_dump().items() if k != "search_space"}
        mlflow_params(client, parent, _hparams(params | {"sweep.search_space": json.dumps(search_space)}))
    return {"mlflow_parent_run_id": parent}


def finish_sweep(cfg, extras: dict, runs) -> None:
    """At the sweep's end: each trial's MLflow run gets its store status (a killed trial could not close its own),
    the parent the best metric."""
    parent = extras.get("mlflow_parent_run_id")
    if not parent or not len(runs):
        return
    try:
        client = mlflow_client(cfg.tracking.mlflow_uri)
        experiment_id = client.get_run(parent).info.experiment_id
        for row in runs.to_dict("records"):
            child = mlflow_find_run(client, experiment_id, "run_id", row["run_id"])
            if child is not None:  # also a trial the scheduler stopped, which closed its run as failed
                client.set_terminated(child.info.run_id, MLFLOW_STATUS.get(row["status"], "FINISHED"))
        ok = runs[runs["status"] != "failed"].dropna(subset=["best_metric"])
        if len(ok):
            best = ok.sort_values("best_metric", ascending=ok["mode"].iloc[0] == "min").iloc[0]
            mlflow_log(client, parent, {f"best_{best['metric']}": float(best["best_metric"])}, 0)
            client.set_tag(parent, "best_run_id", best["run_id"])
        client.set_terminated(parent, "FINISHED" if len(ok) else "FAILED")
    except Exception as e:  # the sweep's results are in the store: a tracker error must not fail it
        print(f"warning: MLflow sweep run {parent} not closed: {type(e).__name__}: {e}")


def _replay(store, workload: str | None, sink_for: Callable[[RunInfo], Any]) -> dict[str, int]:
    """Push stored runs through the tracker ``sink_for(info)`` returns (None: it has that run already)."""
    runs, epochs, done = store.df("runs"), store.df("epochs"), {"runs": 0, "epochs": 0}
    runs = runs[runs["workload"] == workload] if workload else runs
    for row in runs.drop_duplicates("run_id").to_dict("records"):
        keys = ("workload", "sweep_id", "trial_id", "git_sha", "data_fingerprint", "metric", "mode")
        text = {k: "" if row.get(k) is None or row[k] != row[k] else str(row[k]) for k in keys}  # NaN != NaN
        info = RunInfo(run_id=row["run_id"], **text)
        if (sink := sink_for(info)) is None:
            continue
        try:
            params = config_lib.flatten(config_lib.from_dict(json.loads(row["config_json"])))
        except (config_lib.ConfigError, ValueError, TypeError, KeyError):  # a workload this checkout no longer has
            params = {}
        sink.start(info, params, 0)
        history = epochs[epochs["run_id"] == info.run_id].drop_duplicates("epoch").sort_values("epoch")
        for epoch_row in history.to_dict("records"):
            sink.on_epoch({k: v for k, v in epoch_row.items() if k != "round"})
        final = {k: v for k, v in row.items() if k.startswith(("test_", "val_")) or k == "best_metric"}
        sink.on_test(final | {"epoch": int(row.get("epochs") or 0)})
        sink.finish(row.get("status") or "completed", None)
        done["runs"], done["epochs"] = done["runs"] + 1, done["epochs"] + len(history)
    return done


def export_to_mlflow(store, uri: str, experiment: str = "", workload: str | None = None) -> dict[str, int]:
    """Stored runs to MLflow, found again by their ``run_id`` tag; a sweep's trials under its parent run."""
    client = mlflow_client(uri)

    def sink_for(info: RunInfo):
        experiment_id = mlflow_experiment(client, experiment or info.workload, uri)
        if mlflow_find_run(client, experiment_id, "run_id", info.run_id) is not None:
            return None
        if info.sweep_id:
            parent, created = sweep_run(client, experiment_id, info.sweep_id, info.workload)
            if created:
                client.set_terminated(parent, "FINISHED")
            info.mlflow_parent_run_id = parent
        return MLflow(uri, experiment, 0, False)

    return _replay(store, workload, sink_for)


def export_to_tensorboard(store, logdir: str | os.PathLike, workload: str | None = None) -> dict[str, int]:
    """Event files in ``<logdir>/[<sweep_id>/]<run_id>/``; a folder with events is left as it is."""

    def sink_for(info: RunInfo):
        path = Path(logdir, info.sweep_id, info.run_id)
        return None if any(path.glob("events.out.tfevents.*")) else TensorBoard(0, str(path))

    return _replay(store, workload, sink_for)
