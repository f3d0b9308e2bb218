"""ASHA vs the full search: the same sampled configs, once all run to max epochs (FIFO), once under ASHA.

    .venv/bin/python -m bench.asha_vs_grid [--config configs/mlp.yaml] [--samples 16] [--epochs 9] [--dir /tmp/asha]
                                           [key=value ...]

Both sweeps use the config's search space and seed, so the random search samples the same configs in
the same order; only the scheduler differs. Prints each sweep's best metric, epochs used and wall time,
then the gap and the epoch ratio. Targets: ASHA's best within 0.01 (absolute) of the full search's
best, using <= 35% of its epochs. Each sweep is a real `python -m jobs.sweep` on an embedded local Ray.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs.store import Store

ROOT = Path(__file__).resolve().parent.parent


def run_sweep(config: str, scheduler: str, out: Path, overrides: list[str]) -> dict:
    store = out / f"store-{scheduler}"
    cmd = [
        sys.executable,
        "-m",
        "jobs.sweep",
        "--config",
        config,
        "--store",
        str(store),
        f"run.storage_path={out / 'runs'}",
        f"sweep.scheduler={scheduler}",
        *overrides,
    ]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{scheduler} sweep failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    print("\n".join(ln for ln in res.stdout.splitlines() if not ln.startswith("(")))  # the summary, not trial logs
    row = Store(store).df("sweeps").iloc[0].to_dict()
    return row | {"process_wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mlp.yaml")
    p.add_argument("--samples", type=int, default=16, help="trials per sweep")
    p.add_argument("--epochs", type=int, default=9, help="max epochs per trial (the full search's budget)")
    p.add_argument("--dir", help="work dir (default: a new temp dir)")
    p.add_argument("overrides", nargs="*", help="more config overrides for both sweeps")
    args = p.parse_args()
    out = Path(args.dir or tempfile.mkdtemp(prefix="asha-vs-grid-"))
    common = [
        f"sweep.num_samples={args.samples}",
        f"train.epochs={args.epochs}",
        *args.overrides,
    ]  # beats trial_overrides
    full = run_sweep(args.config, "fifo", out, common)
    asha = run_sweep(args.config, "asha", out, common)
    gap = full["best_metric"] - asha["best_metric"]
    if full["mode"] == "min":
        gap = -gap
    ratio = asha["epochs_used"] / full["epochs_used"]
    print(f"\n{'':<6}{'best ' + full['metric']:>20}{'epochs used':>14}{'sweep wall s':>14}{'CPU s':>10}")
    for name, r in (("full", full), ("ASHA", asha)):
        print(f"{name:<6}{r['best_metric']:>20.4f}{r['epochs_used']:>14}{r['wall_s']:>14.0f}{r['cpu_s']:>10.0f}")
    print(
        f"\nASHA best is {gap:+.4f} below the full search's (target <= 0.01); "
        f"it used {ratio:.0%} of the epochs (target <= 35%) and {asha['wall_s'] / full['wall_s']:.0%} of the wall time"
    )
    print(f"({args.samples} trials x {args.epochs} epochs; work dir {out})")


if __name__ == "__main__":
    main()
