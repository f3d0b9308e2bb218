"""The store engine: one Delta Lake table per kind of record, appended to, read and maintained here.

Layout (docs/store.md)::

    <store>/<table>/_delta_log/            the table's commit log (JSON commits + Parquet checkpoints)
    <store>/<table>/workload=<name>/*.parquet

A table is a Delta table (delta-rs), partitioned by ``workload``, in a local directory or under
``s3://bucket/prefix``. Every write is one atomic commit, retried with backoff when another writer
committed first; a reader sees each commit whole or not at all, and compaction never shows it a
row twice (the log swaps the small files for the compacted one in one commit).

Schema: a new column merges into the table; a value whose type differs from the table's column is
refused before anything is written (an int into a double column is widened, exactly; nothing else
is cast). Writers compact a partition once it holds ``compact_after`` small files and their writes paused
(``IDLE_S``), and checkpoint the log every ``CHECKPOINT_INTERVAL`` commits; ``vacuum`` keeps
``RETENTION_HOURS`` of history for time travel (``as_of``).
"""

from __future__ import annotations

import datetime as dt
import json
import numbers
import os
import random
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from jobs.errors import StoreError

TS = pa.timestamp("us", tz="UTC")
# Columns with a fixed type, whatever a given write holds (a None-only column must not become `null`
# in one write and `string` in another; a metric must never be int in one write and double in another).
CORE: dict[str, dict[str, pa.DataType]] = {
    "runs": {
        "run_id": pa.string(),
        "parent_run_id": pa.string(),
        "round": pa.int64(),
        "sweep_id": pa.string(),
        "trial_id": pa.string(),
        "job_id": pa.string(),
        "status": pa.string(),
        "error": pa.string(),
        "metric": pa.string(),
        "mode": pa.string(),
        "best_metric": pa.float64(),
        "best_epoch": pa.int64(),
        "epochs": pa.int64(),
        "config_json": pa.string(),
        "checkpoint_uri": pa.string(),
        "export_uri": pa.string(),
        "started_at": TS,
        "finished_at": TS,
        "wall_s": pa.float64(),
        "cpu_s": pa.float64(),
        "gpu_s": pa.float64(),
        "train_time_s": pa.float64(),
        "num_workers": pa.int64(),
        "use_gpu": pa.bool_(),
        "seed": pa.int64(),
        "git_sha": pa.string(),
        "data_fingerprint": pa.string(),
        "record_id": pa.string(),
    },
    "epochs": {
        "run_id": pa.string(),
        "sweep_id": pa.string(),
        "trial_id": pa.string(),
        "epoch": pa.int64(),
        "train_loss": pa.float64(),
        "train_time_s": pa.float64(),
        "samples_per_s": pa.float64(),
        "elapsed_s": pa.float64(),
        "skipped_batches": pa.int64(),
        "record_id": pa.string(),
    },
    "jobs": {
        "submission_id": pa.string(),
        "entrypoint": pa.string(),
        "verb": pa.string(),
        "status": pa.string(),
        "message": pa.string(),
        "submitted_at": TS,
        "started_at": TS,
        "finished_at": TS,
        "config_hash": pa.string(),
        "git_sha": pa.string(),
        "address": pa.string(),
    },
    "sweeps": {
        "sweep_id": pa.string(),
        "status": pa.string(),
        "search": pa.string(),
        "scheduler": pa.string(),
        "search_space_json": pa.string(),
        "metric": pa.string(),
        "mode": pa.string(),
        "best_trial_id": pa.string(),
        "best_run_id": pa.string(),
        "best_metric": pa.float64(),
        "best_config_json": pa.string(),
        "num_trials": pa.int64(),
        "trials_completed": pa.int64(),
        "trials_stopped_early": pa.int64(),
        "trials_failed": pa.int64(),
        "epochs_used": pa.int64(),
        "epochs_budget": pa.int64(),
        "started_at": TS,
        "finished_at": TS,
        "wall_s": pa.float64(),
        "cpu_s": pa.float64(),
    },
}
PARTITION = "workload"
FINISHED = ("completed", "stopped_early")
INFO_KINDS = ("many_files", "in_progress", "record_pending", "orphan_file")  # findings that are not problems
COMPACT_AFTER = 16  # small files in one partition at which a writer compacts them (and checkpoints the log)
SMALL_FILE_ROWS = 10_000  # a file with fewer rows is "small": compaction merges it; bigger ones stay as they are
RETENTION_HOURS = 7 * 24  # history `vacuum` keeps by default: a week of time travel
RESULT_CACHE_BYTES = 64 << 20  # reads up to this size are kept per table version (Engine.read) ...
RESULT_CACHE_ENTRIES = 16  # ... this many of them, the oldest dropped first
COMPACT_ATTEMPTS = 4  # a writer's compaction of one partition, planned afresh after each lost race
COMMIT_ATTEMPTS = 40  # a conflict only means another writer committed first: retry from the new version
# Commits that remove files (a run's replacement, a compaction) are replaces-by-predicate: delta-rs rebases
# them over blind appends and refuses them over a commit that added rows they match, so they never
# double a row. (delta-rs 1.6.6's optimize.compact is not used: it rebased over a concurrent compaction.)
LOG = "_delta_log"
TOKEN = "perennial.commit"  # commit-info key: each commit's own token (Engine._commit)
# The store's writers checkpoint the log every this many commits (not delta-rs's default 100, delta.checkpointInterval):
# a handle's writes and file statistics cost more the more commits it applied after its checkpoint (delta-rs 1.6.6
# keeps each as a piece of the file list), so frequent small checkpoints make every write cheaper (docs/store.md).
CHECKPOINT_INTERVAL = 10
# A writer that leaves a partition with this many times ``compact_after`` small files waits for the maintenance thread
# (which, at low priority, can fall behind on a machine whose cores are busy): a partition's files stay bounded.
BACKLOG = 4
MAINTENANCE_NICE = 19  # the maintenance thread's CPU priority (Linux nice value, per thread): the lowest
# The maintenance thread starts a compaction only once this Engine's writes paused this long (a record's two commits
# follow each other at once): on a machine with few cores a compaction beside a write doubled the write's time.
IDLE_S = 0.1


def checkpoint_phase(table: str) -> int:
    """``runs`` checkpoints half an interval after the other tables, so a run record (one commit to ``epochs``, one
    to ``runs``, both tables' versions moving together) never pays for two checkpoints (and reloads) at once."""
    return CHECKPOINT_INTERVAL // 2 if table == "runs" else 0


def checkpoint_slot(table: str, version: int) -> int:
    """The checkpoint interval ``version`` of ``table`` falls in; a version that starts a slot gets a checkpoint."""
    return (version + checkpoint_phase(table)) // CHECKPOINT_INTERVAL


