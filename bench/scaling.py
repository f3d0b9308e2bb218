"""Scaling: 1 vs 2 Ray Train workers on this machine (CPU), and a paper estimate of N-GPU DDP for NER.

    python -m bench.scaling [--workload ner] [--sentences 800] [--repeats 1] [--smoke] [--no-ray]

[1] Measured: ``jobs.train`` on the same data, one fresh subprocess (own cluster) per arm, arms
alternating round by round:  1 worker x 1 CPU,  2 workers x 1 CPU (DDP over gloo),  1 worker x 2 CPUs.
samples/s = the epoch's samples over its (mean per worker) training time, as the loop reports it.
Efficiency = samples/s of N workers / (N x samples/s of 1 worker with the same CPUs each).
Each worker keeps the config's batch size, so 2 workers step with twice the global batch.

[2] Paper estimate, data-parallel NER on N GPUs: each step, ring all-reduce moves
2 (N-1)/N x 4 bytes x parameters per GPU (fp32 gradients; DDP reduces in the parameters' dtype even
under bf16 autocast). Step time on N GPUs = forward + max(backward, all-reduce), forward = 1/3 of
the measured single-GPU step (DDP overlaps the bucketed all-reduce with the backward pass), and the
pessimistic bound without overlap = step + all-reduce. Link bandwidth fully used (an upper bound
on efficiency; real rings reach ~70-90% of it). Single-GPU step times: one H100 80GB, torch 2.11
cu130, plain loop (bench/results/gpu_ner_h100_*.json).

``--smoke``: tiny configs in this process; ``--no-ray``: only the estimate. Results: bench/out/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
ARMS = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}  # name: (workers, CPUs each)
# Single-GPU NER steps measured on one H100 (bench/results/gpu_ner_h100_b32.json, _b1024.json): (label, batch, s/step)
GPU_STEPS = [("H100 fp32, batch 32", 32, 0.0179), ("H100 bf16, batch 1024", 1024, 0.070)]
LINKS = [
    ("NVLink 4 (450 GB/s per direction)", 450e9, [2, 4, 8]),
    ("25 Gb/s Ethernet (3.1 GB/s)", 25e9 / 8, [2, 4, 8, 16]),
]


# ----------------------------------------------------------------------------- small helpers
def load_avg() -> float:
    return round(os.getloadavg()[0], 1)


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "n/a"
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def cfg_overrides(args, workers: int, cpus: int) -> list[str]:
    data = {
        "ner": [f"data.max_train_samples={args.sentences}", "data.max_eval_samples=200"],
        "mlp": [f"data.max_train_samples={args.sentences}"],
    }[args.workload]
    smoke = {"ner": ["model.name_or_path=tiny", "data.max_length=48"], "mlp": ["model.hidden1=64", "model.hidden2=32"]}
    return [
        *data,
        *(smoke[args.workload] if args.smoke else []),
        "train.epochs=1",
        f"scaling.num_workers={workers}",
        f"scaling.cpus_per_worker={cpus}",
    ]


# ----------------------------------------------------------------------------- [1] measured
def arm_train(args, arm: str, tmp: str) -> dict:
    from jobs import config as config_lib
    from jobs.store import Store
    from jobs.train import fit, init_ray

    workers, cpus = ARMS[arm]
    cfg = config_lib.load_config(
        ROOT / "configs" / f"{args.workload}.yaml",
        [*cfg_overrides(args, workers, cpus), f"run.storage_path={tmp}/runs"],
    )
    init_ray()
    store = Store(f"{tmp}/store")
    row = fit(cfg, store, quiet=True)
    if row["status"] != "completed":
        raise RuntimeError(f"jobs.train {arm}: {row['status']} {row['error']}")
    epoch = store.history(row["run_id"]).iloc[-1]
    return {
        "samples_per_s": float(epoch["samples_per_s"]),
        "step_time_median_s": float(epoch["step_time_median_s"]),
        "train_loss": float(epoch["train_loss"]),
        "metric": float(row["best_metric"]),
        "metric_name": row["metric"],
        "peak_rss_mb": float(epoch["peak_rss_mb"]),
        "batch_size": cfg.train.batch_size,
    }


def run_arm(args, arm: str) -> dict:
    load_before = load_avg()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            out = arm_train(args, arm, tmp)
    else:
        log = Path(args.out) / "logs" / f"scaling-{arm}-{int(time.time())}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "bench.scaling",
            "--arm",
            arm,
            "--workload",
            args.workload,
            f"--sentences={args.sentences}",
        ]
        env = {
            k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"
        }  # each arm its own cluster of this machine's CPUs
        with open(log, "w") as f:
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith(RESULT)]
        if code or not lines:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise RuntimeError(f"arm {arm} failed (exit {code}), log {log}:\n{tail}")
        out = json.loads(lines[-1][len(RESULT) :])
    return out | {"arm": arm, "load_avg": [load_before, load_avg()]}


# ----------------------------------------------------------------------------- [2] paper estimate
def ner_parameters(smoke: bool) -> int:
    """Every parameter's gradient is all-reduced (embedding tables too: dense gradients by default)."""
    from jobs import config as config_lib
    from workloads import ner
    from workloads.data import CONLL2003_TAGS, Splits

    cfg = config_lib.load_config(ROOT / "configs" / "ner.yaml", ["model.name_or_path=tiny"] if smoke else [])
    model = ner.build_model(cfg, Splits(train=[], val=[], test=None, labels=sorted(CONLL2003_TAGS)))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def ddp_estimate(step_s: float, batch: int, params: int, gpus: int, bandwidth: float) -> dict:
    """Ring all-reduce cost and the resulting step time, samples/s and efficiency on ``gpus`` GPUs."""
    volume = 2 * (gpus - 1) / gpus * 4 * params  # bytes each GPU sends (and receives) per step
    comm = volume / bandwidth
    forward, backward = step_s / 3, 2 * step_s / 3
    overlapped = forward + max(backward, comm)
    serial = step_s + comm
    return {
        "gpus": gpus,
        "allreduce_mb": volume / 1e6,
        "allreduce_ms": 1000 * comm,
        "step_ms": 1000 * overlapped,
        "samples_per_s": gpus * batch / overlapped,
        "efficiency": step_s / overlapped,
        "efficiency_no_overlap": step_s / serial,
    }


