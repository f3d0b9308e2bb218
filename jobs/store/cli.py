"""The store's command line (``python -m jobs.store -h``; the verbs and their flags: docs/store.md): query and
maintain the Delta tables."""

from __future__ import annotations

import argparse
import importlib.util
import warnings

from jobs.errors import StoreError
from jobs.store.engine import INFO_KINDS, PARTITION, RETENTION_HOURS, store_path
from jobs.store.queries import Store, lineage, print_frame

RUN_COLUMNS = "run_id workload status metric best_metric epochs sweep_id trial_id wall_s finished_at".split()
WRITERS = ("check", "compact", "vacuum")  # verbs that change the store: no --as-of


def open_store(args: argparse.Namespace) -> Store:
    return Store(store_path(args.store), as_of=args.as_of)


def frame(rows: list[dict], columns: list[str] | None = None):
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def leaderboard(args) -> None:
    store = open_store(args)
    board = store.leaderboard(args.workload, args.metric, args.top)
    print_frame(board, args.format, empty=f"(no finished runs in {store.uri})")


def runs(args) -> None:
    df = open_store(args).runs(args.workload, args.sweep, args.status, args.since)
    print_frame(df[[c for c in RUN_COLUMNS if c in df.columns]] if len(df) else df, args.format)


def history(args) -> None:
    df = open_store(args).history(args.run_id)
    if not len(df):
        raise StoreError(f"no epochs for run '{args.run_id}' — list runs with: python -m jobs.store runs")
    hidden = ("sweep_id", "trial_id", "record_id", PARTITION)
    print_frame(df[[c for c in df.columns if c not in hidden and not df[c].isna().all()]], args.format)


def compare(args) -> None:
    print_frame(open_store(args).compare(args.run_a, args.run_b), args.format)


def versions(args) -> None:
    store = open_store(args)
    rows = [v for t in (args.table or store.tables()) for v in store.versions(t, args.limit)]
    print_frame(frame(rows), args.format, empty=f"(no tables in {store.uri})")


def check(args) -> int:
    store = open_store(args)
    findings = store.check(args.fix, args.older_than)
    columns = ["kind", "table", "path", "detail", "fixed"]
    print_frame(frame(findings, columns), args.format, empty=f"store {store.uri}: no problems found")
    return 1 if any(not f["fixed"] and f["kind"] not in INFO_KINDS for f in findings) else 0


def compact(args) -> None:
    print_frame(frame(open_store(args).compact(args.table, args.workload)), args.format, empty="(nothing to compact)")


def vacuum(args) -> None:
    if args.retention_hours < 0:
        raise StoreError(f"--retention-hours {args.retention_hours}: give 0 or more hours")
    print_frame(frame(open_store(args).vacuum(args.retention_hours, args.dry_run)), args.format)


def export(args) -> None:
    if not args.mlflow and not args.tensorboard:
        raise StoreError("export needs a target — give --mlflow URI and/or --tensorboard DIR")
    for flag in ("mlflow", "tensorboard"):
        if getattr(args, flag) and importlib.util.find_spec(flag) is None:
            raise StoreError(f"--{flag} needs {flag}, which is not installed — pip install -e .[{flag}]")
    from jobs import tracking  # the trackers (and torch, for TensorBoard) only for this verb

    store = open_store(args)
    if args.mlflow:
        n = tracking.export_to_mlflow(store, args.mlflow, experiment=args.experiment, workload=args.workload)
        print(f"mlflow {args.mlflow}: {n['runs']} run(s) created, {n['epochs']} epoch(s) logged")
    if args.tensorboard:
        n = tracking.export_to_tensorboard(store, args.tensorboard, workload=args.workload)
        print(f"tensorboard {args.tensorboard}: {n['runs']} run(s) written, {n['epochs']} epoch(s) logged")


