"""The store engine: one Delta table per kind of record, partitioned by ``workload``, in a directory or under
``s3://bucket/prefix`` (layout: docs/store.md). Every write is one delta-rs commit, retried on a conflict."""

from __future__ import annotations

import datetime as dt
import itertools
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
RESULT_CACHE_ENTRIES, RESULT_CACHE_BYTES = 16, 64 << 20  # small query results kept per table version (Engine.read)
CHECKPOINT_INTERVAL = 10  # commits between log checkpoints (delta-rs's default is 100)
# delta-rs's post-commit hook then writes the log checkpoints and removes log entries past the retention
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


def parse_since(since: str | dt.datetime) -> dt.datetime:
    """``7d`` / ``12h`` / ``30m`` ago, or an ISO date/time (UTC unless it says otherwise)."""
    if isinstance(since, str):
        if m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", since):
            seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
            return now() - dt.timedelta(seconds=seconds)
        try:
            since = dt.datetime.fromisoformat(since)
        except ValueError:
            raise StoreError(f"--since '{since}' is not an age or a date — write e.g. 12h, 7d or 2026-01-31") from None
    return since if since.tzinfo else since.replace(tzinfo=dt.UTC)


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
    """delta-rs object-store options from the AWS_* / DELTA_* variables (DELTA_*: the DynamoDB commit lock)."""
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
    """The store's tables; ``as_of`` (a version, a datetime, an ISO date or an age such as ``7d``) makes every read
    see each table as it was then, and the store read-only."""

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
            self.fs, root = (pafs.LocalFileSystem(), self.uri) if self.local else pafs.FileSystem.from_uri(self.uri)
            self.root = root.rstrip("/")
        except Exception as e:
            raise StoreError(
                f"store '{uri}' is not usable: {first_line(e)} — give a directory or s3://bucket/prefix"
            ) from None

    def table_uri(self, table: str) -> str:
        return f"{self.uri}/{table}"

    def folders(self) -> list[str]:
        """The store's folders, less hidden ones (``.``, ``_``): its tables and anything else put there."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        names = [os.path.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]
        return [n for n in names if not n.startswith((".", "_"))]

    def tables(self) -> list[str]:
        try:
            logs = self.fs.get_file_info([f"{self.root}/{n}/{LOG}" for n in self.folders()])
        except OSError as e:
            raise StoreError(f"cannot read store '{self.uri}': {first_line(e)}") from None
        return sorted(i.path.split("/")[-2] for i in logs if i.type != pafs.FileType.NotFound)

    def delta(self, table: str, fresh: bool = True):
        """The ``DeltaTable`` of ``table`` (newest, or at ``as_of``); None if there is none. One handle per table,
        loaded afresh past each log checkpoint (a handle's writes cost more the more commits it applied)."""
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

    def dataset(self, table: str, workload: str | None = None) -> ds.Dataset | None:
        d = self.delta(table)
        if d is None:
            return None
        cached = self._datasets.get(table)
        if cached is None or cached[0] != d.version():  # building one costs per file: reuse it per version
            # Arrow's own filesystem: with deltalake's Python one, the interpreter could abort at exit
            files = pafs.SubTreeFileSystem(f"{self.root}/{table}", self.fs)
            cached = self._datasets[table] = (d.version(), d.to_pyarrow_dataset(filesystem=files))
        data = cached[1]
        return data.filter(ds.field(PARTITION) == workload) if workload else data

    def empty(self, table: str) -> pa.Table:
        return pa.schema({**CORE.get(table, {}), PARTITION: pa.string()}).empty_table()

    def read(self, table: str, workload: str | None = None, filter=None, columns: list[str] | None = None) -> pa.Table:
        """Rows of ``table`` as an Arrow table; a small result is kept per table version, for the same query again."""
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

    def df(self, *args, **kwargs):
        return self.read(*args, **kwargs).to_pandas()

    def files(self, table: str) -> list[str]:
        d = self.delta(table)
        return sorted(d.file_uris()) if d is not None else []

    def versions(self, table: str, limit: int | None = None) -> list[dict]:
        """The table's commits, newest first: version, timestamp, operation, rows added."""
        d, out = self.delta(table), []
        for c in d.history(limit) if d is not None else []:
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

    def append(self, table: str, rows: Iterable[dict[str, Any]] | pa.Table) -> int:
        """Append rows (dicts, or an Arrow table with a workload column) in one commit; returns the new version."""
        if isinstance(rows, pa.Table) and PARTITION not in rows.column_names:
            raise StoreError(f"append to '{table}': the Arrow table needs a '{PARTITION}' column")
        rows = rows if isinstance(rows, pa.Table) else list(rows)
        return self._commit(table, rows) if len(rows) else -1

    def replace(self, table: str, rows: Iterable[dict[str, Any]], key: dict[str, Any]) -> int:
        """Delete the rows whose columns equal ``key`` and append ``rows`` (each matching ``key``), in one commit."""
        rows = list(rows)
        for r in rows:
            if any(r.get(k) != v for k, v in key.items()):
                raise StoreError(f"replace in '{table}': row {r} does not match its key {key}")
        return self._commit(table, rows, key=key)

    def record_run(self, epochs: list[dict[str, Any]], run: dict[str, Any]) -> bool:
        """Replace a run's epoch rows, then its ``runs`` row, each in one commit carrying the run's Delta transaction
        (version: the recording's time), so the newest recording wins; False if a later one is in ``epochs`` already
        (docs/store.md)."""
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
        """One commit of ``rows`` (replacing ``key``'s rows), retried on a conflict; returns the new version, or for a
        recording (``txn``) whether it is in the table. delta-rs can raise after its commit landed: a token in the
        commit info tells whether it did, so that no commit is made twice."""
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
            # the first attempt takes the handle as it is: delta-rs checks newer commits for conflicts anyway
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
                self._open.pop(table, None)  # the handle may hold a partial listing: load it afresh
                if self._landed_at(table, read_version, token) is not None:
                    break
                # another writer created the table meanwhile: the retry conforms the rows to it
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
        """One write attempt (``d`` None: create the table); None once written, else whether ``txn`` is there."""
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
        if data is None and replace:
            d.delete(predicate, commit_properties=properties)
        elif data is not None:
            mode, where = ("overwrite", predicate) if replace else ("append", None)
            write_deltalake(d, data, mode=mode, predicate=where, schema_mode="merge", commit_properties=properties)
        return None

    def _landed_at(self, table: str, after: int, token: str) -> int | None:
        """The version after ``after`` whose commit carries ``token``, read by name (a log listing can race)."""
        for version in itertools.count(after + 1):
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


def set_table_properties(d) -> None:
    """Give a table made without ``TABLE_PROPERTIES`` (an older store) those properties."""
    if d.metadata().configuration.items() < TABLE_PROPERTIES.items():
        d.alter.set_table_properties(TABLE_PROPERTIES, raise_if_not_exists=False)


def _log_race(e: BaseException) -> bool:
    """A log listing that saw commit N+1 without N (both created while it ran): listing again sees both."""
    races = ("contiguous commit files", "to be next version to checkpoint", "Gap between checkpoint")
    return any(s in str(e) for s in races)


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
