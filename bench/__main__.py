"""The performance suite: Ray Train overhead, NER vs HF Trainer, scaling, memory — each table printed.

    python -m bench [--only overhead vs_hf_trainer roofline sweep_vs_hf scaling memory] [--smoke] [--no-ray]
    make bench

Runs, one after the other (the machine's cores are shared, so never two at once):
  [1] bench/overhead.py       plain PyTorch vs jobs.train step time, local mode and worker group (target <= 1.03)
  [2] bench/vs_hf_trainer.py  NER vs a transformers.Trainer script: samples/s (target >= 1.3x), whole command
                              (target <= 1.0x), val/test F1, both precisions; tokenized-data cache saving
  [3] bench/roofline.py       the NER step's FLOP/s over this CPU's own bf16 and fp32 matmul peak: the plain loop,
                              jobs.train's loop, HF Trainer (target >= 25% of the bf16 peak), top operators
  [4] bench/sweep_vs_hf.py    the same 8-trial NER search through jobs.sweep and through Trainer.hyperparameter_search
                              (Optuna, Ray): wall, CPU-s, best val and test F1 (target <= 0.5x HF's better wall)
  [5] bench/scaling.py        1 vs 2 Train workers on this machine; paper estimate of N-GPU DDP
  [6] bench/memory.py         peak RSS per worker for every workload (target: NER < 2 GB)
Each arm runs in its own subprocess; arms alternate (A/B/A/B) and every figure is min/median/max over
repeats with the load average beside it: read ratios, not absolute numbers, on a busy machine.
Default sizes take just under 30 min on 2 idle cores (docs/performance.md). Results and arm logs: bench/out/.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench import memory, overhead, roofline, scaling, sweep_vs_hf, vs_hf_trainer  # noqa: E402

SUITE = {
    "overhead": overhead,
    "vs_hf_trainer": vs_hf_trainer,
    "roofline": roofline,
    "sweep_vs_hf": sweep_vs_hf,
    "scaling": scaling,
    "memory": memory,
}


def machine() -> str:
    """CPU model, the flags that decide its matmul peak (AMX, AVX-512 BF16), cores, memory, OS, Python, torch."""
    import torch

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    info = {
        k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines) if k.strip() in ("model name", "flags")
    }
    cpu = info.get("model name", platform.processor())
    flags = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in info.get("flags", "").split()]
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} x {cpu} ({' '.join(flags) or 'no AVX2'}), {mem_gb:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=list(SUITE), default=list(SUITE), help="run these parts only")
    p.add_argument("--smoke", action="store_true", help="every part's tiny mode (checks the plumbing, not the figures)")
    p.add_argument("--no-ray", action="store_true", help="leave out every arm that needs Ray")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = p.parse_args(argv)
    flags = ["--out", args.out] + (["--smoke"] if args.smoke else []) + (["--no-ray"] if args.no_ray else [])
    print(f"python -m bench {' '.join(argv)}\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()}", flush=True)
    t0, failed = time.perf_counter(), []
    for name in args.only:
        start = time.perf_counter()
        print(f"\n===== {name} =====", flush=True)
        try:
            code = SUITE[name].main(flags)
        except Exception as e:
            print(f"{name} failed: {e}", flush=True)
            code = 1
        if code:
            failed.append(name)
        print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    print(
        f"\nbench: {time.perf_counter() - t0:.0f} s in all, load average {os.getloadavg()[0]:.1f} at the end"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
