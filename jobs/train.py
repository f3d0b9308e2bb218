"""One Ray Train run of one workload, recorded in the evaluation store.

    python -m jobs.train --config configs/mlp.yaml [--smoke-test] [--store PATH] [key=value ...]
    ray job submit --working-dir . -- python -m jobs.train --config configs/mlp.yaml --smoke-test

One worker and no cluster named: the loop runs in this process (Ray Train local mode, same checkpoints,
resume and store rows; no Ray cluster starts). Otherwise a Ray Train worker group on the cluster in
``RAY_ADDRESS`` (as under ``ray job submit``), else on an embedded local one (``scaling.local_mode``).
Exit codes: 0 the run finished, 1 it failed (the store records why), 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from jobs import config as config_lib
from jobs import preflight
from jobs.errors import ClusterError
from jobs.ports import free_port
from jobs.store import FINISHED, Store, compact_if_due, now


# ----------------------------------------------------------------------------- Ray plumbing
def init_ray(num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start an embedded local cluster (dashboard on 127.0.0.1).
    ``log_to_driver=False``: the workers' output and the autoscaler's events are not printed here."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("PERENNIAL_GIT_SHA", git_sha())  # the trackers' git tag; an embedded cluster inherits it
    address = os.environ.get("RAY_ADDRESS")
    if address:
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
    # An embedded cluster on 127.0.0.1 at a port we choose, so that we can tell its own actors where it is:
    # Ray Train's placement-group cleaner looks the cluster up by "auto", which fails as soon as a second
    # Ray instance runs on the machine — and then a trial stopped by ASHA never frees its CPUs.
    port = free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    loopback_only()
    env = {
        "RAY_ADDRESS": f"127.0.0.1:{port}",
        # A faster Train health check cuts seconds off every run's start and end (docs/performance.md, fixed cost).
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"),
        # No spot nodes to watch on one machine: one actor (and its 100 wake-ups/s, bench/wakeups.py) and an
        # error line per run fewer. A cluster reached through RAY_ADDRESS keeps Ray's default (on).
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0"),
    }
    ray.init(
        # "local": always a new cluster; without it ray.init joins whatever `ray start` last wrote to
        # /tmp/ray/ray_current_cluster — another user's cluster on a shared machine (seen in CI)
        address="local",
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        dashboard_host="127.0.0.1",
        logging_level=logging.WARNING,
        log_to_driver=log_to_driver,
        runtime_env={"env_vars": env},
    )
    os.environ.pop("RAY_GCS_SERVER_PORT", None)
    for key in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"):
        os.environ[key] = env[key]
    watch_embedded_cluster()


# Runs beside an embedded cluster as its own small process (psutil only: no torch, no project imports).
# Ray's own reaper ends the cluster's process group when its driver dies, but the raylet starts the
# DashboardAgent and RuntimeEnvAgent outside that group: after a SIGKILLed driver they lived on (parent 1),
# holding the agent port 52365, so the next local cluster refused `ray job submit`. This watcher notes every
# process under the driver (Ray renames them, so they are found by ancestry, not by name) and, once the
# driver is gone, ends those still running (matched by start time, never a reused PID).
_WATCHER = """
import os, sys, time, psutil
driver = psutil.Process(int(sys.argv[1]))
seen = {}
while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
    try:
        for p in driver.children(recursive=True):
            seen.setdefault(p.pid, p.create_time())
    except psutil.NoSuchProcess:
        break
    time.sleep(1.0)
left = []
for pid, created in seen.items():
    try:
        p = psutil.Process(pid)
        if p.create_time() == created and pid != os.getpid():
            p.terminate(); left.append(p)
    except psutil.NoSuchProcess:
        pass
gone, alive = psutil.wait_procs(left, timeout=5)
for p in alive:
    try: p.kill()
    except psutil.NoSuchProcess: pass
"""


def cluster_address_env(address: str) -> dict | None:
    """The job's runtime env that tells its actors which cluster they are on: ``RAY_ADDRESS`` for a ``host:port``
    address. Ray Train's placement-group cleaner (an actor) looks its cluster up by ``RAY_ADDRESS``, else by the
    cluster named in ``<temp>/ray/ray_current_cluster``: the one last started on the machine, maybe another. There
    it found no run controller, took it for dead and removed the live run's placement group, so the run failed
    (seen in CI beside the multi-node tests; ``tests/integration/test_train_job.py``). None for other address forms,
    and when the submitted job's own runtime env names ``RAY_ADDRESS`` (ray.init would refuse the conflict)."""
    parts = host_port(address)
    if parts is None or not parts[0]:
        return None
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    if "RAY_ADDRESS" in ((job.get("runtime_env") or {}).get("env_vars") or {}):
        return None
    return {"env_vars": {"RAY_ADDRESS": address}}


