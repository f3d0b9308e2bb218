"""The store's command line: query and maintain the Delta tables.

    python -m jobs.store leaderboard [--workload mlp] [--metric val_accuracy] [--top 10]
    python -m jobs.store runs [--workload W] [--sweep S] [--status completed] [--since 7d]
    python -m jobs.store history RUN_ID
    python -m jobs.store lineage RUN_ID
    python -m jobs.store compare RUN_A RUN_B
    python -m jobs.store sql "SELECT workload, count(*) FROM runs GROUP BY ALL"
    python -m jobs.store plot [--run ID ...] [--sweep ID] [--workload W] [--out plots]
    python -m jobs.store versions [--table runs]
    python -m jobs.store check [--fix]
    python -m jobs.store compact [--table epochs]
    python -m jobs.store vacuum [--retention-hours 168] [--dry-run]
    python -m jobs.store export [--mlflow URI] [--tensorboard DIR] [--workload W]

Every verb takes ``--store PATH_OR_S3_URI`` and ``--format table|csv|json``, before or after the verb;
the query verbs take ``--as-of VERSION|TIME`` (a table version, an ISO date/time, or an age like 7d).

A verb is one entry of ``COMMANDS``: its help line, a function adding its arguments, and a function
running it. A new subcommand (say ``export``) is one more entry.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from jobs.errors import StoreError, cli_main
from jobs.store.engine import INFO_KINDS, PARTITION, RETENTION_HOURS, store_path
from jobs.store.queries import Store, lineage, print_frame


@dataclass(frozen=True)
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    query: bool = True  # reads only: takes --as-of


def open_store(args: argparse.Namespace) -> Store:
    return Store(store_path(args.store), as_of=getattr(args, "as_of", None))


def frame(rows: list[dict], columns: list[str] | None = None):
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- queries
def leaderboard_arguments(p):
    p.add_argument("--workload")
    p.add_argument("--metric", help="rank by this column instead of each run's best_metric")
    p.add_argument("--top", type=int, default=10)


def leaderboard(args) -> int:
    store = open_store(args)
    board = store.leaderboard(args.workload, args.metric, args.top)
    print_frame(board, args.format, empty=f"(no finished runs in {store.uri})")
    return 0


def runs_arguments(p):
    p.add_argument("--workload")
    p.add_argument("--sweep")
    p.add_argument("--status", help="completed | stopped_early | failed")
    p.add_argument("--since", help="finished within an age (12h, 7d) or since a date (2026-01-31)")


RUN_COLUMNS = ["run_id", "workload", "status", "metric", "best_metric", "epochs", "sweep_id", "trial_id"]


def runs(args) -> int:
    df = open_store(args).runs(args.workload, args.sweep, args.status, args.since)
    cols = RUN_COLUMNS + ["wall_s", "finished_at"]
    print_frame(df[[c for c in cols if c in df.columns]] if len(df) else df, args.format)
    return 0


def history(args) -> int:
    df = open_store(args).history(args.run_id)
    if not len(df):
        raise StoreError(f"no epochs for run '{args.run_id}' — list runs with: python -m jobs.store runs")
    hidden = ("sweep_id", "trial_id", "record_id", PARTITION)
    print_frame(df[[c for c in df.columns if c not in hidden and not df[c].isna().all()]], args.format)
    return 0


def lineage_cmd(args) -> int:
    print_frame(lineage(open_store(args), args.run_id), args.format)
    return 0


def compare(args) -> int:
    print_frame(open_store(args).compare(args.run_a, args.run_b), args.format)
    return 0


def sql(args) -> int:
    print_frame(open_store(args).sql(args.query), args.format)
    return 0


def plot_arguments(p):
    p.add_argument("--run", action="append", default=[], help="a run id (repeatable)")
    p.add_argument("--sweep", help="a sweep id: its trials' curves and the sweep plot")
    p.add_argument("--workload", help="the top runs of one workload (default: every workload)")
    p.add_argument("--metric", help="the per-epoch metric to plot (default: each run's metric)")
    p.add_argument("--top", type=int, default=5, help="runs per curves plot")
    p.add_argument("--out", default="plots", help="output folder")


def plot(args) -> int:
    for path in open_store(args).plot(args.run, args.sweep, args.workload, args.metric, args.out, args.top):
        print(path)
    return 0


def versions(args) -> int:
    store = open_store(args)
    rows = [v for t in (args.table or store.tables()) for v in store.versions(t, args.limit)]
    print_frame(frame(rows), args.format, empty=f"(no tables in {store.uri})")
    return 0


# ----------------------------------------------------------------------------- maintenance
def check_arguments(p):
    p.add_argument("--fix", action="store_true", help="delete files no commit names; drop log entries of lost files")
    p.add_argument(
        "--older-than",
        type=float,
        default=3600.0,
        metavar="S",
        help="only files older than S seconds count as left over (default 3600: a younger one may be a write under way)",
    )


def check(args) -> int:
    store = open_store(args)
    findings = store.check(args.fix, args.older_than)
    print_frame(
        frame(findings, ["kind", "table", "path", "detail", "fixed"]),
        args.format,
        empty=f"store {store.uri}: no problems found",
    )
    return 1 if any(not f["fixed"] and f["kind"] not in INFO_KINDS for f in findings) else 0


def compact(args) -> int:
    summary = open_store(args).compact(args.table, args.workload)
    print_frame(frame(summary), args.format, empty="(nothing to compact)")
    return 0


def vacuum_arguments(p):
    p.add_argument(
        "--retention-hours",
        type=int,
        default=RETENTION_HOURS,
        help=f"keep the files of every version younger than this (default {RETENTION_HOURS}: 7 days of time travel)",
    )
    p.add_argument("--dry-run", action="store_true", help="list how many files would go, delete nothing")


def vacuum(args) -> int:
    if args.retention_hours < 0:
        raise StoreError(f"--retention-hours {args.retention_hours}: give 0 or more hours")
    print_frame(frame(open_store(args).vacuum(args.retention_hours, args.dry_run)), args.format)
    return 0


def table_arguments(p):
    p.add_argument("--table", action="append", help="table(s) (default: all)")


COMMANDS: dict[str, Command] = {
    "leaderboard": Command("best runs per workload", leaderboard_arguments, leaderboard),
    "runs": Command("list runs, newest first", runs_arguments, runs),
    "history": Command("per-epoch metrics of one run", lambda p: p.add_argument("run_id"), history),
    "lineage": Command(
        "the rounds of a continual fine-tuning chain, with gain and forgetting",
        lambda p: p.add_argument("run_id"),
        lineage_cmd,
    ),
    "compare": Command(
        "config and metric differences of two runs",
        lambda p: (p.add_argument("run_a"), p.add_argument("run_b")),
        compare,
    ),
    "sql": Command(
        "DuckDB SQL over the store's Delta tables (runs, epochs, jobs, sweeps, ...)",
        lambda p: p.add_argument("query"),
        sql,
    ),
    "plot": Command("PNG learning curves (and a sweep's metric vs each hyperparameter)", plot_arguments, plot),
    "versions": Command(
        "each table's commits (version, time, operation): what --as-of can name",
        lambda p: (table_arguments(p), p.add_argument("--limit", type=int, default=20, help="newest N per table")),
        versions,
    ),
    "check": Command(
        "report Delta-level problems: non-Delta folders, lost or orphan files, half-recorded runs",
        check_arguments,
        check,
        query=False,
    ),
    "compact": Command(
        "merge each partition's files now, one compaction per table at a time (sweeps and jobs also do it)",
        lambda p: (table_arguments(p), p.add_argument("--workload")),
        compact,
        query=False,
    ),
    "vacuum": Command(
        "delete files only versions older than the retention read", vacuum_arguments, vacuum, query=False
    ),
}


# ----------------------------------------------------------------------------- backfill to trackers
def export_arguments(p):
    p.add_argument("--mlflow", metavar="URI", help="an MLflow tracking URI, e.g. sqlite:///mlflow.db")
    p.add_argument("--tensorboard", metavar="DIR", help="a folder for TensorBoard event files")
    p.add_argument("--experiment", default="", help="MLflow experiment (default: perennial-<workload>)")
    p.add_argument("--workload")


def export(args) -> int:
    """Runs already in the store, pushed to MLflow and/or TensorBoard; a second export adds nothing."""
    if not args.mlflow and not args.tensorboard:
        raise StoreError("export needs a target — give --mlflow URI and/or --tensorboard DIR")
    import importlib.util

    for flag, module in (("mlflow", "mlflow"), ("tensorboard", "tensorboard")):
        if getattr(args, flag) and importlib.util.find_spec(module) is None:
            raise StoreError(f"--{flag} needs {module}, which is not installed — pip install -e .[{flag}]")
    from jobs import tracking  # the trackers (and torch, for TensorBoard) only for this verb

    store = open_store(args)
    if args.mlflow:
        n = tracking.export_to_mlflow(store, args.mlflow, experiment=args.experiment, workload=args.workload)
        print(f"mlflow {args.mlflow}: {n['runs']} run(s) created, {n['epochs']} epoch(s) logged")
    if args.tensorboard:
        n = tracking.export_to_tensorboard(store, args.tensorboard, workload=args.workload)
        print(f"tensorboard {args.tensorboard}: {n['runs']} run(s) written, {n['epochs']} epoch(s) logged")
    return 0


COMMANDS["export"] = Command(
    "push stored runs to MLflow (--mlflow URI) and/or TensorBoard event files (--tensorboard DIR)",
    export_arguments,
    export,
)


def parser() -> argparse.ArgumentParser:
    # The shared options live on the top parser and on each verb, so they go before or after the verb;
    # SUPPRESS keeps a verb's parser from resetting a value given before the verb.
    def shared(query: bool) -> argparse.ArgumentParser:
        s = argparse.ArgumentParser(add_help=False)
        s.add_argument("--store", default=argparse.SUPPRESS, help="store path or s3:// URI ($PERENNIAL_STORE, ./store)")
        s.add_argument("--format", choices=["table", "csv", "json"], default=argparse.SUPPRESS, help="default: table")
        if query:
            s.add_argument(
                "--as-of",
                default=argparse.SUPPRESS,
                metavar="VERSION|TIME",
                help="read each table as it was: a version, an ISO date/time or an age (7d)",
            )
        return s

    p = argparse.ArgumentParser(
        prog="python -m jobs.store",
        description="Query and maintain the evaluation store (Delta Lake tables).",
        parents=[shared(query=True)],
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="VERB")
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help, parents=[shared(command.query)]))
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    for name, default in (("store", None), ("format", "table"), ("as_of", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.as_of is not None and not COMMANDS[args.cmd].query:
        raise StoreError(f"--as-of reads an old version; `{args.cmd}` changes the store — drop --as-of")
    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
    return COMMANDS[args.cmd].run(args)


if __name__ == "__main__":
    cli_main(main)
