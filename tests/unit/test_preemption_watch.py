"""jobs.hooks.preemption_watch across two real DDP processes (gloo on 127.0.0.1, no Ray): a notice that reaches
only rank 1 makes both ranks answer at the same step, or their checkpoint reports (collectives) would hang."""

from __future__ import annotations

import torch.multiprocessing as mp

from jobs.ports import free_port


def _rank(rank: int, port: int, out) -> None:
    import os
    import time

    import torch

    from jobs import hooks

    os.environ[hooks.PREEMPTION_WATCHER] = "1"
    hooks.PREEMPTION_CHECK_EVERY_S = 0.01  # steps of ~1 ms below: an all-reduce about every 10 steps
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    step = {"n": 0}
    # rank 1 alone gets the notice, from step 30 on (Ray Train's watcher reaches workers at different times)
    check = hooks.preemption_watch(
        True, torch.device("cpu"), read=lambda: "notice" if rank == 1 and step["n"] >= 30 else None
    )
    answers = []
    for n in range(400):
        step["n"] = n
        time.sleep(0.001)  # a training step
        if check():
            answers.append(n)
    out.put((rank, answers))
    torch.distributed.destroy_process_group()


def test_ranks_agree_on_a_notice_only_one_of_them_has():
    port = free_port()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got[0] and got[0] == got[1], got  # the same steps on both ranks
    assert 30 <= got[0][0] < 100  # never before the notice, and soon after it (the interval is ~10 steps)
