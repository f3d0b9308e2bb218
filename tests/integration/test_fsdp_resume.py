"""A 2-worker FSDP run's sharded checkpoint resumes on 1 worker: its driver is killed once epoch 1's checkpoint is
committed, and ``jobs.train --resume RUN_ID scaling.num_workers=1`` finishes the run from that checkpoint."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

from conftest import PY, ROOT, run_job

from jobs import sharding
from jobs.store import Store
from tests.plugins import faults

TINY_LORA = ["--smoke-test", "train.epochs=2", "model.lora.enabled=true", "model.lora.dropout=0"]


def test_a_two_worker_sharded_checkpoint_resumes_on_one_worker(ray_cluster, store_dir, tmp_path):
    runs, paused, lines = tmp_path / "runs", tmp_path / "paused", tmp_path / "losses.jsonl"
    hooks = faults.hooks(
        f"tests.plugins.losses:StepLosses?path={lines}",
        f"tests.plugins.faults:PauseAfterEpoch?epoch=1&path={paused}",
    )
    cmd = [PY, "-m", "jobs.train", "--config", "configs/sft.yaml", "--store", str(store_dir), *TINY_LORA]
    cmd += ["scaling.num_workers=2", "scaling.cpus_per_worker=1", "scaling.strategy=fsdp"]
    cmd += [f"run.storage_path={runs}", hooks]
    env = ray_cluster.job_env()
    driver = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_id, out, deadline = None, [], time.time() + 300
    while run_id is None:
        line = driver.stdout.readline()
        assert (line or driver.poll() is None) and time.time() < deadline, "".join(out)
        out.append(line)
        if m := re.match(r"run (\S+) .*--resume (\S+)", line):
            run_id = m.group(1)
    while not paused.exists():  # epoch 1's checkpoint committed; rank 0 holds the run there
        assert time.time() < deadline and driver.poll() is None, "".join(out)
        time.sleep(0.2)
    checkpoint = runs / run_id / paused.read_text()
    assert sorted(p.name for p in (checkpoint / sharding.SHARDS).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = [json.loads(ln) for ln in lines.read_text().splitlines()]

    res = run_job(
        ["jobs.train", "--resume", run_id, f"run.storage_path={runs}", "scaling.num_workers=1"]
        + ["--store", str(store_dir)],
        env,
        timeout=400,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "1 worker(s)" in res.stdout and "resumed from the epoch 1 checkpoint" in res.stdout, res.stdout[-3000:]
    row = Store(store_dir).df("runs").set_index("run_id").loc[run_id]
    assert row["status"] == "completed" and row["epochs"] == 2, row.to_dict()
    assert sorted(Store(store_dir).df("epochs").query("run_id == @run_id")["epoch"]) == [1, 2]

    # the one worker starts from the two workers' weights: its first loss is epoch 1's last, not a fresh model's
    after = [json.loads(ln) for ln in lines.read_text().splitlines()][len(before) :]
    assert any(r.get("resumed") for r in after), after[:3]
    first = next(r["loss"] for r in before if r.get("rank") == 0 and "loss" in r)
    last_of_epoch_1 = [r["loss"] for r in before if r.get("rank") == 0 and r.get("epoch") == 0][-1]
    resumed_first = next(r["loss"] for r in after if "loss" in r)
    print(f"losses: first {first:.4f}, epoch 1 last {last_of_epoch_1:.4f}, resumed first {resumed_first:.4f}")
    assert abs(resumed_first - last_of_epoch_1) < 0.5 * abs(first - last_of_epoch_1), (first, last_of_epoch_1)
