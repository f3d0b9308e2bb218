"""NER fine-tuning on one machine: ``python -m jobs.train`` against a plain Hugging Face ``transformers.Trainer``
script, same model, sentences and budget — training speed, the whole command's wall time, and F1.

    python -m bench.vs_hf_trainer [--sentences 2000] [--eval-sentences 1000] [--repeats 2] [--smoke]

[1] Arms, each a fresh process timed whole, alternating round by round (the machine's noise hits every arm):
  hf_fp32      bench/hf_trainer_ner.py: transformers.Trainer, group_by_length, fp32
  hf_bf16      the same with bf16=True (autocast)
  hf_random    the same in fp32 with HF's default random batch order (--arms to add it)
  ours         python -m jobs.train --config configs/ner.yaml, its defaults (one worker: local mode;
               train.precision=auto), a fresh tokenized-data cache: a first run
  ours_warm    the same command again on that cache: a repeated run or a sweep trial
  ours_fp32    the same with train.precision=fp32 (warm cache)
All: all-MiniLM-L6-v2, the same --sentences CoNLL-2003 training sentences and --eval-sentences val and test
sentences (the project's seeded sample), batch 16, lr 1e-4, 10% linear warm-up then decay, weight decay 0.01,
clipping at 1.0, 1 epoch, seed 0, --threads torch threads; both sides score val and test (seqeval entity F1)
and save the model. Figures: training samples/s (HF: ``train_runtime``; ours: the epoch's training time),
the whole command's wall time, val and test entity F1. HF's best = the faster of hf_fp32 and hf_bf16 whose
val F1 is within 0.01 of hf_fp32's. Targets: ours >= 1.3x HF's best samples/s; ours' command <= 1.0x HF's.
Also: the tokenized-data cache's saving (``build_data`` cold vs warm, in one process).

[2] Levers, on the plain loop (``jobs.loop.run_epoch``, no Ray, one subprocess each) over
--lever-sentences: each changes one thing against the shipped settings ("shipped": length-grouped
batches, fused AdamW, fp32, SDPA attention, no loader workers) and reports samples/s and its ratio to
the shipped settings measured in the same round.

``--smoke``: a tiny random-init BERT on a few sentences (tests/unit). Results: bench/out/vs_hf_trainer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RESULT = "BENCH_RESULT "  # an arm's last stdout line: RESULT + JSON
ARMS = {
    "hf_fp32": "HF Trainer, group_by_length, fp32",
    "hf_bf16": "HF Trainer, group_by_length, bf16=True",
    "hf_random": "HF Trainer, defaults (random order), fp32",
    "ours": "jobs.train ner, defaults, first run",
    "ours_warm": "jobs.train ner, defaults, cached data",
    "ours_fp32": "jobs.train ner, precision fp32",
}
DEFAULT_ARMS = ["hf_fp32", "hf_bf16", "ours", "ours_warm", "ours_fp32"]
LEVERS = {
    "shipped": "length-grouped, fused AdamW, fp32, SDPA, 0 loader workers",
    "random_order": "random batch order (no length grouping)",
    "default_adamw": "torch.optim.AdamW() defaults instead of fused=True",
    "bf16": "bf16 autocast (CPU has AVX512-BF16)",
    "fpmath_bf16": "fp32 model, oneDNN matmuls in bf16 (torch.backends.mkldnn.matmul.fp32_precision)",
    "eager_attention": "eager attention instead of SDPA",
    "fpmath_bf16_eager": "fpmath_bf16 with eager attention",
    "bf16_eager": "bf16 autocast with eager attention",
    "loader_worker": "DataLoader num_workers=1",
    "pad_multiple_8": "data.pad_to_multiple_of=8",
    "compile": "torch.compile(model, dynamic=True) (compile time inside the epoch)",
    "bf16_weights": "bf16 weights and activations, fp32 master weights in AdamW (no per-step re-cast)",
    "packed": "sentences packed into rows of data.max_length sub-tokens, attention within each (one fixed shape)",
    "packed_bf16": "packed, with bf16 autocast",
    "packed_compiled_bf16": "packed, bf16 autocast, torch.compile(dynamic=False); its first step (compile) timed apart",
}
SLOW_LEVERS = ("compile", "packed_compiled_bf16")  # compiling outlasts the smoke test's budget
F1_BAND = 0.01  # a precision counts for HF's best only within this val F1 of fp32 (the rule)


# ----------------------------------------------------------------------------- small helpers
def padded_fraction(loader) -> float:
    """Share of the sub-token slots in ``loader``'s batches that are padding (a speed diagnostic)."""
    real = total = 0
    for batch in loader:
        tokens = batch.get("real", batch["attention_mask"])
        real += int(tokens.sum())
        total += tokens.numel()
    return 1.0 - real / max(total, 1)


