"""Submit jobs and batches of jobs to a Ray cluster, and keep their record in the store's `jobs` table (docs/jobs.md).

    python -m jobs.submit submit configs/mlp.yaml [--verb train|sweep|continual [--from best|RUN_ID]] [--follow] [--smoke-test] [key=value ...]
    python -m jobs.submit batch BATCH.yaml [--retries N] [--follow]      # many jobs at once (jobs/batch.py)
    python -m jobs.submit status ID|BATCH_ID
    python -m jobs.submit logs ID [--follow]
    python -m jobs.submit list [--workload W] [--status S] [--batch BATCH_ID]
    python -m jobs.submit stop ID | --batch BATCH_ID
    python -m jobs.submit render --k8s CONFIG|BATCH.yaml [--retries N] [--queue Q] [--priority P]   # a KubeRay RayJob
    (all take --address URL, default $RAY_ADDRESS or http://127.0.0.1:8265, and --format table|csv|json;
     submit and batch take --store PATH_OR_S3_URI, default $PERENNIAL_STORE, the config's store.path or ./store)

A thin layer over Ray's ``JobSubmissionClient``. Each submission has a ``submitted`` row and a final one, built only
from what Ray reports (so whichever command first sees the job ended writes the same row, under a fixed name).
Exit codes: 0 success (with --follow: the job succeeded), 1 the job failed or was stopped, or no cluster, 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import workloads
from jobs import batch, k8s, preflight
from jobs import config as config_lib
from jobs.batch import DRIVER_RESOURCES
from jobs.errors import ClusterError, UserError
from jobs.store import Store, now, print_frame, store_path
from jobs.store.engine import first_line
from jobs.train import git_sha, storage_uri  # local paths made absolute: the job runs in a copy of the repo

ROOT = Path(__file__).resolve().parent.parent
VERBS = ("train", "sweep", "continual")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# The working_dir upload: only what a job runs (Ray caps the size), plus the config's folder; never credentials
UPLOAD = ("jobs", "workloads", "configs", "pyproject.toml")
EXCLUDES = """.git .venv/ venv/ runs/ store/ ray_results/ plots/ bench/out/ data/ __pycache__/ .pytest_cache/ .mypy_cache/
.ruff_cache/ *.egg-info/ .gl/ *.parquet *.pt *.safetensors *.ckpt .env .env.* .envrc .aws/ .netrc .pypirc *.pem *.key
credentials*""".split()


def upload_excludes(*keep: str) -> list[str]:
    """The repo's top-level entries outside UPLOAD and the top folders of ``keep`` (repo paths), then EXCLUDES."""
    tops = set(UPLOAD) | {Path(path).parts[0] for path in keep}
    return sorted(f"/{name}" for name in os.listdir(ROOT) if name not in tops) + EXCLUDES


def client(address: str | None):
    """A connected ``JobSubmissionClient``; ClusterError with one line if there is no cluster."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    from jobs.ray_compat import RUNTIME_ENV_LOGGER

    for chatter in ("ray.dashboard.modules.job.sdk", "ray.dashboard.modules.dashboard_sdk", RUNTIME_ENV_LOGGER):
        logging.getLogger(chatter).setLevel(logging.ERROR)  # "WebSocket closed", "skipping upload" and the like

    # Ray reads RAY_API_SERVER_ADDRESS / RAY_ADDRESS before its `address` argument
    if address or not (os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")):
        os.environ["RAY_API_SERVER_ADDRESS"] = address or DEFAULT_ADDRESS
    where = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    try:
        return JobSubmissionClient()
    except AuthenticationError:
        hint = "set RAY_AUTH_MODE=token (the token comes from $HOME/.ray/auth_token or RAY_AUTH_TOKEN)"
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            hint = "the token was refused: use the cluster's $HOME/.ray/auth_token or RAY_AUTH_TOKEN"
        raise ClusterError(f"the Ray cluster at {where} requires authentication — {hint}") from None
    except Exception as e:
        raise ClusterError(
            f"no Ray cluster at {where} ({first_line(e)}) — start one with 'ray start --head', "
            f"or pass --address / set RAY_ADDRESS to its dashboard URL"
        ) from None


def job_info(ray_client, submission_id: str):
    try:
        return ray_client.get_job_info(submission_id)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise config_lib.ConfigError(
                f"no job '{submission_id}' on this cluster — list jobs with: python -m jobs.submit list"
            ) from None
        raise


def _ms(ms: int | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC) if ms else None


def _ours(info) -> bool:
    return (info.metadata or {}).get("perennial") == "1"


def final_row(info) -> dict:
    """The final `jobs` row, from Ray's record only (so any observer writes the same row)."""
    meta = info.metadata or {}
    submitted = meta.get("submitted_at")
    row = {"submission_id": info.submission_id, "status": info.status.value.lower(), "entrypoint": info.entrypoint}
    row |= {k: meta.get(k, "") for k in ("workload", "verb", "config_hash", "git_sha", "address", "batch_id")}
    row |= {"message": (info.message or "")[:4000], "attempt": int(meta.get("attempt", 1))}
    row |= {"submitted_at": dt.datetime.fromisoformat(submitted) if submitted else None}
    return row | {"started_at": _ms(info.start_time), "finished_at": _ms(info.end_time)}


