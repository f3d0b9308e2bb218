"""One Ray Train run of one workload, recorded in the evaluation store.

    python -m jobs.train --config configs/mlp.yaml [--smoke-test] [--store PATH] [key=value ...]
    ray job submit --working-dir . -- python -m jobs.train --config configs/mlp.yaml --smoke-test

One worker and no cluster named: Ray Train local mode, in this process. Otherwise a Train worker group on the
cluster in ``RAY_ADDRESS``, else on an embedded local one. Exit codes: 0 finished, 1 failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import yaml

from jobs import config as config_lib
from jobs import preflight
from jobs.errors import ClusterError, NodeLost
from jobs.fs import META, filesystem, fs_uri
from jobs.ports import free_port
from jobs.ray_compat import single_machine_mode as loopback_only  # keeps Ray on 127.0.0.1
from jobs.store import FINISHED, Store, compact_if_due, missing, now

RUN_STATE = "perennial_run.json"  # beside a run's checkpoints: its config and store, read by --resume


# ----------------------------------------------------------------------------- Ray plumbing
def init_ray(num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start an embedded local cluster on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("PERENNIAL_GIT_SHA", git_sha())  # the trackers' git tag; an embedded cluster inherits it
    if address := os.environ.get("RAY_ADDRESS"):
        check_reachable(address)
        try:
            ray.init(
                address=address,
                logging_level=logging.WARNING,
                runtime_env=cluster_address_env(address),
                log_to_driver=log_to_driver,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(
                f"no Ray cluster at RAY_ADDRESS={address} ({str(e).splitlines()[0]}) — start one with 'ray start --head' or unset RAY_ADDRESS"
            ) from None
        return
    # our own port, told to the cluster's actors: Train's placement-group cleaner looks its cluster up by "auto",
    # which finds another one when two Ray instances share the machine
    port = free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    loopback_only()
    env = {
        "RAY_ADDRESS": f"127.0.0.1:{port}",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"),
        # one machine has no spot nodes to watch (a cluster reached through RAY_ADDRESS keeps Ray's default, on)
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
    }
    ray.init(
        address="local",  # always a new cluster, never whatever `ray start` last wrote to /tmp/ray
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        dashboard_host="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=log_to_driver,
        runtime_env={"env_vars": env},
    )
    os.environ.pop("RAY_GCS_SERVER_PORT", None)
    os.environ.update({k: v for k, v in env.items() if k != "RAY_ADDRESS"})
    subprocess.Popen(  # the watcher below, outside the driver's process group: Ray's reaper and Ctrl-C spare it
        [sys.executable, "-c", _WATCHER, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# Ends an embedded cluster's processes once its driver is gone (SIGKILL too): the raylet starts its agents outside
# the group Ray's reaper ends, and a leftover agent holds port 52365. Matched by ancestry and start time, never by name.
_WATCHER = """
import contextlib, os, sys, time, psutil
driver = psutil.Process(int(sys.argv[1]))
seen = {}
while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
    try:
        seen |= {p.pid: p for p in driver.children(recursive=True) if p.pid != os.getpid()}
    except psutil.NoSuchProcess:
        break
    time.sleep(1.0)
left = [p for p in seen.values() if p.is_running()]  # False for a pid reused since (psutil compares start times)
for p in left:
    with contextlib.suppress(psutil.NoSuchProcess):
        p.terminate()
for p in psutil.wait_procs(left, timeout=5)[1]:
    with contextlib.suppress(psutil.NoSuchProcess):
        p.kill()
