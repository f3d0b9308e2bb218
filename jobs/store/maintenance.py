"""The store's maintenance: compaction, vacuum and check (``python -m jobs.store compact|vacuum|check``).

delta-rs lets two overlapping compactions of one table both commit, and every row then reads twice (its optimize
has no conflict check against a concurrent optimize), so each compaction holds the table's lease: an object
created only if absent, which expires after ``LEASE_S`` so that a crashed compactor does not block the table.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import time
import uuid
import warnings
from collections.abc import Iterator
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from jobs.errors import StoreError
from jobs.store.engine import LOG, PARTITION, RETENTION_HOURS, Engine, first_line, now, set_table_properties

LEASE = "_compaction.lease"  # in the table's folder: Delta readers and vacuum skip names starting with "_"
LEASE_S = 600.0  # a lease older than this is expired (a compaction of one table takes seconds)
COMPACT_ATTEMPTS = 4  # a compaction refused over a run's re-recording is planned again this many times


@contextlib.contextmanager
def lease(store: Engine, table: str) -> Iterator[bool]:
    """Hold ``table``'s compaction lease for the block: yields False (holding nothing) if another compactor has it."""
    path, token = f"{store.root}/{table}/{LEASE}", uuid.uuid4().hex
    held = _acquire(store, path, token)
    try:
        yield held
    finally:
        if held:
            with contextlib.suppress(OSError), store.fs.open_input_stream(path) as stream:
                if stream.read() == token.encode():  # a lease that expired under this compactor may be another's now
                    store.fs.delete_file(path)


def _acquire(store: Engine, path: str, token: str) -> bool:
    for _ in range(2):
        if _create(store, path, token.encode()):
            return True
        info = store.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            continue  # released meanwhile
        if info.mtime is None or time.time() - info.mtime.timestamp() < LEASE_S:
            return False
        # expired: the one compactor that creates the marker named after its time takes it over
        if not _create(store, f"{path}.{info.mtime_ns}.expired", b""):
            return False
        store.fs.delete_file(path)
    return False


def _create(store: Engine, path: str, body: bytes) -> bool:
    """Create ``path`` only if absent (S3: ``If-None-Match: *``, which pyarrow cannot send, so boto3 does)."""
    if store.local:
        try:
            with open(path, "xb") as f:  # O_CREAT | O_EXCL
                f.write(body)
        except FileExistsError:
            return False
        return True
    import boto3
    from botocore.exceptions import ClientError

    bucket, _, key = path.partition("/")
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            return False
        raise StoreError(f"cannot write the compaction lease {path}: {first_line(e)}") from None
    return True


def files_per_partition(d) -> dict[str, int]:
    actions = pa.table(d.get_add_actions(flatten=True))
    column = f"partition.{PARTITION}"
    if column not in actions.column_names:
        return {}
    return {c["values"]: c["counts"] for c in pc.value_counts(actions[column]).to_pylist()}


def compact(
    store: Engine, tables: list[str] | None = None, workload: str | None = None, due_only: bool = False
) -> list[dict]:
    """Merge each partition's files (or ``workload``'s; ``due_only``: those with ``compact_after`` files or more)
    under each table's lease; a row per partition, ``files_after`` None where another compactor held the lease."""
    summary = []
    for table in tables or store.tables():
        d = store.delta(table)
        if d is None:
            raise StoreError(f"no table '{table}' in store '{store.uri}' — tables: {', '.join(store.tables())}")
        before = files_per_partition(d)
        partitions = sorted(before) if workload is None else [workload]
        if due_only:
            partitions = [w for w in partitions if before.get(w, 0) >= store.compact_after]
        if not partitions:
            continue
        with lease(store, table) as held:
            if held:
                d = store.delta(table)  # the newest snapshot, taken under the lease: a stale one doubles rows
                before = files_per_partition(d)
                set_table_properties(d)
                for w in partitions:
                    if before.get(w, 0) > 1:
                        _compact_partition(store, table, w)
            after = files_per_partition(store.delta(table)) if held else {}
        version = store.delta(table).version()
        summary += [
            {"table": table, "partition": f"{PARTITION}={w}", "files_before": before.get(w, 0)}
            | {"files_after": after.get(w, 0) if held else None, "version": version}
            for w in partitions
        ]
    return summary


def _compact_partition(store: Engine, table: str, workload: str) -> None:
    from deltalake import CommitProperties
    from deltalake.exceptions import CommitFailedError

    for attempt in range(COMPACT_ATTEMPTS):
        try:
            store.delta(table).optimize.compact(
                partition_filters=[(PARTITION, "=", workload)],
                commit_properties=CommitProperties(custom_metadata={"perennial.operation": "COMPACT"}),
            )
            return
        except CommitFailedError:  # a run of the partition re-recorded meanwhile: plan again on the newest snapshot
            time.sleep(min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))


