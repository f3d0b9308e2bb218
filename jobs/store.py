"""The Parquet evaluation store: every run, epoch, trial and job as rows anyone can query.

    python -m jobs.store leaderboard [--workload mlp] [--metric val_accuracy] [--top 10]
    python -m jobs.store runs [--workload W] [--sweep S] [--status completed]
    python -m jobs.store history RUN_ID

Layout (hive-partitioned, readable by pandas / DuckDB / polars as is)::

    <store>/<table>/workload=<name>/<timestamp>-<uuid>.parquet

Writes are append-only: each :meth:`Store.append` writes new uniquely named files — locally to a
dot-prefixed temporary name then renamed (readers skip names starting with ``.`` or ``_``), on
object stores with a single PUT — so readers never see a partial file and concurrent writers
never collide. Reads unify the schemas of all files, so a metric column added later never
hides older files, and older files read it as null.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import uuid
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs import config as config_lib

TS = pa.timestamp("us", tz="UTC")
# Columns with a fixed type, whatever a given write holds (a None-only column must not become `null`
# in one file and `string` in another; a metric must never be int in one file and double in another).
CORE: dict[str, dict[str, pa.DataType]] = {
    "runs": {
        "run_id": pa.string(), "parent_run_id": pa.string(), "round": pa.int64(),
        "sweep_id": pa.string(), "trial_id": pa.string(), "job_id": pa.string(),
        "status": pa.string(), "error": pa.string(), "metric": pa.string(), "mode": pa.string(),
        "best_metric": pa.float64(), "best_epoch": pa.int64(), "epochs": pa.int64(),
        "config_json": pa.string(), "checkpoint_uri": pa.string(), "export_uri": pa.string(),
        "started_at": TS, "finished_at": TS, "wall_s": pa.float64(), "cpu_s": pa.float64(),
        "gpu_s": pa.float64(), "train_time_s": pa.float64(), "num_workers": pa.int64(),
        "use_gpu": pa.bool_(), "seed": pa.int64(), "git_sha": pa.string(), "data_fingerprint": pa.string(),
    },
    "epochs": {
        "run_id": pa.string(), "sweep_id": pa.string(), "trial_id": pa.string(), "epoch": pa.int64(),
        "train_loss": pa.float64(), "train_time_s": pa.float64(), "samples_per_s": pa.float64(),
        "elapsed_s": pa.float64(), "skipped_batches": pa.int64(),
    },
    "jobs": {
        "submission_id": pa.string(), "entrypoint": pa.string(), "verb": pa.string(), "status": pa.string(),
        "message": pa.string(), "submitted_at": TS, "started_at": TS, "finished_at": TS,
        "config_hash": pa.string(), "git_sha": pa.string(), "address": pa.string(),
    },
    "sweeps": {
        "sweep_id": pa.string(), "status": pa.string(), "search": pa.string(), "scheduler": pa.string(),
        "search_space_json": pa.string(), "metric": pa.string(), "mode": pa.string(),
        "best_trial_id": pa.string(), "best_run_id": pa.string(), "best_metric": pa.float64(),
        "best_config_json": pa.string(), "num_trials": pa.int64(), "trials_completed": pa.int64(),
        "trials_stopped_early": pa.int64(), "trials_failed": pa.int64(), "epochs_used": pa.int64(),
        "epochs_budget": pa.int64(), "started_at": TS, "finished_at": TS, "wall_s": pa.float64(),
        "cpu_s": pa.float64(),
    },
}  # fmt: skip
PARTITION = "workload"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class StoreError(config_lib.ConfigError):
    """The store path is unusable (exit code 2)."""


class Store:
    """A store at a local directory or a URI (``s3://bucket/prefix``, via ``pyarrow.fs``)."""

    def __init__(self, uri: str | os.PathLike):
        uri = str(uri)
        self.uri = uri
        try:
            if "://" in uri:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            else:
                self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        except Exception as e:  # noqa: BLE001 — a bad URI is user input
            raise StoreError(f"store '{uri}' is not usable: {str(e).splitlines()[0]} — give a directory or s3://bucket/prefix") from None
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    # ------------------------------------------------------------------ write
    def append(self, table: str, rows: Iterable[dict[str, Any]]) -> list[str]:
        """Append rows (dicts) to ``table``; one new file per workload. Returns the written paths."""
        rows = list(rows)
        if not rows:
            return []
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(str(r.get(PARTITION) or "none"), []).append(r)
        paths = []
        for workload, group in groups.items():
            arrow = to_arrow(table, [{k: v for k, v in r.items() if k != PARTITION} for r in group])
            folder = f"{self.root}/{table}/{PARTITION}={workload}"
            name = f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
            try:
                self.fs.create_dir(folder, recursive=True)
                if self.local:  # temp name + rename: atomic on POSIX
                    tmp = f"{folder}/.{name}.tmp"
                    pq.write_table(arrow, tmp, filesystem=self.fs)
                    self.fs.move(tmp, f"{folder}/{name}")
                else:  # an object PUT is atomic: the object appears whole or not at all
                    pq.write_table(arrow, f"{folder}/{name}", filesystem=self.fs)
            except OSError as e:
                raise StoreError(f"cannot write to store '{self.uri}': {str(e).splitlines()[0]} — check the path and its permissions / credentials") from None
            paths.append(f"{folder}/{name}")
        return paths

    # ------------------------------------------------------------------ read
    def files(self, table: str) -> list[str]:
        base = f"{self.root}/{table}"
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except OSError as e:
            raise StoreError(f"cannot read store '{self.uri}': {str(e).splitlines()[0]}") from None
        return sorted(
            i.path for i in infos
            if i.type == pafs.FileType.File and i.path.endswith(".parquet")
            and not os.path.basename(i.path).startswith((".", "_"))
        )  # fmt: skip

    def dataset(self, table: str) -> ds.Dataset | None:
        """A pyarrow dataset over ``table`` with the unified schema of all its files (None if empty)."""
        files = self.files(table)
        if not files:
            return None
        part = ds.HivePartitioning(pa.schema([(PARTITION, pa.string())]))
        base = ds.dataset(files, filesystem=self.fs, format="parquet", partitioning=part,
                          partition_base_dir=f"{self.root}/{table}")  # fmt: skip
        schemas = [f.physical_schema for f in base.get_fragments()]
        schema = pa.unify_schemas(schemas + [pa.schema([(PARTITION, pa.string())])], promote_options="permissive")
        return ds.dataset(files, schema=schema, filesystem=self.fs, format="parquet", partitioning=part,
                          partition_base_dir=f"{self.root}/{table}")  # fmt: skip

    def read(self, table: str, workload: str | None = None, filter: ds.Expression | None = None) -> pa.Table:
        d = self.dataset(table)
        if d is None:
            return pa.schema([(k, v) for k, v in CORE.get(table, {}).items()] + [(PARTITION, pa.string())]).empty_table()
        expr = filter
        if workload:
            wexpr = ds.field(PARTITION) == workload
            expr = wexpr if expr is None else expr & wexpr
        return d.to_table(filter=expr)

    def df(self, table: str, workload: str | None = None, filter: ds.Expression | None = None):
        return self.read(table, workload, filter).to_pandas()

    # ------------------------------------------------------------------ queries
    def runs(self, workload: str | None = None, sweep_id: str | None = None, status: str | None = None):
        df = self.df("runs", workload)
        if sweep_id:
            df = df[df["sweep_id"] == sweep_id]
        if status:
            df = df[df["status"] == status]
        return df.sort_values("finished_at", ascending=False) if len(df) and "finished_at" in df else df

    def leaderboard(self, workload: str | None = None, metric: str | None = None, top: int = 10):
        """Best runs per workload by their metric (``best_metric``, or ``metric`` if given)."""
        import pandas as pd

        df = self.df("runs", workload)
        if not len(df):
            return df
        df = df[df["status"].isin(["completed", "stopped_early"])]
        frames = []
        for name, group in df.groupby(PARTITION, sort=True):
            col = metric or "best_metric"
            if col not in group.columns or group[col].isna().all():
                continue
            mode = _mode_for(group, metric)
            keys = [col] + (["finished_at"] if "finished_at" in group else [])  # ties: newest first
            group = group.dropna(subset=[col]).sort_values(keys, ascending=[mode == "min", False][: len(keys)])
            frames.append(group.head(top).assign(rank=range(1, min(top, len(group)) + 1)))
        if not frames:
            return df.iloc[0:0]
        out = pd.concat(frames)
        test_cols = [c for c in out.columns if c.startswith("test_") and not c.endswith("_loss")][:2]
        cols = ["workload", "rank", "run_id", "metric", metric or "best_metric", *test_cols,
                "best_epoch", "epochs", "status", "sweep_id", "wall_s", "finished_at"]  # fmt: skip
        return out[[c for c in dict.fromkeys(cols) if c in out.columns]]

    def history(self, run_id: str):
        df = self.df("epochs", filter=ds.field("run_id") == run_id)
        return df.sort_values("epoch") if len(df) else df


def _mode_for(group, metric: str | None) -> str:
    if metric and metric.endswith("loss"):
        return "min"
    modes = group["mode"].dropna().unique() if "mode" in group else []
    return modes[0] if len(modes) else "max"


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

        with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4f}".format):
            print(df.to_string(index=False))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.store", description="Query the Parquet evaluation store.")
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
    rs.add_argument("--status")
    hs = sub.add_parser("history", help="per-epoch metrics of one run")
    hs.add_argument("run_id")
    args = p.parse_args(argv)
    store = Store(config_lib.store_path(args.store))
    if args.cmd == "leaderboard":
        df = store.leaderboard(args.workload, args.metric, args.top)
        print_frame(df, args.format, empty=f"(no finished runs in {store.uri})")
    elif args.cmd == "runs":
        df = store.runs(args.workload, args.sweep, args.status)
        cols = ["run_id", "workload", "status", "metric", "best_metric", "epochs", "sweep_id", "trial_id", "wall_s", "finished_at"]
        print_frame(df[[c for c in cols if c in df.columns]] if len(df) else df, args.format)
    elif args.cmd == "history":
        df = store.history(args.run_id)
        if not len(df):
            raise config_lib.ConfigError(f"no epochs for run '{args.run_id}' — list runs with: python -m jobs.store runs")
        keep = [c for c in df.columns if c not in ("sweep_id", "trial_id", PARTITION) and not df[c].isna().all()]
        print_frame(df[keep], args.format)
    return 0


if __name__ == "__main__":
    config_lib.cli_main(main)
