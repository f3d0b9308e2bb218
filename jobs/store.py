"""The Parquet evaluation store: every run, epoch, trial and job as rows anyone can query.

    python -m jobs.store leaderboard [--workload mlp] [--metric val_accuracy] [--top 10]
    python -m jobs.store runs [--workload W] [--sweep S] [--status completed] [--since 7d]
    python -m jobs.store history RUN_ID
    python -m jobs.store lineage RUN_ID
    python -m jobs.store compare RUN_A RUN_B
    python -m jobs.store sql "SELECT workload, count(*) FROM runs GROUP BY ALL"
    python -m jobs.store plot [--run ID ...] [--sweep ID] [--workload W] [--out plots]
    python -m jobs.store check [--fix]
    python -m jobs.store compact [--table epochs]
    (all take --store PATH_OR_S3_URI and --format table|csv|json)

Layout (hive-partitioned, readable by pandas / DuckDB / polars as is)::

    <store>/<table>/workload=<name>/<timestamp>-<uuid>.parquet

Writes are append-only: each :meth:`Store.append` writes new uniquely named files — locally to a
dot-prefixed temporary name then renamed (readers skip names starting with ``.`` or ``_``), on
object stores with a single PUT — so readers never see a partial file and concurrent writers
never collide. Reads unify the schemas of all files, so a metric column added later never
hides older files, and older files read it as null.

Type conflicts: a column whose type differs between files in a way that cannot be promoted
(``double`` here, ``string`` there) is resolved on read: the column's type in ``CORE`` wins, else
the type most files hold; a file holding a value of the other type is skipped with a
:class:`StoreWarning` naming it (a file where that column is all null is read as null), and
``check`` lists them. Unreadable files are skipped and reported the same way.

Compaction (``compact``) merges a partition's small files into one ``*-compacted.parquet`` whose
footer lists the file names it replaces; readers ignore any file a visible compacted file
replaces. The compacted file appears atomically (rename / single PUT) and the inputs are deleted
only after it is visible, so a reader sees either the inputs or the compacted file, never both;
a reader whose input vanished under it lists again. One compaction at a time per store (a lock
file); a crash mid-way leaves only harmless leftovers that ``check --fix`` removes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import sys
import uuid
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.errors import StoreError, cli_main

TS = pa.timestamp("us", tz="UTC")
# Columns with a fixed type, whatever a given write holds (a None-only column must not become `null`
# in one file and `string` in another; a metric must never be int in one file and double in another).
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
COMPACTED_SUFFIX = "-compacted.parquet"
REPLACES_KEY = b"perennial.replaces"  # footer metadata of a compacted file: JSON list of replaced names
LOCK = "_compact.lock"
FINISHED = ("completed", "stopped_early")
INFO_KINDS = ("type_promoted", "in_progress", "many_files")  # check findings that are not problems
SMALL_FILES = 500  # files in one partition above which `check` suggests `compact`
ROW_GROUP_ROWS = 256_000  # rows per row group in a compacted file


def store_path(cli_value: str | None, cfg=None) -> str:
    """``--store`` flag > $PERENNIAL_STORE > the config's ``store.path`` > ``./store``."""
    return cli_value or os.environ.get("PERENNIAL_STORE") or (cfg.store.path if cfg is not None else "") or "./store"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StoreWarning(UserWarning):
    """A file was left out of a read (unreadable, or a column of a conflicting type)."""


@dataclass
class _Footer:
    """What a reader needs from one file, read once per file (files never change once visible)."""

    schema: pa.Schema | None = None
    metadata: pq.FileMetaData | None = None
    replaces: tuple[str, ...] = ()  # compacted files only
    error: str = ""  # unreadable: why

    def all_null(self, column: str) -> bool:
        """True if ``column`` holds no value in this file (from the footer's statistics)."""
        if self.schema.field(column).type == pa.null() or self.metadata.num_rows == 0:
            return True
        names = self.metadata.schema.names
        if column not in names:
            return False
        i = names.index(column)
        for g in range(self.metadata.num_row_groups):
            stats = self.metadata.row_group(g).column(i).statistics
            if stats is None or not stats.has_null_count or stats.null_count != self.metadata.row_group(g).num_rows:
                return False
        return True


@dataclass
class _Resolved:
    schema: pa.Schema
    files: list[str]  # the readable, non-conflicting files
    skipped: dict[str, str]  # path -> why it is left out
    promoted: list[str]  # "column: int64 in 3 files, double in 5 -> double"


