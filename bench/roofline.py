"""The NER training step against this CPU's own matmul peak: the FLOP/s that the plain loop, jobs.train's loop and
HF Trainer achieve, over the machine's measured bf16 and fp32 matmul rates, and where the step's time goes.

    python -m bench.roofline [--sentences 320] [--threads 2] [--size 2048] [--profile-steps 10] [--smoke]

[1] Peak: a SIZE x SIZE matmul in bf16 and in fp32, the best of 10 after 3 warm-ups (2 * SIZE^3 FLOPs each).
[2] Arms: the same CoNLL-2003 sentences (the project's seeded sample), MiniLM-L6, batch 16, one epoch, in bf16 where
    the CPU has it natively (else fp32), each after a 3-batch warm-up:
      plain   a bare loop over jobs' length-grouped batches: autocast forward, backward, clip, fused AdamW
      jobs    jobs.loop.run_epoch, the loop each jobs.train worker runs (Ray's own cost is bench.overhead's)
      hf      transformers.Trainer, group_by_length, bf16=True, its own batches (bench/hf_trainer_ner.py's set-up)
[3] FLOPs: every batch an arm trains is a (sentences, sub-tokens) shape; the forward and backward FLOPs of each shape
    are counted once by torch's FlopCounterMode with eager attention (the CPU flash-attention kernels have no FLOP
    formula; eager attention does the same matmuls). GFLOP/s = the arm's FLOPs / its training time.
[4] Profile: torch.profiler over --profile-steps steps of jobs' loop: the top operators by self CPU time.
Target: jobs >= 25% of the bf16 peak on an AMX or AVX512-BF16 machine. Results: bench/out/roofline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def matmul_peak(dtype, size: int) -> float:
    """GFLOP/s of the best of 10 ``size``-square matmuls."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def setup(args):
    """(cfg, splits, model factory) for the NER arms."""
    import torch

    from jobs import config as config_lib
    from jobs import loop
    from workloads import ner

    torch.set_num_threads(args.threads)
    smoke = ["model.name_or_path=tiny", "data.max_length=48"] if args.smoke else []
    overrides = [f"data.max_train_samples={args.sentences}", "train.epochs=1", "train.batch_size=16", *smoke]
    cfg = config_lib.load_config(ROOT / "configs" / "ner.yaml", overrides)
    cfg.train.precision = loop.resolve_precision("auto", torch.device("cpu"))
    splits = ner.build_data(cfg)

    def model():
        loop.seed_everything(cfg.train.seed)
        return ner.build_model(cfg, splits)

    return cfg, splits, model


