"""The same NER hyperparameter search three ways: ``jobs.sweep`` (Optuna's TPE sampler, ASHA, in-process trials,
cached data) against ``transformers.Trainer.hyperparameter_search`` with the Optuna backend (median pruner) and with
the Ray backend (ASHA).

    python -m bench.sweep_vs_hf [--trials 8] [--sentences 600] [--eval-sentences 300] [--epochs 3] [--threads 2]
                                [--arms ours hf_optuna hf_ray] [--concurrent 2] [--smoke]

Every arm is a fresh process timed whole, with its CPU-seconds summed over every process of its tree (Ray's
included), sampled twice a second. The same search: the ner workload's SEARCH_SPACE (lr log-uniform
3e-5..3e-4, batch size 16 or 32, warm-up ratio uniform 0..0.2), seed 0, the same CoNLL-2003 sample, --epochs per
trial with val entity F1 after each (the schedulers' signal), bf16 where the CPU has it natively, --threads threads
in all. The Ray arms run --concurrent trials at once on threads/N each (Tune's way to fill a machine; two 1-thread
trials train more samples a second than one 2-thread trial, docs/performance.md); HF's Optuna backend runs one at a
time on all of them (its trials share one Trainer object: no safe concurrency). Reported: wall, CPU-s, the best
trial's val F1 and its test F1 (ours: the trial's own test score; HF's trials keep no model, so its best
hyperparameters are trained once more afterwards, outside the timed search). Target: the best val F1 within noise of
HF's, in <= 0.5x the wall time of HF's better backend.
Results: bench/out/sweep_vs_hf.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = "BENCH_RESULT "
ARMS = {
    "ours": "jobs.sweep, Optuna TPE + ASHA, in-process trials",
    "hf_optuna": "Trainer.hyperparameter_search, Optuna + MedianPruner",
    "hf_ray": "Trainer.hyperparameter_search, Ray Tune + ASHA",
}


def timed(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, float]:
    """(wall s, CPU s) of ``cmd`` run from the repository root, its CPU summed over every process of its tree
    (sampled twice a second: Ray's trial processes are no waited-for children); raises if it fails."""
    import psutil

    cpu: dict[int, float] = {}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        cpu[p.pid] = max(cpu.get(p.pid, 0.0), t.user + t.system)
            time.sleep(0.5)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {log.read_text()[-2000:]}")
    return time.perf_counter() - t0, sum(cpu.values())


def arm_ours(args, work: Path) -> dict:
    store = work / "store"
    tiny = ["model.name_or_path=tiny", "data.max_length=48"] if args.smoke else []
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", "configs/ner.yaml", "--store", str(store)]
    cmd += [f"run.storage_path={work / 'runs'}", f"sweep.num_samples={args.trials}", "sweep.seed=0", "train.seed=0"]
    cmd += ["sweep.search=optuna"]  # TPE, as HF's Optuna backend samples
    cmd += [f"data.max_train_samples={args.sentences}", f"data.max_eval_samples={args.eval_sentences}"]
    threads = max(1, args.threads // args.concurrent)
    cmd += [f"train.epochs={args.epochs}", f"scaling.cpus_per_worker={threads}"]
    cmd += [f"sweep.max_concurrent_trials={args.concurrent}"]
    cmd += ["tracking.tensorboard=false", *tiny]
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    wall, cpu = timed(cmd, work / "ours.log", env)
    from jobs.store import Store

    s = Store(str(store))
    sweep = s.df("sweeps").iloc[-1]
    runs = s.df("runs").set_index("run_id")
    best = runs.loc[sweep["best_run_id"]]
    trials = runs[runs["sweep_id"] == sweep["sweep_id"]]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "best_val_f1": float(sweep["best_metric"]),
        "test_f1": float(best["test_f1"]),
        "trials": len(trials),
        "stopped_early": int((trials["status"] == "stopped_early").sum()),
        "best": {k: best[k].item() for k in ("train.lr", "train.batch_size", "train.warmup_ratio") if k in best},
    }


def arm_hf(args, work: Path, backend: str) -> dict:
    cmd = [sys.executable, "-m", "bench.sweep_vs_hf", "--hf-backend", backend, "--out", str(work / backend)]
    cmd += [f"--trials={args.trials}", f"--sentences={args.sentences}", f"--eval-sentences={args.eval_sentences}"]
    cmd += [f"--epochs={args.epochs}", f"--threads={args.threads}", f"--concurrent={args.concurrent}"]
    cmd += ["--smoke"] if args.smoke else []
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = work / f"{backend}.log"
    wall, cpu = timed(cmd, log, env)
    result = json.loads([ln for ln in log.read_text().splitlines() if ln.startswith(RESULT)][-1][len(RESULT) :])
    # the whole command as ours is timed (start-up, data, search), less the retrain of the best trial
    return result | {"wall_s": wall - result["retrain_s"], "cpu_s": cpu - result["retrain_cpu_s"]}


def hf_search(args) -> dict:
    """In this process: Trainer.hyperparameter_search over the search space, then the best trial trained again."""
    import numpy as np
    import torch
    import transformers

    from bench.hf_trainer_ner import entity_f1, prepare, trainer_args
    from jobs import loop

    torch.set_num_threads(args.threads)
    data, labels, tokenizer, make_model = prepare(args.sentences, args.eval_sentences, args.smoke)
    bf16 = loop.resolve_precision("auto", torch.device("cpu")) == "bf16"

    def targs(out: str, **hp) -> transformers.TrainingArguments:
        return trainer_args(out, bf16, num_train_epochs=args.epochs, eval_strategy="epoch", **hp)

    def metrics(pred) -> dict:
        return {"f1": entity_f1(pred.predictions, pred.label_ids, labels)}

    collator = transformers.DataCollatorForTokenClassification(tokenizer)
    trainer = transformers.Trainer(
        model_init=lambda *_: make_model(),
        args=targs(args.out, per_device_train_batch_size=16, learning_rate=1e-4, warmup_steps=0.1),
        train_dataset=data["train"],
        eval_dataset=data["val"],
        data_collator=collator,
        compute_metrics=metrics,
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    if args.hf_backend == "optuna":
        import optuna

        def space(trial):
            return {
                "learning_rate": trial.suggest_float("learning_rate", 3e-5, 3e-4, log=True),
                "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [16, 32]),
                "warmup_steps": trial.suggest_float("warmup_steps", 0.0, 0.2),  # < 1: a ratio of all steps
            }

        extra = {"sampler": optuna.samplers.TPESampler(seed=0), "pruner": optuna.pruners.MedianPruner()}
    else:
        from ray import tune

        def space(trial):
            return {
                "learning_rate": tune.loguniform(3e-5, 3e-4),
                "per_device_train_batch_size": tune.choice([16, 32]),
                "warmup_steps": tune.uniform(0.0, 0.2),
            }

        extra = {
            "scheduler": tune.schedulers.ASHAScheduler(
                metric="objective", mode="max", grace_period=1, reduction_factor=3
            ),
            "resources_per_trial": {"cpu": max(1, args.threads // args.concurrent)},
            "max_concurrent_trials": args.concurrent,
            "search_alg": tune.search.BasicVariantGenerator(random_state=0),
        }
    t0 = time.perf_counter()
    best = trainer.hyperparameter_search(
        hp_space=space,
        compute_objective=lambda m: m["eval_f1"],
        n_trials=args.trials,
        direction="maximize",
        backend=args.hf_backend,
        **extra,
    )
    search_s = time.perf_counter() - t0
    final = transformers.Trainer(
        model=make_model(),
        args=targs(args.out, **best.hyperparameters),
        train_dataset=data["train"],
        eval_dataset=data["val"],
        data_collator=collator,
        compute_metrics=metrics,
    )
    final.remove_callback(transformers.trainer_callback.PrinterCallback)
    t0, cpu0 = time.perf_counter(), time.process_time()
    final.train()
    scores = {s: final.predict(data[s]) for s in ("val", "test")}
    f1 = {s: entity_f1(p.predictions, p.label_ids, labels) for s, p in scores.items()}
    retrain = {"retrain_s": time.perf_counter() - t0, "retrain_cpu_s": time.process_time() - cpu0}
    hp = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in best.hyperparameters.items()}
    scored = {"best_val_f1": best.objective, "test_f1": f1["test"], "retrain_val_f1": f1["val"]}
    return scored | retrain | {"search_s": search_s, "trials": args.trials, "best": hp}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sweep_vs_hf", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--sentences", type=int, default=600, help="CoNLL-2003 training sentences (seeded sample)")
    p.add_argument("--eval-sentences", type=int, default=300, help="val and test sentences")
    p.add_argument("--epochs", type=int, default=3, help="per trial")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument(
        "--concurrent",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="trials at once in the Ray arms, on threads/N each (HF's Optuna: 1)",
    )
    p.add_argument("--smoke", action="store_true", help="a tiny random-init BERT, 2 trials of 1 epoch")
    p.add_argument("--no-ray", action="store_true", help="for python -m bench: leave out the arms that start Ray")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--hf-backend", choices=["optuna", "ray"], help=argparse.SUPPRESS)  # one HF arm, in this process
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.sentences, args.eval_sentences, args.epochs = 2, 32, 16, 1
    if args.hf_backend:
        print(RESULT + json.dumps(hf_search(args)), flush=True)
        return 0
    arms = [a for a in args.arms if not (args.no_ray and a != "hf_optuna")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="sweep_vs_hf-") as tmp:
        for arm in arms:
            work = Path(tmp, arm)
            work.mkdir()
            load = os.getloadavg()[0]
            try:
                results[arm] = (arm_ours(args, work) if arm == "ours" else arm_hf(args, work, arm[3:])) | {"load": load}
            except RuntimeError as e:  # an arm that fails is reported; the others still run
                print(f"  {arm:<10} failed: {e}", flush=True)
                continue
            r = results[arm]
            print(
                f"  {arm:<10} wall {r['wall_s']:6.1f} s  CPU {r['cpu_s']:6.1f} s  best val F1 {r['best_val_f1']:.4f}  "
                f"test F1 {r['test_f1']:.4f}  {r['best']}  (load {load:.1f})",
                flush=True,
            )
    lines = [
        f"\n{args.trials} trials x {args.epochs} epochs, {args.sentences} train / {args.eval_sentences} val and test "
        f"sentences, {args.threads} threads: the Ray arms {args.concurrent} trial(s) at once, HF's Optuna one",
        f"{'arm':<52}{'wall s':>9}{'CPU s':>9}{'best val F1':>13}{'test F1':>9}",
    ]
    for arm, r in results.items():
        lines.append(f"{ARMS[arm]:<52}{r['wall_s']:9.1f}{r['cpu_s']:9.1f}{r['best_val_f1']:13.4f}{r['test_f1']:9.4f}")
    hf = [r for a, r in results.items() if a.startswith("hf")]
    if "ours" in results and hf:
        better = min(hf, key=lambda r: r["wall_s"])
        ours = results["ours"]
        lines.append(
            f"ours / HF's faster backend: wall {ours['wall_s'] / better['wall_s']:.2f}x (target <= 0.5x), "
            f"best val F1 {ours['best_val_f1'] - better['best_val_f1']:+.4f}"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "sweep_vs_hf.json").write_text(
        json.dumps({"argv": argv, "results": results, "table": text}, indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
