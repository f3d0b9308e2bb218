"""NER fine-tuning throughput: jobs.train vs Hugging Face ``transformers.Trainer``, same model, data and budget.

    python -m bench.vs_hf_trainer [--sentences 1280] [--eval-sentences 500] [--repeats 2] [--smoke] [--no-ray]

[1] Arms, one fresh subprocess each, alternating round by round (the machine's noise hits every arm):
  hf           transformers.Trainer, defaults (random batch order), DataCollatorForTokenClassification
               (dynamic padding), adamw_torch_fused
  hf_grouped   the same with train_sampling_strategy="group_by_length"
  plain        our loop (jobs.loop.run_epoch, the shipped settings) in a plain process: ours without Ray
  ours         python -m jobs.train --config configs/ner.yaml (Ray Train, 1 worker, --threads CPUs)
All: all-MiniLM-L6-v2, the same --sentences CoNLL-2003 training sentences (seeded sample), batch 16,
lr 1e-4 with 10% linear warm-up then decay, weight decay 0.01, gradients clipped at norm 1.0 (HF's default,
train.max_grad_norm), 1 epoch, seed 0, fp32, --threads torch
threads, max_length 256; every arm is scored by workloads/ner.py's own seqeval scorer on the same
--eval-sentences validation sentences. Figures: training samples/s (HF: train_runtime of
``trainer.train()``; ours: the loop's epoch time), padded-token share of the training batches, peak
RSS of the training process (ours: the Train worker), val entity F1. Target: ours >= 1.3x hf at equal
or better F1.

[2] Levers, on the plain loop (``jobs.loop.run_epoch``, no Ray, one subprocess each) over
--lever-sentences: each changes one thing against the shipped settings ("shipped": length-grouped
batches, fused AdamW, fp32, SDPA attention, no loader workers) and reports samples/s and its ratio to
the shipped settings measured in the same round.

``--smoke``: a tiny random-init BERT on a few sentences, arms in this process (tests/unit). Results:
bench/out/vs_hf_trainer.json.
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

RESULT = "BENCH_RESULT "  # an arm's last stdout line: RESULT + JSON
LEVERS = {
    "shipped": "length-grouped, fused AdamW, fp32, SDPA, 0 loader workers",
    "random_order": "random batch order (no length grouping)",
    "default_adamw": "torch.optim.AdamW() defaults instead of fused=True",
    "bf16": "bf16 autocast (CPU has AVX512-BF16)",
    "eager_attention": "eager attention instead of SDPA",
    "loader_worker": "DataLoader num_workers=1",
    "pad_multiple_8": "data.pad_to_multiple_of=8",
    "compile": "torch.compile(model, dynamic=True) (compile time inside the epoch)",
}


# ----------------------------------------------------------------------------- small helpers
def load_avg() -> float:
    return round(os.getloadavg()[0], 1)


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "n/a"
    return "/".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def ner_cfg(args, extra: list[str] = ()):
    from jobs import config as config_lib

    model = ["model.name_or_path=tiny", "data.max_length=48"] if args.smoke else []
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
            *model,
            *extra,
        ],
    )


def val_f1(model, splits, cfg) -> float:
    from jobs import loop
    from workloads import ner

    return ner.evaluate(model, loop.eval_loader(splits, splits.val, cfg.train.batch_size * 2), splits)["f1"]


def peak_rss_mb() -> float:
    from jobs import loop

    return loop.peak_rss_mb()


# ----------------------------------------------------------------------------- [1] the arms
def arm_hf(args, tmp: str, grouped: bool) -> dict:
    """transformers.Trainer on the workload's own tokenized sentences (word-level extras dropped)."""
    import torch
    import transformers

    from jobs import loop
    from workloads import ner

    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    cfg = ner_cfg(args)
    loop.seed_everything(cfg.train.seed)
    splits = ner.build_data(cfg)
    model = ner.build_model(cfg, splits)
    tokenizer = ner.load_tokenizer(cfg)
    train = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in splits.train]
    targs = transformers.TrainingArguments(
        output_dir=tmp,
        per_device_train_batch_size=cfg.train.batch_size,
        num_train_epochs=cfg.train.epochs,
        learning_rate=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        warmup_steps=cfg.train.warmup_ratio,  # < 1: a ratio
        lr_scheduler_type="linear",
        seed=cfg.train.seed,
        use_cpu=True,
        optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length" if grouped else "random",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    collator = transformers.DataCollatorForTokenClassification(tokenizer)  # pads each batch to its longest
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=train, data_collator=collator)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # its end-of-training dict on stdout
    out = trainer.train()
    f1 = val_f1(trainer.model, splits, cfg)
    real = total = 0
    for batch in trainer.get_train_dataloader():  # the same sampler and collator, after training
        real, total = real + int(batch["attention_mask"].sum()), total + batch["attention_mask"].numel()
    return {
        "samples_per_s": len(train) * cfg.train.epochs / out.metrics["train_runtime"],
        "train_s": out.metrics["train_runtime"],
        "padded_fraction": 1 - real / total,
        "peak_rss_mb": peak_rss_mb(),
        "val_f1": f1,
        "train_loss": out.training_loss,
    }


