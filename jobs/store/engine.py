"""The store engine: one Delta Lake table per kind of record, appended to and read here (a thin layer over delta-rs).

Layout (docs/store.md)::

    <store>/<table>/_delta_log/            the table's commit log (JSON commits + Parquet checkpoints)
    <store>/<table>/workload=<name>/*.parquet

A table is a Delta table (delta-rs), partitioned by ``workload``, in a local directory or under
``s3://bucket/prefix``. Every write is one commit through delta-rs's public API, retried when another writer
committed first; a reader sees each commit whole or not at all. Writers only write: log checkpoints and
expired-log cleanup are delta-rs's post-commit hook (``TABLE_PROPERTIES``), and compaction runs elsewhere,
one at a time per table (jobs/store/maintenance.py). Column types: jobs/store/schema.py.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from jobs.errors import StoreError
from jobs.store.schema import CORE, PARTITION, conform, to_arrow

FINISHED = ("completed", "stopped_early")
INFO_KINDS = ("many_files", "in_progress", "record_pending", "orphan_file")  # findings that are not problems
COMPACT_AFTER = 16  # files in one partition at which a compaction is due (maintenance.compact_if_due)
RETENTION_HOURS = 7 * 24  # history `vacuum` keeps by default: a week of time travel
COMMIT_ATTEMPTS = 40  # a conflict only means another writer committed first: retry from the new version
RESULT_CACHE_ENTRIES = 16  # small query results kept per table version (Engine.read), the oldest dropped first
RESULT_CACHE_BYTES = 64 << 20  # ... each at most this big
CHECKPOINT_INTERVAL = 10  # commits between log checkpoints (delta-rs's default is 100)
# Set on every table (at create; an older table gets them on its next write or compaction): delta-rs's post-commit
# hook then writes a checkpoint every CHECKPOINT_INTERVAL commits and removes log entries past the retention.
TABLE_PROPERTIES = {
    "delta.checkpointInterval": str(CHECKPOINT_INTERVAL),
    "delta.logRetentionDuration": "interval 30 days",
    "delta.enableExpiredLogCleanup": "true",
}
LOG = "_delta_log"
TOKEN = "perennial.commit"  # commit-info key: each commit's own token (Engine._landed_at)


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
    files in one partition at which a compaction is due (``maintenance.compact_if_due``).
    """

    def __init__(self, uri: str | os.PathLike, as_of=None, compact_after: int = COMPACT_AFTER):
        uri = str(uri).rstrip("/")
        self.uri = uri if "://" in uri else os.path.abspath(uri)
        self.local = "://" not in uri
        self.as_of = parse_as_of(as_of)
        self.compact_after = compact_after
        self.options = storage_options(self.uri)
        self._open: dict[str, Any] = {}  # table -> its DeltaTable handle
        self._loaded_at: dict[str, int] = {}  # table -> the version its handle was loaded at
        self._datasets: dict[str, tuple[int, ds.Dataset]] = {}  # table -> (version, its pyarrow dataset)
        self._results: dict[tuple, pa.Table] = {}  # (table, version, query) -> a small result (Engine.read)
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

        One handle per table, brought up to date incrementally, and loaded afresh (from the newest log checkpoint)
        once the table passed a checkpoint: a handle's writes cost more the more commits it applied since its load.
        A log listing that caught commits mid-creation (``_log_race``) is retried: it is a read."""
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
                    if d.version() // CHECKPOINT_INTERVAL > self._loaded_at[table] // CHECKPOINT_INTERVAL:
                        d = None
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
        if isinstance(self.as_of, dt.datetime):
            created = dt.datetime.fromtimestamp(d.history()[-1]["timestamp"] / 1000, dt.UTC)
            if self.as_of < created:
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

    def arrow_dataset(self, d, table: str) -> ds.Dataset:
        """``d.to_pyarrow_dataset()`` over Arrow's own filesystem for the store (local or S3). deltalake's default
        is a Python-implemented filesystem that Arrow's threads call back into; after such a read the interpreter
        aborted at exit now and then ("terminate called without an active exception")."""
        return d.to_pyarrow_dataset(filesystem=pafs.SubTreeFileSystem(f"{self.root}/{table}", self.fs))

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
                    "files_added": metrics.get("num_added_files", metrics.get("numFilesAdded")),
                    "files_removed": metrics.get("num_removed_files", metrics.get("numFilesRemoved")),
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
            return self._commit(table, rows) if rows.num_rows else -1
        rows = list(rows)
        return self._commit(table, rows) if rows else -1

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

        Both commits carry the run's Delta transaction id (appId ``perennial.run/<workload>/<run_id>``, version the
        recording's time in µs) and both tables' rows one ``record_id``. A recording replaces the run's rows only if
        the table's transaction version for the run is older; delta-rs refuses a commit whose appId another commit
        set since its snapshot, and the retry sees that commit. So:

        - a table never holds two recordings of a run, nor part of one;
        - a ``runs`` row is never visible before epochs of its run (epochs commit first);
        - once every recorder of a run has returned, both tables hold the latest recording. A recorder
          that finds a later recording already in ``epochs`` writes nothing more and returns False.
        """
        when = now()
        record = f"{when:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}"
        key = {PARTITION: run.get(PARTITION) or "none", "run_id": run["run_id"]}
        txn = (f"perennial.run/{key[PARTITION]}/{key['run_id']}", int(when.timestamp() * 1_000_000))
        epochs = [{**e, PARTITION: key[PARTITION], "record_id": record} for e in epochs]
        if not self._commit("epochs", epochs, key=key, txn=txn):
            return False
        self._commit("runs", [{**run, PARTITION: key[PARTITION], "record_id": record}], key=key, txn=txn)
        return True

    def _commit(
        self, table: str, rows: list[dict] | pa.Table, key: dict | None = None, txn: tuple[str, int] | None = None
    ) -> int | bool:
        """One commit of ``rows`` (replacing ``key``'s rows when given), retried on a conflict. Returns the new
        version; for a run's recording (``txn``: its transaction id and version), whether it is in the table.

        Every commit carries a token in its commit info. delta-rs can raise after its commit landed (its post-commit
        refresh lists the log, and a listing that races other writers' commits fails, see ``_log_race``); before
        retrying after any error but a plain conflict, the commits after the version this attempt read are searched
        for the token, so a landed commit is never made twice."""
        from deltalake import CommitProperties
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
        apps = [Transaction(txn[0], txn[1], int(time.time() * 1000))] if txn else None
        properties = CommitProperties(custom_metadata={TOKEN: token}, app_transactions=apps)
        failure: BaseException | None = None
        for attempt in range(COMMIT_ATTEMPTS):
            # The first attempt takes the handle as it is (no log listing): delta-rs checks every commit newer
            # than it for a conflict anyway; a retry reads the newest.
            d = self.delta(table, fresh=attempt > 0)
            read_version = d.version() if d is not None else -1
            try:
                done = self._write(table, d, arrow, predicate, txn, properties)
                if done is not None:
                    return done
                break
            except CommitFailedError as e:  # another writer committed first: nothing of this attempt landed
                failure = e
            except DeltaError as e:
                # "version 0 already exists" when two writers create a table at once; a log listing that raced
                # other commits, before or after this commit landed
                self._open.pop(table, None)  # the handle may hold a partial listing: load it afresh
                if self._landed_at(table, read_version, token) is not None:
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
        return True if txn else self.delta(table, fresh=False).version()

    def _write(self, table: str, d, arrow, predicate: str | None, txn, properties) -> bool | None:
        """One write attempt on handle ``d`` (None: the table does not exist yet). Returns None once written, or
        whether ``txn``'s recording is in the table when nothing needs writing."""
        from deltalake import write_deltalake

        if d is None:  # the first commit creates the table (two creators: one gets "already exists")
            if arrow is None:
                return True
            write_deltalake(
                self.table_uri(table),
                arrow,
                mode="append",
                partition_by=[PARTITION],
                configuration=TABLE_PROPERTIES,
                storage_options=self.options,
                commit_properties=properties,
            )
            return None
        found = d.transaction_version(txn[0]) if txn else None
        if found is not None and found >= txn[1]:
            return found == txn[1]  # this recording is there already, or a later one
        set_table_properties(d)
        data = conform(table, arrow, d) if arrow is not None else None
        replace = predicate is not None and (txn is None or found is not None)  # a new run: a plain append
        if data is None:
            if replace:
                d.delete(predicate, commit_properties=properties)
        elif replace:
            write_deltalake(
                d, data, mode="overwrite", predicate=predicate, schema_mode="merge", commit_properties=properties
            )
        else:
            write_deltalake(d, data, mode="append", schema_mode="merge", commit_properties=properties)
        return None

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


def set_table_properties(d) -> None:
    """Give a table made without ``TABLE_PROPERTIES`` (an older store) its checkpoint and log-cleanup properties."""
    if d.metadata().configuration.items() < TABLE_PROPERTIES.items():
        d.alter.set_table_properties(TABLE_PROPERTIES, raise_if_not_exists=False)


def _log_race(e: BaseException) -> bool:
    """A log listing that caught other writers' commits mid-creation: a local directory listing (ext4 and
    others) may show commit N+1 without N when both appear while it runs, and delta-kernel refuses the gap
    ("Expected ordered contiguous commit files", "Gap between checkpoint version"). Listing again sees both."""
    text = str(e)
    return any(
        s in text for s in ("contiguous commit files", "to be next version to checkpoint", "Gap between checkpoint")
    )


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
