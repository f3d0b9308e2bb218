"""NER on one GPU, bf16 vs fp32: samples/s, peak GPU memory, model FLOP utilisation (MFU).

    .venv/bin/python -m bench.gpu_ner                          # plain PyTorch loop, bf16 then fp32
    .venv/bin/python -m bench.gpu_ner --ray                    # + one jobs.train epoch per precision (scaling.use_gpu=true)
    .venv/bin/python -m bench.gpu_ner --batch-sizes 16,64,256  # a row per batch size and precision
    .venv/bin/python -m bench.gpu_ner data.max_length=128      # any config override (key=value)
    .venv/bin/python -m bench.gpu_ner --workload mlp --device cpu --steps 5   # the plumbing, without a GPU

The plain loop runs the workload contract itself (``workloads.module(w).build_data / build_model /
train_step``) with jobs.loop's own autocast, GradScaler and optimizer, and times ``--steps``
optimizer steps after ``--warmup`` steps, synchronising the GPU around the clock.
MFU = achieved model FLOP/s / peak FLOP/s, with training FLOPs = 6 x dense parameters x tokens
(forward + backward; embedding tables do no matmuls and are left out, as are attention's score
FLOPs, small at these lengths); tokens = the padded input_ids each step computes (samples for
workloads without tokens). Peak defaults to H100 SXM dense bf16, 989 TFLOP/s (--peak-tflops).
Prints one line per run and writes bench/out/gpu_<workload>.json. Exits 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

import workloads  # noqa: E402
from jobs import config as config_lib  # noqa: E402
from jobs import loop  # noqa: E402
from jobs.errors import UserError  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0


# ----------------------------------------------------------------------------- [1] what a step computes
def dense_params(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: all, less embedding tables (a lookup is not a FLOP)."""
    embedding = sum(
        p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)
    )
    return sum(p.numel() for p in model.parameters()) - embedding


def tokens_in(batch) -> tuple[int, int]:
    """(tokens computed incl. padding, real tokens) of a batch; samples for non-token batches."""
    if isinstance(batch, dict) and "input_ids" in batch:
        mask = batch.get("attention_mask")
        total = batch["input_ids"].numel()
        return total, int(mask.sum()) if mask is not None else total
    n = loop._batch_size(batch)
    return n, n


def config_for(args, precision: str, extra: list[str] = ()):
    path = args.config or (ROOT / "configs" / f"{args.workload}.yaml")
    batch = [f"train.batch_size={args.batch_size}"] if args.batch_size else []
    overrides = [f"workload={args.workload}", *args.overrides, *batch, f"train.precision={precision}", *extra]
    return config_lib.load_config(path if Path(path).is_file() else None, overrides, smoke_test=args.smoke_test)