def arm_ours(args, tmp: str) -> dict:
    """python -m jobs.train for the same config: Ray Train, one worker holding --threads CPUs."""
    from jobs import loop
    from jobs.store import Store
    from jobs.train import fit, init_ray
    from workloads import ner

    cfg = ner_cfg(args, [f"run.storage_path={tmp}/runs"])
    init_ray()
    store = Store(f"{tmp}/store")
    row = fit(cfg, store, quiet=True)
    if row["status"] != "completed":
        raise RuntimeError(f"jobs.train ner: {row['status']} {row['error']}")
    epoch = store.history(row["run_id"]).iloc[-1]
    splits = ner.build_data(cfg)  # the padding share of the same batches, recomputed here (deterministic)
    loader = loop.train_loader(ner, cfg, splits)
    loader.sampler.set_epoch(0)
    return {
        "samples_per_s": float(epoch["samples_per_s"]),
        "train_s": float(epoch["train_time_s"]),
        "padded_fraction": ner.padded_fraction(loader),
        "peak_rss_mb": float(epoch["peak_rss_mb"]),
        "val_f1": float(epoch["val_f1"]),
        "train_loss": float(epoch["train_loss"]),
        "wall_s": float(row["wall_s"]),
    }


def arm_plain(args, tmp: str) -> dict:
    """The loop jobs.train runs, shipped settings, over --sentences in a plain process: ours minus Ray."""
    out, model, splits, cfg = train_plain(args, "shipped", args.sentences)
    return out | {"val_f1": val_f1(model, splits, cfg)}


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
    extra = {"bf16": ["train.precision=bf16"], "pad_multiple_8": ["data.pad_to_multiple_of=8"]}.get(lever, [])
    cfg = ner_cfg(args, [f"data.max_train_samples={sentences}", *extra])
    loop.seed_everything(cfg.train.seed)
    splits = ner.build_data(cfg)
    model = ner.build_model(cfg, splits)
    if lever == "eager_attention":
        model.set_attn_implementation("eager")
    params = [p for p in model.parameters() if p.requires_grad]
    if lever == "default_adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
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
    scheduler = ner.build_scheduler(cfg, optimizer, len(loader))
    step_model = torch.compile(model, dynamic=True) if lever == "compile" else model
    stats = loop.run_epoch(step_model, loader, optimizer, ner, cfg, torch.device("cpu"), scheduler)
    out = {
        "samples_per_s": stats["samples"] / stats["train_time_s"],
        "step_time_median_s": stats["step_time_median_s"],
        "train_s": stats["train_time_s"],
        "train_loss": stats["train_loss"],
        "padded_fraction": ner.padded_fraction(loader),
        "peak_rss_mb": peak_rss_mb(),
    }
    return out, model, splits, cfg


def run_arm(args, arm: str, lever: str = "") -> dict:
    """One arm in a fresh subprocess (own memory, threads, RSS), or in this process with --smoke."""
    load_before = load_avg()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            out = call_arm(args, arm, lever, tmp)
    else:
        log = Path(args.out) / "logs" / f"vs_hf-{arm}{'-' + lever if lever else ''}-{int(time.time())}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "bench.vs_hf_trainer",
            "--arm",
            arm,
            "--lever",
            lever or "shipped",
            f"--sentences={args.sentences}",
            f"--eval-sentences={args.eval_sentences}",
            f"--lever-sentences={args.lever_sentences}",
            f"--threads={args.threads}",
        ]
        with open(log, "w") as f:
            code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith(RESULT)]
        if code or not lines:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise RuntimeError(f"arm {arm} {lever} failed (exit {code}), log {log}:\n{tail}")
        out = json.loads(lines[-1][len(RESULT) :])
    return out | {"arm": arm, "lever": lever, "load_avg": [load_before, load_avg()]}


def call_arm(args, arm: str, lever: str, tmp: str) -> dict:
    if arm == "hf":
        return arm_hf(args, tmp, grouped=False)
    if arm == "hf_grouped":
        return arm_hf(args, tmp, grouped=True)
    if arm == "ours":
        return arm_ours(args, tmp)
    if arm == "plain":
        return arm_plain(args, tmp)
    return arm_lever(args, tmp, lever)


