"""Driver loss: a ``jobs.train`` driver SIGKILLed mid-run leaves no Ray process behind, and
``jobs.train --resume RUN_ID`` continues the run from its last checkpoint and records it once, on both
paths: a worker group on the embedded cluster, and local mode (the loop in the driver, no cluster)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import PY, ROOT, base_env, run_job

from jobs.store import Store
from tests.plugins import faults

EPOCHS = 4
FIGURES: dict[str, dict] = {}  # printed with -s; bench/cluster_local.py prints it as a table


@pytest.mark.parametrize("local_mode", ["never", "auto"])
def test_killed_driver_leaves_no_process_and_resume_records_the_run_once(tmp_path: Path, local_mode: str):
    runs_dir, store_dir, paused = tmp_path / "runs", tmp_path / "store", tmp_path / "paused"
    env = base_env()
    cmd = [
        PY,
        "-m",
        "jobs.train",
        "--config",
        str(ROOT / "configs" / "mlp.yaml"),
        "--store",
        str(store_dir),
        f"run.storage_path={runs_dir}",
        f"train.epochs={EPOCHS}",
        "train.batch_size=16",
        "data.max_train_samples=4000",
        "model.hidden1=64",
        "model.hidden2=32",
        "scaling.cpus_per_worker=1",
        f"scaling.local_mode={local_mode}",
        # the run waits after epoch 2's checkpoint is committed: the kill lands there, however fast the epochs
        faults.hooks(f"tests.plugins.faults:PauseAfterEpoch?epoch=2&path={paused}"),
    ]
    driver = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_id, out = None, []
    deadline = time.time() + 300
    while run_id is None and time.time() < deadline:
        line = driver.stdout.readline()
        assert line or driver.poll() is None, "".join(out)
        out.append(line)
        if m := re.match(r"run (\S+) .*--resume (\S+)", line):
            run_id = m.group(1)
    assert run_id, "".join(out)
    while not paused.exists():  # epoch 2 committed, the run held before epoch 3
        assert time.time() < deadline and driver.poll() is None, "".join(out)
        time.sleep(0.2)
    me = psutil.Process(driver.pid)
    cluster = [p for p in me.children(recursive=True) if "driver.children" not in " ".join(_cmdline(p))]
    names = {_name(p) for p in cluster}
    if local_mode == "never":  # the embedded cluster and its agents, all children of the driver
        assert {"raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
    else:  # local mode: the loop runs in the driver, and no Ray process was ever started
        assert not names & {"raylet", "gcs_server"}, names
    last_at_kill = int(paused.read_text().split("_")[1])
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    gone, alive = psutil.wait_procs(cluster, timeout=30)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind after the driver died: {[(p.pid, _name(p)) for p in alive]}"
    assert "runs" not in Store(str(store_dir)).tables()  # the killed driver recorded nothing

    t0 = time.time()
    res = run_job(
        ["jobs.train", "--resume", run_id, f"run.storage_path={runs_dir}", "--store", str(store_dir)], env, timeout=400
    )
    resume_s = time.time() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    resumed = [int(m) for m in re.findall(r"resumed from the epoch (\d+) checkpoint", res.stdout + res.stderr)]
    assert resumed and resumed[0] == last_at_kill == 2, (resumed, res.stdout[-3000:])  # the committed checkpoint
    store = Store(str(store_dir))
    runs = store.df("runs")
    assert len(runs) == 1 and runs.iloc[0]["run_id"] == run_id and runs.iloc[0]["status"] == "completed"
    assert sorted(store.df("epochs")["epoch"]) == list(range(1, EPOCHS + 1))  # each epoch once, none lost
    # a second --resume (a resubmitted job racing the first) finds the run recorded and writes nothing
    again = run_job(["jobs.train", "--resume", run_id, f"run.storage_path={runs_dir}", "--store", str(store_dir)], env)
    assert again.returncode == 0 and "already recorded" in again.stdout, again.stdout + again.stderr
    assert len(Store(str(store_dir)).df("runs")) == 1
    rows = store.df("epochs")["epoch"]
    FIGURES[f"driver loss (scaling.local_mode={local_mode})"] = {
        "Ray processes left after the driver's SIGKILL": len(alive),
        "--resume -> run recorded (s)": resume_s,
        "whole epochs redone (besides the one in flight)": last_at_kill - resumed[0],
        "epoch rows lost / duplicated": f"{EPOCHS - rows.nunique()} / {len(rows) - rows.nunique()}",
    }
    print(f"\nfigures: {FIGURES[f'driver loss (scaling.local_mode={local_mode})']}")


def _name(p: psutil.Process) -> str:
    try:
        return p.name() if p.name() in ("raylet", "gcs_server") else (p.cmdline() or [p.name()])[0]
    except psutil.NoSuchProcess:
        return "?"


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.NoSuchProcess:
        return []