"""


def cluster_address_env(address: str) -> dict | None:
    """A runtime env naming a ``host:port`` cluster to the job's actors (Train's placement-group cleaner would else
    find the machine's last-started cluster), unless the job's own env names one."""
    parts = host_port(address)
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    if parts is None or not parts[0] or "RAY_ADDRESS" in ((job.get("runtime_env") or {}).get("env_vars") or {}):
        return None
    return {"env_vars": {"RAY_ADDRESS": address}}


def host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` Ray address (the host may be empty); None for "auto", ray://, URLs."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return None
    return host, int(port)


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds when nothing listens at a ``host:port`` RAY_ADDRESS (``ray.init`` retries for minutes)."""
    if (parts := host_port(address)) is None:
        return
    try:
        socket.create_connection((parts[0].strip("[]"), parts[1]), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(
            f"no Ray cluster at RAY_ADDRESS={address} (cannot connect: {e.strerror or e}) — start one with 'ray start --head' or unset RAY_ADDRESS"
        ) from None


def cluster_node_types() -> tuple[dict[str, dict], bool]:
    """``({name: resources}, complete)``: the autoscaler config's worker types and the live nodes; not complete for
    a RAY_ADDRESS cluster without that config."""
    import ray

    path = Path(os.environ.get("PERENNIAL_CLUSTER_CONFIG") or Path.home() / "ray_bootstrap_config.yaml")
    types = (yaml.safe_load(path.read_text()).get("available_node_types") or {}) if path.is_file() else {}
    kinds = {name: dict(t.get("resources") or {}) for name, t in types.items() if t.get("max_workers", 0) > 0}
    complete = bool(kinds) or not os.environ.get("RAY_ADDRESS")
    kinds |= {f"node {n['NodeID'][:8]}": n["Resources"] for n in ray.nodes() if n["Alive"]}
    return kinds, complete


def check_cluster(cfg) -> None:
    want = config_lib.worker_resources(cfg.scaling)
    if problem := cluster_refusal(want, cfg.run.storage_path, *cluster_node_types()):
        raise config_lib.ConfigError(problem)


def cluster_refusal(want: dict, storage_path: str, kinds: dict[str, dict], complete: bool) -> str:
    """Why a run asking ``want`` per worker cannot run on nodes ``kinds`` (it would pend forever, or write
    node-local checkpoints on several nodes), or ""."""
    if complete and kinds and not any(all(res.get(k, 0) >= v for k, v in want.items()) for res in kinds.values()):
        name, res = max(kinds.items(), key=lambda kv: (kv[1].get("GPU", 0), kv[1].get("CPU", 0)))
        shown = {k: v for k, v in res.items() if k in ("CPU", "GPU") or k in want}
        return (
            f"no node type of this cluster can hold one worker ({' '.join(f'{k}={v:g}' for k, v in want.items())}):"
            f" the largest, {name}, has {', '.join(f'{k}={v:g}' for k, v in shown.items())} — lower"
            " scaling.cpus_per_worker / gpus_per_worker, fix scaling.node_type, or add a bigger node type to cluster.yaml"
        )
    if "://" not in storage_path and len(kinds) > 1:
        return (
            f"run.storage_path='{storage_path}' is a folder on this machine, but this cluster has several "
            "nodes whose workers cannot write there — set run.storage_path=s3://BUCKET/PREFIX "
            "(or file:///PATH on a filesystem that every node mounts)"
        )
    return ""


# ----------------------------------------------------------------------------- storage: state files, checkpoints
def storage_uri(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def write_state_file(directory: str, name: str, state: dict) -> None:
    """``state`` as JSON in ``directory/name``, local or ``s3://`` (a run's or a sweep's resume state)."""
    fs, path = filesystem(directory)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as f:
        f.write(json.dumps(state, indent=1, default=str).encode())


def checkpoint_uri(checkpoint) -> str:
    return fs_uri(checkpoint.filesystem, checkpoint.path) if checkpoint is not None else ""


def checkpoint_meta(checkpoint) -> dict:
    """meta.json of a checkpoint, read in place (no download of the weights)."""
    with checkpoint.filesystem.open_input_file(f"{checkpoint.path}/{META}") as f:
        return json.loads(f.read())


def checkpoint_order(name: str) -> tuple | None:
    """A checkpoint folder's sort key (``final`` last, ``epoch_0003_step_000120`` after ``epoch_0002``), or None."""
    if name == "final":
        return (float("inf"), 0)
    if m := re.fullmatch(r"(?:epoch|checkpoint)_(\d+)(?:_step_(\d+))?", name):  # checkpoint_N: a Tune trial's
        return (int(m[1]) - 1, int(m[2])) if m[2] else (int(m[1]), 0)
    return None


def run_checkpoints(run_dir: str) -> list:
    """``(filesystem, [folder path, ...])`` of a run's whole checkpoints (meta.json present), oldest first."""
    fs, path = filesystem(run_dir)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path))
    except OSError:
        return fs, []
    names = sorted((i.base_name for i in infos if checkpoint_order(i.base_name)), key=checkpoint_order)
    return fs, [f"{path}/{n}" for n in names if fs.get_file_info(f"{path}/{n}/{META}").type == pafs.FileType.File]