class Store:
    """A store at a local directory or a URI (``s3://bucket/prefix``, via ``pyarrow.fs``)."""

    def __init__(self, uri: str | os.PathLike):
        uri = str(uri)
        self.uri = uri
        try:
            if "://" in uri:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
                self.root = self.root.rstrip("/")
            else:
                self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        except Exception as e:
            raise StoreError(
                f"store '{uri}' is not usable: {str(e).splitlines()[0]} — give a directory or s3://bucket/prefix"
            ) from None
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self._footers: dict[str, _Footer] = {}  # path -> footer; files are immutable once visible
        self._resolved: dict[tuple, _Resolved] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ write
    def append(self, table: str, rows: Iterable[dict[str, Any]], name: str | None = None) -> list[str]:
        """Append rows (dicts) to ``table``; one new file per workload. Returns the written paths.

        ``name`` gives the file a fixed name instead of a unique one: writing the same rows twice
        under one name leaves one file (used for idempotent records such as a job's final row).
        """
        rows = list(rows)
        if not rows:
            return []
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=-]*", name):
            raise StoreError(
                f"file name '{name}' is not allowed — letters, digits, '._=-', not starting with '.' or '_'"
            )
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(str(r.get(PARTITION) or "none"), []).append(r)
        paths = []
        for workload, group in groups.items():
            arrow = to_arrow(table, [{k: v for k, v in r.items() if k != PARTITION} for r in group])
            folder = f"{self.root}/{table}/{PARTITION}={workload}"
            filename = f"{name}.parquet" if name else f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
            try:
                self._write_atomic(folder, filename, lambda sink: pq.write_table(arrow, sink, filesystem=self.fs))
            except OSError as e:
                raise StoreError(
                    f"cannot write to store '{self.uri}': {str(e).splitlines()[0]} — check the path and its permissions / credentials"
                ) from None
            paths.append(f"{folder}/{filename}")
            self._footers.pop(f"{folder}/{filename}", None)
        return paths

    def _write_atomic(self, folder: str, filename: str, write) -> None:
        self.fs.create_dir(folder, recursive=True)
        if self.local:  # temp name + rename: atomic on POSIX; readers skip dot-names
            tmp = f"{folder}/.{filename}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                write(tmp)
                self.fs.move(tmp, f"{folder}/{filename}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:  # an object PUT is atomic: the object appears whole or not at all
            write(f"{folder}/{filename}")

    # ------------------------------------------------------------------ listing
    def tables(self) -> list[str]:
        """Names of the tables that have a folder in the store."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except OSError as e:
            raise StoreError(f"cannot read store '{self.uri}': {str(e).splitlines()[0]}") from None
        return sorted(
            os.path.basename(i.path)
            for i in infos
            if i.type == pafs.FileType.Directory and not os.path.basename(i.path).startswith((".", "_"))
        )

    def _list(self, table: str, workload: str | None = None) -> list[pafs.FileInfo]:
        base = f"{self.root}/{table}" + (f"/{PARTITION}={workload}" if workload else "")
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as e:
            raise StoreError(f"cannot read store '{self.uri}': {str(e).splitlines()[0]}") from None
        return [i for i in infos if i.type == pafs.FileType.File]

    def _split(self, infos: list[pafs.FileInfo]) -> tuple[list[str], list[str]]:
        """(live data files, files a visible compacted file replaces) — both sorted."""
        data = sorted(
            i.path for i in infos if i.path.endswith(".parquet") and not os.path.basename(i.path).startswith((".", "_"))
        )
        replaced: set[str] = set()
        compacted = [p for p in data if p.endswith(COMPACTED_SUFFIX)]
        self._read_footers(compacted)
        for c in compacted:
            folder = os.path.dirname(c)
            replaced.update(f"{folder}/{n}" for n in self._footers[c].replaces)
        return [p for p in data if p not in replaced], [p for p in data if p in replaced]

    def files(self, table: str, workload: str | None = None) -> list[str]:
        """The live data files of ``table`` (not temporary, not replaced by a compacted file)."""
        return self._split(self._list(table, workload))[0]

    # ------------------------------------------------------------------ read
    def _read_footers(self, paths: list[str]) -> None:
        todo = [p for p in paths if p not in self._footers]
        if not todo:
            return

        def read(path: str) -> _Footer:
            try:
                with self.fs.open_input_file(path) as f:
                    pf = pq.ParquetFile(f)
                    md = pf.metadata
                    schema = pf.schema_arrow
            except Exception as e:
                return _Footer(error=str(e).splitlines()[0] if str(e) else type(e).__name__)
            meta = schema.metadata or {}
            replaces = tuple(json.loads(meta[REPLACES_KEY])) if REPLACES_KEY in meta else ()
            return _Footer(schema=schema.remove_metadata(), metadata=md, replaces=replaces)

        if len(todo) < 8:
            results = map(read, todo)
        else:  # footers are small reads; threads hide the per-file latency (S3 above all)
            pool = ThreadPoolExecutor(max_workers=8 if self.local else 32)
            results = pool.map(read, todo)
            pool.shutdown(wait=False)
        for path, footer in zip(todo, results):
            self._footers[path] = footer

    def _resolve(self, table: str, files: list[str]) -> _Resolved:
        """The unified schema of ``files`` and which files a read must leave out (see module doc)."""
        key = (table, tuple(files))
        if key in self._resolved:
            return self._resolved[key]
        self._read_footers(files)
        skipped = {p: f"unreadable: {self._footers[p].error}" for p in files if self._footers[p].error}
        by_schema: dict[pa.Schema, list[str]] = {}
        for p in files:
            if p not in skipped:
                by_schema.setdefault(self._footers[p].schema, []).append(p)
        column_types: dict[str, dict[pa.DataType, list[str]]] = {}  # first-seen column order
        for schema, paths in by_schema.items():
            for f in schema:
                if f.name != PARTITION:
                    column_types.setdefault(f.name, {}).setdefault(f.type, []).extend(paths)
        core = CORE.get(table, {})
        fields, promoted = [], []
        for column, types in column_types.items():
            present = {t: ps for t, ps in types.items() if t != pa.null()}
            candidates = list(present) + ([core[column]] if column in core else [])
            if not candidates:
                fields.append(pa.field(column, core.get(column, pa.float64())))
                continue
            try:
                merged = (
                    pa.unify_schemas([pa.schema([(column, t)]) for t in candidates], promote_options="permissive")
                    .field(column)
                    .type
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                merged = None
            if merged is not None and (column not in core or merged == core[column]):
                fields.append(pa.field(column, merged))
                if len(present) > 1:
                    counts = ", ".join(f"{t} in {len(ps)} file(s)" for t, ps in present.items())
                    promoted.append(f"column '{column}': {counts} — read as {merged}")
                continue
            # A real conflict: CORE's type wins, else the type most rows hold a value in (rows, unlike
            # files, do not change with compaction; ties: the newest file's type).
            weight = {
                t: sum(self._footers[p].metadata.num_rows for p in ps if not self._footers[p].all_null(column))
                for t, ps in present.items()
            }
            winner = core.get(column) or max(present, key=lambda t: (weight[t], max(present[t])))
            fields.append(pa.field(column, winner))
            for t, paths in present.items():
                if t == winner or _promotes(t, winner):
                    continue
                for p in paths:
                    if p in skipped:
                        continue
                    if self._footers[p].all_null(column) and _castable(t, winner):
                        continue  # nothing to lose: the column reads as null
                    skipped[p] = f"column '{column}' is {t} here but {winner} in the table"
        schema = pa.schema(fields + [pa.field(PARTITION, pa.string())])
        resolved = _Resolved(schema, [p for p in files if p not in skipped], skipped, promoted)
        self._resolved[key] = resolved
        return resolved

    def dataset(self, table: str, workload: str | None = None) -> ds.Dataset | None:
        """A pyarrow dataset over ``table`` with the unified schema of all its files (None if empty).

        Files that cannot be read, or hold a column of a conflicting type, are left out with a
        :class:`StoreWarning` (``python -m jobs.store check`` lists them).
        """
        files = self.files(table, workload)
        if not files:
            return None
        resolved = self._resolve(table, files)
        if resolved.skipped:
            path, why = next(iter(resolved.skipped.items()))
            more = f" (and {len(resolved.skipped) - 1} more)" if len(resolved.skipped) > 1 else ""
            message = (
                f"store table '{table}': left out {path}: {why}{more} — run `python -m jobs.store check` for the list"
            )
            if message not in self._warned:
                self._warned.add(message)
                warnings.warn(message, StoreWarning, stacklevel=3)
        if not resolved.files:
            return None
        return ds.dataset(
            resolved.files,
            schema=resolved.schema,
            filesystem=self.fs,
            format="parquet",
            partitioning=ds.HivePartitioning(pa.schema([(PARTITION, pa.string())])),
            partition_base_dir=f"{self.root}/{table}",
        )

    def empty(self, table: str) -> pa.Table:
        return pa.schema([(k, v) for k, v in CORE.get(table, {}).items()] + [(PARTITION, pa.string())]).empty_table()

    def read(
        self,
        table: str,
        workload: str | None = None,
        filter: ds.Expression | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Rows of ``table`` (optionally one workload's, filtered, some columns) as an Arrow table."""
        for attempt in range(3):
            d = self.dataset(table, workload)
            if d is None:
                empty = self.empty(table)
                return empty.select([c for c in columns if c in empty.schema.names]) if columns else empty
            cols = [c for c in columns if c in d.schema.names] if columns else None
            try:
                return d.to_table(filter=filter, columns=cols)
            except OSError as e:  # a compaction replaced a file after we listed it: list again
                if attempt == 2:
                    raise StoreError(
                        f"cannot read store table '{table}' in '{self.uri}': {str(e).splitlines()[0]}"
                    ) from None
        raise AssertionError("unreachable")

    def df(
        self,
        table: str,
        workload: str | None = None,
        filter: ds.Expression | None = None,
        columns: list[str] | None = None,
    ):
        return self.read(table, workload, filter, columns).to_pandas()

    # ------------------------------------------------------------------ queries
    def runs(
        self,
        workload: str | None = None,
        sweep_id: str | None = None,
        status: str | None = None,
        since: str | dt.datetime | None = None,
    ):
        """Runs, newest first; ``since`` is a datetime, an ISO date/time or an age like ``12h`` / ``7d``."""
        expr = None
        for column, value in (("sweep_id", sweep_id), ("status", status)):
            if value:
                e = ds.field(column) == value
                expr = e if expr is None else expr & e
        df = self.df("runs", workload, expr)
        if since is not None and len(df):
            cutoff = parse_since(since)
            when = df["finished_at"] if "finished_at" in df else df["started_at"]
            df = df[when >= cutoff]
        return df.sort_values("finished_at", ascending=False) if len(df) and "finished_at" in df else df

    def leaderboard(self, workload: str | None = None, metric: str | None = None, top: int = 10):
        """Best runs per workload by their metric (``best_metric``, or ``metric`` if given): the
        workload's ``mode`` (max/min) decides the order; a metric named ``*loss`` ranks low first."""
        import pandas as pd

        d = self.dataset("runs", workload)
        names = d.schema.names if d is not None else []
        col = metric or "best_metric"
        if metric and d is not None and metric not in names:
            numeric = sorted(n for n in names if pa.types.is_floating(d.schema.field(n).type))
            raise StoreError(f"no column '{metric}' in runs — rank by one of: {', '.join(numeric)}")
        test_cols = [c for c in names if c.startswith("test_") and not c.endswith("_loss")][:2]
        cols = [
            "workload",
            "rank",
            "run_id",
            "metric",
            col,
            *test_cols,
            "best_epoch",
            "epochs",
            "status",
            "sweep_id",
            "wall_s",
            "finished_at",
        ]
        wanted = list(dict.fromkeys([c for c in cols if c != "rank"] + ["mode"]))
        df = self.df("runs", workload, ds.field("status").isin(list(FINISHED)) if "status" in names else None, wanted)
        if col not in df:
            return df.iloc[0:0]
        df = df.dropna(subset=[col])
        # One vectorised sort for all workloads: ascending key = the metric, negated where higher is better.
        if metric and metric.endswith("loss"):
            higher_better = pd.Series(False, index=df.index)
        elif "mode" in df:
            higher_better = df[PARTITION].map(df.groupby(PARTITION)["mode"].first()).fillna("max") != "min"
        else:
            higher_better = pd.Series(True, index=df.index)
        df = df.assign(_key=df[col].where(~higher_better, -df[col]))
        keys, ascending = [PARTITION, "_key"], [True, True]
        if "finished_at" in df:  # ties: newest first
            keys, ascending = keys + ["finished_at"], ascending + [False]
        out = df.sort_values(keys, ascending=ascending, kind="stable").groupby(PARTITION, sort=False).head(top)
        out = out.assign(rank=out.groupby(PARTITION, sort=False).cumcount() + 1)
        return out[[c for c in dict.fromkeys(cols) if c in out.columns]].reset_index(drop=True)

    def history(self, run_id: str):
        df = self.df("epochs", filter=ds.field("run_id") == run_id)
        return df.sort_values("epoch") if len(df) else df

    def run(self, run_id: str) -> dict:
        """The runs row of ``run_id`` (the newest, if written twice); ConfigError if none."""
        df = self.df("runs", filter=ds.field("run_id") == run_id)
        if not len(df):
            raise StoreError(f"no run '{run_id}' in {self.uri} — list runs with: python -m jobs.store runs")
        if "finished_at" in df:
            df = df.sort_values("finished_at")
        return df.iloc[-1].to_dict()

    def compare(self, run_a: str, run_b: str):
        """Config differences and metric differences of two runs: one frame with a ``section`` column."""
        import pandas as pd

        a, b = self.run(run_a), self.run(run_b)
        rows = []
        config_a, config_b = _flat_json(a.get("config_json")), _flat_json(b.get("config_json"))
        for key in sorted(set(config_a) | set(config_b)):
            va, vb = config_a.get(key), config_b.get(key)
            if va != vb:
                rows.append({"section": "config", "key": key, run_a: _text(va), run_b: _text(vb), "delta": ""})
        metric_keys = ["best_metric", "best_epoch", "epochs"]
        metric_keys += sorted(k for k in set(a) | set(b) if k.startswith(("val_", "test_")))
        metric_keys += ["wall_s", "train_time_s", "cpu_s"]
        for key in metric_keys:
            va, vb = _number(a.get(key)), _number(b.get(key))
            if va is None and vb is None:
                continue
            delta = f"{vb - va:+.4g}" if va is not None and vb is not None else ""
            rows.append({"section": "metric", "key": key, run_a: _text(va), run_b: _text(vb), "delta": delta})
        for key in ("status", "metric", "workload", "git_sha", "data_fingerprint"):
            if a.get(key) != b.get(key):
                rows.append(
                    {"section": "run", "key": key, run_a: _text(a.get(key)), run_b: _text(b.get(key)), "delta": ""}
                )
        return pd.DataFrame(rows, columns=["section", "key", run_a, run_b, "delta"])

    def sql(self, query: str):
        """Run DuckDB SQL over the store's tables, each registered as a view by its name."""
        import duckdb

        con = duckdb.connect()
        names = sorted(set(self.tables()) | set(CORE))
        for name in names:
            d = self.dataset(name)
            con.register(name, d if d is not None else self.empty(name))
        try:
            relation = con.sql(query)  # a relation's Arrow output: no copy, no pandas round trip in DuckDB
            return relation.to_arrow_table().to_pandas() if relation is not None else pa.table({}).to_pandas()
        except duckdb.Error as e:
            first = str(e).strip().splitlines()[0]
            raise StoreError(f"sql: {first} — tables: {', '.join(names)}") from None
        finally:
            con.close()

    # ------------------------------------------------------------------ plots
    def plot(
        self,
        run_ids: list[str] = (),
        sweep_id: str | None = None,
        workload: str | None = None,
        metric: str | None = None,
        out: str = "plots",
        top: int = 5,
    ) -> list[str]:
        """Learning curves (metric and train loss per epoch, one line per run) and, for a sweep,
        the metric against each hyperparameter. Runs: ``run_ids``, else the sweep's trials, else
        the ``top`` runs of each workload on the leaderboard. Returns the PNG paths written."""
        import matplotlib

        matplotlib.use("Agg")
        os.makedirs(out, exist_ok=True)
        written = []
        if run_ids:
            groups = {"runs": list(run_ids)}
        elif sweep_id:
            trials = self.runs(sweep_id=sweep_id)
            if not len(trials):
                raise StoreError(
                    f"no runs of sweep '{sweep_id}' in {self.uri} — list sweeps with: python -m jobs.store sql \"SELECT * FROM sweeps\""
                )
            groups = {sweep_id: list(trials["run_id"])}
        else:
            board = self.leaderboard(workload, metric, top)
            if not len(board):
                raise StoreError(
                    f"no finished runs{f' of {workload}' if workload else ''} in {self.uri} — train one first"
                )
            groups = {w: list(g["run_id"]) for w, g in board.groupby(PARTITION, sort=True)}
        for tag, ids in groups.items():
            written.append(
                self._plot_curves(ids, metric, f"{out}/curves-{_safe(tag)}.png", tag, top if not run_ids else len(ids))
            )
        if sweep_id:
            written.append(self._plot_sweep(sweep_id, metric, f"{out}/sweep-{_safe(sweep_id)}.png"))
        return written

    def _plot_curves(self, run_ids: list[str], metric: str | None, path: str, title: str, limit: int) -> str:
        import matplotlib.pyplot as plt

        runs = self.df("runs", filter=ds.field("run_id").isin(run_ids))
        epochs = self.df("epochs", filter=ds.field("run_id").isin(run_ids))
        missing = sorted(set(run_ids) - set(epochs["run_id"]))
        if len(missing) == len(set(run_ids)):
            raise StoreError(
                f"no epochs for run(s) {', '.join(missing)} in {self.uri} — list runs with: python -m jobs.store runs"
            )
        info = {r["run_id"]: r for r in runs.to_dict("records")}
        metric = metric or next((info[r].get("metric") for r in run_ids if r in info and info[r].get("metric")), None)
        if not metric or metric not in epochs or epochs[metric].isna().all():
            metric = next((c for c in epochs.columns if c.startswith("val_") and not epochs[c].isna().all()), None)
        total = len(set(run_ids))
        if total > limit and all(r in info for r in run_ids):  # a big sweep: only the best lines
            mode = info[run_ids[0]].get("mode") or "max"
            run_ids = sorted(run_ids, key=lambda r: _number(info[r].get("best_metric")) or 0.0, reverse=mode == "max")[
                :limit
            ]
            title += f" (best {limit} of {total} runs)"
        panels = [m for m in (metric, "train_loss") if m and m in epochs and not epochs[m].isna().all()]
        fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
        for ax, column in zip(axes[0], panels):
            for run_id in dict.fromkeys(run_ids):
                h = epochs[epochs["run_id"] == run_id].sort_values("epoch")
                if not len(h):
                    continue
                status = info.get(run_id, {}).get("status", "")
                best = _number(info.get(run_id, {}).get("best_metric"))
                label = (
                    run_id
                    + (f" {best:.3f}" if best is not None else "")
                    + (f" ({status})" if status and status != "completed" else "")
                )
                style = "--" if status == "stopped_early" else "-"
                ax.plot(h["epoch"], h[column], style, marker="o", markersize=3, label=label)
            ax.set_xlabel("epoch")
            ax.set_ylabel(column)
            ax.set_title(f"{column} per epoch")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0][0].legend(fontsize=8, loc="best", title=f"run, best {metric}" if metric else None, title_fontsize=8)
        fig.suptitle(f"learning curves: {title}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def _plot_sweep(self, sweep_id: str, metric: str | None, path: str) -> str:
        import matplotlib.pyplot as plt
        import numpy as np

        trials = self.runs(sweep_id=sweep_id)
        space: dict = {}
        sweeps = self.df("sweeps", filter=ds.field("sweep_id") == sweep_id)
        if len(sweeps) and sweeps.iloc[-1].get("search_space_json"):
            space = json.loads(sweeps.iloc[-1]["search_space_json"])
        params = [p for p in space if p in trials] or [
            c
            for c in trials.columns
            if c.split(".")[0] in ("data", "model", "train") and trials[c].nunique(dropna=True) > 1
        ]
        if not params:
            raise StoreError(f"sweep '{sweep_id}': no hyperparameter varies between its trials — nothing to plot")
        column = metric or "best_metric"
        ylabel = metric or (
            trials["metric"].dropna().iloc[0]
            if "metric" in trials and trials["metric"].notna().any()
            else "best_metric"
        )
        finished = trials[trials["status"].isin(FINISHED) & trials[column].notna()]
        mode = finished["mode"].dropna().iloc[0] if "mode" in finished and finished["mode"].notna().any() else "max"
        best = (finished[column].idxmax() if mode == "max" else finished[column].idxmin()) if len(finished) else None
        ncols = min(3, len(params))
        nrows = -(-len(params) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), squeeze=False)
        styles = {
            "completed": ("o", "tab:blue", "completed"),
            "stopped_early": ("x", "tab:orange", "stopped early (ASHA)"),
            "failed": ("v", "tab:red", "failed"),
        }
        for ax, param in zip(axes.flat, params):
            values = trials[param]
            categorical = not all(isinstance(v, (int, float, np.integer, np.floating)) for v in values.dropna())
            if categorical:
                levels = sorted(values.dropna().astype(str).unique())
                xs = values.astype(str).map({v: i for i, v in enumerate(levels)})
                ax.set_xticks(range(len(levels)), levels)
            else:
                xs = values.astype(float)
                positive = xs.dropna()
                if (space.get(param, {}) or {}).get("loguniform") or (
                    len(positive) and positive.min() > 0 and positive.max() / positive.min() > 50
                ):
                    ax.set_xscale("log")
            for status, (marker, color, label) in styles.items():
                mask = (trials["status"] == status) & trials[column].notna()
                if mask.any():
                    ax.scatter(xs[mask], trials.loc[mask, column], marker=marker, color=color, s=40, label=label)
            if best is not None:
                ax.scatter(
                    xs[best],
                    trials.loc[best, column],
                    marker="*",
                    s=220,
                    facecolor="none",
                    edgecolor="tab:red",
                    linewidth=1.4,
                    label=f"best: {trials.loc[best, 'run_id']}",
                )
            ax.set_xlabel(param)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(params) :]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=8, loc="best")
        fig.suptitle(f"sweep {sweep_id}: {ylabel} (best epoch) of each trial, {len(trials)} trials")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    # ------------------------------------------------------------------ maintenance
    def check(self, fix: bool = False, older_than_s: float = 3600.0) -> list[dict]:
        """Problems in the store: unreadable files, type conflicts (files left out of reads),
        leftover temporary files and files a compaction replaced but did not delete. With ``fix``,
        removes the leftovers (temporary files only when older than ``older_than_s``: a younger
        one may belong to a writer still running). Returns one dict per finding."""
        findings = []
        cutoff = now() - dt.timedelta(seconds=older_than_s)

        def add(kind, table, path, detail, fixable=False):
            fixed = False
            if fix and fixable:
                try:
                    self.fs.delete_file(path)
                    fixed = True
                except FileNotFoundError:
                    fixed = True
            findings.append({"kind": kind, "table": table, "path": path, "detail": detail, "fixed": fixed})

        lock = self._lock_info()
        if lock is not None:
            stale = lock.mtime is not None and lock.mtime < cutoff
            add(
                "stale_lock" if stale else "in_progress",
                "",
                lock.path,
                "a compaction died holding the lock" if stale else "a compaction is running",
                stale,
            )
        for table in self.tables():
            infos = self._list(table)
            for i in infos:
                if os.path.basename(i.path).startswith("."):
                    if i.mtime is None or i.mtime < cutoff:
                        add("temp_file", table, i.path, "left by a crashed writer", True)
                    else:
                        add(
                            "in_progress",
                            table,
                            i.path,
                            "a temp file younger than --older-than: a writer may still be running",
                        )
            live, replaced = self._split(infos)
            for p in replaced:
                add(
                    "superseded",
                    table,
                    p,
                    "replaced by a compacted file; a compaction stopped before deleting it",
                    True,
                )
            resolved = self._resolve(table, live)
            for p, why in resolved.skipped.items():
                add(
                    "unreadable" if why.startswith("unreadable") else "type_conflict",
                    table,
                    p,
                    why + " — left out of reads; fix or remove the file",
                )
            for note in resolved.promoted:
                findings.append({"kind": "type_promoted", "table": table, "path": "", "detail": note, "fixed": False})
            per_folder: dict[str, int] = {}
            for p in live:
                per_folder[os.path.dirname(p)] = per_folder.get(os.path.dirname(p), 0) + 1
            for folder, n in sorted(per_folder.items()):
                if n >= SMALL_FILES:
                    findings.append(
                        {
                            "kind": "many_files",
                            "table": table,
                            "path": folder,
                            "fixed": False,
                            "detail": f"{n} files: queries open every one — run `python -m jobs.store compact`",
                        }
                    )
        return findings

    def compact(self, tables: list[str] | None = None, workload: str | None = None, min_files: int = 2) -> list[dict]:
        """Merge each partition's live files into one compacted file; returns one summary per partition.

        No row is lost or duplicated for a reader at any moment (see the module docstring). Files
        left out of reads (unreadable / conflicting type) are left as they are.
        """
        summary = []
        with self._compaction_lock():
            for table in tables or self.tables():
                resolved = self._resolve(table, self.files(table))  # table-wide: the types every reader uses
                infos = [i for i in self._list(table, workload) if i.path.endswith(".parquet")]
                for folder in sorted({os.path.dirname(i.path) for i in infos}):
                    in_folder = [i for i in infos if os.path.dirname(i.path) == folder]
                    summary.append(self._compact_folder(table, folder, in_folder, resolved, min_files))
        return summary

    def _compact_folder(
        self, table: str, folder: str, infos: list[pafs.FileInfo], resolved: _Resolved, min_files: int
    ) -> dict:
        live, replaced = self._split(infos)
        usable = set(resolved.files)
        inputs = [p for p in live if p in usable]
        result = {
            "table": table,
            "partition": os.path.basename(folder),
            "files_before": len(live),
            "files_after": len(live),
            "rows": 0,
        }
        if len(inputs) < min_files and not replaced:
            return result
        present = {f.name for p in inputs for f in self._footers[p].schema}
        schema = pa.schema([f for f in resolved.schema if f.name in present and f.name != PARTITION])
        names = [os.path.basename(p) for p in inputs + replaced]
        schema = schema.with_metadata({REPLACES_KEY: json.dumps(names).encode()})
        expected = sum(self._footers[p].metadata.num_rows for p in inputs)
        source = ds.dataset(inputs, schema=resolved.schema, filesystem=self.fs, format="parquet")

        def write(sink: str) -> None:
            # Inputs are small files; gather their batches into large row groups (one row group per
            # input would make the footer huge and every later scan slow). Memory: one row group.
            with pq.ParquetWriter(sink, schema, filesystem=self.fs) as writer:
                pending, rows = [], 0
                for batch in source.to_batches(columns=schema.names):
                    pending.append(batch)
                    rows += batch.num_rows
                    if rows >= ROW_GROUP_ROWS:
                        writer.write_table(pa.Table.from_batches(pending, schema=schema).combine_chunks())
                        pending, rows = [], 0
                if pending:
                    writer.write_table(pa.Table.from_batches(pending, schema=schema).combine_chunks())

        filename = f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}{COMPACTED_SUFFIX}"
        self._write_atomic(folder, filename, write)
        written = pq.read_metadata(f"{folder}/{filename}", filesystem=self.fs).num_rows
        if written != expected:  # should not happen; never delete inputs on a mismatch
            self.fs.delete_file(f"{folder}/{filename}")
            raise StoreError(f"compaction of {folder} wrote {written} rows, expected {expected}; inputs kept")
        for p in inputs + replaced:  # only now, with the compacted file visible, drop what it replaces
            try:
                self.fs.delete_file(p)
            except FileNotFoundError:
                pass
            self._footers.pop(p, None)
        return result | {"files_after": len(live) - len(inputs) + 1, "rows": written}

    def _lock_info(self) -> pafs.FileInfo | None:
        info = self.fs.get_file_info(f"{self.root}/{LOCK}")
        return info if info.type == pafs.FileType.File else None

    def _compaction_lock(self):
        store = self

        class Lock:
            def __enter__(self):
                path = f"{store.root}/{LOCK}"
                held = f"another compaction holds {path} — wait for it; if its process died, remove the lock with: python -m jobs.store check --fix"
                store.fs.create_dir(store.root, recursive=True)
                if store.local:  # O_EXCL: exactly one creator wins
                    try:
                        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        raise StoreError(held) from None
                    os.write(fd, f"{os.getpid()} {now().isoformat()}\n".encode())
                    os.close(fd)
                else:  # object stores: check then put (best effort) — run compaction from one place
                    if store._lock_info() is not None:
                        raise StoreError(held)
                    with store.fs.open_output_stream(path) as f:
                        f.write(f"{os.getpid()} {now().isoformat()}\n".encode())
                return self

            def __exit__(self, *exc):
                try:
                    store.fs.delete_file(f"{store.root}/{LOCK}")
                except FileNotFoundError:
                    pass

        return Lock()