def shared(query: bool) -> argparse.ArgumentParser:
    """The options every verb takes before or after it (SUPPRESS: a verb's parser keeps a value given before)."""
    s = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    s.add_argument("--store", help="store path or s3:// URI ($PERENNIAL_STORE, ./store)")
    s.add_argument("--format", choices=["table", "csv", "json"], help="default: table")
    if query:
        as_of = "read each table as it was: a version, an ISO date/time or an age (7d)"
        s.add_argument("--as-of", metavar="VERSION|TIME", help=as_of)
    return s


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.store",
        description="Query and maintain the evaluation store (Delta Lake tables).",
        parents=[shared(query=True)],
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="VERB")

    def verb(name: str, help_text: str, run, *positional: str) -> argparse.ArgumentParser:
        v = sub.add_parser(name, help=help_text, parents=[shared(name not in WRITERS)])
        for arg in positional:
            v.add_argument(arg)
        v.set_defaults(command=run)
        return v

    v = verb("leaderboard", "best runs per workload", leaderboard)
    v.add_argument("--workload")
    v.add_argument("--metric", help="rank by this column instead of each run's best_metric")
    v.add_argument("--top", type=int, default=10)
    v = verb("runs", "list runs, newest first", runs)
    v.add_argument("--workload")
    v.add_argument("--sweep")
    v.add_argument("--status", help="completed | stopped_early | failed")
    v.add_argument("--since", help="finished within an age (12h, 7d) or since a date (2026-01-31)")
    verb("history", "per-epoch metrics of one run", history, "run_id")
    lineage_help = "the rounds of a continual fine-tuning chain, with gain and forgetting"
    verb("lineage", lineage_help, lambda a: print_frame(lineage(open_store(a), a.run_id), a.format), "run_id")
    verb("compare", "config and metric differences of two runs", compare, "run_a", "run_b")
    sql_help = "DuckDB SQL over the store's Delta tables (runs, epochs, jobs, sweeps, ...)"
    verb("sql", sql_help, lambda a: print_frame(open_store(a).sql(a.query), a.format), "query")
    v = verb("versions", "each table's commits (version, time, operation): what --as-of can name", versions)
    v.add_argument("--table", action="append", help="table(s) (default: all)")
    v.add_argument("--limit", type=int, default=20, help="newest N per table")
    v = verb("check", "report Delta-level problems: non-Delta folders, lost or orphan files, half-recorded runs", check)
    v.add_argument("--fix", action="store_true", help="delete files no commit names; drop log entries of lost files")
    older = "only files older than S seconds count as left over (default 3600: a younger one may be a write under way)"
    v.add_argument("--older-than", type=float, default=3600.0, metavar="S", help=older)
    v = verb("compact", "merge each partition's files now, one compaction per table at a time", compact)
    v.add_argument("--table", action="append", help="table(s) (default: all)")
    v.add_argument("--workload")
    v = verb("vacuum", "delete files only versions older than the retention read", vacuum)
    keep = f"keep the files of every version younger than this (default {RETENTION_HOURS}: 7 days of time travel)"
    v.add_argument("--retention-hours", type=int, default=RETENTION_HOURS, help=keep)
    v.add_argument("--dry-run", action="store_true", help="list how many files would go, delete nothing")
    push = "push stored runs to MLflow (--mlflow URI) and/or TensorBoard event files (--tensorboard DIR)"
    v = verb("export", push, export)
    v.add_argument("--mlflow", metavar="URI", help="an MLflow tracking URI, e.g. sqlite:///mlflow.db")
    v.add_argument("--tensorboard", metavar="DIR", help="a folder for TensorBoard event files")
    v.add_argument("--experiment", default="", help="MLflow experiment (default: perennial-<workload>)")
    v.add_argument("--workload")
    return p


def main(argv: list[str]) -> int:
    args = argparse.Namespace(store=None, format="table", as_of=None)
    parser().parse_args(argv, args)
    if args.as_of is not None and args.cmd in WRITERS:
        raise StoreError(f"--as-of reads an old version; `{args.cmd}` changes the store — drop --as-of")
    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
    return args.command(args) or 0