def last_checkpoint(run_dir: str):
    """The newest whole checkpoint in a run's folder (Train, local mode or sweep trial), or None."""
    import ray.train

    fs, paths = run_checkpoints(run_dir)
    return ray.train.Checkpoint(paths[-1], filesystem=fs) if paths else None


def git_sha() -> str:
    """$PERENNIAL_GIT_SHA (a job's uploaded copy has no .git), else HEAD's short sha, ``-dirty`` with changes."""
    if sha := os.environ.get("PERENNIAL_GIT_SHA"):
        return sha
    cmd = ["git", "describe", "--always", "--dirty", "--abbrev=12", "--exclude=*"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True, cwd=Path(__file__).parents[1])
    except (OSError, subprocess.SubprocessError):  # no git, not a clone, or too slow
        return ""
    return out.stdout.strip()


def job_id() -> str:
    """The Ray job submission this run belongs to, if any (Ray sets ``job_submission_id`` itself)."""
    meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("metadata") or {}
    return os.environ.get("PERENNIAL_JOB_ID") or meta.get("job_submission_id") or meta.get("submission_id", "")


# ----------------------------------------------------------------------------- running the loop
def make_trainer(cfg, name: str, callbacks=(), extra_config: dict | None = None, train_fn=None):
    """The TorchTrainer for ``cfg``; with ``train_fn`` (the loop with its own session) it runs in local mode."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs.loop import train_loop_per_worker

    s = cfg.scaling
    low, high = config_lib.worker_range(s)
    elastic = config_lib.is_elastic(s)
    resize = {"elastic_resize_monitor_interval_s": s.elastic_resize_interval_s} if elastic else {}
    return TorchTrainer(
        train_fn or train_loop_per_worker,
        train_loop_config={"config": cfg} | (extra_config or {}),  # the checked config: workers use it as it is
        scaling_config=ray.train.ScalingConfig(
            num_workers=0 if train_fn else (low, high) if elastic else high,  # (min, max): an elastic group
            **resize,
            use_gpu=s.use_gpu,
            resources_per_worker=config_lib.worker_resources(s),
            placement_strategy=s.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,  # unique per fresh run: V2 resumes a run of the same name on purpose only
            storage_path=storage_uri(cfg.run.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.failure.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=max(2, cfg.run.num_to_keep)),
            callbacks=list(callbacks),
            logging_config=ray.train.LoggingConfig(log_level=os.environ.get("PERENNIAL_TRAIN_LOG_LEVEL", "WARNING")),
        ),
    )


def error_line(err: BaseException) -> str:
    """One readable line for a Train failure (the worker's own exception, not Ray's wrapper)."""
    failures = list((getattr(err, "worker_failures", None) or {}).values())
    # a worker that died takes the others down with it (their gloo/NCCL peers reset): name the death, not the echo
    failures.sort(key=lambda e: "died" not in str(e) and "ActorDied" not in type(e).__name__)
    inner = failures[0] if failures else getattr(err, "controller_failure", None)
    text = str(inner if inner is not None else err).strip().splitlines()
    last = [ln for ln in text if ln.strip() and not ln.startswith(" ")]
    return (last[-1] if last else type(err).__name__)[:500]


def run_trainer(cfg, run_id: str, callbacks=(), extra_config: dict | None = None) -> tuple:
    """``TorchTrainer.fit()`` for ``cfg``: returns (last checkpoint or None, error or None)."""
    import ray.train

    try:
        return make_trainer(cfg, run_id, callbacks, extra_config).fit().checkpoint, None
    except ray.train.TrainingFailedError as e:
        try:  # the last epoch checkpoint that did land, for the history of a failed run
            return ray.train.Result.from_path(f"{storage_uri(cfg.run.storage_path).rstrip('/')}/{run_id}").checkpoint, e
        except Exception:
            return None, e


def resumed_by_batch(runner, cfg, run_id: str, *args) -> tuple:
    """``runner`` (bound by functools.partial) for a batch job with retries left: a failed run whose workers' node was
    lost is left unrecorded and the driver ends with :class:`NodeLost`: the batch's watcher resumes it (jobs.batch)."""
    checkpoint, error = runner(cfg, run_id, *args)
    if error is not None and checkpoint is not None and node_lost(checkpoint_meta(checkpoint).get("workers", [])):
        raise NodeLost(f"run {run_id}: a node of its workers was lost — the batch's watcher resumes it")
    return checkpoint, error