def observe(infos: list) -> None:
    """Write the final row of every ended job of ours that has none yet, into the store it was submitted with."""
    import pyarrow.dataset as ds

    by_store: dict[str, list] = {}
    for info in infos:
        if _ours(info) and info.status.value in TERMINAL:
            by_store.setdefault(info.metadata.get("store") or storage_uri(store_path(None)), []).append(info)
    for uri, group in by_store.items():
        try:
            store = Store(uri)
            ended = ds.field("status").isin(["succeeded", "failed", "stopped"])
            ended &= ds.field("submission_id").isin([i.submission_id for i in group])
            have = set(store.read("jobs", filter=ended, columns=["submission_id"])["submission_id"].to_pylist())
            for info in group:
                if info.submission_id not in have:
                    final = final_row(info)  # replaced, not added, if another observer wrote it first
                    store.replace("jobs", [final], key={k: final[k] for k in ("submission_id", "status")})
        except UserError as e:  # one unreachable store must not hide the other jobs
            print(f"warning: could not record the end of {len(group)} job(s) in {uri}: {e}", file=sys.stderr)


def config_hash(cfg) -> str:
    """What is trained, not where results go: the config without its `run` and `store` sections."""
    d = {k: v for k, v in config_lib.to_dict(cfg).items() if k not in ("run", "store")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def upload_plan(config: str, cfg) -> tuple[str, dict]:
    """(the config path the job reads, its runtime_env's upload): the repo, or an external workload's folder with
    this repo's ``jobs`` and ``workloads`` as ``py_modules`` (``ray job submit --working-dir DIR --py-modules``)."""
    folder, path = Path(cfg.workload_dir).resolve() if cfg.workload_dir else None, Path(config).resolve()
    if folder is None or folder == ROOT or ROOT in folder.parents:
        if ROOT not in path.parents:
            raise config_lib.ConfigError(
                f"config '{config}' is outside the repo {ROOT} — the job only sees files uploaded from it; copy the config under configs/"
            )
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[0] in {e.strip("/") for e in EXCLUDES if e.endswith("/")}:
            raise config_lib.ConfigError(
                f"config '{config}' is in {rel.split('/')[0]}/, which is not uploaded — copy it under configs/"
            )
        keep = [rel]
        if folder is not None:  # a module in the repo but outside UPLOAD: keep its top-level entry
            keep.append(str(Path(workloads.module(cfg.workload).__file__).resolve().relative_to(ROOT)))
        return rel, {"working_dir": str(ROOT), "excludes": upload_excludes(*keep)}
    if folder not in path.parents:
        raise config_lib.ConfigError(
            f"config '{config}' is outside the folder of workload '{cfg.workload}' ({folder}), which is what the job "
            "uploads — put the config next to the workload module"
        )
    upload = {"working_dir": str(folder), "py_modules": [str(ROOT / "jobs"), str(ROOT / "workloads")]}
    return path.relative_to(folder).as_posix(), upload | {"excludes": EXCLUDES}


def follow(ray_client, submission_id: str) -> int:
    """Stream the job's logs until it ends; record the final row; 0 if it succeeded, else 1."""

    async def tail() -> None:
        async for lines in ray_client.tail_job_logs(submission_id):
            print(lines, end="", flush=True)

    try:
        try:
            asyncio.run(tail())
        except RuntimeError as e:  # the log stream broke: fall back to polling the status
            print(f"\n(log stream closed: {str(e).splitlines()[0]}; waiting for the job to end)", file=sys.stderr)
        while (info := job_info(ray_client, submission_id)).status.value not in TERMINAL:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; the job keeps running — stop it with: python -m jobs.submit stop {submission_id}",
            file=sys.stderr,
        )
        return 130
    observe([info])
    took = f" in {(info.end_time - info.start_time) / 1000:.1f} s" if info.start_time and info.end_time else ""
    print(f"\njob {info.submission_id} {info.status.value.lower()}{took}")
    if info.status.value != "SUCCEEDED" and info.message:
        print("  " + info.message.strip().splitlines()[0])
    return 0 if info.status.value == "SUCCEEDED" else 1