# ----------------------------------------------------------------------------- lineage of continual rounds
def lineage(store: Store, run_id: str):
    """The rounds around ``run_id``: its ancestors, itself, then its descendants (one row per run)."""
    import pandas as pd

    runs = store.df("runs")
    if not len(runs) or run_id not in set(runs["run_id"]):
        raise StoreError(f"no run '{run_id}' in store '{store.uri}' — list runs with: python -m jobs.store runs")
    runs = runs.sort_values("finished_at")
    rows = {r["run_id"]: clean_row(r) for r in runs.to_dict("records")}  # a run id has one row; the newest wins
    chain, seen, current = [], set(), run_id
    while current and current in rows and current not in seen:  # ancestors (a cycle cannot happen; guard anyway)
        chain.append(current)
        seen.add(current)
        current = rows[current].get("parent_run_id")
    chain.reverse()
    children: dict[str, list[str]] = {}
    for r in rows.values():
        if r.get("parent_run_id"):
            children.setdefault(r["parent_run_id"], []).append(r["run_id"])
    queue = list(children.get(run_id, []))
    while queue:  # descendants, breadth first (in finishing order within a parent)
        child = queue.pop(0)
        if child not in seen:
            chain.append(child)
            seen.add(child)
            queue.extend(children.get(child, []))
    out = []
    for rid in chain:
        r = rows[rid]
        base = (r.get("metric") or "").removeprefix("val_")
        out.append(
            {
                "round": int(r.get("round") or 1),
                "run_id": rid,
                "parent_run_id": r.get("parent_run_id") or "",
                "status": r.get("status"),
                "data": describe_data(r.get("config_json")),
                "data_fingerprint": r.get("data_fingerprint") or "",
                "metric": base,
                "new_test": r.get(f"test_{base}"),
                "parent_new_test": r.get(f"parent_new_test_{base}"),
                "gain": r.get("gain"),
                "old_test": r.get(f"old_test_{base}"),
                "forgetting": r.get("forgetting"),
                "replay": r.get("continual.replay_fraction"),
            }
        )
    return pd.DataFrame(out)