def node_lost(workers: list[dict], wait_s: float = 30.0) -> bool:
    """Whether Ray declares a node of ``workers`` dead within ``wait_s``: a surviving rank often fails first (its
    peer's connection closed), before the GCS has missed the lost node's health checks."""
    import ray

    ids, deadline = {w["node_id"] for w in workers}, time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if any(n["NodeID"] in ids and not n["Alive"] for n in ray.nodes()):
            return True
        time.sleep(1)
    return False


class LocalSession:
    """The loop's session in Train local mode, whose report keeps only a temporary folder in Ray 2.60
    (ray/train/v2/_internal/execution/train_fn_utils.py, LocalTrainFnUtils): checkpoints go to the run folder."""

    world_rank, world_size = 0, 1

    def __init__(self, run_id: str, storage_path: str, keep: int):
        from ray.train import torch as train_torch  # Train's own placement, which local mode serves as a worker's

        self.run_name, self.storage_path, self.keep = run_id, storage_path, keep
        self.run_dir = f"{storage_path.rstrip('/')}/{run_id}"
        self.prepare_model, self.prepare_data_loader = train_torch.prepare_model, train_torch.prepare_data_loader

    def report(self, metrics: dict, checkpoint=None, checkpoint_dir_name: str | None = None) -> None:
        if checkpoint is None:
            return
        fs, path = filesystem(f"{self.run_dir}/{checkpoint_dir_name}")
        src = Path(checkpoint.path)
        for file in sorted((f for f in src.rglob("*") if f.is_file()), key=lambda f: f == src / META):
            dest = f"{path}/{file.relative_to(src).as_posix()}"  # meta.json last: it marks the checkpoint whole
            fs.create_dir(dest.rpartition("/")[0], recursive=True)
            pafs.copy_files(str(file), dest, destination_filesystem=fs)
        fs, paths = run_checkpoints(self.run_dir)
        for old in paths[: -self.keep]:
            fs.delete_dir(old)

    def get_checkpoint(self):
        return last_checkpoint(self.run_dir)

    @property
    def device(self):
        import ray.train.torch

        return ray.train.torch.get_device()


def run_in_process(cfg, run_id: str, callbacks=(), extra_config: dict | None = None) -> tuple:
    """One attempt of a one-worker run in Train local mode, in this process: (last checkpoint, error)."""
    from jobs.loop import train_loop_per_worker

    session = LocalSession(run_id, storage_uri(cfg.run.storage_path), max(2, cfg.run.num_to_keep))
    trainer = make_trainer(cfg, run_id, callbacks, extra_config, train_fn=lambda c: train_loop_per_worker(c, session))
    try:
        trainer.fit()
    except Exception as e:
        return session.get_checkpoint(), e
    return session.get_checkpoint(), None