def new_job(address: str, cfg, store: Store, plan: tuple, overrides, *, verb: str, **how) -> tuple:
    """``(submission id, entrypoint, runtime_env, metadata)`` of one job; ``plan``: its ``upload_plan``."""
    sid, sha = f"{cfg.workload}-{verb}-{uuid.uuid4().hex[:8]}", git_sha()
    if "://" not in cfg.run.storage_path and not os.path.isabs(cfg.run.storage_path):  # not inside the job's temp copy
        overrides = [*overrides, f"run.storage_path={storage_uri(cfg.run.storage_path)}"]
    flags = (["--from", how["parent"]] if how.get("parent") else []) + ["--smoke-test"] * how.get("smoke_test", False)
    entrypoint = shlex.join(["python", "-m", f"jobs.{verb}", "--config", plan[0], *flags, *overrides])
    local_cluster = urlparse(address).hostname in ("127.0.0.1", "localhost", "::1")
    if not local_cluster and "://" not in store.uri:
        print(
            f"warning: the store {store.uri} is a local path, but the cluster at {address} may not share "
            "this machine's disk — use --store s3://bucket/prefix",
            file=sys.stderr,
        )
    ours = {"PERENNIAL_STORE": store.uri, "PERENNIAL_JOB_ID": sid, "PERENNIAL_GIT_SHA": sha}
    env_vars = how.get("env_vars", {}) | ours
    if local_cluster:  # Ray Train's placement-group cleaner auto-detects the State API: wrong with several on a machine
        env_vars.setdefault("RAY_API_SERVER_ADDRESS", address)
    metadata = {
        "perennial": "1",
        "workload": cfg.workload,
        "verb": verb,
        "config": plan[0],
        "config_hash": config_hash(cfg),
        "git_sha": sha,
        "store": store.uri,
        "address": address,
        "batch_id": how.get("batch_id", ""),
        "attempt": "1",
        "first_id": sid,  # the first attempt: what a batch's watcher groups a job's attempts by
        "retries": str(how.get("retries", 0)),
    }
    return sid, entrypoint, plan[1] | {"env_vars": env_vars}, metadata


def launch(ray_client, store: Store, sid: str, entrypoint: str, runtime_env: dict, metadata: dict) -> None:
    """Submit one Ray job, its driver asking for a job slot (jobs.batch.DRIVER_RESOURCES); then its `submitted` row."""
    metadata = metadata | {"submitted_at": now().isoformat()}
    left = int(metadata["retries"]) - int(metadata["attempt"]) + 1  # a driver that has some exits 75 on a lost node
    runtime_env = runtime_env | {"env_vars": runtime_env.get("env_vars", {}) | {"PERENNIAL_RETRIES_LEFT": str(left)}}
    try:
        ray_client.submit_job(
            entrypoint=entrypoint, submission_id=sid, runtime_env=runtime_env, metadata=metadata, **DRIVER_RESOURCES
        )
    except Exception as e:
        raise ClusterError(f"submission refused by {ray_client.get_address()}: {first_line(e)}") from None
    row = {k: metadata[k] for k in ("workload", "verb", "config_hash", "git_sha", "address", "batch_id")}
    row |= {"submission_id": sid, "entrypoint": entrypoint, "status": "submitted", "message": ""}
    row |= {"submitted_at": dt.datetime.fromisoformat(metadata["submitted_at"]), "attempt": int(metadata["attempt"])}
    store.append("jobs", [row])


