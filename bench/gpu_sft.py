"""SFT of a ~0.5B causal LM (Qwen2.5-0.5B's shape, random init) under FSDP2 in bf16 on one GPU: samples/s and MFU.

    .venv/bin/python -m bench.gpu_sft                      # one GPU, about 3 minutes
    .venv/bin/python -m bench.gpu_sft --tiny               # a 2-layer model on the CPU: the plumbing, no GPU needed
    .venv/bin/python -m bench.gpu_sft --batch-size 16 --seq-len 2048 --steps 30
    .venv/bin/python -m bench.gpu_sft --cpu-ddp-vs-fsdp    # 2 gloo CPU ranks, a 40M model: memory and step time

The model is wrapped by jobs/sharding.py exactly as ``scaling.strategy=fsdp`` wraps it in jobs.train (one unit per
decoder block, bf16 parameters, fp32 gradient reduction), on a one-rank process group; batches are random tokens
with the loss on every token. It times ``--steps`` optimizer steps after ``--warmup``.
MFU = (6 N + 12 L d s) x tokens/s / peak FLOP/s (PaLM, appendix B): N parameters (the tied embedding counted once,
as the output matmul), L layers, d hidden size, s sequence length (the attention scores). Peak defaults to H100
SXM dense bf16, 989 TFLOP/s (--peak-tflops). Prints one line and writes bench/out/gpu_sft.json; exits 2 without
CUDA unless --tiny. ``--cpu-ddp-vs-fsdp`` trains a 40M-parameter model on 2 CPU processes (gloo, 1 thread each),
DDP then FSDP, and prints per rank the bytes of parameters, gradients and optimizer state it holds, its peak RSS
and the median step time (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from jobs import sharding
from jobs.ports import free_port

OUT = Path(__file__).resolve().parent / "out"
QWEN25_05B = dict(  # Qwen2.5-0.5B's config.json: 494M parameters
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
MID = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8)
TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_sft", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU, fp32: runs anywhere")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    p.add_argument("--cpu-ddp-vs-fsdp", action="store_true", help="2 CPU ranks, DDP then FSDP: memory and step time")
    args = p.parse_args(argv)
    if args.cpu_ddp_vs_fsdp:
        return cpu_ddp_vs_fsdp()
    if args.tiny:
        device, precision, shape = torch.device("cpu"), "fp32", TINY
        args.batch_size, args.seq_len, args.steps, args.warmup = 2, 32, 3, 1
    elif torch.cuda.is_available():
        device, precision, shape = torch.device("cuda", 0), "bf16", QWEN25_05B
    else:
        print("no CUDA device here: this benchmark needs a GPU (--tiny runs its plumbing on the CPU)")
        return 2

    # [1] model: built from its config, sharded as jobs.train's scaling.strategy=fsdp shards it
    from transformers import Qwen2Config, Qwen2ForCausalLM

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    config = Qwen2Config(**shape, max_position_embeddings=max(args.seq_len, 32))
    model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    model = sharding.shard(model, precision, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

    # [2] steps on random tokens, the clock synchronised with the GPU
    batch = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync()
            t0 = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - t0

    # [3] figures
    tokens_per_s = args.steps * args.batch_size * args.seq_len / seconds
    flops_per_token = 6 * n_params + 12 * config.num_hidden_layers * config.hidden_size * args.seq_len
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "params_m": n_params / 1e6,
        "precision": precision,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "samples_per_s": args.steps * args.batch_size / seconds,
        "tokens_per_s": tokens_per_s,
        "mfu": flops_per_token * tokens_per_s / (args.peak_tflops * 1e12) if device.type == "cuda" else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "final_loss": loss.item(),
    }
    dist.destroy_process_group()
    OUT.mkdir(exist_ok=True)
    (OUT / "gpu_sft.json").write_text(json.dumps(result, indent=1))
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a on CPU"
    print(
        f"gpu_sft: {result['params_m']:.0f}M params, {precision}, {result['device']}: "
        f"{result['samples_per_s']:.2f} samples/s, {tokens_per_s:.0f} tokens/s, MFU {mfu}"
    )
    return 0


def cpu_ddp_vs_fsdp(world: int = 2, steps: int = 6) -> int:
    import torch.multiprocessing as mp

    rows = []
    for strategy in ("ddp", "fsdp"):  # each in fresh processes: peak RSS is per run
        queue = mp.get_context("spawn").SimpleQueue()
        port = free_port()
        mp.start_processes(_cpu_rank, args=(world, port, strategy, steps, queue), nprocs=world, start_method="spawn")
        rows += sorted((queue.get() for _ in range(world)), key=lambda r: r["rank"])
    for r in rows:
        print(
            f"{r['strategy']} rank {r['rank']}: params {r['param_mb']:.0f} MB, grads {r['grad_mb']:.0f} MB, "
            f"optimizer {r['optim_mb']:.0f} MB, peak RSS {r['peak_rss_mb']:.0f} MB, step {r['step_s']:.2f} s"
        )
    OUT.mkdir(exist_ok=True)
    (OUT / "cpu_ddp_vs_fsdp.json").write_text(json.dumps(rows, indent=1))
    return 0


def _cpu_rank(rank: int, world: int, port: int, strategy: str, steps: int, queue) -> None:
    import resource
    import statistics

    from transformers import Qwen2Config, Qwen2ForCausalLM

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**MID, num_key_value_heads=8))
    if strategy == "fsdp":
        model = sharding.shard(model, "fp32", torch.device("cpu"))
    else:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = torch.randint(0, MID["vocab_size"], (4, 128), generator=torch.Generator().manual_seed(rank))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
        if len(times) < steps + 1:
            optimizer.zero_grad(set_to_none=True)

    def local_mb(tensors) -> float:
        return sum(getattr(t, "_local_tensor", t).numel() * t.element_size() for t in tensors) / 2**20

    queue.put(
        {
            "strategy": strategy,
            "rank": rank,
            "param_mb": sharding.local_bytes(model) / 2**20,
            "grad_mb": local_mb(p.grad for p in model.parameters() if p.grad is not None),
            "optim_mb": local_mb(v for s in optimizer.state.values() for v in s.values() if v.dim() > 0),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_s": statistics.median(times[1:]),  # the first step allocates the optimizer state
        }
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
