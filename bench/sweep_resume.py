"""Sweep driver killed and resumed, N rounds: rows lost, duplicated, trials rerun.

    .venv/bin/python -m bench.sweep_resume [--rounds 10]

Each round runs the 4-trial ASHA grid sweep of tests/integration/test_sweep.py (mlp smoke test) against
one `ray start --head` cluster, SIGKILLs the driver as soon as the first `runs` row lands, then runs
`jobs.sweep --resume`. It counts, per round: `runs` rows (want 4, unique), trials recorded before the kill
whose row changed after it (a rerun), and trials whose row disagrees with their Train run's last
checkpoint (a trial that ran twice at once: one copy recorded, another trained on). Exit 0 when every
round is clean. About 25 s a round on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]


def one_round(cluster, py: str) -> dict:
    from test_sweep import kill_sweep_after_first_row

    from jobs.store import Store
    from jobs.train import checkpoint_meta, last_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="sweep-resume-"))
    store_dir = tmp / "store"
    before, _ = kill_sweep_after_first_row(cluster, tmp, store_dir)
    sweep_id = before["sweep_id"].iloc[0]
    res = subprocess.run(
        [py, "-m", "jobs.sweep", "--resume", sweep_id, f"run.storage_path={tmp / 'runs'}"],
        env=cluster.job_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    runs = Store(store_dir).df("runs")
    after = runs.set_index("run_id")
    rerun = sum(
        after.loc[r.run_id, "finished_at"] != r.finished_at for r in before.itertuples() if r.run_id in after.index
    )
    mismatched = 0
    for r in runs.itertuples():
        last = last_checkpoint(str(tmp / "runs" / sweep_id / r.run_id))
        meta = checkpoint_meta(last) if last is not None else {}
        mismatched += meta.get("epoch") != r.epochs or bool(meta.get("finished")) != (r.status == "completed")
    return {
        "exit": res.returncode,
        "before": len(before),
        "rows": len(runs),
        "unique": runs["run_id"].is_unique,
        "rerun": int(rerun),
        "mismatched": int(mismatched),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sweep_resume", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    from conftest import PY, RayCluster

    cluster = RayCluster()
    clean = 0
    try:
        for i in range(args.rounds):
            r = one_round(cluster, PY)
            ok = r["exit"] == 0 and r["rows"] == 4 and r["unique"] and not r["rerun"] and not r["mismatched"]
            clean += ok
            print(
                f"round {i + 1}: exit {r['exit']}, rows before kill {r['before']}, rows after resume {r['rows']} "
                f"(unique {r['unique']}), finished trials rerun {r['rerun']}, rows disagreeing with their "
                f"checkpoint {r['mismatched']}  {'ok' if ok else 'FAIL'}",
                flush=True,
            )
    finally:
        cluster.stop()
    print(
        f"\n{clean} of {args.rounds} kill-and-resume rounds clean (4 rows, none lost, none duplicated, no trial rerun)"
    )
    return 0 if clean == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