def cmd_submit(args, cfg, store: Store) -> int:
    plan = upload_plan(args.config, cfg)
    if (args.verb == "continual") != bool(args.parent):
        raise config_lib.ConfigError(
            "--from best|RUN_ID goes with --verb continual (and only with it): the run the new round starts from"
        )
    env_vars = {}
    for item in args.env:
        name, _, value = item.partition("=")
        if not name or (not _ and name not in os.environ):
            raise config_lib.ConfigError(f"--env {item}: give NAME=VALUE, or NAME of a variable set here")
        env_vars[name] = value if _ else os.environ[name]
    ray_client = client(args.address)
    how = {"smoke_test": args.smoke_test, "parent": args.parent, "env_vars": env_vars}
    job = new_job(ray_client.get_address(), cfg, store, plan, args.overrides, verb=args.verb, **how)
    launch(ray_client, store, *job)
    print(f"submitted {job[0]}: {job[1]}")
    if not args.follow:
        print(f"  follow: python -m jobs.submit logs {job[0]} --follow")
        print(f"  status: python -m jobs.submit status {job[0]}")
        return 0
    return follow(ray_client, job[0])


def cmd_batch(args) -> int:
    """Check every entry (a bad one: exit 2, nothing submitted), submit them all, then the batch's watcher."""
    verb, smoke_test, entries = batch.read(args.file)
    checked = []
    for i, (config, overrides) in enumerate(entries, 1):
        try:
            cfg = preflight.load(config, overrides, smoke_test)
            checked.append((cfg, upload_plan(config, cfg), overrides))
        except UserError as e:
            raise config_lib.ConfigError(f"batch entry {i} ({shlex.join([config, *overrides])}): {e}") from None
    if not checked:
        raise config_lib.ConfigError(f"batch file '{args.file}' names no job — add entries under jobs: or grid:")
    store = preflight.open_store(storage_uri(store_path(args.store, checked[0][0])), checked[0][0])
    ray_client = client(args.address)
    address, batch_id = ray_client.get_address(), f"batch-{uuid.uuid4().hex[:8]}"
    how = {"smoke_test": smoke_test, "batch_id": batch_id, "retries": args.retries}
    jobs = [new_job(address, cfg, store, plan, overrides, verb=verb, **how) for cfg, plan, overrides in checked]
    for job in jobs:
        launch(ray_client, store, *job)
    print(f"batch {batch_id}: {len(jobs)} jobs submitted (drivers beyond the head's {batch.JOB_SLOT} wait PENDING)")
    if args.follow:
        return watch_batch(ray_client, batch_id)
    # the watcher, a Ray job of its own (no slot): it outlives this command; its state is Ray's job table + the store
    watcher = shlex.join(["python", "-m", "jobs.submit", "watch", batch_id, "--address", address])
    env = jobs[0][2] | {"env_vars": {k: v for k, v in jobs[0][2]["env_vars"].items() if k != "PERENNIAL_JOB_ID"}}
    meta = {"perennial": "watcher", "batch_id": batch_id}
    ray_client.submit_job(entrypoint=watcher, submission_id=f"{batch_id}-watch", runtime_env=env, metadata=meta)
    print(f"  status: python -m jobs.submit status {batch_id}\n  stop:   python -m jobs.submit stop --batch {batch_id}")
    return 0


def batch_jobs(ray_client, batch_id: str, watcher: bool = False) -> list:
    """A batch's jobs (ConfigError if the cluster has none); with ``watcher``, its watcher job too, first."""
    infos = [i for i in ray_client.list_jobs() if (i.metadata or {}).get("batch_id") == batch_id]
    if not infos:
        raise config_lib.ConfigError(
            f"no batch '{batch_id}' on this cluster — list jobs with: python -m jobs.submit list"
        )
    return sorted(infos, key=_ours) if watcher else [i for i in infos if _ours(i)]


def latest_attempts(infos: list) -> list:
    """The newest attempt of each job of a batch."""
    by_attempt = sorted(infos, key=lambda i: int(i.metadata.get("attempt", 1)))
    return list({i.metadata.get("first_id", i.submission_id): i for i in by_attempt}.values())