def run_local(cfg, run_id: str, callbacks=(), extra_config: dict | None = None) -> tuple:
    """:func:`run_in_process`, restarted up to ``failure.max_failures`` times as a worker group would be."""
    limit, failures = cfg.failure.max_failures, 0
    while True:
        checkpoint, error = run_in_process(cfg, run_id, callbacks, extra_config)
        if error is None or (limit != -1 and failures >= limit):
            return checkpoint, error
        failures += 1
        print(
            f"attempt {failures} failed: {error_line(error)} — restarting from the last checkpoint"
            f" ({failures}/{'unlimited' if limit == -1 else limit} of failure.max_failures)",
            file=sys.stderr,
            flush=True,
        )


def start(cfg) -> tuple:
    """(runner, where it trains in words): local mode for ``scaling.local_mode=always``, or auto with one worker,
    no RAY_ADDRESS and no node_type; else a worker group."""
    s = cfg.scaling
    auto = config_lib.one_worker(s) and not os.environ.get("RAY_ADDRESS") and not s.node_type
    if s.local_mode == "always" or (s.local_mode == "auto" and auto):
        os.environ.setdefault("PERENNIAL_GIT_SHA", git_sha())  # the trackers' git tag (init_ray sets it otherwise)
        return (
            run_local,
            "in this process: Ray Train local mode, no cluster (scaling.local_mode=never for a worker group)",
        )
    init_ray()
    check_cluster(cfg)
    return run_trainer, "in a Ray Train worker group"


# ----------------------------------------------------------------------------- store rows
def fit(
    cfg, store: Store, *, run_id: str = "", runner=run_trainer, callbacks=(), extra_config=None, quiet=False, **ids
):
    """Run ``runner(cfg, run_id, callbacks, extra_config) -> (checkpoint, error)`` and record it; the runs row."""
    run_id = run_id or f"{cfg.workload}-{uuid.uuid4().hex[:10]}"
    started, t0 = now(), time.perf_counter()
    checkpoint, error = runner(cfg, run_id, callbacks, extra_config)
    row = record_run(cfg, store, run_id, checkpoint, error, started=started, wall=time.perf_counter() - t0, **ids)
    if not quiet:
        print_summary(row, store)
    return row


def record_run(cfg, store: Store, run_id: str, checkpoint, error=None, *, started, wall: float, extra_row=None, **ids):
    """Write a run's ``epochs`` then ``runs`` rows from its last checkpoint, once (a resumed sweep may ask twice)."""
    done = store.df("runs", filter=ds.field("run_id") == run_id)
    if len(done):
        return done.iloc[0].to_dict()
    meta = checkpoint_meta(checkpoint) if checkpoint is not None else {}
    ids = {"parent_run_id": "", "round": None, "sweep_id": "", "trial_id": ""} | ids
    row = runs_row(cfg, run_id, ids, meta, checkpoint, error, started, wall) | (extra_row or {})
    keys = {"run_id": run_id, "workload": cfg.workload, "sweep_id": ids["sweep_id"], "trial_id": ids["trial_id"]}
    epochs = [keys | h for h in meta.get("history", [])]  # meta.json's values: plain JSON types already
    store.record_run(epochs, row)  # one commit per table, epochs first: never a mix of two recorders' rows
    return row