def estimate(params: int, cpu_step: tuple | None) -> list[dict]:
    rows = []
    steps = GPU_STEPS + ([cpu_step] if cpu_step else [])
    for label, batch, step_s in steps:
        for link, bandwidth, counts in LINKS:
            if label.startswith("this CPU") and "NVLink" in link:
                continue  # CPU nodes talk over the network
            for n in counts:
                rows.append(
                    {"setup": label, "link": link, "batch": batch, "step_1_ms": 1000 * step_s}
                    | ddp_estimate(step_s, batch, params, n, bandwidth)
                )
    return rows


# ----------------------------------------------------------------------------- driver
def report(results: dict, args) -> str:
    lines = []
    arms = results["arms"]
    if arms:
        lines.append(
            f"\n[3] Scaling on this machine ({os.cpu_count()} cores): jobs.train {args.workload}, {args.sentences} samples x 1 epoch, "
            f"batch {arms['1x1'][0]['batch_size']} per worker; min/median/max over {args.repeats} round(s)"
        )
        lines.append(
            f"{'workers x CPUs':<16}{'samples/s':>18}{'ms/step median':>20}{'efficiency':>18}{'peak RSS MB/worker':>20}{'load':>9}"
        )
        one = [r["samples_per_s"] for r in arms["1x1"]]
        for arm, runs in arms.items():
            workers, cpus = ARMS[arm]
            speed = [r["samples_per_s"] for r in runs]
            base = (
                one if cpus == 1 else [r["samples_per_s"] / 2 for r in arms["1x1"]]
            )  # 1x2 against 2 ideal 1-CPU workers
            eff = [s / (max(workers, cpus) * b) for s, b in zip(speed, base)] if arm != "1x1" else [1.0] * len(runs)
            loads = [x for r in runs for x in r["load_avg"]]
            lines.append(
                f"{arm:<16}{spread(speed):>18}{spread([1000 * r['step_time_median_s'] for r in runs], '{:.0f}'):>20}"
                f"{spread(eff, '{:.0%}'):>18}{spread([r['peak_rss_mb'] for r in runs], '{:.0f}'):>20}{spread(loads, '{:.0f}'):>9}"
            )
        lines.append(
            "(efficiency: 2x1 = samples/s / (2 x 1x1); 1x2 = the same CPUs as threads of one worker, against 2 x 1x1)"
        )
    params = results["params"]
    lines.append(
        f"\n[3b] Paper estimate, NER (MiniLM-L6, {params / 1e6:.1f}M parameters) data-parallel on N GPUs: ring all-reduce "
        f"of fp32 gradients = 2(N-1)/N x 4 B x {params / 1e6:.1f}M per GPU per step; step = fwd + max(bwd, all-reduce)"
    )
    lines.append(
        f"{'one device: step':<44}{'link':<36}{'N':>3}{'MB/step':>9}{'comm ms':>9}{'step ms':>9}{'samples/s':>11}{'efficiency':>11}{'no overlap':>11}"
    )
    for r in results["estimate"]:
        setup = f"{r['setup']} ({r['step_1_ms']:.1f} ms)"
        lines.append(
            f"{setup:<44}{r['link']:<36}{r['gpus']:>3}{r['allreduce_mb']:>9.0f}{r['allreduce_ms']:>9.2f}"
            f"{r['step_ms']:>9.1f}{r['samples_per_s']:>11.0f}{r['efficiency']:>11.0%}{r['efficiency_no_overlap']:>11.0%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="ner", choices=["ner", "mlp"])
    p.add_argument("--sentences", type=int, default=800, help="training samples (sentences for ner)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny configs, arms in this process")
    p.add_argument("--no-ray", action="store_true", help="only the paper estimate")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.sentences, args.repeats = 160, 1
    if args.arm:
        with tempfile.TemporaryDirectory() as tmp:
            print(RESULT + json.dumps(arm_train(args, args.arm, tmp)), flush=True)
        return 0
    print(f"bench.scaling: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    results = {"arms": {}}
    if not args.no_ray:
        results["arms"] = {arm: [] for arm in ARMS}
        for r in range(args.repeats):
            for arm in ARMS:
                res = run_arm(args, arm)
                results["arms"][arm].append(res)
                print(
                    f"  [{r + 1}/{args.repeats}] {arm}: {res['samples_per_s']:.1f} samples/s, {res['metric_name']} {res['metric']:.4f}  "
                    f"(load {res['load_avg']})",
                    flush=True,
                )
    results["params"] = ner_parameters(args.smoke)
    cpu_step = None
    if results["arms"] and args.workload == "ner":  # this machine's own step as one more row of the estimate
        best = results["arms"]["1x2"]
        cpu_step = (
            f"this CPU, 2 threads, batch {best[0]['batch_size']}",
            best[0]["batch_size"],
            statistics.median(r["step_time_median_s"] for r in best),
        )
    results["estimate"] = estimate(results["params"], cpu_step)
    text = report(results, args)
    print(text, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "scaling.json").write_text(
        json.dumps({"argv": argv, "results": results, "table": text}, indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