def describe_data(config_json) -> str:
    """A short name for a run's data: its train file, else its shipped source, plus any cap."""
    try:
        data = json.loads(config_json).get("data", {})
    except (TypeError, ValueError):
        return ""
    name = data.get("train") or data.get("source") or "default"
    name = name if len(name) <= 40 else "…" + name[-39:]
    cap = data.get("max_train_samples")
    return f"{name} (≤{cap})" if cap else name


def clean_row(row: dict) -> dict:
    """pandas NaN/NaT -> None, so ``row.get(k) or default`` reads naturally."""
    return {k: (None if missing(v) else v) for k, v in row.items()}


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("NaT", "nan")


def _promotes(t: pa.DataType, winner: pa.DataType) -> bool:
    try:
        merged = pa.unify_schemas([pa.schema([("c", t)]), pa.schema([("c", winner)])], promote_options="permissive")
        return merged.field("c").type == winner
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False


def _castable(t: pa.DataType, winner: pa.DataType) -> bool:
    try:
        pa.nulls(1, type=t).cast(winner)
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False


def _flat_json(text) -> dict:
    if not isinstance(text, str) or not text:
        return {}
    out = {}

    def walk(prefix, obj):
        if isinstance(obj, dict) and obj:
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = obj

    walk("", json.loads(text))
    return out