def watch_embedded_cluster() -> None:
    """Start the watcher that ends an embedded cluster's processes once this driver is gone (SIGKILL too)."""
    subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's group: Ray's reaper and a Ctrl-C leave it running
    )


def loopback_only() -> None:
    """Keep every server of a single-machine Ray on 127.0.0.1. Ray 2.60 swaps a 127.0.0.1 node address
    for the machine's outward IP and then binds GCS, raylet, workers and the metrics ports to 0.0.0.0
    (measured with psutil); its local-only mode (the one it uses on macOS) keeps them all on loopback."""
    from jobs.ray_compat import single_machine_mode

    single_machine_mode()


def host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` Ray address (the host may be empty); None for "auto", ray://, URLs."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return None
    return host, int(port)


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds when nothing listens at a ``host:port`` RAY_ADDRESS: ``ray.init`` retries an
    absent GCS for minutes (measured: still waiting after 120 s). Other forms ("auto", ray://) go to Ray."""
    import socket

    if (parts := host_port(address)) is None:
        return
    try:
        socket.create_connection((parts[0].strip("[]"), parts[1]), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(
            f"no Ray cluster at RAY_ADDRESS={address} (cannot connect: {e.strerror or e}) — start one with 'ray start --head' or unset RAY_ADDRESS"
        ) from None


def cluster_node_types() -> tuple[dict[str, dict], bool]:
    """The nodes this cluster has or can add: ``({name: resources}, complete)``. Worker types come from the
    autoscaler config the head holds (``ray up`` writes ~/ray_bootstrap_config.yaml; jobs.cluster_local sets
    PERENNIAL_CLUSTER_CONFIG), live nodes from Ray. ``complete`` is False for a RAY_ADDRESS cluster without
    that config: its autoscaler may add nodes this process cannot see."""
    import ray
    import yaml

    path = Path(os.environ.get("PERENNIAL_CLUSTER_CONFIG") or Path.home() / "ray_bootstrap_config.yaml")
    kinds: dict[str, dict] = {}
    if path.is_file():
        for name, spec in (yaml.safe_load(path.read_text()).get("available_node_types") or {}).items():
            if spec.get("max_workers", 0) > 0:
                kinds[name] = dict(spec.get("resources") or {})
    complete = bool(kinds) or not os.environ.get("RAY_ADDRESS")
    for node in ray.nodes():
        if node["Alive"]:
            kinds[f"node {node['NodeID'][:8]}"] = node["Resources"]
    return kinds, complete


def check_cluster(cfg) -> None:
    """Refuse, before any worker starts, what this cluster cannot run (see :func:`cluster_refusal`)."""
    kinds, complete = cluster_node_types()
    problem = cluster_refusal(config_lib.worker_resources(cfg.scaling), cfg.run.storage_path, kinds, complete)
    if problem:
        raise config_lib.ConfigError(problem)


def cluster_refusal(want: dict, storage_path: str, kinds: dict[str, dict], complete: bool) -> str:
    """Why a run asking ``want`` per worker cannot run on a cluster of node ``kinds``, or "": a worker no node
    type can hold (it would stay "pending" forever), or node-local checkpoints on a cluster of several nodes
    (a worker on another node would write them to its own disk, found out at the first checkpoint or restart)."""
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


RUN_STATE = "perennial_run.json"  # beside a run's checkpoints: its config and store, read by --resume


def write_state_file(directory: str, name: str, state: dict) -> None:
    """``state`` as JSON in ``directory/name``, local or ``s3://`` (a run's or a sweep's resume state)."""
    fs, path = state_fs(directory)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as f:
        f.write(json.dumps(state, indent=1, default=str).encode())


def read_state_file(directory: str, name: str) -> dict | None:
    """What :func:`write_state_file` wrote, or None when there is none."""
    fs, path = state_fs(directory)
    try:
        with fs.open_input_stream(f"{path}/{name}") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError):
        return None


def state_fs(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), os.path.abspath(uri))


def write_run_state(cfg, run_id: str, store: Store) -> None:
    """What ``--resume RUN_ID`` needs, written before the run starts: a driver may die at any moment after."""
    state = {"run_id": run_id, "config": config_lib.to_dict(cfg), "store": store.uri}
    write_state_file(f"{storage_uri(cfg.run.storage_path).rstrip('/')}/{run_id}", RUN_STATE, state)


def read_run_state(storage_path: str, run_id: str) -> dict | None:
    return read_state_file(f"{storage_uri(storage_path).rstrip('/')}/{run_id}", RUN_STATE)


def new_run_id(workload: str) -> str:
    return f"{workload}-{uuid.uuid4().hex[:10]}"


def git_sha() -> str:
    """The code's version for a runs or jobs row: $PERENNIAL_GIT_SHA (set by jobs.submit for a job, whose
    uploaded copy has no .git), else HEAD's short sha, ``-dirty`` when tracked files have uncommitted changes."""
    if os.environ.get("PERENNIAL_GIT_SHA"):
        return os.environ["PERENNIAL_GIT_SHA"]
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5, cwd=root
        )
        if sha.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=root,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return ""


def job_id() -> str:
    """The Ray job submission this run belongs to, if any."""
    if os.environ.get("PERENNIAL_JOB_ID"):
        return os.environ["PERENNIAL_JOB_ID"]
    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata") or {}
        return meta.get("job_submission_id") or meta.get("submission_id", "")  # Ray sets the first itself
    except ValueError:
        return ""


def storage_uri(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def checkpoint_uri(checkpoint) -> str:
    import pyarrow.fs as pafs

    if checkpoint is None:
        return ""
    fs = checkpoint.filesystem
    if isinstance(fs, pafs.LocalFileSystem):
        return checkpoint.path
    scheme = {"S3FileSystem": "s3", "GcsFileSystem": "gs"}.get(type(fs).__name__, fs.type_name)
    return f"{scheme}://{checkpoint.path}"


def checkpoint_meta(checkpoint) -> dict:
    """meta.json of a checkpoint, read in place (no download of the weights)."""
    from jobs.loop import META

    with checkpoint.filesystem.open_input_file(f"{checkpoint.path}/{META}") as f:
        return json.loads(f.read())


def make_trainer(cfg, name: str, callbacks=(), extra_config: dict | None = None, train_fn=None):
    """The TorchTrainer for ``cfg``: scaling, failure and checkpoint settings all from the config. ``train_fn``
    (the loop with a session of its own) runs in Ray Train's local mode: in this process, no worker group."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs.loop import train_loop_per_worker

    s = cfg.scaling
    config_lib.check_num_workers(s.num_workers)
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
            placement_strategy=s.placement_strategy,  # PACK keeps DDP ranks on one node when one fits them
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

    trainer = make_trainer(cfg, run_id, callbacks, extra_config)
    try:
        return trainer.fit().checkpoint, None
    except ray.train.TrainingFailedError as e:
        try:  # the last epoch checkpoint that did land, for the history of a failed run
            return ray.train.Result.from_path(f"{storage_uri(cfg.run.storage_path).rstrip('/')}/{run_id}").checkpoint, e
        except Exception:
            return None, e


def checkpoint_order(name: str) -> tuple | None:
    """Where a checkpoint folder comes in its run, or None for another folder: ``final`` last,
    ``epoch_0003_step_000120`` (120 steps into epoch 3) after ``epoch_0002``, Tune's ``checkpoint_000004`` by index."""
    if name == "final":
        return (float("inf"), 0)
    if m := re.fullmatch(r"epoch_(\d+)(?:_step_(\d+))?", name):
        return (int(m[1]) - 1, int(m[2])) if m[2] else (int(m[1]), 0)
    if m := re.fullmatch(r"checkpoint_(\d+)", name):
        return (int(m[1]), 0)
    return None


def run_checkpoints(run_dir: str) -> list:
    """``(filesystem, [folder path, ...])`` of a run's whole checkpoints (meta.json present), oldest first."""
    import pyarrow.fs as pafs

    from jobs.loop import META

    fs, path = state_fs(run_dir)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path))
    except (FileNotFoundError, OSError):
        return fs, []
    names = [i.base_name for i in infos if i.type == pafs.FileType.Directory and checkpoint_order(i.base_name)]
    names.sort(key=checkpoint_order)
    return fs, [f"{path}/{n}" for n in names if fs.get_file_info(f"{path}/{n}/{META}").type == pafs.FileType.File]


def last_checkpoint(run_dir: str):
    """The newest whole checkpoint in a run's folder (a Train run's, a local-mode run's or a sweep trial's), or None."""
    import ray.train

    fs, paths = run_checkpoints(run_dir)
    return ray.train.Checkpoint(paths[-1], filesystem=fs) if paths else None


class LocalSession:
    """The loop's session in Ray Train local mode (``ScalingConfig(num_workers=0)``), plus the persistence that mode
    lacks in Ray 2.60: ``LocalTrainFnUtils.report`` keeps the reported checkpoint object (the loop's temporary
    folder, deleted right after) and ``get_checkpoint`` returns only it (ray/train/v2/_internal/execution/
    train_fn_utils.py, LocalTrainFnUtils); ``LocalController.run`` returns a Result with no path
    (ray/train/v2/_internal/execution/local_mode/utils.py). So each checkpoint is copied into the run folder here,
    the newest one there resumes the run, and ``run.num_to_keep`` applies."""

    world_rank, world_size = 0, 1

    def __init__(self, run_id: str, storage_path: str, keep: int):
        self.run_name, self.storage_path, self.keep = run_id, storage_path, keep
        self.run_dir = f"{storage_path.rstrip('/')}/{run_id}"

    def report(self, metrics: dict, checkpoint=None, checkpoint_dir_name: str | None = None) -> None:
        if checkpoint is None:
            return
        import pyarrow.fs as pafs

        from jobs.loop import META

        fs, path = state_fs(f"{self.run_dir}/{checkpoint_dir_name or f'checkpoint_{int(time.time() * 1e3)}'}")
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
    def device(self):  # Ray Train's own placement, which local mode serves as a worker's
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def prepare_data_loader(self, loader, auto_transfer: bool):
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader, auto_transfer=auto_transfer)


def run_in_process(cfg, run_id: str, callbacks=(), extra_config: dict | None = None) -> tuple:
    """One attempt of a one-worker run in this process: Ray Train's local mode runs the loop here, with a
    :class:`LocalSession`. Train calls no callbacks in local mode. Returns (the last checkpoint, error)."""
    from jobs.loop import train_loop_per_worker

    assert config_lib.one_worker(cfg.scaling), "in-process runs have exactly one worker"
    session = LocalSession(run_id, storage_uri(cfg.run.storage_path), max(2, cfg.run.num_to_keep))
    trainer = make_trainer(cfg, run_id, callbacks, extra_config, train_fn=lambda c: train_loop_per_worker(c, session))
    try:
        trainer.fit()
    except Exception as e:
        return session.get_checkpoint(), e
    return session.get_checkpoint(), None


def uses_local_mode(cfg) -> bool:
    """Whether this run takes the local-mode path: the loop in this process, no Ray cluster, no worker group.

    ``scaling.local_mode``: ``auto`` (default) = one worker, no ``RAY_ADDRESS`` and no ``scaling.node_type``
    (those name a cluster); ``always`` = one worker wherever; ``never`` = a Train worker group even for one."""
    s, mode = cfg.scaling, cfg.scaling.local_mode
    if mode == "auto":
        return config_lib.one_worker(s) and not os.environ.get("RAY_ADDRESS") and not s.node_type
    return mode == "always"


def start(cfg) -> tuple:
    """The runner for ``cfg`` and where it trains, in words: local mode, or Ray started (or joined) and
    checked for a worker group. Raises ClusterError when the cluster in RAY_ADDRESS cannot be reached."""
    if uses_local_mode(cfg):
        os.environ.setdefault("PERENNIAL_GIT_SHA", git_sha())  # the trackers' git tag (init_ray sets it otherwise)
        return (
            run_local,
            "in this process: Ray Train local mode, no cluster (scaling.local_mode=never for a worker group)",
        )
    init_ray()
    check_cluster(cfg)
    return run_trainer, "in a Ray Train worker group"


def run_local(cfg, run_id: str, callbacks=(), extra_config: dict | None = None) -> tuple:
    """``run_in_process`` with Train's failure policy: a loop that raises is restarted from its last
    checkpoint up to ``failure.max_failures`` times (-1 = forever), as a Train worker group would be."""
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


def fit(
    cfg,
    store: Store,
    *,
    run_id: str | None = None,
    sweep_id: str = "",
    trial_id: str = "",
    parent_run_id: str = "",
    round: int | None = None,
    callbacks=(),
    extra_config: dict | None = None,
    extra_row: dict | None = None,
    quiet: bool = False,
    runner=run_trainer,
) -> dict:
    """Run one Train run to the end and write its ``epochs`` and ``runs`` rows; returns the runs row.

    ``runner(cfg, run_id, callbacks, extra_config) -> (checkpoint, error)`` runs the loop; the default
    is Ray Train (jobs.sweep passes an in-process runner for single-worker trials)."""
    run_id = run_id or new_run_id(cfg.workload)
    config_lib.metric_and_mode(cfg)  # a bad sweep.mode fails before any cluster work
    started, t0 = now(), time.perf_counter()
    checkpoint, error = runner(cfg, run_id, callbacks, extra_config)
    row = record_run(
        cfg,
        store,
        run_id,
        checkpoint,
        error,
        started=started,
        wall=time.perf_counter() - t0,
        sweep_id=sweep_id,
        trial_id=trial_id,
        parent_run_id=parent_run_id,
        round=round,
        extra_row=extra_row,
    )
    if not quiet:
        print_summary(row, store)
    return row


def record_run(
    cfg,
    store: Store,
    run_id: str,
    checkpoint,
    error: BaseException | None = None,
    *,
    started,
    wall: float,
    sweep_id: str = "",
    trial_id: str = "",
    parent_run_id: str = "",
    round: int | None = None,
    extra_row: dict | None = None,
) -> dict:
    """Write a run's ``epochs`` then its ``runs`` row (:func:`runs_row`) from its last checkpoint; returns the runs
    row. Idempotent: a run the store already has is not written again (a resumed sweep may record a trial twice)."""
    import pyarrow.dataset as ds

    done = store.df("runs", filter=ds.field("run_id") == run_id)
    if len(done):
        return done.iloc[0].to_dict()
    meta = checkpoint_meta(checkpoint) if checkpoint is not None else {}
    history = meta.get("history", [])
    ids = {"parent_run_id": parent_run_id, "round": round, "sweep_id": sweep_id, "trial_id": trial_id}
    row = runs_row(cfg, run_id, ids, meta, checkpoint, error, started, wall) | (extra_row or {})
    epochs = [
        {
            "run_id": run_id,
            "workload": cfg.workload,
            "sweep_id": sweep_id,
            "trial_id": trial_id,
            **{k: (float(v) if isinstance(v, float) else v) for k, v in h.items()},
        }
        for h in history
    ]
    # The whole history, replacing the run's rows in one commit per table (epochs first): a recorder killed
    # between its two commits, or two racing past the check above, never add or mix rows (docs/store.md).
    store.record_run(epochs, row)
    return row


def runs_row(cfg, run_id: str, ids: dict, meta: dict, checkpoint, error, started, wall: float) -> dict:
    """A run's ``runs`` row from its last checkpoint's meta.json; ``ids``: its parent run, round, sweep and trial.

    Status: ``failed`` with an error; ``completed`` when the loop wrote its final checkpoint; otherwise
    ``stopped_early`` (patience, or a sweep scheduler stopped it)."""
    metric, mode = config_lib.metric_and_mode(cfg)
    final, history = meta.get("final", {}), meta.get("history", [])
    if error is not None:
        status = "failed"
    else:
        status = "stopped_early" if meta.get("stopped_early") or not meta.get("finished") else "completed"
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
    """``worker_node_ids`` / ``worker_node_types`` for the runs row, in rank order, comma-separated."""
    import ray

    workers = sorted(workers, key=lambda w: w["rank"])
    types = [w.get("node_type", "") for w in workers]
    if not all(types) and ray.is_initialized():  # not launched by an autoscaler: type by the resource named after it
        kinds = [k for k in cluster_node_types()[0] if not k.startswith("node ")]
        resources = {n["NodeID"]: n["Resources"] for n in ray.nodes()}
        for i, w in enumerate(workers):
            types[i] = types[i] or next((k for k in kinds if resources.get(w["node_id"], {}).get(k)), "")
    return {"worker_node_ids": ",".join(w["node_id"] for w in workers), "worker_node_types": ",".join(types)}


def print_summary(row: dict, store: Store) -> None:
    print(
        f"\nrun {row['run_id']}  {row['status']}  {row['metric']}={_fmt(row['best_metric'])} "
        f"(epoch {row['best_epoch']}/{row['epochs']})  wall {row['wall_s']:.1f} s"
    )
    tests = {k: v for k, v in row.items() if k.startswith("test_") and not k.endswith("_loss")}
    if tests:
        print("  test: " + "  ".join(f"{k} {_fmt(v)}" for k, v in sorted(tests.items())))
    if row["error"]:
        print(f"  error: {row['error']}")
    if row["export_uri"]:
        print(f"  model: {row['export_uri']}")
    print(f"  store: {store.uri}  (python -m jobs.store history {row['run_id']})")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


# ----------------------------------------------------------------------------- CLI
def parser(prog: str, description: str, resume: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=not resume, help="YAML config, e.g. configs/mlp.yaml")
    if resume:
        p.add_argument(
            "--resume",
            metavar="RUN_ID",
            help="continue a run whose driver died, from its last checkpoint (give run.storage_path=... where it ran)",
        )
    p.add_argument("--smoke-test", action="store_true", help="tiny data and epochs: a quick end-to-end check")
    p.add_argument("--store", help="evaluation store: a directory or s3:// URI (default $PERENNIAL_STORE or ./store)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.01 scaling.num_workers=2"
    )
    return p


def prepare(args) -> tuple:
    """Config + store + data checks: everything that can reject bad input before Ray starts."""
    return preflight.prepare(args.config, args.overrides, args.smoke_test, args.store)


def main(argv: list[str]) -> int:
    args = parser("python -m jobs.train", "One Ray Train run of a workload, recorded in the store.", resume=True)
    args = args.parse_args(argv)
    if args.resume:
        cfg, store, run_id = prepare_resume(args)
        import pyarrow.dataset as ds

        done = store.df("runs", filter=ds.field("run_id") == run_id)
        if len(done):  # recorded already (its driver lived long enough): nothing to redo, nothing written twice
            print(f"run {run_id} is already recorded ({done.iloc[0]['status']}): nothing to resume")
            return 0 if done.iloc[0]["status"] in FINISHED else 1
    else:
        if not args.config:
            raise config_lib.ConfigError("give --config configs/<workload>.yaml (or --resume RUN_ID)")
        cfg, store = prepare(args)
        run_id = new_run_id(cfg.workload)
    try:
        runner, path = start(cfg)
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"training {cfg.workload} on {workers_text(cfg.scaling)} "
        f"({'GPU' if cfg.scaling.use_gpu else f'{cfg.scaling.cpus_per_worker} CPU each'}), {cfg.train.epochs} epochs,"
        f" {path}"
    )
    if not args.resume:
        write_run_state(cfg, run_id, store)
    where = "" if cfg.run.storage_path == config_lib.Run().storage_path else f" run.storage_path={cfg.run.storage_path}"
    print(
        f"run {run_id}{' (resumed)' if args.resume else ''}  — if this driver dies: python -m jobs.train --resume {run_id}{where}"
    )
    # Ray Train (either path) resumes a run of the same name from its last checkpoint
    row = fit(cfg, store, run_id=run_id, runner=runner)
    compact_if_due(store, cfg.workload)  # the end of a job: its partition's small files, one compactor at a time
    return 0 if row["status"] in FINISHED else 1


def workers_text(s) -> str:
    low, high = config_lib.worker_range(s)
    if low == high:
        return f"{high} worker(s)"
    return f"{low} to {high} workers (elastic: it grows as nodes come, shrinks as they go, every {s.elastic_resize_interval_s:g} s at most)"


def resume_root(args, what: str) -> str:
    """The storage root a ``--resume`` of a run or sweep looks in: only run.storage_path=... may be given with it."""
    found = [config_lib._split_override(o) for o in args.overrides]
    if args.smoke_test or any(k != "run.storage_path" for k, _ in found):
        raise config_lib.ConfigError(
            f"--resume continues a {what} with its saved config — give only run.storage_path=... (where it ran) and --store"
        )
    root = dict(found).get("run.storage_path") or (
        config_lib.load_config(args.config).run.storage_path if args.config else config_lib.Run().storage_path
    )
    return storage_uri(str(root))


def prepare_resume(args) -> tuple:
    """Config and store of the run to resume, from the state it wrote beside its checkpoints."""
    root = resume_root(args, "run")
    state = read_run_state(root, args.resume)
    if state is None:
        raise config_lib.ConfigError(f"no run '{args.resume}' under {root} — pass run.storage_path=... where it ran")
    cfg = config_lib.from_dict(state["config"])
    store = preflight.open_store(args.store or state["store"], cfg)
    return cfg, store, args.resume


if __name__ == "__main__":
    config_lib.cli_main(main)