class Shapes:
    """Records the (sentences, sub-tokens) shape of each batch a model trains on."""

    def __init__(self, model):
        self.seen: list[tuple[int, int]] = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        if module.training:
            self.seen.append(tuple((kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape))


def step_flops(make_model, shapes: set, vocab: int) -> dict:
    """Forward + backward FLOPs of one batch of each shape, counted with eager attention."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = make_model()
    model.set_attn_implementation("eager")
    out = {}
    for n, width in shapes:
        ids = torch.randint(0, vocab, (n, width))
        counter = FlopCounterMode(display=False)
        with counter:
            model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.zeros_like(ids)).loss.backward()
        out[(n, width)] = counter.get_total_flops()
    return out


def arm_plain(cfg, splits, make_model) -> tuple[float, list]:
    import torch

    from jobs import loop
    from workloads import ner

    model = make_model()
    optimizer = loop.make_optimizer(cfg, model)
    loader = ner.train_loader(cfg, splits)
    loader.sampler.set_epoch(0)
    batches = list(loader)

    def step(batch):
        with loop.autocast(cfg.train.precision, torch.device("cpu")):
            loss = ner.train_step(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    for batch in batches[:3]:
        step(batch)
    shapes = Shapes(model)
    t0 = time.perf_counter()
    for batch in batches:
        step(batch)
    return time.perf_counter() - t0, shapes.seen


def arm_jobs(cfg, splits, make_model, profile_steps: int = 0):
    import torch

    from jobs import loop
    from workloads import ner

    model = make_model()
    optimizer = loop.make_optimizer(cfg, model)
    loader = ner.train_loader(cfg, splits)
    loader.sampler.set_epoch(0)
    scheduler = ner.build_scheduler(cfg, optimizer, len(loader))
    cpu = torch.device("cpu")
    batches = list(loader)
    loop.run_epoch(model, batches[:3], optimizer, ner, cfg, cpu)
    if profile_steps:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            loop.run_epoch(model, batches[:profile_steps], optimizer, ner, cfg, cpu)
        return prof
    shapes = Shapes(model)
    stats = loop.run_epoch(model, loader, optimizer, ner, cfg, cpu, scheduler)
    return stats["train_time_s"], shapes.seen


def arm_hf(cfg, splits, make_model, threads: int, out: str) -> tuple[float, list]:
    import transformers

    from bench.hf_trainer_ner import trainer_args
    from workloads import ner

    model = make_model()
    rows = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in splits.train]
    targs = trainer_args(
        out,
        cfg.train.precision == "bf16",
        learning_rate=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        warmup_steps=cfg.train.warmup_ratio,  # < 1: a ratio of all steps
        max_grad_norm=cfg.train.max_grad_norm,
    )
    collator = transformers.DataCollatorForTokenClassification(ner.load_tokenizer(cfg))
    warm = transformers.Trainer(model=make_model(), args=targs, train_dataset=rows[:48], data_collator=collator)
    warm.remove_callback(transformers.trainer_callback.PrinterCallback)
    warm.train()
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    shapes = Shapes(model)
    result = trainer.train()
    return result.metrics["train_runtime"], shapes.seen


def top_ops(prof, n: int = 8) -> list[dict]:
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {
            "op": e.key,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
            "ms_per_call": e.self_cpu_time_total / e.count / 1e3,
        }
        for e in events[:n]
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=320)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--size", type=int, default=2048, help="side of the matmul that measures the peak")
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="a tiny random-init BERT on a few sentences (the plumbing)")
    p.add_argument("--no-ray", action="store_true", help="accepted for python -m bench: no arm here starts Ray")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = p.parse_args(argv)
    if args.smoke:
        args.sentences, args.size, args.profile_steps = min(args.sentences, 48), 256, 3

    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    peak = {"bf16": matmul_peak(torch.bfloat16, args.size), "fp32": matmul_peak(torch.float32, args.size)}
    cfg, splits, make_model = setup(args)
    times, shapes = {}, {}
    times["plain"], shapes["plain"] = arm_plain(cfg, splits, make_model)
    times["jobs"], shapes["jobs"] = arm_jobs(cfg, splits, make_model)
    with tempfile.TemporaryDirectory() as tmp:
        times["hf"], shapes["hf"] = arm_hf(cfg, splits, make_model, args.threads, tmp)
    vocab = make_model().config.vocab_size
    flops = step_flops(make_model, {s for seen in shapes.values() for s in seen}, vocab)
    prof = arm_jobs(cfg, splits, make_model, profile_steps=args.profile_steps)

    arms = {}
    for arm, seen in shapes.items():
        gflops = sum(flops[s] for s in seen) / times[arm] / 1e9
        arms[arm] = {
            "samples_per_s": sum(n for n, _ in seen) / times[arm],
            "gflop_per_s": gflops,
            "of_bf16_peak": gflops / peak["bf16"],
            "of_fp32_peak": gflops / peak["fp32"],
            "padded_tokens_per_step": sum(n * w for n, w in seen) / len(seen),
        }
    result = {"peak_gflop_per_s": peak, "precision": cfg.train.precision, "arms": arms, "top_ops_jobs": top_ops(prof)}
    result |= {"sentences": args.sentences, "threads": args.threads, "load_avg": os.getloadavg()[0]}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "roofline.json").write_text(json.dumps(result, indent=1))

    print(f"matmul peak ({args.size}^2): bf16 {peak['bf16']:,.0f} GFLOP/s, fp32 {peak['fp32']:,.0f} GFLOP/s")
    print(f"NER step, {args.sentences} sentences, batch 16, {cfg.train.precision}, {args.threads} threads:")
    print(f"{'arm':6} {'samples/s':>10} {'GFLOP/s':>9} {'of bf16 peak':>13} {'of fp32 peak':>13} {'tokens/step':>12}")
    for arm, r in arms.items():
        print(
            f"{arm:6} {r['samples_per_s']:10.1f} {r['gflop_per_s']:9.1f} {r['of_bf16_peak']:13.1%}"
            f" {r['of_fp32_peak']:13.1%} {r['padded_tokens_per_step']:12.0f}"
        )
    print(f"top operators of jobs' step (self CPU time, {args.profile_steps} steps):")
    for op in result["top_ops_jobs"]:
        print(f"  {op['share']:6.1%}  {op['op']}  ({op['calls']} calls, {op['ms_per_call']:.2f} ms each)")
    print(f"load average {result['load_avg']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