def compact_if_due(store: Engine, workload: str, tables: tuple[str, ...] = ("epochs", "runs")) -> list[dict]:
    """Compact ``workload``'s partitions that are due (a sweep's driver, a job's end); a failure is a warning."""
    from deltalake.exceptions import DeltaError

    try:
        present = [t for t in tables if store.delta(t) is not None]
        return compact(store, present, workload, due_only=True) if present else []
    except (DeltaError, OSError, StoreError) as e:
        warnings.warn(f"store compaction skipped: {first_line(e)} — `python -m jobs.store compact` retries it")
        return []


def vacuum(store: Engine, retention_hours: int = RETENTION_HOURS, dry_run: bool = False) -> list[dict]:
    """Delete files no version younger than ``retention_hours`` reads (time travel keeps that window)."""
    summary = []
    for table in store.tables():
        d = store.delta(table)
        removed = d.vacuum(
            retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, full=True
        )  # full: also files no commit names (killed writers, lost races) older than the retention
        if not dry_run:
            d.cleanup_metadata()  # log entries past delta.logRetentionDuration (30 days)
        summary.append({"table": table, "files_removed" if not dry_run else "would_remove": len(removed)})
    return summary


def check(store: Engine, fix: bool = False, older_than_s: float = 3600.0) -> list[dict]:
    """Delta-level findings, one dict each: non-Delta folders, lost files, files no commit names (``fix`` deletes
    those older than ``older_than_s``), half-recorded runs, partitions due for compaction."""
    findings = []

    def add(kind, table, path, detail, fixed=False):
        findings.append({"kind": kind, "table": table, "path": path, "detail": detail, "fixed": fixed})

    cutoff = now() - dt.timedelta(seconds=older_than_s)
    tables = store.tables()
    for name in sorted(set(store.folders()) - set(tables)):
        add("not_delta", name, f"{store.root}/{name}", "not a Delta table (no _delta_log) — move it out of the store")
    for table in tables:
        d = store.delta(table)
        live = {_rel(store.table_uri(table), f) for f in d.file_uris()}
        named = live | _files_named_in_log(store.fs, f"{store.root}/{table}/{LOG}")
        base = f"{store.root}/{table}"
        listing = store.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = {f.path[len(base) + 1 :]: f for f in listing if f.type == pafs.FileType.File}
        present = {rel: f for rel, f in files.items() if not rel.startswith(LOG) and rel.endswith(".parquet")}
        for rel in sorted(live - set(present)):
            if fix:
                d.repair(dry_run=False)
            add("missing_file", table, rel, "named by the log but not in storage — its rows are gone", fix)
        for rel in sorted(set(present) - named):
            f = present[rel]
            if f.mtime is not None and f.mtime >= cutoff:
                add("in_progress", table, rel, "no commit names it yet: a writer may still be running")
                continue
            if fix:
                store.fs.delete_file(f.path)
            detail = "no commit names it (a writer killed before its commit, or a commit that lost a race): "
            add("orphan_file", table, rel, detail + "readers never see it; --fix or vacuum deletes it", fix)
        for w, n in sorted(files_per_partition(d).items()):
            if n >= 2 * store.compact_after:
                add("many_files", table, f"{PARTITION}={w}", f"{n} files — `python -m jobs.store compact`")
    if {"runs", "epochs"} <= set(tables):
        for run_id, detail in _record_mismatches(store):
            add("record_pending", "runs", run_id, detail)
    return findings


def _rel(table_uri: str, file_uri: str) -> str:
    file_uri = unquote(file_uri.removeprefix("file://"))
    return file_uri[len(table_uri) + 1 :] if file_uri.startswith(table_uri) else file_uri


def _files_named_in_log(fs: pafs.FileSystem, log: str) -> set[str]:
    """Every data file an add or remove action in the log names (time travel reads those)."""
    named = set()
    for f in fs.get_file_info(pafs.FileSelector(log, allow_not_found=True)):
        if not f.path.endswith(".json") or os.path.basename(f.path).startswith("_"):
            continue
        with fs.open_input_stream(f.path) as stream:
            actions = [json.loads(line) for line in stream.read().decode().splitlines() if line.strip()]
        named |= {unquote(action[kind]["path"]) for action in actions for kind in ("add", "remove") if kind in action}
    return named


def _record_mismatches(store: Engine) -> list[tuple[str, str]]:
    """Runs whose ``runs`` and ``epochs`` rows come from different recordings (a recorder running, or killed)."""
    runs = store.df("runs", columns=["run_id", "record_id"])
    epochs = store.df("epochs", columns=["run_id", "record_id"])
    if "record_id" not in runs or "record_id" not in epochs:
        return []
    sets = epochs.groupby("run_id")["record_id"].agg(set)
    return [
        (run_id, f"runs row from recording {record}, epochs from {', '.join(sorted(x for x in sets[run_id] if x))}")
        for run_id, record in dict(zip(runs["run_id"], runs["record_id"])).items()
        if record is not None and run_id in sets and sets[run_id] != {record}
    ]
