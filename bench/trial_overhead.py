"""Per-trial overhead of single-worker sweep trials: a Train run per trial vs the in-process fast path.

    .venv/bin/python -m bench.trial_overhead [--config configs/mlp.yaml] [--trials 6] [--dir /tmp/ovh] [key=value ...]

Runs the same FIFO sweep twice (--smoke-test sized: 2 epochs on 2,000 samples, so the training itself
is small), once with ``sweep.in_process=false`` (each trial a TorchTrainer inside a Tune function
trainable: controller + worker-group start-up) and once with the default in-process trials. Per trial,
from the store's runs rows: overhead = wall_s - train_time_s (everything but the training steps:
start-up, data, validation, test, export, checkpoints). Also the sweep's wall time per trial, which
adds what happens before a trial's row starts counting (Tune actor start). Target: <= 3 s per trial.
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


def run(config: str, in_process: bool, trials: int, out: Path, overrides: list[str]) -> dict:
    store = out / f"store-{'inproc' if in_process else 'train'}"
    cmd = [
        sys.executable,
        "-m",
        "jobs.sweep",
        "--config",
        config,
        "--smoke-test",
        "--store",
        str(store),
        f"run.storage_path={out / 'runs'}",
        f"sweep.in_process={str(in_process).lower()}",
        "sweep.scheduler=fifo",
        f"sweep.num_samples={trials}",
        *overrides,
    ]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"sweep failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    runs = Store(store).df("runs")
    sweep = Store(store).df("sweeps").iloc[0]
    overhead = runs["wall_s"] - runs["train_time_s"]
    return {
        "overhead_mean": overhead.mean(),
        "overhead_median": overhead.median(),
        "overhead_max": overhead.max(),
        "train_s": runs["train_time_s"].mean(),
        "wall_s": runs["wall_s"].mean(),
        "sweep_per_trial": sweep["wall_s"] / len(runs),
        "process_s": wall,
        "n": len(runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mlp.yaml")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--dir", help="work dir (default: a new temp dir)")
    p.add_argument("overrides", nargs="*", help="more config overrides for both sweeps")
    args = p.parse_args()
    out = Path(args.dir or tempfile.mkdtemp(prefix="trial-overhead-"))
    results = {
        "Train run per trial": run(args.config, False, args.trials, out, args.overrides),
        "in process (default)": run(args.config, True, args.trials, out, args.overrides),
    }
    print(
        f"\n{'single-worker trials':<22}{'overhead/trial s':>17}{'median':>8}{'max':>7}{'train s':>9}"
        f"{'row wall s':>11}{'sweep s/trial':>14}{'process s':>11}"
    )
    for name, r in results.items():
        print(
            f"{name:<22}{r['overhead_mean']:>17.1f}{r['overhead_median']:>8.1f}{r['overhead_max']:>7.1f}{r['train_s']:>9.2f}"
            f"{r['wall_s']:>11.1f}{r['sweep_per_trial']:>14.1f}{r['process_s']:>11.0f}"
        )
    before, after = results["Train run per trial"], results["in process (default)"]
    print(
        f"\nin-process trials cut the overhead {before['overhead_mean'] / after['overhead_mean']:.1f}x "
        f"({before['overhead_mean']:.1f} -> {after['overhead_mean']:.1f} s per trial; target <= 3 s), "
        f"sweep time per trial {before['sweep_per_trial']:.1f} -> {after['sweep_per_trial']:.1f} s  "
        f"({args.trials} trials each; work dir {out})"
    )


if __name__ == "__main__":
    main()