def store_path(cli_value: str | None, cfg=None) -> str:
    """``--store`` flag > $PERENNIAL_STORE > the config's ``store.path`` > ``./store``."""
    return cli_value or os.environ.get("PERENNIAL_STORE") or (cfg.store.path if cfg is not None else "") or "./store"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_since(since: str | dt.datetime, flag: str = "--since") -> dt.datetime:
    """``7d`` / ``12h`` / ``30m`` ago, or an ISO date/time (UTC unless it says otherwise)."""
    if isinstance(since, dt.datetime):
        return since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", since)
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return now() - dt.timedelta(seconds=seconds)
    try:
        when = dt.datetime.fromisoformat(since)
    except ValueError:
        raise StoreError(f"{flag} '{since}' is not an age or a date — write e.g. 12h, 7d or 2026-01-31") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def parse_as_of(as_of: str | int | dt.datetime | None) -> int | dt.datetime | None:
    """``--as-of``: a table version (``12``), an ISO date/time or an age (``7d``: the store a week ago)."""
    if as_of is None or isinstance(as_of, (int, dt.datetime)):
        return as_of
    if re.fullmatch(r"\s*\d+\s*", as_of):
        return int(as_of)
    try:
        return parse_since(as_of)
    except StoreError:
        raise StoreError(
            f"--as-of '{as_of}' is neither a version nor a time — write e.g. 12, 2026-11-24, 2026-11-24T18:00 or 7d"
        ) from None


def storage_options(uri: str) -> dict[str, str] | None:
    """delta-rs object-store options from the environment (the same AWS_* variables boto3 and pyarrow read);
    ``DELTA_*`` / ``AWS_S3_LOCKING_PROVIDER`` pass through for the DynamoDB commit lock (docs/store.md)."""
    if "://" not in uri:
        return None
    options = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "DELTA_")) and v}
    if "AWS_REGION" not in options and "AWS_DEFAULT_REGION" in options:
        options["AWS_REGION"] = options["AWS_DEFAULT_REGION"]
    if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options.setdefault("AWS_ALLOW_HTTP", "true")  # a local S3 API server (moto, MinIO) without TLS
    return options


