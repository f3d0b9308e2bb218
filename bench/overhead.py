"""Ray Train overhead: the same workload and loop in a plain PyTorch process and under jobs.train (1 worker),
on both of its paths: local mode (single-machine runs) and a Train worker group.

    python -m bench.overhead [--repeats N] [--fixed-rounds 1] [--cases mlp ner ner@1] [--cpus 2] [--smoke] [--no-ray]

[1] Step time. Arm A runs ``jobs.loop.run_epoch`` — the loop every Train worker runs — in a plain
PyTorch process (torch threads = --cpus, no Ray); arm L runs ``jobs.train``'s single-machine path (Ray Train
local mode: the loop in the driver, same reports and checkpoints); arm G a Train worker group (TorchTrainer,
one worker holding --cpus CPUs). Their epochs rows carry the same loop's ``step_time_median_s``. Same config,
seed and batch order in both; step time = median over one epoch's steps (data + forward + backward +
optimizer) after 3 warm-up steps. Arms alternate P/L/G, P/L/G, each in a fresh subprocess, and the table
gives min/median/max over repeats of each arm and of the L/P ratio of each round (target <= 1.03), and
the ratio of the whole epoch's wall (every step, warm-up included). A case is ``workload[@cpus]``:
``ner@1`` runs both arms with 1 CPU / 1 torch thread, which leaves this 2-core machine's other core to
Ray's own processes (the default ``--cpus 2`` gives the worker every core; see README, Performance).

[2] Fixed cost, before/after, settings alternating round by round (FIXED_VARIANTS: Ray's defaults,
then each change jobs/train.py makes for its embedded cluster, then connecting to a running cluster
started here with ``ray start --head``): cluster start (``init_ray``) and the Train run's own fixed
cost = wall of a tiny ``fit()`` through TorchTrainer minus the wall of the same ``fit()`` run
in-process (jobs.train.run_in_process: Ray Train local mode, same loop, checkpoints and store rows, no Train
controller or worker group), cold (the cluster's first run) and warm (a second run on the same cluster).

``--smoke`` runs tiny configs in this process (the plumbing, for tests/unit/test_bench_plumbing.py);
``--no-ray`` leaves out every arm that needs Ray. Results: bench/out/overhead.json.
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

RESULT = "BENCH_RESULT "  # an arm's last stdout line: RESULT + JSON (Ray forwards worker logs to stdout too)
HEALTH_CHECK, WATCHER = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Fixed-cost settings, before -> after: Ray's defaults, then each change jobs/train.py makes for its embedded cluster.
# (The two steps one at a time, 2 rounds, 2026-11-23: health check 0.2 s alone took the warm Train run's fixed cost from
# 16.9 to 11.7 s; the watcher adds little either way. The default suite runs the end points to stay under 30 min.)
FIXED_VARIANTS = {
    "Ray defaults (health check 2 s)": {HEALTH_CHECK: "2.0", WATCHER: "1"},
    "health check 0.2 s, no preemption watcher": {HEALTH_CHECK: "0.2", WATCHER: "0"},
}

# Step-time configs: >= 50 steps after warm-up, about a minute per arm on 2 idle cores. NER gets more A/B pairs: its
# arms differ by 10-40% from run to run on this shared 2-core machine, more than the overhead being measured.
STEP_REPEATS = {"mlp": 2, "ner": 3}
DEFAULT_CASES = ["mlp", "ner"]  # ner@1 (a core left to Ray: the worker-group path's case) with --cases
STEP_CONFIGS = {
    "mlp": ["data.max_train_samples=12800", "train.epochs=1"],  # 100 steps of 128
    "ner": ["data.max_train_samples=880", "data.max_eval_samples=200", "train.epochs=1"],  # 55 steps of 16
}
SMOKE_CONFIGS = {
    "mlp": ["data.max_train_samples=1280", "model.hidden1=64", "model.hidden2=32", "train.epochs=1"],
    "ner": [
        "model.name_or_path=tiny",
        "data.max_train_samples=160",
        "data.max_eval_samples=32",
        "data.max_length=48",
        "train.epochs=1",
    ],
}
# The Train run whose fixed cost is measured: 1 epoch of the mlp smoke test (training itself < 1 s).
TINY_RUN = ["--smoke-test", "train.epochs=1"]


# ----------------------------------------------------------------------------- small helpers
def load_avg() -> float:
    return round(os.getloadavg()[0], 1)


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """min / median / max of ``values``, the shape every figure of this suite is reported in."""
    if not values:
        return "n/a"
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def load_cfg(workload: str, overrides: list[str], smoke_test: bool = False):
    from jobs import config as config_lib

    return config_lib.load_config(ROOT / "configs" / f"{workload}.yaml", overrides, smoke_test=smoke_test)


# ----------------------------------------------------------------------------- [1] the arms
def arm_plain(args, tmp: str) -> dict:
    """The loop's epoch in a plain PyTorch process: what a user's own script would run."""
    import torch

    import workloads
    from jobs import loop

    cfg = load_cfg(args.workload, step_overrides(args))
    wl = workloads.module(cfg.workload)
    torch.set_num_threads(cfg.scaling.cpus_per_worker)  # as the Train worker does
    loop.seed_everything(cfg.train.seed)
    splits = wl.build_data(cfg)
    model = wl.build_model(cfg, splits)
    optimizer = (workloads.hook(wl, "build_optimizer") or loop.make_optimizer)(cfg, model)
    loader = loop.train_loader(wl, cfg, splits)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(0)
    scheduler = (build := workloads.hook(wl, "build_scheduler")) and build(cfg, optimizer, len(loader))
    stats = loop.run_epoch(model, loader, optimizer, wl, cfg, torch.device("cpu"), scheduler)
    return {
        "step_time_median_s": stats["step_time_median_s"],
        "samples_per_s": stats["samples"] / stats["train_time_s"],
        "train_loss": stats["train_loss"],
        "steps": len(loader),
        "peak_rss_mb": loop.peak_rss_mb(),
    }


def arm_train(args, tmp: str, local: bool) -> dict:
    """The same epoch under jobs.train: local mode (the loop in this process, the single-machine default), or
    a Ray Train worker group of one worker holding the same CPUs."""
    from jobs.store import Store
    from jobs.train import fit, init_ray, run_local, run_trainer

    mode = "always" if local else "never"
    cfg = load_cfg(args.workload, [*step_overrides(args), f"run.storage_path={tmp}/runs", f"scaling.local_mode={mode}"])
    t0 = time.perf_counter()
    if not local:
        init_ray()
    cluster_s = time.perf_counter() - t0
    store = Store(f"{tmp}/store")
    row = fit(cfg, store, quiet=True, runner=run_local if local else run_trainer)
    if row["status"] != "completed":
        raise RuntimeError(f"jobs.train {args.workload}: {row['status']} {row['error']}")
    epoch = store.history(row["run_id"]).iloc[-1]
    return {
        "step_time_median_s": float(epoch["step_time_median_s"]),
        "samples_per_s": float(epoch["samples_per_s"]),
        "train_loss": float(epoch["train_loss"]),
        "peak_rss_mb": float(epoch["peak_rss_mb"]),
        "cluster_start_s": cluster_s,
        "fit_wall_s": float(row["wall_s"]),
        "train_time_s": float(epoch["train_time_s"]),
    }


def arm_local(args, tmp: str) -> dict:
    return arm_train(args, tmp, local=True)


def arm_ray(args, tmp: str) -> dict:
    return arm_train(args, tmp, local=False)


def arm_fixed(args, tmp: str) -> dict:
    """Cluster start, then the same tiny run three times: TorchTrainer cold, TorchTrainer warm, in-process."""
    from jobs.store import Store
    from jobs.train import fit, init_ray, run_in_process

    cfg = load_cfg("mlp", [*TINY_RUN[1:], f"run.storage_path={tmp}/runs"], smoke_test=True)
    t0 = time.perf_counter()
    init_ray()  # connects when RAY_ADDRESS is set, else starts an embedded cluster
    cluster_s = time.perf_counter() - t0
    store = Store(f"{tmp}/store")
    walls = {}
    for name, runner in (("cold", None), ("warm", None), ("in_process", run_in_process)):
        row = fit(cfg, store, quiet=True, **({"runner": runner} if runner else {}))
        if row["status"] != "completed":
            raise RuntimeError(f"tiny run ({name}): {row['status']} {row['error']}")
        walls[name] = float(row["wall_s"])
    return {
        "cluster_start_s": cluster_s,
        "fit_cold_s": walls["cold"],
        "fit_warm_s": walls["warm"],
        "fit_in_process_s": walls["in_process"],
        "train_fixed_cold_s": walls["cold"] - walls["in_process"],
        "train_fixed_warm_s": walls["warm"] - walls["in_process"],
        "settings": {k: os.environ.get(k, "") for k in (HEALTH_CHECK, WATCHER, "RAY_ADDRESS")},
    }


ARMS = {"plain": arm_plain, "local": arm_local, "ray": arm_ray, "fixed": arm_fixed}


def step_overrides(args) -> list[str]:
    table = SMOKE_CONFIGS if args.smoke else STEP_CONFIGS
    return [*table[args.workload], f"scaling.cpus_per_worker={args.cpus}", "scaling.num_workers=1"]


def parse_case(case: str, default_cpus: int) -> tuple[str, int]:
    """``ner@1`` -> ("ner", 1); ``mlp`` -> ("mlp", default_cpus)."""
    workload, _, cpus = case.partition("@")
    if workload not in STEP_CONFIGS or (cpus and not cpus.isdigit()) or (cpus and int(cpus) < 1):
        raise SystemExit(
            f"bench.overhead: bad case '{case}' — use workload[@cpus] with workload in {sorted(STEP_CONFIGS)}, e.g. ner@1"
        )
    return workload, int(cpus) if cpus else default_cpus


def run_arm(args, arm: str, workload: str = "", env: dict | None = None, cpus: int = 0) -> dict:
    """One arm in a fresh subprocess (its own memory and threads), or in this process with --smoke."""
    load_before = load_avg()
    cpus = cpus or args.cpus
    if args.smoke:
        args.workload = workload
        args = argparse.Namespace(**(vars(args) | {"cpus": cpus}))
        with tempfile.TemporaryDirectory() as tmp:
            out = ARMS[arm](args, tmp)
    else:
        log = Path(args.out) / "logs" / f"overhead-{arm}-{workload or 'tiny'}-{int(time.time())}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "bench.overhead", "--arm", arm, "--workload", workload or "mlp", f"--cpus={cpus}"]
        with open(log, "w") as f:
            code = subprocess.run(
                cmd, cwd=ROOT, env=env or dict(os.environ), stdout=f, stderr=subprocess.STDOUT
            ).returncode
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith(RESULT)]
        if code or not lines:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise RuntimeError(f"arm {arm} {workload} failed (exit {code}), log {log}:\n{tail}")
        out = json.loads(lines[-1][len(RESULT) :])
    return out | {"arm": arm, "workload": workload, "load_avg": [load_before, load_avg()]}


# ----------------------------------------------------------------------------- [2] the driver
def measure(args) -> dict:
    results = {"step": {}, "fixed": {}}
    arms = ["plain", "local"] + ([] if args.no_ray else ["ray"])
    for case in args.cases:
        workload, cpus = parse_case(case, args.cpus)
        label = workload if cpus == args.cpus else f"{workload}@{cpus}"
        if label in results["step"]:  # ner@1 with --cpus 1 is the ner case
            continue
        pairs = []
        repeats = args.repeats or STEP_REPEATS.get(workload, 2)
        for r in range(repeats):  # A/B/A/B: the machine's noise hits both arms
            pair = {arm: run_arm(args, arm, workload, cpus=cpus) | {"cpus": cpus} for arm in arms}
            pairs.append(pair)
            print(
                f"  [{label} {r + 1}/{repeats}] "
                + "  ".join(f"{arm} {1000 * p['step_time_median_s']:.1f} ms/step" for arm, p in pair.items())
                + f"  (load {pair['plain']['load_avg']})",
                flush=True,
            )
        results["step"][label] = pairs
    if args.no_ray:
        return results
    base_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    variants = {name: base_env | settings for name, settings in FIXED_VARIANTS.items()}
    cluster = None
    if not args.smoke:  # reuse of a running cluster, as make cluster-up starts it: a job joins instead of starting one
        from jobs.cluster_local import LocalCluster

        env = variants[list(FIXED_VARIANTS)[-1]]
        cluster = LocalCluster.start(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"), num_cpus=args.cpus, env=env)
        variants["+ a running cluster (ray start)"] = env | cluster.env()
    if args.smoke:  # arms run inline: one setting, whatever this process has
        variants = dict(list(variants.items())[-1:])
    results["fixed"] = {name: [] for name in variants}
    try:
        for r in range(args.fixed_rounds if not args.smoke else 1):
            for name, env in variants.items():
                res = run_arm(args, "fixed", "", env)
                results["fixed"][name].append(res)
                print(
                    f"  [fixed {r + 1}] {name}: cluster {res['cluster_start_s']:.1f} s, Train run fixed cost "
                    f"{res['train_fixed_cold_s']:.1f} s cold / {res['train_fixed_warm_s']:.1f} s warm  (load {res['load_avg']})",
                    flush=True,
                )
    finally:
        if cluster is not None:
            cluster.stop()
    return results


def report(results: dict, args) -> str:
    pairs_per_case = " / ".join(f"{label} {len(pairs)}" for label, pairs in results["step"].items())
    lines = [
        f"\n[1] Ray Train overhead: step time, plain PyTorch process vs jobs.train (1 worker holding the CPUs = torch threads "
        f"of both arms), min/median/max over {pairs_per_case} A/B pairs"
    ]
    lines.append(
        f"{'case':<9}{'CPUs':>5}{'plain ms/step':>20}{'local ms/step':>20}{'local/plain':>20}{'group ms/step':>20}"
        f"{'group/plain':>20}{'epoch wall L/P':>20}{'load avg':>10}"
    )
    for label, pairs in results["step"].items():
        a = [1000 * p["plain"]["step_time_median_s"] for p in pairs]

        def ms(arm: str) -> list[float]:
            return [1000 * p[arm]["step_time_median_s"] for p in pairs if arm in p]

        def ratio(arm: str) -> list[float]:
            return [1000 * p[arm]["step_time_median_s"] / x for p, x in zip(pairs, a) if arm in p]

        wall = [p["plain"]["samples_per_s"] / p["local"]["samples_per_s"] for p in pairs if "local" in p]
        loads = [x for p in pairs for arm in p.values() if isinstance(arm, dict) for x in arm["load_avg"]]
        lines.append(
            f"{label:<9}{pairs[0]['plain'].get('cpus', args.cpus):>5}{spread(a):>20}{spread(ms('local')):>20}"
            f"{spread(ratio('local'), '{:.3f}'):>20}{spread(ms('ray')):>20}{spread(ratio('ray'), '{:.3f}'):>20}"
            f"{spread(wall, '{:.3f}'):>20}{spread(loads, '{:.0f}'):>10}"
        )
    lines.append(
        "(local: jobs.train's single-machine path, Ray Train local mode, the target's figure (<= 1.03); group: a Ray Train "
        "worker group of 1 on an embedded cluster; ratios of the median step after 3 warm-up steps; epoch wall L/P: "
        "every step of the epoch, first steps included)"
    )
    if results["fixed"]:
        lines.append(
            f"\n[1b] Fixed cost per run (s), min/median/max over {len(next(iter(results['fixed'].values())))} round(s); Train run = fit() via TorchTrainer minus the same fit() in-process"
        )
        lines.append(
            f"{'setting':<34}{'cluster start':>16}{'Train run, cold':>18}{'Train run, warm':>18}{'in-process fit':>16}{'load avg':>10}"
        )
        for name, runs in results["fixed"].items():
            loads = [x for r in runs for x in r["load_avg"]]
            lines.append(
                f"{name:<34}{spread([r['cluster_start_s'] for r in runs]):>16}{spread([r['train_fixed_cold_s'] for r in runs]):>18}"
                f"{spread([r['train_fixed_warm_s'] for r in runs]):>18}{spread([r['fit_in_process_s'] for r in runs]):>16}"
                f"{spread(loads, '{:.0f}'):>10}"
            )
        lines.append(
            "(cluster start: embedded ray.init, or connecting to a running `ray start --head`; cold = the first "
            "Train run on that cluster, warm = the next)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cases",
        nargs="+",
        default=DEFAULT_CASES,
        metavar="WORKLOAD[@CPUS]",
        help=f"step-time cases, workload in {sorted(STEP_CONFIGS)}, @CPUS overriding --cpus (default: {' '.join(DEFAULT_CASES)})",
    )
    p.add_argument("--repeats", type=int, default=0, help="A/B pairs per case (default: mlp 2, ner 3)")
    p.add_argument("--fixed-rounds", type=int, default=1, help="rounds of the fixed-cost settings")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the Train worker = torch threads of both arms")
    p.add_argument("--smoke", action="store_true", help="tiny configs, arms in this process: checks the plumbing")
    p.add_argument("--no-ray", action="store_true", help="only the arms that need no Ray")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"), help="directory for overhead.json and arm logs")
    p.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)  # internal: one arm, RESULT line out
    p.add_argument("--workload", default="mlp", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm:
        args.smoke = False
        with tempfile.TemporaryDirectory() as tmp:
            print(RESULT + json.dumps(ARMS[args.arm](args, tmp)), flush=True)
        return 0
    if args.smoke:
        args.repeats = 1
    print(f"bench.overhead: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    results = measure(args)
    text = report(results, args)
    print(text, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "overhead.json").write_text(
        json.dumps({"argv": argv, "results": results, "table": text}, indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
