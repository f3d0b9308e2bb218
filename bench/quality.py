"""Measured quality: each workload's full training against its target figure (minutes to hours; not CI).

    python -m bench.quality [--only rnn] [--only mlp] [--quick] [--store DIR] [key=value ...]

Runs ``python -m jobs.train --config configs/<workload>.yaml`` for each workload in turn, as a
subprocess (a local Ray per run, or the cluster in ``RAY_ADDRESS``), reads the run's row from the
store and prints: workload, figure, target, measured, wall time, samples/s, pass/fail.
``--quick`` caps the training data and runs one epoch: a check that the bench works, not the
real figures. Trailing ``key=value`` overrides go to every run (e.g. ``scaling.cpus_per_worker=2``).
Exit code 0 when every measured figure meets its target.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Target:
    figure: str  # what the number is
    column: str  # the runs-table column holding it
    target: float  # pass when measured >= target
    quick_train_samples: int  # --quick caps the training set to this


TARGETS = {
    "mlp": Target("Fashion-MNIST test accuracy", "test_accuracy", 0.88, 10_000),
    "cnn": Target("Fashion-MNIST test accuracy", "test_accuracy", 0.91, 10_000),
    "ner": Target("CoNLL-2003 test entity F1", "test_f1", 0.88, 2_000),
    "sentiment": Target("tweets 3-class test accuracy", "test_accuracy", 0.75, 3_000),
    "rnn": Target("tweets pos/neg test accuracy", "test_accuracy", 0.80, 5_000),
}
NOTES = {"test_majority_accuracy": "majority baseline"}  # printed under a row when the run reports it


def run_one(workload: str, store: Path, quick: bool, overrides: list[str], log_dir: Path) -> dict:
    """Train ``workload`` to the end; its runs row plus ``bench_wall_s`` and mean ``samples_per_s``."""
    import workloads
    from jobs.store import Store

    args = [sys.executable, "-m", "jobs.train", "--config", f"configs/{workload}.yaml", "--store", str(store)]
    if quick:
        data_keys = type(workloads.module(workload).Config().data).model_fields
        args.append("train.epochs=1")
        if "max_train_samples" in data_keys:
            args.append(f"data.max_train_samples={TARGETS[workload].quick_train_samples}")
    args += overrides
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    log = log_dir / f"quality-{workload}.log"
    print(f"[{workload}] {' '.join(args[1:])}  (log: {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    runs = Store(store).df("runs", workload=workload)
    if code != 0 or runs.empty:
        tail = log.read_text()[-1500:]
        print(f"[{workload}] exit {code}:\n{tail}", flush=True)
        return {"bench_wall_s": wall, "status": f"exit {code}"}
    row = runs.sort_values("finished_at").iloc[-1].to_dict()
    epochs = Store(store).df("epochs", workload=workload)
    epochs = epochs[epochs["run_id"] == row["run_id"]]
    row["samples_per_s"] = float(epochs["samples_per_s"].mean()) if not epochs.empty else float("nan")
    row["bench_wall_s"] = wall
    return row


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", choices=sorted(TARGETS), help="run only this workload (repeatable)")
    p.add_argument("--quick", action="store_true", help="capped data, 1 epoch: checks the bench, not the real figures")
    p.add_argument("--store", help="evaluation store for the runs (default: a new temporary directory)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = p.parse_args(argv)

    import workloads

    store = Path(args.store or tempfile.mkdtemp(prefix="perennial-quality-"))
    log_dir = store.parent if args.store else store
    names = [w for w in TARGETS if w in (args.only or TARGETS)]
    results = {}
    for workload in names:
        if workload not in workloads.WORKLOADS:
            print(f"[{workload}] not in the workload registry yet: skipped", flush=True)
            continue
        results[workload] = run_one(workload, store, args.quick, args.overrides, log_dir)

    print(f"\n{'workload':10} {'figure':30} {'target':>7} {'measured':>9} {'wall':>9} {'samples/s':>10}  result")
    passed = True
    for workload, row in results.items():
        t = TARGETS[workload]
        measured = row.get(t.column)
        ok = measured is not None and measured == measured and measured >= t.target
        passed &= ok
        shown = f"{measured:.4f}" if measured is not None else "n/a"
        status = row.get("status", "completed")
        result = ("pass" if ok else "FAIL") + ("" if status in ("completed", "stopped_early") else f" ({status})")
        print(
            f"{workload:10} {t.figure:30} {t.target:7.2f} {shown:>9} {row['bench_wall_s'] / 60:8.1f}m "
            f"{row.get('samples_per_s', float('nan')):10.0f}  {result}"
        )
        for column, label in NOTES.items():
            if row.get(column) is not None:
                print(f"{'':10}   {label}: {row[column]:.4f}")
    if args.quick:
        print("(--quick: capped data and 1 epoch — not the real figures)")
    print(f"store: {store}  (python -m jobs.store --store {store} leaderboard)")
    return 0 if passed and results else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