# ----------------------------------------------------------------------------- [2] the driver
def measure(args) -> dict:
    arms = ["hf", "hf_grouped", "plain"] + ([] if args.no_ray else ["ours"])
    results = {"arms": {arm: [] for arm in arms}, "levers": {lever: [] for lever in args.levers}}
    for r in range(args.repeats):
        for arm in arms:
            res = run_arm(args, arm)
            results["arms"][arm].append(res)
            print(
                f"  [{r + 1}/{args.repeats}] {arm:<11} {res['samples_per_s']:6.1f} samples/s  padding {res['padded_fraction']:.1%}  "
                f"val F1 {res['val_f1']:.4f}  peak RSS {res['peak_rss_mb']:.0f} MB  (load {res['load_avg']})",
                flush=True,
            )
    for r in range(args.lever_repeats):
        for lever in args.levers:
            res = run_arm(args, "lever", lever)
            results["levers"][lever].append(res)
            print(
                f"  [lever {r + 1}/{args.lever_repeats}] {lever:<16} {res['samples_per_s']:6.1f} samples/s  "
                f"{1000 * res['step_time_median_s']:7.1f} ms/step median  (load {res['load_avg']})",
                flush=True,
            )
    return results


def report(results: dict, args) -> str:
    arms = {arm: runs for arm, runs in results["arms"].items() if runs}
    names = {
        "hf": "HF Trainer (random order)",
        "hf_grouped": "HF Trainer, group_by_length",
        "plain": "our loop, plain process (no Ray)",
        "ours": "jobs.train ner (Ray Train, 1 worker)",
    }
    lines = []
    if arms:
        lines.append(
            f"\n[2] MiniLM-L6 NER fine-tuning, CoNLL-2003 sample: {args.sentences} train sentences x 1 epoch, batch 16, "
            f"{args.threads} threads; val F1 on {args.eval_sentences} val sentences; min/median/max over {args.repeats} rounds"
        )
        lines.append(
            f"{'arm':<40}{'samples/s':>18}{'vs hf':>18}{'padding':>9}{'peak RSS MB':>18}{'val F1':>22}{'load':>9}"
        )
    for arm, runs in arms.items():
        speed = [r["samples_per_s"] for r in runs]
        vs = [r["samples_per_s"] / h["samples_per_s"] for r, h in zip(runs, arms.get("hf", []))]
        loads = [x for r in runs for x in r["load_avg"]]
        lines.append(
            f"{names[arm]:<40}{spread(speed):>18}{spread(vs, '{:.2f}x'):>18}{statistics.median(r['padded_fraction'] for r in runs):>9.1%}"
            f"{spread([r['peak_rss_mb'] for r in runs], '{:.0f}'):>18}{spread([r['val_f1'] for r in runs], '{:.3f}'):>22}"
            f"{spread(loads, '{:.0f}'):>9}"
        )
    for ours in ("plain", "ours"):
        for base in ("hf", "hf_grouped"):
            if ours in arms and base in arms:
                ratio = [o["samples_per_s"] / h["samples_per_s"] for o, h in zip(arms[ours], arms[base])]
                df1 = [o["val_f1"] - h["val_f1"] for o, h in zip(arms[ours], arms[base])]
                lines.append(
                    f"{names[ours]} / {names[base]}: {spread(ratio, '{:.2f}x')} samples/s (target >= 1.3x), "
                    f"val F1 difference {spread(df1, '{:+.3f}')}"
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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vs_hf_trainer", description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=1280, help="CoNLL-2003 training sentences (seeded sample)")
    p.add_argument("--eval-sentences", type=int, default=500, help="validation sentences scored by every arm")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the three arms")
    p.add_argument("--threads", type=int, default=2, help="torch threads = CPUs of the Train worker")
    p.add_argument(
        "--levers",
        nargs="*",
        default=[k for k in LEVERS if k != "compile"],
        choices=list(LEVERS),
        help="plain-loop levers to measure (none: skip; 'compile' is left out by default: 0.09x, 110 s, on 2026-11-23)",
    )
    p.add_argument("--lever-sentences", type=int, default=480)
    p.add_argument("--lever-repeats", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="tiny BERT, few sentences, arms in this process")
    p.add_argument("--no-ray", action="store_true", help="leave out the jobs.train arm")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--arm", choices=["hf", "hf_grouped", "plain", "ours", "lever"], help=argparse.SUPPRESS)
    p.add_argument("--lever", default="shipped", choices=list(LEVERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.sentences, args.eval_sentences, args.lever_sentences, args.repeats = 64, 32, 64, 1
        args.levers = [lever for lever in args.levers if lever != "compile"]  # compiling alone outlasts the test budget
    if args.arm:
        with tempfile.TemporaryDirectory() as tmp:
            print(RESULT + json.dumps(call_arm(args, args.arm, args.lever, tmp)), flush=True)
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