def runs_row(cfg, run_id: str, ids: dict, meta: dict, checkpoint, error, started, wall: float) -> dict:
    """A run's ``runs`` row from its last checkpoint's meta.json."""
    metric, mode = config_lib.metric_and_mode(cfg)
    final, history = meta.get("final", {}), meta.get("history", [])
    finished = meta.get("finished") and not meta.get("stopped_early")
    status = "failed" if error is not None else "completed" if finished else "stopped_early"
    s = cfg.scaling
    ckpt_uri = checkpoint_uri(checkpoint) if meta.get("finished") else ""
    return {
        "run_id": run_id,
        "workload": cfg.workload,
        **ids,
        "job_id": job_id(),
        "status": status,
        "error": error_line(error) if error is not None else "",
        "metric": metric,
        "mode": mode,
        "best_metric": meta.get("best_metric"),
        "best_epoch": meta.get("best_epoch"),
        "epochs": meta.get("epoch", 0),
        "config_json": json.dumps(config_lib.to_dict(cfg), sort_keys=True),
        "checkpoint_uri": ckpt_uri,
        "export_uri": f"{ckpt_uri}/export" if ckpt_uri else "",
        "started_at": started,
        "finished_at": now(),
        "wall_s": wall,
        "cpu_s": final.get("cpu_s", meta.get("cpu_s")),
        # elastic runs: an upper bound (the epochs rows give each epoch's worker count)
        "gpu_s": wall * config_lib.max_workers(s) * s.gpus_per_worker if s.use_gpu else 0.0,
        "train_time_s": final.get("train_time_s", sum(h.get("train_time_s", 0.0) for h in history)),
        "num_workers": config_lib.max_workers(s),  # the most workers it may run on (fixed runs: the count)
        "min_workers": config_lib.worker_range(s)[0],  # < num_workers: an elastic run
        "use_gpu": s.use_gpu,
        "seed": cfg.train.seed,
        "git_sha": git_sha(),
        "data_fingerprint": meta.get("fingerprint", ""),
        "precision": meta.get("precision", ""),  # what train.precision (auto) resolved to
        **worker_nodes(meta.get("workers") or []),
        **config_lib.flatten(cfg),
        **{k: float(v) for k, v in final.items() if k.startswith(("val_", "test_"))},
    }


def worker_nodes(workers: list[dict]) -> dict:
    """``worker_node_ids`` / ``worker_node_types`` for the runs row, comma-separated (``workers``: in rank order)."""
    import ray

    types = [w.get("node_type", "") for w in workers]
    if not all(types) and ray.is_initialized():  # not launched by an autoscaler: type by the resource named after it
        kinds = [k for k in cluster_node_types()[0] if not k.startswith("node ")]
        resources = {n["NodeID"]: n["Resources"] for n in ray.nodes()}
        for i, w in enumerate(workers):
            types[i] = types[i] or next((k for k in kinds if resources.get(w["node_id"], {}).get(k)), "")
    return {"worker_node_ids": ",".join(w["node_id"] for w in workers), "worker_node_types": ",".join(types)}


def print_summary(row: dict, store: Store) -> None:
    best = "n/a" if row["best_metric"] is None else f"{row['best_metric']:.4f}"
    print(
        f"\nrun {row['run_id']}  {row['status']}  {row['metric']}={best} "
        f"(epoch {row['best_epoch']}/{row['epochs']})  wall {row['wall_s']:.1f} s"
    )
    if row["error"]:
        print(f"  error: {row['error']}")
    print_scores(row)
    print(f"  store: {store.uri}  (python -m jobs.store history {row['run_id']})")