def pack(features: list[dict], length: int, rows: int, pad_id: int, seed: int) -> list[dict]:
    """Batches of ``rows`` rows x ``length`` sub-tokens, one fixed shape: whole sentences in seeded order, each into
    the current row while it fits, else into a new one; the last batch is topped up with empty rows."""
    import torch

    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed)).tolist()
    packed, row, used = [], [], 0
    for i in order:
        n = len(features[i]["input_ids"])
        if row and used + n > length:
            packed.append(row)
            row, used = [], 0
        row.append(features[i])
        used += n
    packed.append(row)
    return [packed_batch(packed[k : k + rows], length, rows, pad_id) for k in range(0, len(packed), rows)]


def packed_batch(rows_of_features: list[list[dict]], length: int, rows: int, pad_id: int) -> dict:
    """One packed batch: attention stays within each sentence (a block-diagonal mask; a padding slot sees only
    itself), positions restart at each sentence, labels as unpacked. ``sentences`` comes first: the loop counts
    samples by the first entry's length."""
    import torch

    ids = torch.full((rows, length), pad_id)
    labels = torch.full((rows, length), -100)
    segment, position = torch.zeros(rows, length, dtype=torch.long), torch.zeros(rows, length, dtype=torch.long)
    for r, sentences in enumerate(rows_of_features):
        at = 0
        for k, f in enumerate(sentences, 1):
            n = len(f["input_ids"])
            ids[r, at : at + n], labels[r, at : at + n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"])
            segment[r, at : at + n], position[r, at : at + n] = k, torch.arange(n)
            at += n
    real = segment > 0
    mask = (segment[:, :, None] == segment[:, None, :]) & real[:, :, None] | torch.eye(length, dtype=torch.bool)
    return {
        "sentences": torch.zeros(sum(len(s) for s in rows_of_features)),
        "input_ids": ids,
        "attention_mask": mask[:, None],
        "position_ids": position,
        "labels": labels,
        "real": real,
    }


def packed_step(model, batch):
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        labels=batch["labels"],
    ).loss


def master_adamw(model, cfg):
    """For bf16 weights: fused AdamW over fp32 copies, gradients up-cast before each step, weights copied back."""
    import torch

    class MasterAdamW(torch.optim.AdamW):
        def __init__(self, params):
            self.held = [p for p in params if p.requires_grad]
            super().__init__(
                [p.detach().float() for p in self.held],
                lr=cfg.train.lr,
                weight_decay=cfg.train.weight_decay,
                fused=True,
            )

        def step(self, closure=None):
            master = self.param_groups[0]["params"]
            for m, p in zip(master, self.held):
                m.grad = None if p.grad is None else p.grad.float()
            super().step()
            with torch.no_grad():
                torch._foreach_copy_(self.held, master)

        def zero_grad(self, set_to_none=True):
            for p in self.held:
                p.grad = None
            super().zero_grad(set_to_none)

    return MasterAdamW(model.parameters())


def load_avg() -> float:
    return round(os.getloadavg()[0], 1)


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "n/a"
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def smoke_overrides(args) -> list[str]:
    return ["model.name_or_path=tiny", "data.max_length=48"] if args.smoke else []


