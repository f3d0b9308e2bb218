"""What the loop's per-step preemption check costs (jobs.loop.preemption_watch), side by side with no check.

    .venv/bin/python -m bench.preemption_watch [--workers 2] [--steps 400] [--rounds 3]

DDP on gloo over 127.0.0.1 in ``--workers`` processes (no Ray: the check is given a reader that never sees a
notice, which is what it reads on every step but the one that matters), one CPU thread each, the mlp model at
batch 16: each round trains ``--steps`` optimizer steps without the check, then with it, and prints the
median step time of each and the mean time spent in the check itself per step (rank 0). On one worker the check is
an attribute read; with several it adds an asynchronous all-reduce of one number (read one step later).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(rank: int, world: int, port: int, steps: int, rounds: int, out) -> None:
    import torch

    from jobs import config as config_lib
    from jobs import loop
    from workloads import mlp

    torch.set_num_threads(1)
    os.environ[loop.PREEMPTION_WATCHER] = "1"
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = config_lib.load_config(None, ["workload=mlp", "model.hidden1=64", "model.hidden2=32"])
    splits = type("Splits", (), {"info": {"in_features": 784}, "labels": list("abcdefghij")})()
    loop.seed_everything(0)
    model = mlp.build_model(cfg, splits)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 784), torch.randint(0, 10, (16,))
    results = []
    for _ in range(rounds):
        for watched in (False, True):
            check = loop.preemption_watch(world > 1, torch.device("cpu"), read=lambda: None) if watched else None
            step_times, check_times = [], []
            for _ in range(steps):
                t0 = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if check is not None:
                    t1 = time.perf_counter()
                    check()
                    check_times.append(time.perf_counter() - t1)
                step_times.append(time.perf_counter() - t0)
            results.append((watched, statistics.median(step_times), statistics.fmean(check_times or [0.0])))
    if rank == 0:
        out.put(results)
    if world > 1:
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    import torch.multiprocessing as mp

    p = argparse.ArgumentParser(prog="python -m bench.preemption_watch", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(r, args.workers, port, args.steps, args.rounds, out))
        for r in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    results = out.get(timeout=1800)
    for proc in procs:
        proc.join()
    print(f"{args.workers} worker(s), {args.steps} steps x {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    off = statistics.median(r[1] for r in results if not r[0])
    on = statistics.median(r[1] for r in results if r[0])
    inside = statistics.median(r[2] for r in results if r[0])
    print(f"  median step, no check      {off * 1e3:8.3f} ms")
    print(f"  median step, with check    {on * 1e3:8.3f} ms  ({(on - off) / off:+.1%})")
    print(f"  mean time in the check     {inside * 1e6:8.1f} us a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