# ----------------------------------------------------------------------------- [2] plain PyTorch loop
def measure_plain(args, precision: str, device: torch.device) -> dict:
    cfg = config_for(args, precision)
    wl = workloads.module(cfg.workload)
    loop.check_precision(precision, device)
    loop.seed_everything(cfg.train.seed)
    splits = wl.build_data(cfg)
    model = wl.build_model(cfg, splits).to(device)
    model.train()
    optimizer = (workloads.hook(wl, "build_optimizer") or loop.make_optimizer)(cfg, model)
    scaler = loop.grad_scaler(precision, device)
    loader = loop.train_loader(wl, cfg, splits)
    loader.pin_memory = device.type == "cuda"

    def batches():
        while True:  # cycle: --steps may exceed one epoch of a capped data set
            yield from loader

    stream = batches()
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    samples = tokens = real_tokens = 0
    losses = []
    t0 = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:  # the clock starts after warm-up (allocator, cuBLAS heuristics, lazy init)
            if on_gpu:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        batch = loop.to_device(next(stream), device)
        with loop.autocast(precision, device):
            loss = wl.train_step(model, batch)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            samples += loop._batch_size(batch)
            computed, real = tokens_in(batch)
            tokens, real_tokens = tokens + computed, real_tokens + real
            losses.append(loss.detach())
    if on_gpu:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    params = dense_params(model)
    flops_per_s = 6 * params * tokens / seconds
    return {
        "mode": "plain",
        "workload": cfg.workload,
        "precision": precision,
        "device": device.type,
        "batch_size": cfg.train.batch_size,
        "steps": args.steps,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "tokens_per_s": tokens / seconds,
        "padding_fraction": 1 - real_tokens / max(tokens, 1),
        "step_ms": 1000 * seconds / args.steps,
        "dense_params": params,
        "achieved_tflops": flops_per_s / 1e12,
        "mfu": flops_per_s / (args.peak_tflops * 1e12),
        "peak_memory_gib": (torch.cuda.max_memory_allocated(device) if on_gpu else _peak_rss()) / 2**30,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if on_gpu else "host max RSS",
        "final_loss": float(torch.stack(losses).float().mean()) if losses else float("nan"),
    }


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- [3] the same through jobs.train
def measure_ray(args, precision: str, device: torch.device) -> dict:
    """One jobs.train run (Ray Train, 1 worker): the loop's own per-epoch samples/s."""
    from jobs.store import Store
    from jobs.train import fit, init_ray

    on_gpu = device.type == "cuda"
    cfg = config_for(
        args,
        precision,
        [f"scaling.use_gpu={str(on_gpu).lower()}", "scaling.num_workers=1", f"train.epochs={args.ray_epochs}"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_lib.set_dotted(cfg, "run.storage_path", f"{tmp}/runs")
        init_ray()
        row = fit(cfg, Store(f"{tmp}/store"), quiet=True)
        epochs = Store(f"{tmp}/store").history(row["run_id"])
    if row["status"] != "completed":
        raise RuntimeError(f"jobs.train {precision} run {row['status']}: {row['error']}")
    last = epochs.iloc[-1]
    return {
        "mode": "jobs.train",
        "workload": cfg.workload,
        "precision": precision,
        "device": device.type,
        "batch_size": cfg.train.batch_size,
        "epochs": int(row["epochs"]),
        "wall_s": float(row["wall_s"]),
        "samples_per_s": float(last["samples_per_s"]),
        "train_time_s": float(last["train_time_s"]),
        "best_metric": float(row["best_metric"]),
        "metric": row["metric"],
    }


# ----------------------------------------------------------------------------- CLI
def line(r: dict) -> str:
    if r["mode"] == "plain":
        return (
            f"plain  {r['precision']:>4}  batch {r['batch_size']:>4}  {r['samples_per_s']:8.1f} samples/s  {r['tokens_per_s']:9.0f} tokens/s  "
            f"{r['step_ms']:7.1f} ms/step  peak {r['peak_memory_gib']:.2f} GiB  {r['achieved_tflops']:6.2f} TFLOP/s  "
            f"MFU {100 * r['mfu']:.1f}%  (padding {100 * r['padding_fraction']:.0f}%, loss {r['final_loss']:.3f})"
        )
    return (
        f"ray    {r['precision']:>4}  batch {r['batch_size']:>4}  {r['samples_per_s']:8.1f} samples/s  (epoch of jobs.train: {r['train_time_s']:.1f} s train, "
        f"{r['wall_s']:.1f} s wall, {r['metric']} {r['best_metric']:.4f})"
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu_ner.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="ner", help="any registered workload (mlp: a quick plumbing check)")
    p.add_argument("--config", help="YAML config (default configs/<workload>.yaml)")
    p.add_argument("--precisions", default="bf16,fp32", help="comma-separated: bf16, fp16, fp32")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu only checks the plumbing")
    p.add_argument("--batch-sizes", default="0", help="comma-separated batch sizes per step (0 = the config's)")
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_BF16_DENSE_TFLOPS,
        help="device peak for MFU (H100 SXM dense bf16: 989)",
    )
    p.add_argument("--ray", action="store_true", help="also run jobs.train (Ray Train, 1 worker) per precision")
    p.add_argument("--ray-epochs", type=int, default=1)
    p.add_argument("--smoke-test", action="store_true", help="the workload's tiny data settings")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"), help="directory for gpu_<workload>.json")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    args.precisions = args.precisions.split(",")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"error: no CUDA device (torch {torch.__version__} sees none) — run this on a GPU machine, "
            "or pass --device cpu to check the plumbing",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        print(
            f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"MFU against {args.peak_tflops:.0f} TFLOP/s"
        )
    results = []
    try:
        for args.batch_size in args.batch_sizes:
            for precision in args.precisions:
                results.append(measure_plain(args, precision, device))
                print(line(results[-1]), flush=True)
        for args.batch_size in args.batch_sizes if args.ray else []:
            for precision in args.precisions:
                results.append(measure_ray(args, precision, device))
                print(line(results[-1]), flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plain = {(r["batch_size"], r["precision"]): r for r in results if r["mode"] == "plain"}
    for batch_size in sorted({b for b, _ in plain}):
        if (batch_size, "bf16") in plain and (batch_size, "fp32") in plain:
            bf16, fp32 = plain[batch_size, "bf16"], plain[batch_size, "fp32"]
            print(
                f"batch {batch_size}: bf16 / fp32 = {bf16['samples_per_s'] / fp32['samples_per_s']:.2f}x samples/s, "
                f"{bf16['peak_memory_gib'] / max(fp32['peak_memory_gib'], 1e-9):.2f}x peak memory"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"gpu_{args.workload}.json"
    target.write_text(json.dumps({"argv": argv, "torch": torch.__version__, "results": results}, indent=1))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
