"""LoRA vs full fine-tuning of MiniLM NER on CoNLL-2003, side by side: trainable parameters, samples/s, peak RSS, test F1.

    python -m bench.lora_vs_full [--train-sentences 2000] [--eval-sentences 1000] [--epochs 2] [--threads 2] [--parallel]

Each variant runs in its own subprocess (so each has its own peak RSS) through the same pieces the Ray
Train loop uses — ``ner.build_data/build_model/train_loader/build_scheduler``, ``jobs.loop.run_epoch``,
``ner.evaluate``, ``ner.export`` — without Ray, one after the other (or both at once with ``--parallel``,
so that on a busy shared machine both see the same load and the samples/s ratio stays fair).
Data are capped (flags above): the F1s are for comparing the two variants, not CoNLL-2003 results.
LoRA trains rank-8 adapters on the attention query/value projections (``lora-qv``, the LoRA paper's
choice) or on every linear layer of the encoder (``lora-all``, as QLoRA recommends), plus the
token-classification head, at a 20x higher learning rate (adapters start at zero and the head at
random); full fine-tuning uses configs/ner.yaml's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {  # LoRA: adapters start at zero and the head at random, so it takes a 20x higher learning rate
    "full": [],
    "lora-qv": [
        "model.lora.enabled=true",
        "model.lora.r=8",
        "model.lora.target_modules=[query,value]",
        "train.lr=0.002",
    ],
    "lora-all": [
        "model.lora.enabled=true",
        "model.lora.r=8",
        "model.lora.target_modules=[query,key,value,dense]",
        "train.lr=0.002",
    ],
}


def measure(variant: str, args) -> dict:
    import torch

    from jobs import config as config_lib
    from jobs import loop
    from workloads import lora, ner

    torch.set_num_threads(args.threads)
    cfg = config_lib.load_config(
        ROOT / "configs/ner.yaml",
        [
            f"data.max_train_samples={args.train_sentences}",
            f"data.max_eval_samples={args.eval_sentences}",
            f"train.epochs={args.epochs}",
            *VARIANTS[variant],
            *args.overrides,
        ],
    )
    loop.seed_everything(cfg.train.seed)
    splits = ner.build_data(cfg)
    model = ner.build_model(cfg, splits)
    trainable, total = lora.parameter_counts(model)
    optimizer = loop.make_optimizer(cfg, model)
    loader = ner.train_loader(cfg, splits)
    scheduler = ner.build_scheduler(cfg, optimizer, len(loader))
    device = torch.device("cpu")
    samples, seconds = 0, 0.0
    for epoch in range(cfg.train.epochs):
        loader.sampler.set_epoch(epoch)
        stats = loop.run_epoch(model, loader, optimizer, ner, cfg, device, scheduler)
        samples, seconds = samples + stats["samples"], seconds + stats["train_time_s"]
        print(
            f"  {variant} epoch {epoch + 1}: train_loss {stats['train_loss']:.4f}, {stats['samples'] / stats['train_time_s']:.1f} samples/s",
            file=sys.stderr,
            flush=True,
        )
    t0 = time.perf_counter()
    test = ner.evaluate(model, loop.eval_loader(splits, splits.test, cfg.train.batch_size * 2), splits)
    eval_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({k: v for k, v in model.state_dict().items()}, Path(tmp, "state.pt"))  # what the loop checkpoints
        ner.export(model, cfg, splits, Path(tmp, "export"))
        ckpt_mb = Path(tmp, "state.pt").stat().st_size / 2**20
        export_mb = sum(f.stat().st_size for f in Path(tmp, "export").iterdir()) / 2**20
    return {
        "variant": variant,
        "lr": cfg.train.lr,
        "trainable_params": trainable,
        "total_params": total,
        "train_samples_per_s": samples / seconds,
        "train_s": seconds,
        "eval_s": eval_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "test_f1": test["f1"],
        "test_precision": test["precision"],
        "test_recall": test["recall"],
        "checkpoint_mb": ckpt_mb,
        "adapter_mb": trainable * 4 / 2**20 if variant != "full" else None,
        "export_mb": export_mb,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-sentences", type=int, default=2000)
    p.add_argument("--eval-sentences", type=int, default=1000, help="caps the val and test sentences")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads (a 2-CPU Train worker)")
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run both variants at once: on a busy shared machine both then see the same load",
    )
    p.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # internal: one variant, JSON out
    p.add_argument("overrides", nargs="*", help="key=value for both variants")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.variant:
        print(json.dumps(measure(args.variant, args)))
        return 0
    results, procs = [], []
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            "-m",
            "bench.lora_vs_full",
            "--variant",
            variant,
            f"--train-sentences={args.train_sentences}",
            f"--eval-sentences={args.eval_sentences}",
            f"--epochs={args.epochs}",
            f"--threads={args.threads}",
            *args.overrides,
        ]
        procs.append((variant, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)))
        if not args.parallel:
            procs[-1][1].wait()
    for variant, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            print(f"{variant} failed (exit {proc.returncode})")
            return 1
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"\nMiniLM-L6 NER, CoNLL-2003 capped: {args.train_sentences} train sentences x {args.epochs} epochs, "
        f"{args.eval_sentences} test sentences; {args.threads} torch threads, batch 16, no Ray"
        + (", both variants at once" if args.parallel else "")
        + "\n"
    )
    rows = [
        ("learning rate", lambda r: f"{r['lr']:g}"),
        ("trainable params", lambda r: f"{r['trainable_params']:,} ({r['trainable_params'] / r['total_params']:.2%})"),
        ("train samples/s", lambda r: f"{r['train_samples_per_s']:.1f}"),
        ("train time (s)", lambda r: f"{r['train_s']:.0f}"),
        ("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}"),
        ("test entity F1", lambda r: f"{r['test_f1']:.4f}"),
        (
            "checkpoint state (MB)",
            lambda r: f"{r['checkpoint_mb']:.1f}" + (f" (trainable {r['adapter_mb']:.1f})" if r["adapter_mb"] else ""),
        ),
        ("export (MB)", lambda r: f"{r['export_mb']:.1f}"),
    ]
    print(f"{'':<24}" + "".join(f"{r['variant']:>28}" for r in results))
    for name, fmt in rows:
        print(f"{name:<24}" + "".join(f"{fmt(r):>28}" for r in results))
    full = results[0]
    for lora in results[1:]:
        print(
            f"{lora['variant']} / full: {lora['train_samples_per_s'] / full['train_samples_per_s']:.2f}x samples/s, "
            f"{lora['trainable_params'] / full['trainable_params']:.2%} of the trainable parameters, "
            f"test F1 {lora['test_f1'] - full['test_f1']:+.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