def _number(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f  # NaN -> None


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _safe(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def parse_since(since: str | dt.datetime) -> dt.datetime:
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
        raise StoreError(f"--since '{since}' is not an age or a date — write e.g. 12h, 7d or 2026-01-31") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


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
        arrays.append(pa.array(values, type=core.get(name) or _infer(values)))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


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
    return pa.string()


# ----------------------------------------------------------------------------- CLI
def print_frame(df, fmt: str = "table", empty: str = "(no rows)") -> None:
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso", indent=1) + "\n")
    elif not len(df):
        print(empty)
    else:
        import pandas as pd

        with pd.option_context(
            "display.max_columns",
            None,
            "display.width",
            200,
            "display.max_colwidth",
            80,
            "display.float_format",
            "{:.4f}".format,
        ):
            print(df.to_string(index=False))


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.store", description="Query and maintain the Parquet evaluation store."
    )
    p.add_argument("--store", help="store path or s3:// URI (default $PERENNIAL_STORE or ./store)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sub = p.add_subparsers(dest="cmd", required=True)
    lb = sub.add_parser("leaderboard", help="best runs per workload")
    lb.add_argument("--workload")
    lb.add_argument("--metric", help="rank by this column instead of each run's best_metric")
    lb.add_argument("--top", type=int, default=10)
    rs = sub.add_parser("runs", help="list runs, newest first")
    rs.add_argument("--workload")
    rs.add_argument("--sweep")
    rs.add_argument("--status", help="completed | stopped_early | failed")
    rs.add_argument("--since", help="finished within an age (12h, 7d) or since a date (2026-01-31)")
    hs = sub.add_parser("history", help="per-epoch metrics of one run")
    hs.add_argument("run_id")
    ln = sub.add_parser("lineage", help="the rounds of a continual fine-tuning chain, with gain and forgetting")
    ln.add_argument("run_id")
    cp = sub.add_parser("compare", help="config and metric differences of two runs")
    cp.add_argument("run_a")
    cp.add_argument("run_b")
    sq = sub.add_parser("sql", help="DuckDB SQL over the store's tables (runs, epochs, jobs, sweeps, ...)")
    sq.add_argument("query")
    pl = sub.add_parser("plot", help="PNG learning curves (and a sweep's metric vs each hyperparameter)")
    pl.add_argument("--run", action="append", default=[], help="a run id (repeatable)")
    pl.add_argument("--sweep", help="a sweep id: its trials' curves and the sweep plot")
    pl.add_argument("--workload", help="the top runs of one workload (default: every workload)")
    pl.add_argument("--metric", help="the per-epoch metric to plot (default: each run's metric)")
    pl.add_argument("--top", type=int, default=5, help="runs per curves plot")
    pl.add_argument("--out", default="plots", help="output folder")
    ck = sub.add_parser("check", help="report unreadable files, type conflicts and crash leftovers")
    ck.add_argument("--fix", action="store_true", help="remove leftover temp files and files a compaction replaced")
    ck.add_argument(
        "--older-than",
        type=float,
        default=3600.0,
        metavar="S",
        help="only temp files older than S seconds count as leftovers (default 3600)",
    )
    cc = sub.add_parser(
        "compact", help="merge each partition's small files into one (safe while others read and write)"
    )
    cc.add_argument("--table", action="append", help="table(s) to compact (default: all)")
    cc.add_argument("--workload")
    args = p.parse_args(argv)
    warnings.formatwarning = _format_warning
    store = Store(store_path(args.store))
    if args.cmd == "leaderboard":
        df = store.leaderboard(args.workload, args.metric, args.top)
        print_frame(df, args.format, empty=f"(no finished runs in {store.uri})")
    elif args.cmd == "runs":
        df = store.runs(args.workload, args.sweep, args.status, args.since)
        cols = [
            "run_id",
            "workload",
            "status",
            "metric",
            "best_metric",
            "epochs",
            "sweep_id",
            "trial_id",
            "wall_s",
            "finished_at",
        ]
        print_frame(df[[c for c in cols if c in df.columns]] if len(df) else df, args.format)
    elif args.cmd == "history":
        df = store.history(args.run_id)
        if not len(df):
            raise StoreError(f"no epochs for run '{args.run_id}' — list runs with: python -m jobs.store runs")
        keep = [c for c in df.columns if c not in ("sweep_id", "trial_id", PARTITION) and not df[c].isna().all()]
        print_frame(df[keep], args.format)
    elif args.cmd == "lineage":
        print_frame(lineage(store, args.run_id), args.format)
    elif args.cmd == "compare":
        print_frame(store.compare(args.run_a, args.run_b), args.format)
    elif args.cmd == "sql":
        print_frame(store.sql(args.query), args.format)
    elif args.cmd == "plot":
        for path in store.plot(args.run, args.sweep, args.workload, args.metric, args.out, args.top):
            print(path)
    elif args.cmd == "check":
        import pandas as pd

        findings = store.check(args.fix, args.older_than)
        print_frame(
            pd.DataFrame(findings, columns=["kind", "table", "path", "detail", "fixed"]),
            args.format,
            empty=f"store {store.uri}: no problems found",
        )
        return 1 if any(not f["fixed"] and f["kind"] not in INFO_KINDS for f in findings) else 0
    elif args.cmd == "compact":
        import pandas as pd

        print_frame(pd.DataFrame(store.compact(args.table, args.workload)), args.format, empty="(nothing to compact)")
    return 0


if __name__ == "__main__":
    cli_main(main)
