"""Memory: peak RSS per Train worker for each workload at its default batch size (target: NER < 2 GB per CPU worker).

    python -m bench.memory [--workloads mlp cnn rnn ner sentiment] [--full] [--smoke] [--no-ray]

One ``jobs.train`` run per workload (configs/<workload>.yaml: its default batch size, model and
CPUs per worker), 1 epoch, on a capped training set unless --full; every run on one local cluster,
each in a fresh Train worker. Peak RSS = the worker's own ``ru_maxrss`` as the loop reports it
(``peak_rss_mb`` in the epochs row, after data loading, the training epoch and validation): model,
optimizer state, activations of the longest batch, the data set in memory and the Ray worker itself.
``--no-ray``: the same pieces in a plain subprocess per workload (no Ray worker runtime).
``--smoke``: tiny configs in this process (the plumbing; RSS then accumulates across workloads).
Results: bench/out/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RESULT = "BENCH_RESULT "
TARGET_MB = {"ner": 2048}
# Capped data keep the suite short; the caps still hold the long sentences that set the activation peak.
CAPS = {
    "mlp": ["data.max_train_samples=12800"],
    "cnn": ["data.max_train_samples=6400"],
    "rnn": ["data.max_train_samples=3200", "data.max_eval_samples=1000"],
    "ner": ["data.max_train_samples=2000", "data.max_eval_samples=1000"],
    "sentiment": ["data.max_train_samples=1600", "data.max_eval_samples=1000"],
}
SMOKE = {
    "ner": ["model.name_or_path=tiny", "data.max_train_samples=64", "data.max_eval_samples=32"]
}  # on top of SMOKE_TEST


def load_avg() -> float:
    return round(os.getloadavg()[0], 1)


def overrides(args, workload: str) -> list[str]:
    caps = (
        SMOKE.get(workload, []) if args.smoke else [] if args.full else CAPS[workload]
    )  # --smoke: + the workload's SMOKE_TEST
    return [*caps, "train.epochs=1", "scaling.num_workers=1"]


def config(args, workload: str, extra: list[str] = ()):
    from jobs import config as config_lib

    return config_lib.load_config(
        ROOT / "configs" / f"{workload}.yaml", [*overrides(args, workload), *extra], smoke_test=args.smoke
    )


# ----------------------------------------------------------------------------- the arms
def arm_train(args, workload: str, tmp: str) -> dict:
    """One jobs.train run; the worker reports its own peak RSS."""
    from jobs.store import Store
    from jobs.train import fit, init_ray

    cfg = config(args, workload, [f"run.storage_path={tmp}/runs-{workload}"])
    init_ray()
    store = Store(f"{tmp}/store")
    row = fit(cfg, store, quiet=True)
    if row["status"] != "completed":
        raise RuntimeError(f"jobs.train {workload}: {row['status']} {row['error']}")
    epoch = store.history(row["run_id"]).iloc[-1]
    return {
        "peak_rss_mb": float(epoch["peak_rss_mb"]),
        "batch_size": cfg.train.batch_size,
        "cpus": cfg.scaling.cpus_per_worker,
        "samples": int(round(float(epoch["samples_per_s"]) * float(epoch["train_time_s"]))),
        "where": "Train worker",
    }


def arm_plain(args, workload: str) -> dict:
    """The loop's pieces in a plain process: data, model, one epoch, validation."""
    import torch

    import workloads
    from jobs import loop

    cfg = config(args, workload)
    wl = workloads.module(workload)
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    loop.seed_everything(cfg.train.seed)
    splits = wl.build_data(cfg)
    model = wl.build_model(cfg, splits)
    optimizer = (workloads.hook(wl, "build_optimizer") or loop.make_optimizer)(cfg, model)
    loader = loop.train_loader(wl, cfg, splits)
    stats = loop.run_epoch(model, loader, optimizer, wl, cfg, torch.device("cpu"))
    wl.evaluate(model, loop.eval_loader(splits, splits.val, cfg.train.batch_size * 2), splits)
    return {
        "peak_rss_mb": loop.peak_rss_mb(),
        "batch_size": cfg.train.batch_size,
        "cpus": cfg.scaling.cpus_per_worker,
        "samples": stats["samples"],
        "where": "plain process",
    }


def run_plain_subprocess(args, workload: str) -> dict:
    log = Path(args.out) / "logs" / f"memory-{workload}-{int(time.time())}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.memory", "--arm", workload] + (["--full"] if args.full else [])
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith(RESULT)]
    if code or not lines:
        raise RuntimeError(
            f"memory {workload} failed (exit {code}), log {log}:\n" + "\n".join(log.read_text().splitlines()[-15:])
        )
    return json.loads(lines[-1][len(RESULT) :])


# ----------------------------------------------------------------------------- driver
def report(results: dict, args) -> str:
    where = next(iter(results.values()))["where"] if results else ""
    lines = [
        f"\n[4] Peak RSS per worker ({where}), default batch size, 1 epoch on "
        f"{'the full data' if args.full else 'capped data (bench/memory.py CAPS)'}"
    ]
    lines.append(
        f"{'workload':<11}{'batch':>6}{'CPUs':>6}{'samples':>9}{'peak RSS MB':>13}{'target':>10}  {'load':>11}"
    )
    for workload, r in results.items():
        target = target_cell(workload, r["peak_rss_mb"])
        lines.append(
            f"{workload:<11}{r['batch_size']:>6}{r['cpus']:>6}{r['samples']:>9}{r['peak_rss_mb']:>13.0f}{target:>10}  {str(r['load_avg']):>11}"
        )
    return "\n".join(lines)


def target_cell(workload: str, mb: float) -> str:
    if workload not in TARGET_MB:
        return "-"
    return f"{'ok' if mb <= TARGET_MB[workload] else 'OVER'} <{TARGET_MB[workload] / 1024:.0f}G"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(CAPS), choices=list(CAPS))
    p.add_argument(
        "--full", action="store_true", help="the full training and evaluation data (slow: minutes per workload)"
    )
    p.add_argument("--smoke", action="store_true", help="the workloads' smoke-test configs, in this process")
    p.add_argument("--no-ray", action="store_true", help="plain processes instead of Train workers")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--arm", choices=list(CAPS), help=argparse.SUPPRESS)  # internal: one plain-process workload
    args = p.parse_args(argv)
    if args.arm:
        print(RESULT + json.dumps(arm_plain(args, args.arm)), flush=True)
        return 0
    print(f"bench.memory: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads:
            load_before = load_avg()
            if args.no_ray:
                res = arm_plain(args, workload) if args.smoke else run_plain_subprocess(args, workload)
            else:
                res = arm_train(args, workload, tmp)
            results[workload] = res | {"load_avg": [load_before, load_avg()]}
            print(
                f"  {workload}: peak RSS {res['peak_rss_mb']:.0f} MB ({res['where']}, batch {res['batch_size']})",
                flush=True,
            )
    text = report(results, args)
    print(text, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "memory.json").write_text(
        json.dumps({"argv": argv, "results": results, "table": text}, indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