def number(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f  # NaN -> None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Engine:
    """The store's tables at a local directory or a URI (``s3://bucket/prefix``).

    ``as_of`` (a version number, a datetime, an ISO date or an age such as ``7d``) makes every read
    see each table as it was then; such a store refuses writes. ``compact_after`` is the number of
    files in one partition at which a writer compacts it.
    """

    def __init__(self, uri: str | os.PathLike, as_of=None, compact_after: int = COMPACT_AFTER):
        uri = str(uri).rstrip("/")
        self.uri = uri if "://" in uri else os.path.abspath(uri)
        self.local = "://" not in uri
        self.as_of = parse_as_of(as_of)
        self.compact_after = compact_after
        self.options = storage_options(self.uri)
        self._open: dict[str, Any] = {}  # table -> DeltaTable, refreshed before each use
        self._loaded_at: dict[str, int] = {}  # table -> the version its handle was loaded at
        self._retry_compaction_at: dict[tuple[str, str], int] = {}  # after a lost race: wait for more files
        self._datasets: dict[str, tuple[int, ds.Dataset]] = {}  # table -> (version, its pyarrow dataset)
        self._actions: dict[str, tuple[int, pa.Table]] = {}  # table -> (version, its add actions) (Engine.actions)
        self._results: dict[tuple, pa.Table] = {}  # (table, version, query) -> a small result (Engine.read)
        self._maintenance: threading.Thread | None = None  # the thread compacting after writes (if running)
        self._checkpointer: threading.Thread | None = None  # the thread writing log checkpoints (if running)
        self._maintenance_due: dict[str, set[str]] = {}  # table -> partitions it is to compact
        self._checkpoints_due: dict[str, int] = {}  # table -> the version the checkpoint thread is to checkpoint
        self._checkpointed: dict[str, int] = {}  # table -> the newest version the checkpoint thread wrote
        self._preloaded: dict[str, Any] = {}  # table -> a handle the checkpoint thread loaded from its checkpoint
        self._checkpointing: dict[str, int] = {}  # table -> the version it is checkpointing now
        self._maintenance_lock = threading.Lock()
        self._idle = threading.Condition()  # notified when a write ends (_commit, _wait_until_idle)
        self._writes = 0  # writes of this Engine in progress
        self._last_write = 0.0  # time.monotonic() when its last write ended
        self._maintainer: Engine | None = None  # that thread's own Engine (table handles are per thread)
        self._cleaned: set[str] = set()  # tables whose expired log entries this Engine removed (_maintain)
        try:
            if self.local:
                self.fs, self.root = pafs.LocalFileSystem(), self.uri
            else:
                self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
                self.root = self.root.rstrip("/")
        except Exception as e:
            raise StoreError(
                f"store '{uri}' is not usable: {first_line(e)} — give a directory or s3://bucket/prefix"
            ) from None

    # ------------------------------------------------------------------ tables
    def table_uri(self, table: str) -> str:
        return f"{self.uri}/{table}"

    def tables(self) -> list[str]:
        """Names of the store's Delta tables."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
            names = [os.path.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]
            names = [n for n in names if not n.startswith((".", "_"))]
            return sorted(
                n for n in names if self.fs.get_file_info(f"{self.root}/{n}/{LOG}").type != pafs.FileType.NotFound
            )
        except OSError as e:
            raise StoreError(f"cannot read store '{self.uri}': {first_line(e)}") from None

    def delta(self, table: str, fresh: bool = True):
        """The ``DeltaTable`` of ``table`` at the newest version (or at ``as_of``); None if there is none.

        One handle per table, brought up to date incrementally (a fresh load reads the last checkpoint and
        every commit after it). delta-rs 1.6.6 keeps each commit a handle applied as a piece of its file list,
        so the handle's every use (a write, its file statistics) costs more the more commits it applied: it is
        loaded afresh once the table passed a checkpoint (every ``CHECKPOINT_INTERVAL`` commits). A log listing
        that caught commits mid-creation (``_log_race``) is retried: it is a read, nothing was written."""
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        if self.as_of is not None:
            if table not in self._open:
                self._open[table] = self._load_as_of(table)
            return self._open[table]
        for attempt in range(COMMIT_ATTEMPTS):
            d = self._open.get(table)
            try:
                if d is not None and fresh:
                    d.update_incremental()
                if d is not None and self._reload_due(table, d.version()):
                    d = self._preloaded.pop(table, None)  # a checkpoint newer than the handle's: load from it
                    if d is not None:  # the checkpoint thread loaded it meanwhile: bring it up to date
                        d.update_incremental()
                        self._open[table], self._loaded_at[table] = d, self._checkpointed[table]
                        return d
                if d is None:
                    d = DeltaTable(self.table_uri(table), storage_options=self.options)
                    self._open[table], self._loaded_at[table] = d, d.version()
                return d
            except TableNotFoundError:
                return None
            except DeltaError as e:
                if not _log_race(e) or attempt == COMMIT_ATTEMPTS - 1:
                    raise StoreError(f"cannot read store table '{table}' in '{self.uri}': {first_line(e)}") from None
                self._open.pop(table, None)  # reload from scratch: the handle may hold the partial listing
            except OSError as e:
                raise StoreError(f"cannot read store '{self.uri}': {first_line(e)}") from None
            time.sleep(min(1.0, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))

    def _reload_due(self, table: str, version: int) -> bool:
        """Whether the handle of ``table`` (now at ``version``) is to be loaded afresh from a newer checkpoint: once
        this Engine's checkpoint thread wrote one past the version the handle was loaded at, or once the table
        passed a checkpoint slot whose checkpoint another writer writes (not one this Engine's thread still writes:
        a load before that checkpoint exists would start from the older one)."""
        loaded = self._loaded_at[table]
        if self._checkpointed.get(table, -1) > loaded:
            return True
        slot = checkpoint_slot(table, version)
        if slot <= checkpoint_slot(table, loaded):
            return False
        pending = self._checkpoints_due.get(table, self._checkpointing.get(table))
        return pending is None or checkpoint_slot(table, pending) != slot

    def _load_as_of(self, table: str):
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        try:
            d = DeltaTable(self.table_uri(table), storage_options=self.options)
        except TableNotFoundError:
            return None
        if isinstance(self.as_of, int) and self.as_of > d.version():
            raise StoreError(
                f"--as-of {self.as_of}: table '{table}' has versions 0-{d.version()} — give one of those, or a date"
            )
        if isinstance(self.as_of, dt.datetime) and self.as_of < _created_at(d):
            return None  # the table did not exist then
        try:
            d.load_as_version(self.as_of)
        except DeltaError as e:
            raise StoreError(
                f"--as-of {self.as_of}: table '{table}' cannot go back that far ({first_line(e)}) — "
                f"`vacuum` keeps {RETENTION_HOURS // 24} days of history"
            ) from None
        return d

    # ------------------------------------------------------------------ read
    def dataset(self, table: str, workload: str | None = None) -> ds.Dataset | None:
        """A pyarrow dataset over ``table``'s current files (None if the table does not exist)."""
        d = self.delta(table)
        if d is None:
            return None
        cached = self._datasets.get(table)
        if cached is None or cached[0] != d.version():  # building one costs per file: reuse it per version
            cached = self._datasets[table] = (d.version(), self.arrow_dataset(d, table))
        data = cached[1]
        return data.filter(ds.field(PARTITION) == workload) if workload else data

    def actions(self, d, table: str) -> pa.Table:
        """The add actions (one row per data file, statistics flattened) of snapshot ``d``, kept for its version:
        a write reads them before its commit (is the run there?) and after it (is a partition due for compaction?),
        and the next write on an unchanged table reads the same version again."""
        cached = self._actions.get(table)
        if cached is None or cached[0] != d.version():
            cached = self._actions[table] = (d.version(), pa.table(d.get_add_actions(flatten=True)))
        return cached[1]

    def arrow_dataset(self, d, table: str, workload: str | None = None) -> ds.Dataset:
        """``d.to_pyarrow_dataset()`` over Arrow's own filesystem for the store (local or S3). deltalake's default
        is a Python-implemented filesystem that Arrow's threads call back into; after such a read the interpreter
        aborted at exit now and then ("terminate called without an active exception"), as with Python file objects
        before (workloads.data.read_parquet).
        With ``workload``, over that partition's files only (building a dataset costs per file)."""
        pruning = {"file_pruning_predicate": f'"{PARTITION}" = {_literal(workload)}'} if workload else {}
        return d.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(f"{self.root}/{table}", self.fs), **pruning)

    def empty(self, table: str) -> pa.Table:
        return pa.schema([(k, v) for k, v in CORE.get(table, {}).items()] + [(PARTITION, pa.string())]).empty_table()

    def read(
        self,
        table: str,
        workload: str | None = None,
        filter: ds.Expression | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Rows of ``table`` (optionally one workload's, filtered, some columns) as an Arrow table.

        A small result is kept per table version: the same query again (a dashboard, a notebook, the
        leaderboard after each sweep trial) reads nothing while the table has no new commit."""
        data = self.dataset(table, workload)
        if data is None:
            empty = self.empty(table)
            return empty.select([c for c in columns if c in empty.schema.names]) if columns else empty
        cols = [c for c in columns if c in data.schema.names] if columns else None
        text = str(filter)
        key = (table, self._datasets[table][0], workload, text, tuple(cols or ()))
        if key in self._results:
            return self._results[key]
        try:
            out = data.to_table(filter=filter, columns=cols)
        except OSError as e:
            raise StoreError(f"cannot read store table '{table}' in '{self.uri}': {first_line(e)}") from None
        if out.nbytes <= RESULT_CACHE_BYTES and "..." not in text:  # Arrow abbreviates a long value set: not a key
            if len(self._results) >= RESULT_CACHE_ENTRIES:
                self._results.pop(next(iter(self._results)))  # the oldest
            self._results[key] = out
        return out

    def df(
        self,
        table: str,
        workload: str | None = None,
        filter: ds.Expression | None = None,
        columns: list[str] | None = None,
    ):
        return self.read(table, workload, filter, columns).to_pandas()

    def files(self, table: str) -> list[str]:
        """The data files of ``table``'s current version."""
        d = self.delta(table)
        return sorted(d.file_uris()) if d is not None else []

    def versions(self, table: str, limit: int | None = None) -> list[dict]:
        """The table's commits, newest first: version, timestamp, operation, rows added."""
        d = self.delta(table)
        if d is None:
            return []
        out = []
        for c in d.history(limit):
            metrics = c.get("operationMetrics") or {}
            out.append(
                {
                    "table": table,
                    "version": c.get("version"),
                    "timestamp": dt.datetime.fromtimestamp(c["timestamp"] / 1000, dt.UTC),
                    "operation": c.get("perennial.operation") or c.get("operation"),
                    "rows_added": metrics.get("num_added_rows"),
                    "files_added": metrics.get("num_added_files"),
                    "files_removed": metrics.get("num_removed_files"),
                }
            )
        return out

    # ------------------------------------------------------------------ write
    def append(self, table: str, rows: Iterable[dict[str, Any]] | pa.Table) -> int:
        """Append rows (dicts, or an Arrow table for bulk loads) to ``table`` in one commit (every workload
        at once); returns the new version. Types are checked against the table's as for dicts."""
        if isinstance(rows, pa.Table):
            if PARTITION not in rows.column_names:
                raise StoreError(f"append to '{table}': the Arrow table needs a '{PARTITION}' column")
            return self._commit(table, rows, key=None) if rows.num_rows else -1
        rows = list(rows)
        if not rows:
            return -1
        return self._commit(table, rows, key=None)

    def replace(self, table: str, rows: Iterable[dict[str, Any]], key: dict[str, Any]) -> int:
        """Delete the rows of ``table`` whose columns equal ``key`` and append ``rows``, in one commit.

        Idempotent: writing the same record twice leaves it once. Every row must match ``key``.
        """
        rows = list(rows)
        for r in rows:
            if any(r.get(k) != v for k, v in key.items()):
                raise StoreError(f"replace in '{table}': row {r} does not match its key {key}")
        return self._commit(table, rows, key=key)

    def record_run(self, epochs: list[dict[str, Any]], run: dict[str, Any]) -> bool:
        """Record a run: its epoch rows, then its ``runs`` row, each table's rows replaced in one commit.

        Both tables get one ``record_id`` (the recording's time + a random part). In each table a
        recording replaces the run's rows only if no later recording is there (checked and written in
        one transaction: a concurrent commit touching the run's rows makes it retry), so:

        - a table never holds two recordings of a run, nor part of one;
        - a ``runs`` row is never visible before epochs of its run (epochs commit first);
        - once every recorder of a run has returned, both tables hold the latest recording. A recorder
          that finds a later recording already in ``epochs`` writes nothing more and returns False.
        """
        record = f"{now():%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}"
        key = {PARTITION: run.get(PARTITION) or "none", "run_id": run["run_id"]}
        epochs = [{**e, PARTITION: key[PARTITION], "record_id": record} for e in epochs]
        if not self._commit("epochs", epochs, key=key, record=record):
            return False
        self._commit("runs", [{**run, PARTITION: key[PARTITION], "record_id": record}], key=key, record=record)
        return True

    def _commit(
        self, table: str, rows: list[dict] | pa.Table, key: dict | None, record: str | None = None
    ) -> int | bool:
        """``_commit_once`` while marked as writing (maintenance waits for a pause, ``_wait_until_idle``); then, if
        it left a partition with ``BACKLOG`` x ``compact_after`` small files, wait for the maintenance thread."""
        with self._idle:
            self._writes += 1
        try:
            out, backlogged = self._commit_once(table, rows, key, record)
        finally:
            with self._idle:
                self._writes -= 1
                self._last_write = time.monotonic()
                self._idle.notify_all()
        if backlogged and (thread := self._maintenance):
            thread.join()  # the maintenance thread falls behind under a long burst of writes: files stay bounded
        return out

    def _wait_until_idle(self) -> None:
        """Return once no write of this Engine is in progress and the last one ended ``IDLE_S`` ago."""
        with self._idle:
            while True:
                quiet = time.monotonic() - self._last_write
                if not self._writes and quiet >= IDLE_S:
                    return
                self._idle.wait(None if self._writes else IDLE_S - quiet)

    def _commit_once(
        self, table: str, rows: list[dict] | pa.Table, key: dict | None, record: str | None = None
    ) -> tuple[int | bool, bool]:
        """One commit of ``rows`` (replacing ``key``'s rows when given), retried on a conflict.

        Every commit carries a token in its commit info. delta-rs can raise after its commit landed (its
        post-commit refresh lists the log, and a listing that races other writers' commits fails, see
        ``_log_race``); before retrying after any error but a plain conflict, the log after the version this
        attempt read is searched for the token, so a landed commit is never made twice."""
        from deltalake import CommitProperties, PostCommitHookProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError, DeltaError
        from deltalake.transaction import Transaction

        if self.as_of is not None:
            raise StoreError(f"store '{self.uri}' is opened --as-of {self.as_of}: it is read-only")
        if isinstance(rows, pa.Table):
            arrow = rows
        else:
            arrow = to_arrow(table, [{**r, PARTITION: str(r.get(PARTITION) or "none")} for r in rows]) if rows else None
        predicate = " AND ".join(f'"{k}" = {_literal(v)}' for k, v in key.items()) if key else None
        token = uuid.uuid4().hex
        # The store checkpoints every CHECKPOINT_INTERVAL commits itself (_checkpoint_in_background); no expired-log
        # cleanup per commit: it lists and stats the whole log (O(commits) per append), so maintenance does it.
        hooks = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)
        failure: BaseException | None = None
        for attempt in range(COMMIT_ATTEMPTS):
            # The snapshot this transaction reads. The first attempt takes the handle as it is (no log listing):
            # delta-rs checks every commit newer than it for a conflict anyway; a retry reads the newest.
            d = self.delta(table, fresh=attempt > 0)
            read_version = d.version() if d is not None else -1
            try:
                found = _recorded(self, d, table, key, record) if record is not None and d is not None else None
                if found == "later":
                    return False, False
                data = self._conform(table, arrow, d) if arrow is not None else None
                # A new run's recording is an append (no rows to replace, no scan); an earlier recording is
                # replaced by predicate. Either commit carries the run's transaction id (Delta's `txn` action):
                # of two commits with one id from the same snapshot, delta-rs refuses the second (a concurrent
                # transaction), so two recorders of a run that both found it absent never both append.
                properties = CommitProperties(
                    custom_metadata={TOKEN: token},
                    app_transactions=[Transaction(_run_txn(key), 1, int(time.time() * 1000))] if record else None,
                )
                if d is None and data is None:
                    return True, False
                if d is None:  # the first commit creates the table (two creators: one gets a conflict)
                    write_deltalake(
                        self.table_uri(table),
                        data,
                        mode="append",
                        partition_by=[PARTITION],
                        storage_options=self.options,
                        commit_properties=properties,
                        post_commithook_properties=hooks,
                    )
                elif data is None:
                    d.delete(predicate, commit_properties=properties, post_commithook_properties=hooks)
                elif predicate and found != "absent":
                    write_deltalake(
                        d,
                        data,
                        mode="overwrite",
                        predicate=predicate,
                        schema_mode="merge",
                        commit_properties=properties,
                        post_commithook_properties=hooks,
                    )
                else:
                    write_deltalake(
                        d,
                        data,
                        mode="append",
                        schema_mode="merge",
                        commit_properties=properties,
                        post_commithook_properties=hooks,
                    )
                if d is not None and _starts_slot(table, d.version()):  # a write through ``d`` moved it to its commit
                    self._checkpoint_in_background(table, d.version())
                break
            except CommitFailedError as e:  # another writer committed first: nothing of this attempt landed
                failure = e
            except DeltaError as e:
                # "version 0 already exists" when two writers create a table at once; a log listing that raced
                # other commits, before or after this commit landed
                self._open.pop(table, None)  # the handle may hold a partial listing: load it afresh
                if self._landed(table, read_version, token):
                    break
                # another writer created the table since this attempt found none, with other columns ("Cannot cast
                # schema"): the retry conforms the rows to that table and merges their new columns into it
                created = d is None and self.delta(table) is not None
                if not (created or "exists" in str(e).lower() or _log_race(e)) or attempt == COMMIT_ATTEMPTS - 1:
                    raise _write_error(self.uri, table, e) from None
                failure = e
            except OSError as e:
                raise _write_error(self.uri, table, e) from None
            time.sleep(min(1.0, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))  # backoff with jitter
        else:
            raise StoreError(
                f"cannot commit to store table '{table}' in '{self.uri}' after {COMMIT_ATTEMPTS} conflicts: "
                f"{first_line(failure)} — too many writers at once; try again"
            )
        d = self.delta(table, fresh=False)  # a write through ``d`` moved it to its commit; else it is loaded
        backlogged = False
        if arrow is not None:
            written = set(arrow.column(PARTITION).unique().to_pylist())
            counts = {w: len(paths) for w, paths in _small_files(self.actions(d, table)).items()}
            retry = self._maintainer._retry_compaction_at if self._maintainer is not None else {}
            due = [w for w in written if counts.get(w, 0) >= retry.get((table, w), self.compact_after)]
            if due:
                self._maintain_in_background(table, written)
            backlogged = any(counts[w] >= BACKLOG * self.compact_after for w in due)
        return (d.version() if record is None else True), backlogged

    def _landed(self, table: str, after: int, token: str) -> bool:
        """Whether a commit after version ``after`` of ``table`` carries ``token``."""
        return self._landed_at(table, after, token) is not None

    def _landed_at(self, table: str, after: int, token: str) -> int | None:
        """The version after ``after`` of ``table`` whose commit carries ``token`` (None if none does). Reads the
        commit files by name, one after the other, rather than listing the log (the listing is what can race)."""
        version = after + 1
        while True:
            path = f"{self.root}/{table}/{LOG}/{version:020d}.json"
            try:
                with self.fs.open_input_stream(path) as stream:
                    if token.encode() in stream.read():
                        return version
            except FileNotFoundError:
                return None
            except OSError as e:
                if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                    return None
                raise _write_error(self.uri, table, e) from None
            version += 1

    def _conform(self, table: str, arrow: pa.Table, d) -> pa.Table:
        """``arrow`` with the table's column types; a value of another type is refused (one line)."""
        if d is None:
            return arrow
        have = pa.schema(d.schema().to_arrow())
        columns = []
        for name in arrow.column_names:
            col = arrow.column(name)
            if name not in have.names or col.type == have.field(name).type:
                columns.append(col)
                continue
            want = have.field(name).type
            exact_int = pa.types.is_integer(col.type) and pa.types.is_floating(want)
            if col.null_count == len(col) or (exact_int and _exact_as_double(col)) or _same_kind(col.type, want):
                columns.append(col.cast(want))
                continue
            sample = next((v for v in col.to_pylist() if v is not None), None)
            raise StoreError(
                f"column '{name}' of table '{table}' is {want}, this write has {col.type} ({sample!r}) — "
                f"nothing written; write {want} values, or name the new column differently"
            )
        return pa.Table.from_arrays(columns, names=arrow.column_names)

    # ------------------------------------------------------------------ maintenance
    def _maintain_in_background(self, table: str, workloads: set[str]) -> None:
        """Compact ``workloads``' partitions of ``table`` in this process's maintenance thread, after the
        write that filled them returned: a compaction reads and rewrites a partition (100s of ms), which
        would otherwise land in every 16th write's time. One thread per Engine, with its own table handles,
        at the lowest CPU priority (``_lower_thread_priority``); it is no daemon, so the process finishes it
        before exiting (``wait_for_maintenance`` waits too)."""
        with self._maintenance_lock:
            self._maintenance_due.setdefault(table, set()).update(workloads)
            if self._maintenance is None or not self._maintenance.is_alive():
                self._maintenance = threading.Thread(target=self._maintenance_loop, name="store-maintenance")
                self._maintenance.start()

    def _checkpoint_in_background(self, table: str, version: int) -> None:
        """Have this Engine's checkpoint thread write the log checkpoint of ``version`` (which starts a
        ``checkpoint_slot``: one writer commits each version, so one writes each checkpoint). Written by the write
        itself, it cost a fifth of the records ~15-25 ms more. The writer's handle goes on taking commits meanwhile
        and is loaded from the checkpoint once the thread wrote it (``_reload_due``). Not the maintenance thread:
        at its low priority, on a busy machine, a checkpoint would wait while the writer's handle grows costlier."""
        with self._maintenance_lock:
            self._checkpoints_due[table] = max(version, self._checkpoints_due.get(table, -1))
            if self._checkpointer is None or not self._checkpointer.is_alive():
                self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="store-checkpoint")
                self._checkpointer.start()

    def _write_checkpoint(self, table: str, version: int) -> None:
        """The log checkpoint of exactly ``version`` of ``table`` (the version that starts a checkpoint slot)."""
        from deltalake import DeltaTable

        DeltaTable(self.table_uri(table), version=version, storage_options=self.options).create_checkpoint()

    def _checkpoint_loop(self) -> None:
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        while True:
            with self._maintenance_lock:
                if not self._checkpoints_due:
                    self._checkpointer = None
                    return
                table, version = self._checkpoints_due.popitem()
                self._checkpointing[table] = version
            try:  # that exact version, as a writer checkpointing it itself would (best effort, as there)
                self._write_checkpoint(table, version)
                fresh = DeltaTable(self.table_uri(table), storage_options=self.options)  # loaded from it
                with self._maintenance_lock:
                    if version > self._checkpointed.get(table, -1):
                        self._preloaded[table] = fresh
                        self._checkpointed[table] = version
            except (DeltaError, OSError):
                pass
            finally:
                self._checkpointing.pop(table, None)

    def _maintenance_loop(self) -> None:
        _lower_thread_priority()
        while True:
            with self._maintenance_lock:
                if not self._maintenance_due:
                    self._maintenance = None
                    return
                table, workloads = self._maintenance_due.popitem()
            try:
                if self._maintainer is None:
                    self._maintainer = Engine(self.uri, compact_after=self.compact_after)
                d = self._maintainer.delta(table)
                if d is not None:
                    self._maintainer._maintain(table, d, workloads, self._wait_until_idle)
            except Exception:  # best effort, as in _maintain: a later write tries again; `check` reports many_files
                self._maintainer = None

    def wait_for_maintenance(self) -> None:
        """Return once the compactions and checkpoints the writes of this Engine started have finished."""
        while (thread := self._maintenance or self._checkpointer) is not None:
            thread.join()

    def _maintain(self, table: str, d, workloads: set[str], wait=lambda: None) -> None:
        """Compact each written partition that holds ``compact_after`` files or more (the writers checkpoint the log);
        ``wait`` returns when the next compaction may start (the writer paused).
        Best effort: a conflict means another writer changed the partition; a later write tries again."""
        from deltalake.exceptions import DeltaError

        counts = {w: len(paths) for w, paths in _small_files(self.actions(d, table)).items()}
        due = {w: self._retry_compaction_at.get((table, w), self.compact_after) for w in workloads}
        full = sorted(w for w in workloads if counts.get(w, 0) >= due[w])
        for w in full:
            wait()
            d = self.delta(table)  # plan on the newest snapshot: a stale one would only lose the race
            for attempt in range(COMPACT_ATTEMPTS):
                try:
                    self._compact_partition(d, w)
                    self._retry_compaction_at.pop((table, w), None)
                    break
                except (DeltaError, OSError):  # CommitFailedError included: another writer committed meanwhile
                    d = self.delta(table)  # plan again on the newest snapshot (this thread has the time)
                    time.sleep(min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.5))
            else:
                # Kept losing to writers that add rows of the same runs (delta-rs refuses the compaction then):
                # try again at twice the files, so a steady stream of such appends costs few attempts.
                self._retry_compaction_at[(table, w)] = 2 * counts[w]
                return
        if full and table not in self._cleaned:  # once per table and process: it lists and stats the whole log
            self._cleaned.add(table)
            try:
                d.update_incremental()
                d.cleanup_metadata()  # commits past delta.logRetentionDuration (30 days) that a checkpoint covers
            except (DeltaError, OSError):
                pass

    def compact(self, tables: list[str] | None = None, workload: str | None = None) -> list[dict]:
        """Merge each partition's files into one (readers never see a row twice); checkpoint the log."""
        from deltalake.exceptions import CommitFailedError

        summary = []
        for table in tables or self.tables():
            d = self.delta(table)
            if d is None:
                raise StoreError(f"no table '{table}' in store '{self.uri}' — tables: {', '.join(self.tables())}")
            before = _files_per_partition(d)
            for w in sorted(before) if workload is None else [workload]:
                for attempt in range(COMMIT_ATTEMPTS if before.get(w, 0) > 1 else 0):
                    try:
                        self._compact_partition(self.delta(table), w, everything=True)
                        break
                    except CommitFailedError:  # a writer committed meanwhile: plan the compaction again
                        time.sleep(min(1.0, 0.01 * 2**attempt) * random.uniform(0.5, 1.5))
            d = self.delta(table)
            d.create_checkpoint()
            after = _files_per_partition(d)
            for w in sorted(before) if workload is None else [workload]:
                summary.append(
                    {"table": table, "partition": f"{PARTITION}={w}", "files_before": before.get(w, 0)}
                    | {"files_after": after.get(w, 0), "version": d.version()}
                )
        return summary

    def _compact_partition(self, d, workload: str, everything: bool = False) -> None:
        """Merge one partition's small files of snapshot ``d`` (all its files if ``everything``) into one file
        sorted by run, in one commit that removes exactly the files it read and adds the merged one.

        The merged file is written here with pyarrow (on this thread: the maintenance thread runs at low priority,
        delta-rs's own threads do not) and committed with ``create_write_transaction``: only that commit runs on
        delta-rs's threads (44 ms wall p50 beside the bench's records), where an overwrite-by-predicate planned and
        ran a DataFusion scan there too (~80 ms; those threads are the writes' too, docs/store.md). The removes are data changes, so delta-rs refuses
        the commit over any commit that removed data since ``d`` (a run's re-recording, another compaction, of this
        partition or another: "a concurrent transaction deleted data this operation read"): two compactions of one
        file never both land, and a replaced recording's rows are never written back. Blind appends meanwhile keep
        their files and are no conflict. delta-rs 1.6.6's optimize.compact is not used: it rebased a concurrent
        compaction of the same files (every row then read twice).
        """
        from urllib.parse import unquote

        import pyarrow.parquet as pq
        from deltalake import CommitProperties, PostCommitHookProperties
        from deltalake.exceptions import DeltaError
        from deltalake.transaction import AddAction, RemoveAction

        table = d.table_uri.rstrip("/").rsplit("/", 1)[-1]
        actions = self.actions(d, table)
        part = f"partition.{PARTITION}"
        if not actions.num_rows or part not in actions.column_names:
            return
        mine = [
            (p, n)
            for p, n, w in zip(*(actions.column(c).to_pylist() for c in ("path", "num_records", part)))
            if w == workload
        ]
        paths = [p for p, n in mine if everything or n is None or n < SMALL_FILE_ROWS]
        if len(paths) < 2:
            return
        schema = pa.schema(d.schema().to_arrow())
        fields = [f for f in schema if f.name != PARTITION]
        base = f"{self.root}/{table}"
        files = [f"{base}/{unquote(path)}" for path in paths]  # a file without a later-merged column: nulls there
        data = ds.dataset(files, schema=pa.schema(fields), filesystem=self.fs, format="parquet")
        rows = data.to_table(use_threads=False)  # on this thread (Arrow's pool is shared with the writes)
        if "run_id" in rows.column_names:
            rows = rows.sort_by([("run_id", "ascending")])
        rel = f"{paths[0].rsplit('/', 1)[0]}/part-compact-{uuid.uuid4()}.snappy.parquet"  # the partition's folder
        target = f"{base}/{unquote(rel)}"
        pq.write_table(rows, target, filesystem=self.fs, compression="snappy")
        when = int(time.time() * 1000)
        values = {PARTITION: workload}
        add = AddAction(rel, self.fs.get_file_info(target).size, values, when, True, _file_stats(rows))
        removes = [RemoveAction(p, True, when, None, values) for p in paths]
        token = uuid.uuid4().hex
        try:
            d.create_write_transaction(
                [add, *removes],
                mode="append",
                schema=d.schema(),
                partition_by=[PARTITION],
                commit_properties=CommitProperties(custom_metadata={"perennial.operation": "COMPACT", TOKEN: token}),
                post_commithook_properties=PostCommitHookProperties(
                    create_checkpoint=False, cleanup_expired_logs=False
                ),
            )
        except (DeltaError, OSError):
            if self._landed_at(table, d.version(), token) is None:
                try:  # no commit names it: readers never see it; delete it now rather than leave it to vacuum
                    self.fs.delete_file(target)
                except OSError:
                    pass
                raise
        version = self._landed_at(table, d.version(), token)  # create_write_transaction leaves ``d`` where it was
        d.update_incremental()
        if version is not None and _starts_slot(table, version):
            try:  # this commit starts a checkpoint slot: its checkpoint is this writer's to write
                self._write_checkpoint(table, version)
            except (DeltaError, OSError):
                pass

    def vacuum(self, retention_hours: int = RETENTION_HOURS, dry_run: bool = False) -> list[dict]:
        """Delete files no version younger than ``retention_hours`` reads (time travel keeps that window)."""
        summary = []
        for table in self.tables():
            d = self.delta(table)
            removed = d.vacuum(
                retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, full=True
            )  # full: also files no commit names (killed writers, lost races) older than the retention
            if not dry_run:
                d.cleanup_metadata()  # log entries past delta.logRetentionDuration (30 days by default)
            summary.append({"table": table, "files_removed" if not dry_run else "would_remove": len(removed)})
        return summary

    def check(self, fix: bool = False, older_than_s: float = 3600.0) -> list[dict]:
        """Problems at the Delta level: a table folder that is not a Delta table (migrate it), data files
        the log names but storage lacks, files no commit names (left by a killed writer; ``fix`` deletes
        those older than ``older_than_s``), runs whose two tables hold different recordings, and
        partitions due for compaction. Returns one dict per finding."""
        findings = []

        def add(kind, table, path, detail, fixed=False):
            findings.append({"kind": kind, "table": table, "path": path, "detail": detail, "fixed": fixed})

        cutoff = now() - dt.timedelta(seconds=older_than_s)
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        for i in infos:
            name = os.path.basename(i.path)
            if i.type == pafs.FileType.Directory and not name.startswith((".", "_")) and name not in self.tables():
                add("not_delta", name, i.path, "a plain-Parquet table — run `python -m jobs.store migrate STORE`")
        for table in self.tables():
            d = self.delta(table)
            live = {_rel(self.table_uri(table), f) for f in d.file_uris()}
            named = live | _files_named_in_log(self.fs, f"{self.root}/{table}/{LOG}")
            base = f"{self.root}/{table}"
            listed = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            present = {}
            for f in listed:
                rel = f.path[len(base) + 1 :]
                if f.type == pafs.FileType.File and not rel.startswith(LOG) and rel.endswith(".parquet"):
                    present[rel] = f
            for rel in sorted(live - set(present)):
                repaired = False
                if fix:
                    d.repair(dry_run=False)
                    repaired = True
                add("missing_file", table, rel, "named by the log but not in storage — its rows are gone", repaired)
            for rel in sorted(set(present) - named):
                f = present[rel]
                if f.mtime is not None and f.mtime >= cutoff:
                    add("in_progress", table, rel, "no commit names it yet: a writer may still be running")
                    continue
                deleted = False
                if fix:
                    self.fs.delete_file(f.path)
                    deleted = True
                add(
                    "orphan_file",
                    table,
                    rel,
                    "no commit names it (a writer killed before its commit, or a commit that lost a race): "
                    "readers never see it; --fix or vacuum deletes it",
                    deleted,
                )
            for w, paths in sorted(_small_files(self.actions(d, table)).items()):
                if len(paths) >= 2 * self.compact_after:  # writers compact at compact_after: theirs keep failing
                    add(
                        "many_files",
                        table,
                        f"{PARTITION}={w}",
                        f"{len(paths)} small files — `python -m jobs.store compact`",
                    )
        if {"runs", "epochs"} <= set(self.tables()):
            for run_id, detail in _record_mismatches(self):
                add("record_pending", "runs", run_id, detail)
        return findings