def watch_batch(ray_client, batch_id: str) -> int:
    """Until the batch has ended: record each end, resubmit a job whose driver was lost (up to its ``retries``).
    Stateless between polls, so a restarted watcher carries on."""
    while True:
        infos = batch_jobs(ray_client, batch_id)
        observe(infos)
        latest, waiting = latest_attempts(infos), 0
        for info in latest:
            if info.status.value not in TERMINAL:
                waiting += 1
            elif info.status.value == "FAILED" and batch.lost_infrastructure(info):
                if int(info.metadata["attempt"]) <= int(info.metadata.get("retries", 0)):
                    waiting += resubmit(ray_client, info)
        if not waiting:
            print(f"batch {batch_id} ended: {batch.counts([i.status.value.lower() for i in latest])}", flush=True)
            return 0  # the watcher's own outcome; a failed job is the batch's (status): no RayJob backoff reruns all
        time.sleep(2.0)


RESUME = re.compile(r"python -m jobs\.(?:train|sweep) --resume \S+(?: run\.storage_path=\S+)?")


def resubmit(ray_client, info) -> int:
    """Again with ``--resume`` of the run (or sweep) its log names, else from the start."""
    meta, attempt = info.metadata, int(info.metadata["attempt"]) + 1
    named = RESUME.findall(ray_client.get_job_logs(info.submission_id))
    entrypoint, sid = named[-1] if named else info.entrypoint, f"{meta['first_id']}-r{attempt}"
    env = dict(info.runtime_env or {})
    env |= {"env_vars": env.get("env_vars", {}) | {"PERENNIAL_JOB_ID": sid}}
    print(f"{info.submission_id}: driver lost ({(info.message or '').strip()[:200]}); attempt {attempt}: {sid}")
    try:
        launch(ray_client, Store(meta["store"]), sid, entrypoint, env, meta | {"attempt": str(attempt)})
    except ClusterError as e:  # submitted by another watcher already, or the cluster is busy: the next poll sees
        print(f"warning: {e}", file=sys.stderr)
    return 1


def cmd_status(args) -> int:
    if args.id.startswith("batch-"):
        return cmd_list(argparse.Namespace(**vars(args) | {"batch": args.id, "workload": None, "status": None}))
    ray_client = client(args.address)
    info = job_info(ray_client, args.id)
    observe([info])
    rows = final_row(info) | {"message": (info.message or "").strip(), "store": (info.metadata or {}).get("store", "")}
    if args.format == "table":
        for k, v in rows.items():
            print(f"{k:>14}: {'' if v is None else v}")
    else:
        import pandas as pd

        print_frame(pd.DataFrame([rows]), args.format)
    return 0


def cmd_logs(args) -> int:
    ray_client = client(args.address)
    info = job_info(ray_client, args.id)
    if args.follow:
        return follow(ray_client, args.id)
    print(ray_client.get_job_logs(args.id), end="")
    observe([info])
    return 0


LIST_COLUMNS = ["submission_id", "workload", "verb", "status", "attempt", "submitted_at", "duration_s", "message"]


def cmd_list(args) -> int:
    """Jobs, newest first; a batch's (--batch, or ``status BATCH_ID``): its counts by state first."""
    import pandas as pd

    ray_client = client(args.address)
    infos = batch_jobs(ray_client, args.batch) if args.batch else [i for i in ray_client.list_jobs() if _ours(i)]
    observe(infos)
    rows = []
    for info in infos:  # final_row's columns, the times and the message shortened for a table
        took = (info.end_time - info.start_time) / 1000 if info.start_time and info.end_time else None
        message = (info.message or "").strip().splitlines()[0][:80] if (info.message or "").strip() else ""
        submitted = info.metadata.get("submitted_at", "")[:19]
        rows.append(final_row(info) | {"submitted_at": submitted, "duration_s": took, "message": message})
    df = pd.DataFrame(rows, columns=LIST_COLUMNS)
    for column, wanted in (("workload", args.workload), ("status", (args.status or "").lower())):
        df = df[df[column] == wanted] if wanted else df
    if args.batch and args.format == "table":
        watcher = next((i for i in ray_client.list_jobs() if i.submission_id == f"{args.batch}-watch"), None)
        state = f"; its watcher {watcher.status.value.lower()}" if watcher else ""
        jobs = [i.status.value.lower() for i in latest_attempts(infos)]
        print(f"batch {args.batch}: {batch.counts(jobs)} ({len(infos)} attempts){state}")
    print_frame(df.sort_values("submitted_at", ascending=False), args.format, empty="(no jobs)")
    return 0