def print_scores(row) -> None:
    """A runs row's test metrics and model, under its summary line."""
    tests = {k: v for k, v in row.items() if k.startswith("test_") and not k.endswith("_loss") and not missing(v)}
    if tests:
        print("  test: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(tests.items())))
    if row["export_uri"]:
        print(f"  model: {row['export_uri']}")


# ----------------------------------------------------------------------------- CLI
def parser(prog: str, description: str, resume: str = "") -> argparse.ArgumentParser:
    """The verbs' shared arguments; ``resume``: what ``--resume ID`` continues (run, sweep), "" for no --resume."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=not resume, help="YAML config, e.g. configs/mlp.yaml")
    if resume:
        p.add_argument(
            "--resume",
            metavar=f"{resume.upper()}_ID",
            help=f"continue a {resume} whose driver died, from its last checkpoint (give run.storage_path=... where it ran)",
        )
    p.add_argument("--smoke-test", action="store_true", help="tiny data and epochs: a quick end-to-end check")
    p.add_argument("--store", help="evaluation store: a directory or s3:// URI (default $PERENNIAL_STORE or ./store)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.01")
    return p


def main(argv: list[str]) -> int:
    args = parser("python -m jobs.train", "One Ray Train run of a workload, recorded in the store.", "run")
    args = args.parse_args(argv)
    if args.resume:
        cfg, store, _ = resume_state(args, "run", RUN_STATE)
        run_id = args.resume
        done = store.df("runs", filter=ds.field("run_id") == run_id)
        if len(done):  # recorded already (its driver lived long enough): nothing to redo, nothing written twice
            print(f"run {run_id} is already recorded ({done.iloc[0]['status']}): nothing to resume")
            return 0 if done.iloc[0]["status"] in FINISHED else 1
    else:
        if not args.config:
            raise config_lib.ConfigError("give --config configs/<workload>.yaml (or --resume RUN_ID)")
        cfg, store = preflight.prepare(args.config, args.overrides, args.smoke_test, args.store)
        run_id = f"{cfg.workload}-{uuid.uuid4().hex[:10]}"
    runner, path = start(cfg)  # a ClusterError is exit 1 (cli_main)
    if int(os.environ.get("PERENNIAL_RETRIES_LEFT", "0")) > 0:
        runner = functools.partial(resumed_by_batch, runner)
    low, high = config_lib.worker_range(cfg.scaling)
    workers = f"{high} worker(s)" if low == high else f"{low} to {high} workers (elastic)"
    each = "GPU" if cfg.scaling.use_gpu else f"{cfg.scaling.cpus_per_worker} CPU each"
    print(f"training {cfg.workload} on {workers} ({each}), {cfg.train.epochs} epochs, {path}")
    if not args.resume:  # what --resume needs, before the run starts: a driver may die at any moment after
        state = {"run_id": run_id, "config": config_lib.to_dict(cfg), "store": store.uri}
        write_state_file(f"{storage_uri(cfg.run.storage_path).rstrip('/')}/{run_id}", RUN_STATE, state)
    print(
        f"run {run_id}{' (resumed)' if args.resume else ''}  — if this driver dies: {resume_command('train', run_id, cfg)}"
    )
    row = fit(cfg, store, run_id=run_id, runner=runner)  # Ray Train resumes a run of the same name
    compact_if_due(store, cfg.workload)  # the end of a job: its partition's small files, one compactor at a time
    return 0 if row["status"] in FINISHED else 1


def resume_command(verb: str, run_id: str, cfg) -> str:
    where = "" if cfg.run.storage_path == config_lib.Run().storage_path else f" run.storage_path={cfg.run.storage_path}"
    return f"python -m jobs.{verb} --resume {run_id}{where}"


def resume_state(args, what: str, state_file: str) -> tuple:
    """(config, store, state) of the run or sweep ``--resume`` names, from the state file beside its checkpoints."""
    found = [config_lib._split_override(o) for o in args.overrides]
    rescale = what == "run"  # a run's checkpoints load on another worker count (docs/workloads.md)
    scaling = [(k, v) for k, v in found if rescale and k.startswith("scaling.") and k != "scaling.strategy"]
    if args.smoke_test or any(k != "run.storage_path" and k not in dict(scaling) for k, _ in found):
        keys = "run.storage_path=... (where it ran)" + (", scaling.* other than scaling.strategy," if rescale else "")
        raise config_lib.ConfigError(
            f"--resume continues a {what} with its saved config — give only {keys} and --store"
        )
    root = dict(found).get("run.storage_path") or (
        config_lib.load_config(args.config).run.storage_path if args.config else config_lib.Run().storage_path
    )
    root = storage_uri(str(root))
    fs, path = filesystem(f"{root.rstrip('/')}/{args.resume}/{state_file}")
    try:
        with fs.open_input_stream(path) as f:
            state = json.loads(f.read())
    except OSError:
        raise config_lib.ConfigError(
            f"no {what} '{args.resume}' under {root} — pass run.storage_path=... where it ran"
        ) from None
    cfg = config_lib.from_dict(state["config"])
    for key, value in scaling:
        cfg = config_lib.set_dotted(cfg, key, value)
    config_lib.check_values(cfg)
    return cfg, preflight.open_store(args.store or state["store"], cfg), state


if __name__ == "__main__":
    config_lib.cli_main(main)