def ner_cfg(args, extra: list[str] = ()):
    from jobs import config as config_lib

    return config_lib.load_config(
        ROOT / "configs" / "ner.yaml",
        [
            f"data.max_train_samples={args.sentences}",
            f"data.max_eval_samples={args.eval_sentences}",
            "train.epochs=1",
            "train.batch_size=16",
            "train.lr=0.0001",
            "train.warmup_ratio=0.1",
            "train.weight_decay=0.01",
            "train.seed=0",
            "train.precision=fp32",
            f"scaling.cpus_per_worker={args.threads}",
            "scaling.num_workers=1",
            *smoke_overrides(args),
            *extra,
        ],
    )


def peak_rss_mb() -> float:
    from jobs import loop

    return loop.peak_rss_mb()


def timed(cmd: list[str], log: Path, env: dict | None = None) -> float:
    """Run ``cmd`` from the repository root, its output to ``log``; its wall time (s). Raises if it fails."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - t0
    if code:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} failed (exit {code}), log {log}:\n{tail}")
    return wall


# ----------------------------------------------------------------------------- [1] the arms
def arm_hf(args, work: Path, arm: str) -> dict:
    """bench/hf_trainer_ner.py as its own process: the figures it prints, and its whole wall time."""
    log = work / f"{arm}.log"
    cmd = [sys.executable, "-m", "bench.hf_trainer_ner", f"--sentences={args.sentences}"]
    cmd += [f"--eval-sentences={args.eval_sentences}", f"--threads={args.threads}", "--out", str(work / arm)]
    cmd += ["--precision", "bf16" if arm == "hf_bf16" else "fp32"] + (["--random-order"] if arm == "hf_random" else [])
    wall = timed(cmd + (["--smoke"] if args.smoke else []), log)
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith(RESULT)]
    return json.loads(lines[-1][len(RESULT) :]) | {"wall_s": wall, "precision": cmd[cmd.index("--precision") + 1]}


def arm_ours(args, work: Path, arm: str, cache: Path) -> dict:
    """``python -m jobs.train`` as a user runs it; figures from the rows it wrote to its store."""
    from jobs.store import Store

    if arm == "ours":  # a first run: nothing tokenized yet
        shutil.rmtree(cache, ignore_errors=True)
    store, log = work / f"{arm}-store", work / f"{arm}.log"
    overrides = [
        f"data.max_train_samples={args.sentences}",
        f"data.max_eval_samples={args.eval_sentences}",
        "train.epochs=1",
        f"scaling.cpus_per_worker={args.threads}",
        f"run.storage_path={work / arm}-runs",
        *smoke_overrides(args),
        *(["train.precision=fp32"] if arm == "ours_fp32" else []),
    ]
    cmd = [sys.executable, "-m", "jobs.train", "--config", "configs/ner.yaml", "--store", str(store), *overrides]
    wall = timed(cmd, log, dict(os.environ, PERENNIAL_DATA_CACHE=str(cache)))
    run = Store(str(store)).df("runs").iloc[0]
    epoch = Store(str(store)).history(run["run_id"]).iloc[-1]
    return {
        "samples_per_s": float(epoch["samples_per_s"]),
        "train_s": float(epoch["train_time_s"]),
        "val_f1": float(epoch["val_f1"]),
        "test_f1": float(run["test_f1"]),
        "train_loss": float(epoch["train_loss"]),
        "peak_rss_mb": float(epoch["peak_rss_mb"]),
        "precision": run["precision"],
        "wall_s": wall,
        "local_mode": "Ray Train local mode" in log.read_text(),
    }


def arm_cache(args) -> dict:
    """``ner.build_data`` with an empty tokenized-data cache, then again on the cache it filled (one process)."""
    from workloads import ner

    cfg = ner_cfg(args)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PERENNIAL_DATA_CACHE"] = cache
        t0 = time.perf_counter()
        cold = ner.build_data(cfg)
        t1 = time.perf_counter()
        warm = ner.build_data(cfg)
        t2 = time.perf_counter()
    same = cold.train == warm.train and cold.val == warm.val and cold.test == warm.test
    return {"cold_s": t1 - t0, "warm_s": t2 - t1, "identical": same}


def arm_lever(args, tmp: str, lever: str) -> dict:
    """One epoch of the plain loop (run_epoch) over --lever-sentences, with one lever changed."""
    return train_plain(args, lever, args.lever_sentences)[0]


def train_plain(args, lever: str, sentences: int) -> tuple:
    """One epoch of ``jobs.loop.run_epoch`` with ``lever`` changed ("shipped": none): (figures, model, splits, cfg)."""
    import torch
    from torch.utils.data import DataLoader

    from jobs import loop
    from workloads import ner

    torch.set_num_threads(args.threads)
    if lever.startswith("fpmath_bf16"):
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    bf16 = lever in ("bf16", "bf16_eager", "packed_bf16", "packed_compiled_bf16")
    extra = ["train.precision=bf16"] if bf16 else ["data.pad_to_multiple_of=8"] if lever == "pad_multiple_8" else []
    cfg = ner_cfg(args, [f"data.max_train_samples={sentences}", *extra])
    loop.seed_everything(cfg.train.seed)
    splits = ner.build_data(cfg)
    model = ner.build_model(cfg, splits)
    if "eager" in lever:
        model.set_attn_implementation("eager")
    params = [p for p in model.parameters() if p.requires_grad]
    if lever == "default_adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    elif lever == "bf16_weights":
        model.to(torch.bfloat16)
        optimizer = master_adamw(model, cfg)
    else:
        optimizer = loop.make_optimizer(cfg, model)
    loader = ner.train_loader(cfg, splits)
    loader.sampler.set_epoch(0)
    if lever == "random_order":
        loader = DataLoader(
            splits.train,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            collate_fn=splits.collate_fn,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
    if lever == "loader_worker":
        loader = DataLoader(
            splits.train,
            batch_size=cfg.train.batch_size,
            sampler=loader.sampler,
            collate_fn=splits.collate_fn,
            num_workers=1,
        )
    wl, compile_s = ner, None
    if lever.startswith("packed"):
        mean = statistics.mean(len(f["input_ids"]) for f in splits.train)
        rows = max(1, round(cfg.train.batch_size * mean / cfg.data.max_length))  # about batch_size sentences a step
        loader = pack(
            splits.train, cfg.data.max_length, rows, splits.collate_fn.keywords["pad_token_id"], cfg.train.seed
        )
        wl = types.SimpleNamespace(train_step=packed_step)
    scheduler = ner.build_scheduler(cfg, optimizer, len(loader))
    step_model = model
    if lever == "compile":
        step_model = torch.compile(model, dynamic=True)
    if lever == "packed_compiled_bf16":  # one shape: compiled once, in a first step timed on its own
        step_model = torch.compile(model, dynamic=False)
        t0 = time.perf_counter()
        loop.run_epoch(step_model, loader[:1], optimizer, wl, cfg, torch.device("cpu"))
        compile_s = time.perf_counter() - t0
    stats = loop.run_epoch(step_model, loader, optimizer, wl, cfg, torch.device("cpu"), scheduler)
    out = {
        "samples_per_s": stats["samples"] / stats["train_time_s"],
        "step_time_median_s": stats["step_time_median_s"],
        "train_s": stats["train_time_s"],
        "train_loss": stats["train_loss"],
        "padded_fraction": padded_fraction(loader),
        "peak_rss_mb": peak_rss_mb(),
        "compile_s": compile_s,
    }
    return out, model, splits, cfg


def run_lever(args, lever: str) -> dict:
    """One lever in a fresh subprocess (own memory, threads, RSS), or in this process with --smoke."""
    load_before = load_avg()
    if args.smoke:
        out = arm_lever(args, "", lever)
    else:
        log = Path(args.out) / "logs" / f"vs_hf-lever-{lever}-{int(time.time())}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "bench.vs_hf_trainer", "--lever", lever, f"--sentences={args.sentences}"]
        cmd += [f"--lever-sentences={args.lever_sentences}", f"--threads={args.threads}"]
        timed(cmd, log)
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith(RESULT)]
        out = json.loads(lines[-1][len(RESULT) :])
    return out | {"lever": lever, "load_avg": [load_before, load_avg()]}


# ----------------------------------------------------------------------------- [2] the driver
def measure(args) -> dict:
    results = {"arms": {arm: [] for arm in args.arms}, "levers": {lever: [] for lever in args.levers}, "cache": []}
    work = Path(tempfile.mkdtemp(prefix="vs_hf-"))
    try:
        for r in range(args.repeats):
            cache = work / f"cache-{r}"
            for arm in args.arms:
                load_before = load_avg()
                res = (arm_hf if arm.startswith("hf") else lambda a, w, n: arm_ours(a, w, n, cache))(args, work, arm)
                res |= {"arm": arm, "load_avg": [load_before, load_avg()]}
                results["arms"][arm].append(res)
                print(
                    f"  [{r + 1}/{args.repeats}] {arm:<10} {res['samples_per_s']:6.1f} samples/s  command {res['wall_s']:5.1f} s  "
                    f"val F1 {res['val_f1']:.4f}  test F1 {res['test_f1']:.4f}  {res['precision']}  (load {res['load_avg']})",
                    flush=True,
                )
            results["cache"].append(arm_cache(args))
            print(f"  [{r + 1}/{args.repeats}] cache      {results['cache'][-1]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in range(args.lever_repeats):
        for lever in args.levers:
            res = run_lever(args, lever)
            results["levers"][lever].append(res)
            print(
                f"  [lever {r + 1}/{args.lever_repeats}] {lever:<16} {res['samples_per_s']:6.1f} samples/s  "
                f"{1000 * res['step_time_median_s']:7.1f} ms/step median"
                + (f", compile {res['compile_s']:.1f} s" if res.get("compile_s") else "")
                + f"  (load {res['load_avg']})",
                flush=True,
            )
    return results


def hf_best(arms: dict, r: int) -> dict | None:
    """Round ``r``'s faster HF precision among those within F1_BAND of fp32's val F1."""
    fp32 = arms.get("hf_fp32", [None] * (r + 1))[r]
    candidates = [arms[a][r] for a in ("hf_fp32", "hf_bf16") if a in arms]
    if fp32 is not None:
        candidates = [c for c in candidates if c["val_f1"] >= fp32["val_f1"] - F1_BAND]
    return max(candidates, key=lambda c: c["samples_per_s"], default=None)


def report(results: dict, args) -> str:
    arms = {arm: runs for arm, runs in results["arms"].items() if runs}
    lines = []
    if arms:
        lines.append(
            f"\n[1] MiniLM-L6 NER, CoNLL-2003 sample: {args.sentences} train sentences x 1 epoch, batch 16, {args.threads} "
            f"threads; val and test F1 on {args.eval_sentences} sentences each; min/median/max over {args.repeats} rounds"
        )
        lines.append(
            f"{'arm':<40}{'samples/s':>18}{'command s':>18}{'val F1':>20}{'test F1':>20}{'precision':>10}{'load':>9}"
        )
    for arm, runs in arms.items():
        lines.append(
            f"{ARMS[arm]:<40}{spread([r['samples_per_s'] for r in runs]):>18}{spread([r['wall_s'] for r in runs]):>18}"
            f"{spread([r['val_f1'] for r in runs], '{:.3f}'):>20}{spread([r['test_f1'] for r in runs], '{:.3f}'):>20}"
            f"{'/'.join(sorted({r['precision'] for r in runs})):>10}{spread([x for r in runs for x in r['load_avg']], '{:.0f}'):>9}"
        )
    best = [hf_best(arms, r) for r in range(args.repeats)]
    if any(best):
        picks = ", ".join(b["arm"] for b in best if b)
        lines.append(f"HF's best per round (the faster precision within {F1_BAND} val F1 of fp32): {picks}")
    for ours in ("ours", "ours_warm", "ours_fp32"):
        pairs = [(o, b) for o, b in zip(arms.get(ours, []), best) if b]
        if pairs:
            speed = spread([o["samples_per_s"] / b["samples_per_s"] for o, b in pairs], "{:.2f}x")
            wall = spread([o["wall_s"] / b["wall_s"] for o, b in pairs], "{:.2f}x")
            df1 = spread([o["val_f1"] - b["val_f1"] for o, b in pairs], "{:+.3f}")
            lines.append(
                f"{ARMS[ours]} / HF's best: samples/s {speed} (target >= 1.3x), command wall {wall} (target <= 1.0x), "
                f"val F1 {df1}"
            )
    if results["cache"]:
        cache = results["cache"]
        lines.append(
            f"tokenized-data cache: build_data {spread([c['cold_s'] for c in cache], '{:.2f}')} s cold, "
            f"{spread([c['warm_s'] for c in cache], '{:.2f}')} s from the cache (identical splits: "
            f"{all(c['identical'] for c in cache)})"
        )
    levers = {k: v for k, v in results["levers"].items() if v}
    if levers:
        lines.append(
            f"\n[2b] Levers on the plain loop: {args.lever_sentences} sentences x 1 epoch each, one change against the shipped "
            f"settings; ratio to 'shipped' of the same round, min/median/max over {args.lever_repeats} round(s)"
        )
        lines.append(
            f"{'lever':<18}{'samples/s':>18}{'vs shipped':>20}{'ms/step median':>18}{'padding':>9}{'train loss':>12}  what"
        )
        shipped = levers.get("shipped", [])
        for lever, runs in levers.items():
            ratio = [r["samples_per_s"] / s["samples_per_s"] for r, s in zip(runs, shipped)]
            lines.append(
                f"{lever:<18}{spread([r['samples_per_s'] for r in runs]):>18}{spread(ratio, '{:.2f}x'):>20}"
                f"{spread([1000 * r['step_time_median_s'] for r in runs], '{:.0f}'):>18}{statistics.median(r['padded_fraction'] for r in runs):>9.1%}"
                f"{statistics.median(r['train_loss'] for r in runs):>12.4f}  {LEVERS[lever]}"
            )
            if compiles := [r["compile_s"] for r in runs if r.get("compile_s")]:
                lines.append(f"{'':<18}first step (compile) per round, s: {', '.join(f'{c:.1f}' for c in compiles)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vs_hf_trainer", description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=2000, help="CoNLL-2003 training sentences (seeded sample)")
    p.add_argument("--eval-sentences", type=int, default=1000, help="val and test sentences scored by every arm")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the arms")
    p.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    p.add_argument("--arms", nargs="*", default=DEFAULT_ARMS, choices=list(ARMS), help="which arms (none: skip [1])")
    p.add_argument(
        "--levers",
        nargs="*",
        default=[k for k in LEVERS if k not in SLOW_LEVERS],
        choices=list(LEVERS),
        help="plain-loop levers to measure (none: skip; 'compile' is left out by default: 0.09x, 110 s, on 2026-11-23)",
    )
    p.add_argument("--lever-sentences", type=int, default=480)
    p.add_argument("--lever-repeats", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny BERT, few sentences")
    p.add_argument("--no-ray", action="store_true", help="accepted for python -m bench: no arm here starts Ray")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--lever", choices=list(LEVERS), help=argparse.SUPPRESS)  # one lever, in this subprocess
    args = p.parse_args(argv)
    if args.smoke:
        args.sentences, args.eval_sentences, args.lever_sentences, args.repeats = 64, 32, 64, 1
        args.levers = [lever for lever in args.levers if lever not in SLOW_LEVERS]
    if args.lever:
        print(RESULT + json.dumps(arm_lever(args, "", args.lever)), flush=True)
        return 0
    print(f"bench.vs_hf_trainer: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    results = measure(args)
    text = report(results, args)
    print(text, flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "vs_hf_trainer.json").write_text(
        json.dumps({"argv": argv, "results": results, "table": text}, indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