def cmd_stop(args) -> int:
    if bool(args.id) == bool(args.batch):
        raise config_lib.ConfigError("give a job ID or --batch BATCH_ID")
    ray_client = client(args.address)
    # a batch's watcher first, so that it submits nothing more
    infos = batch_jobs(ray_client, args.batch, watcher=True) if args.batch else [job_info(ray_client, args.id)]
    for info in infos:
        if info.status.value not in TERMINAL:
            ray_client.stop_job(info.submission_id)
    deadline = time.time() + 60
    while any(i.status.value not in TERMINAL for i in infos) and time.time() < deadline:
        time.sleep(0.5)
        infos = [job_info(ray_client, i.submission_id) for i in infos]
    observe(infos)
    for info in infos:
        print(f"job {info.submission_id} {info.status.value.lower()}")
    return 0 if all(i.status.value in TERMINAL for i in infos) else 1


def main(argv: list[str]) -> int:
    # before or after the verb: SUPPRESS keeps a verb's parser from resetting a value given before it
    shared = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    shared.add_argument("--address", help=f"Ray dashboard / job server URL (default $RAY_ADDRESS or {DEFAULT_ADDRESS})")
    shared.add_argument("--format", choices=["table", "csv", "json"])
    shared.add_argument("--store", help="evaluation store for the job and its `jobs` rows: a directory or s3:// URI")
    p = argparse.ArgumentParser(prog="python -m jobs.submit", description=__doc__.split("\n")[0], parents=[shared])
    sub = p.add_subparsers(dest="cmd", required=True)

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, parents=[shared])

    sm = verb("submit", "submit `python -m jobs.<verb> --config CONFIG` as a Ray job")
    sm.add_argument("config", help="YAML config inside the repo, e.g. configs/mlp.yaml")
    sm.add_argument("--verb", choices=VERBS, default="train")
    sm.add_argument("--from", dest="parent", metavar="best|RUN_ID", help="with --verb continual: the run to start from")
    sm.add_argument("--follow", action="store_true", help="stream the logs; exit 0 if the job succeeds, 1 if not")
    sm.add_argument("--smoke-test", action="store_true", help="the workload's tiny mode")
    env_help = "also set this variable in the job (e.g. AWS_ENDPOINT_URL); NAME alone copies it from here"
    sm.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]", help=env_help)
    sm.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.01")
    bt = verb("batch", "submit every job of a batch file (docs/jobs.md)")
    bt.add_argument("file", help="a batch file: entries (config + overrides) and/or a grid")
    bt.add_argument("--retries", type=int, default=0, help="submit a job whose driver was lost again, up to N times")
    bt.add_argument("--follow", action="store_true", help="watch the batch here until it ends (no watcher job)")
    verb("watch", "a batch's watcher (batch runs it as a Ray job)").add_argument("batch")
    k8s.add_arguments(verb("render", "a KubeRay RayJob manifest for a job or a batch (docs/kubernetes.md)"))
    verb("status", "a job's status and Ray's message, or a batch's jobs").add_argument("id", help="a job or batch id")
    lg = verb("logs", "a job's logs")
    lg.add_argument("id")
    lg.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its outcome")
    ls = verb("list", "jobs submitted through this tool, newest first")
    ls.add_argument("--workload")
    ls.add_argument("--status", help="pending | running | succeeded | failed | stopped")
    ls.add_argument("--batch", help="only this batch's jobs, after their counts by state")
    sp = verb("stop", "stop a job (or a batch) and wait until it has ended")
    sp.add_argument("id", nargs="?")
    sp.add_argument("--batch", help="every job of this batch, and its watcher")
    args = argparse.Namespace(address=None, format="table", store=None)
    args, extra = p.parse_known_args(argv, args)  # argparse leaves key=value after an option unparsed
    if args.cmd in ("submit", "render") and not any(e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.cmd == "submit":  # bad input: exit 2 here, before any cluster work
        cfg = preflight.load(args.config, args.overrides, args.smoke_test)
        return cmd_submit(args, cfg, preflight.open_store(storage_uri(store_path(args.store, cfg)), cfg))
    commands = {"batch": cmd_batch, "render": k8s.render, "status": cmd_status, "logs": cmd_logs}
    commands |= {"list": cmd_list, "stop": cmd_stop, "watch": lambda a: watch_batch(client(a.address), a.batch)}
    return commands[args.cmd](args)


if __name__ == "__main__":
    config_lib.cli_main(main)