# ----------------------------------------------------------------------------- rows -> Arrow
def to_arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> a table whose column types do not depend on the values in this particular write."""
    core = CORE.get(table, {})
    columns: dict[str, list] = {}
    for r in rows:
        for k in r:
            columns.setdefault(k, [])
    for r in rows:
        for k, col in columns.items():
            col.append(r.get(k))
    arrays, names = [], []
    for name, values in columns.items():
        wanted = core.get(name) or (pa.string() if name == PARTITION else _infer(values))
        try:
            kinds = set(map(type, values))
            # values of a kind that always fits go in as they are; others are checked one by one
            wrong = (
                None
                if kinds <= _FITS_ALWAYS.get(wanted, set())
                else next((v for v in values if v is not None and not _fits(v, wanted)), None)
            )
            if wrong is not None:  # pyarrow would truncate 2.5 into an int64 column: refuse instead
                raise pa.ArrowInvalid(repr(wrong))
            arrays.append(pa.array(values, type=wanted))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            sample = wrong if wrong is not None else next(v for v in values if v is not None)
            raise StoreError(
                f"column '{name}' of table '{table}' holds {wanted} values, this write has {sample!r} "
                f"({type(sample).__name__}) — nothing written; fix the value"
            ) from None
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


_FITS_ALWAYS: dict[pa.DataType, set[type]] = {
    pa.float64(): {float, type(None)},
    pa.int64(): {int, type(None)},
    pa.string(): {str, type(None)},
    pa.bool_(): {bool, type(None)},
    TS: {dt.datetime, type(None)},
}


def _infer(values: list) -> pa.DataType:
    present = [v for v in values if v is not None]
    if not present:
        return pa.float64()  # an absent metric: the most common kind of extra column
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        # ints stay ints only if the column is ints by nature (hyperparameters); metrics are floats
        return pa.int64() if all(isinstance(v, int) for v in present) else pa.float64()
    if all(isinstance(v, dt.datetime) for v in present):
        return TS
    if all(isinstance(v, (int, float, bool)) for v in present):
        return pa.float64()
    if len({type(v) for v in present}) > 1:
        kinds = ", ".join(sorted({type(v).__name__ for v in present}))
        raise StoreError(f"a column holds values of several types ({kinds}) in one write — write one type")
    return pa.string()


def _fits(v: Any, t: pa.DataType) -> bool:
    """Whether ``v`` goes into a column of type ``t`` as it is (an int into a double exactly, nothing else)."""
    if pa.types.is_boolean(t):
        return isinstance(v, (bool, np_bool()))
    if isinstance(v, (bool, np_bool())):
        return False
    if pa.types.is_integer(t):
        return isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer())
    if pa.types.is_floating(t):
        return isinstance(v, numbers.Real) and (not isinstance(v, numbers.Integral) or abs(int(v)) <= 2**53)
    if pa.types.is_timestamp(t):
        return isinstance(v, dt.datetime)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return isinstance(v, str)
    return True


def np_bool() -> type:
    try:
        import numpy

        return numpy.bool_
    except ImportError:  # pragma: no cover - numpy comes with pyarrow's pandas path
        return bool


def _exact_as_double(col) -> bool:
    import pyarrow.compute as pc

    biggest = pc.max(pc.abs(col)).as_py()
    return biggest is None or biggest <= 2**53


def _same_kind(have: pa.DataType, want: pa.DataType) -> bool:
    """Types that differ only in representation (string / large_string, timestamp units and zones)."""
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(f(have) for f in strings) and any(f(want) for f in strings):
        return True
    return pa.types.is_timestamp(have) and pa.types.is_timestamp(want)


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


def _write_error(uri: str, table: str, e: BaseException) -> StoreError:
    return StoreError(
        f"cannot write to store table '{table}' in '{uri}': {first_line(e)} — "
        "check the path, free space and permissions / credentials"
    )


def _recorded(engine: Engine, d, table: str, key: dict, record: str) -> str:
    """What ``d``'s snapshot holds of the run ``key`` (workload, run_id): ``"later"`` (a recording later than
    ``record``), ``"present"`` (an earlier one, to replace) or ``"absent"`` (none: a new run, the usual case).

    File statistics rule out most files (their run_id range misses the run); only the files that may hold
    the run are read, and only their run_id and record_id columns."""
    from urllib.parse import unquote

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    actions = engine.actions(d, table)
    if not actions.num_rows:
        return "absent"
    run_id, names = key["run_id"], actions.column_names
    part = f"partition.{PARTITION}"
    mine = pc.equal(actions.column(part), key[PARTITION]) if part in names else pa.array([True] * actions.num_rows)
    if "min.run_id" in names and "max.run_id" in names:  # a file without statistics (null) may hold it
        low, high = actions.column("min.run_id"), actions.column("max.run_id")
        inside = pc.and_kleene(pc.less_equal(low, run_id), pc.greater_equal(high, run_id))
        mine = pc.and_(mine, pc.fill_null(inside, True))
    candidates = actions.filter(mine)
    if not candidates.num_rows:
        return "absent"
    if "max.record_id" in names and all(
        r is not None and r <= record for r in candidates.column("max.record_id").to_pylist()
    ):
        later_possible = False  # no file that may hold the run holds a later recording
    else:
        later_possible = True
    base = pafs.SubTreeFileSystem(f"{engine.root}/{table}", engine.fs)
    found = "absent"
    for path in candidates.column("path").to_pylist():
        f = pq.ParquetFile(unquote(path), filesystem=base)
        columns = [c for c in ("run_id", "record_id") if c in f.schema_arrow.names]
        if "run_id" not in columns:
            continue
        rows = f.read(columns=columns)
        hit = rows.filter(pc.equal(rows.column("run_id"), run_id))
        if not hit.num_rows:
            continue
        found = "present"
        if later_possible and "record_id" in columns:
            if any(r is not None and r > record for r in hit.column("record_id").to_pylist()):
                return "later"
    return found


def _file_stats(rows: pa.Table) -> str:
    """Delta file statistics of ``rows`` (a data file's rows, without the partition column): row count, null counts,
    and exact minimum and maximum of its string and numeric columns (delta-rs rules files out by them, and
    ``_recorded`` reads a run's candidate files by their run_id range). No bounds for other types, nor for a
    float column holding NaN or infinities: a file without bounds for a column may hold any value."""
    import pyarrow.compute as pc

    low, high, nulls = {}, {}, {}
    for name in rows.column_names:
        col, kind = rows.column(name), rows.schema.field(name).type
        nulls[name] = col.null_count
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        if col.null_count == len(col) or not (numeric or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            continue
        bounds = pc.min_max(col).as_py()
        if pa.types.is_floating(kind) and not pc.all(pc.is_finite(col.drop_null())).as_py():
            continue
        low[name], high[name] = bounds["min"], bounds["max"]
    return json.dumps({"numRecords": rows.num_rows, "minValues": low, "maxValues": high, "nullCount": nulls})


def _lower_thread_priority() -> None:
    """Run the calling thread (the maintenance thread) at the lowest CPU priority: a compaction then takes the cores
    the writes leave idle instead of delaying the next write (docs/store.md, "Measured"). Linux keeps a nice value per
    thread (``setpriority`` of thread id 0 is the calling thread); elsewhere this changes the whole process, so it is
    left alone there."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, MAINTENANCE_NICE)
        except OSError:  # not permitted (a sandbox): compaction simply runs at the writer's priority
            pass


def _starts_slot(table: str, version: int) -> bool:
    """Whether ``version`` of ``table`` is the first of a ``checkpoint_slot`` (its checkpoint is due)."""
    return checkpoint_slot(table, version) > checkpoint_slot(table, version - 1)


def _run_txn(key: dict) -> str:
    """The Delta transaction id (``txn`` appId) every recording of one run carries."""
    return f"perennial.run/{key[PARTITION]}/{key['run_id']}"


def _log_race(e: BaseException) -> bool:
    """A log listing that caught other writers' commits mid-creation: a local directory listing (ext4 and
    others) may show commit N+1 without N when both appear while it runs, and delta-kernel refuses the gap
    ("Expected ordered contiguous commit files"). Listing again sees both."""
    text = str(e)
    return "contiguous commit files" in text or "to be next version to checkpoint" in text


def _small_files(actions: pa.Table) -> dict[str, list[str]]:
    """Per partition, the paths of the files (of ``Engine.actions``) with fewer than ``SMALL_FILE_ROWS`` rows."""
    column = f"partition.{PARTITION}"
    if not actions.num_rows or column not in actions.column_names:
        return {}
    out: dict[str, list[str]] = {}
    for path, rows, w in zip(*(actions.column(c).to_pylist() for c in ("path", "num_records", column))):
        if rows is None or rows < SMALL_FILE_ROWS:
            out.setdefault(w, []).append(path)
    return out


def _files_per_partition(d) -> dict[str, int]:
    actions = pa.table(d.get_add_actions(flatten=True))
    column = f"partition.{PARTITION}"
    if not actions.num_rows or column not in actions.column_names:
        return {}
    counts = actions.group_by(column).aggregate([([], "count_all")])
    return dict(zip(counts.column(column).to_pylist(), counts.column("count_all").to_pylist()))


def _rel(table_uri: str, file_uri: str) -> str:
    from urllib.parse import unquote

    file_uri = unquote(file_uri.removeprefix("file://"))
    return file_uri[len(table_uri) + 1 :] if file_uri.startswith(table_uri) else file_uri


def _files_named_in_log(fs: pafs.FileSystem, log: str) -> set[str]:
    """Every data file an add action of a commit still in the log names (time travel reads those)."""
    from urllib.parse import unquote

    named = set()
    for f in fs.get_file_info(pafs.FileSelector(log, allow_not_found=True)):
        if not f.path.endswith(".json") or os.path.basename(f.path).startswith("_"):
            continue
        with fs.open_input_stream(f.path) as stream:
            for line in stream.read().decode().splitlines():
                action = json.loads(line) if line.strip() else {}
                for kind in ("add", "remove"):
                    if kind in action:
                        named.add(unquote(action[kind]["path"]))
    return named


def _created_at(d) -> dt.datetime:
    first = d.history()[-1]
    return dt.datetime.fromtimestamp(first["timestamp"] / 1000, dt.UTC)


def _record_mismatches(engine: Engine) -> list[tuple[str, str]]:
    """Runs whose ``runs`` row and ``epochs`` rows come from different recordings (a recorder still
    running, or killed between its two commits: recording the run again settles it)."""
    runs = engine.read("runs", columns=["run_id", "record_id"])
    epochs = engine.read("epochs", columns=["run_id", "record_id"])
    if "record_id" not in runs.column_names or "record_id" not in epochs.column_names:
        return []
    by_run = dict(zip(runs.column("run_id").to_pylist(), runs.column("record_id").to_pylist()))
    seen = epochs.group_by(["run_id", "record_id"]).aggregate([]).to_pylist()
    epoch_records: dict[str, set] = {}
    for r in seen:
        epoch_records.setdefault(r["run_id"], set()).add(r["record_id"])
    out = []
    for run_id, record in by_run.items():
        if record is None or run_id not in epoch_records:
            continue
        if epoch_records[run_id] != {record}:
            later = sorted(x for x in epoch_records[run_id] if x)
            out.append((run_id, f"runs row from recording {record}, epochs from {', '.join(later)}"))
    return out
