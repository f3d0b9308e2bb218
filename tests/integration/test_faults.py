"""Faults injected for real — SIGKILLed Train workers and writers, a cluster that is not there, a loss that
turns NaN, a full or read-only disk — and what must hold afterwards: a run finishes what it started (or ends
``failed`` with the reason in the store), and the store never holds a partial, lost or duplicated row.

Each test prints its figures (``-s`` shows them); RELIABILITY.md lists them.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import PY, ROOT, base_env, free_port, one_error_line, run_job

from jobs.store import Store


def wait_until(predicate, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stderr_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- a Train worker killed mid-run
EPOCHS, KILL_AFTER = 4, 1
SLOW_MLP = [
    "data.max_train_samples=20000",
    f"train.epochs={EPOCHS}",
    "train.batch_size=64",
    "scaling.num_workers=2",
    "scaling.cpus_per_worker=1",
]
EPOCH_LINE = re.compile(rf"epoch (\d+)/{EPOCHS}  train_loss")  # an epoch's end, not a progress line within it
RESUMED = re.compile(r"resumed from the epoch (\d+) checkpoint")


def train_workers(cluster) -> list[psutil.Process]:
    """The RayTrainWorker processes among the descendants of the cluster's `ray start --block` process."""
    found = []
    for p in psutil.Process(cluster.proc.pid).children(recursive=True):
        try:
            if "RayTrainWorker" in p.name() or "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # exited while we looked
            pass
    return found


def registered_epochs(run_dir: Path) -> list[int]:
    """Epoch checkpoints Train has committed (its checkpoint manager's snapshot), not just uploaded."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return []
    return sorted(
        r["metrics"]["epoch"]
        for r in snap.get("checkpoint_results", [])
        if str(r.get("checkpoint_dir_name", "")).startswith("epoch_")
    )


@pytest.mark.parametrize("max_failures", [1, 0])
def test_train_worker_killed_after_a_checkpoint(ray_cluster, tmp_path, max_failures):
    store_dir, runs = tmp_path / "store", tmp_path / "runs"
    log = tmp_path / "driver.log"
    cmd = [
        PY,
        "-m",
        "jobs.train",
        "--config",
        "configs/mlp.yaml",
        "--store",
        str(store_dir),
        f"run.storage_path={runs}",
        f"failure.max_failures={max_failures}",
        *SLOW_MLP,
    ]
    t0 = time.monotonic()
    with open(log, "w") as out:
        # RAY_DEDUP_LOGS=0: the epoch lines of the two attempts come from different processes; keep every one
        proc = subprocess.Popen(
            cmd, env=ray_cluster.job_env(RAY_DEDUP_LOGS="0"), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        run_dir = wait_until(lambda: next(runs.glob("mlp-*"), None), 600, "the run's folder")
        workers = wait_until(
            lambda: (w := train_workers(ray_cluster)) and len(w) == 2 and w, 600, "2 RayTrainWorker processes"
        )
        wait_until(
            lambda: KILL_AFTER in registered_epochs(run_dir), 600, f"epoch {KILL_AFTER}'s checkpoint to be committed"
        )
        committed = registered_epochs(run_dir)
        victim = workers[-1]
        victim.send_signal(signal.SIGKILL)  # psutil refuses if the pid was reused by another process
        killed_at = time.monotonic() - t0
        assert max(committed) < EPOCHS, f"the run was already at its last epoch {committed}: the kill proves nothing"
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    wall = time.monotonic() - t0
    store = Store(store_dir)
    runs_df, epochs_df = store.df("runs"), store.df("epochs")
    assert len(runs_df) == 1, f"{len(runs_df)} runs rows:\n{text[-3000:]}"
    run = runs_df.iloc[0]
    history = sorted(epochs_df["epoch"].tolist())
    assert len(history) == len(set(history)), f"duplicate epochs rows: {history}"
    assert set(epochs_df["run_id"]) == {run["run_id"]} == {run_dir.name}

    if max_failures >= 1:
        assert rc == 0, text[-4000:]
        assert run["status"] == "completed" and run["error"] == ""
        assert history == list(range(1, EPOCHS + 1))
        resumed = [int(m) for m in RESUMED.findall(text)]
        assert len(resumed) == 1, f"want exactly one restart, got {resumed}:\n{text[-4000:]}"
        assert resumed[0] >= max(committed), (
            f"resumed from epoch {resumed[0]}, but epoch {max(committed)} was committed"
        )
        before, after = text.split(RESUMED.search(text).group(0), 1)
        done_before = [int(e) for e in EPOCH_LINE.findall(before)]
        done_after = [int(e) for e in EPOCH_LINE.findall(after)]
        assert done_before == list(range(1, len(done_before) + 1)), done_before  # attempt 1: epochs 1.. in order, once
        assert all(e > resumed[0] for e in done_after) and len(done_after) == len(set(done_after)), (
            done_after
        )  # attempt 2: only later ones
        redone_full = len(done_before) - resumed[0]  # epochs finished before the kill, then trained again
        assert redone_full <= 1, (
            f"{redone_full} finished epochs trained twice (before kill {done_before}, resumed from {resumed[0]})"
        )
        elapsed = epochs_df.sort_values("epoch")["elapsed_s"].tolist()
        assert elapsed == sorted(elapsed), f"elapsed_s not monotonic across the restart: {elapsed}"
        print(
            f"\nkilled 1 of 2 workers at {killed_at:.1f} s (committed epochs {committed}); resumed from epoch {resumed[0]}; "
            f"finished epochs redone: {redone_full}; partial epoch rerun: 1; runs rows 1; epochs rows {history}; wall {wall:.1f} s"
        )
    else:
        assert rc == 1, text[-4000:]
        assert run["status"] == "failed" and run["error"], run.to_dict()
        # the worker's death, in Ray's words ("The actor is dead ... worker process has died"), not just any text
        assert re.search(r"actor (is|died)|died|dead|worker.*(exit|lost|killed)", run["error"], re.I), run["error"]
        assert not RESUMED.search(text)
        assert history and history == list(range(1, max(history) + 1)) and max(history) >= KILL_AFTER
        last_good = run_dir / f"epoch_{max(history):04d}"
        from jobs.loop import load_state, read_meta

        assert read_meta(last_good)["epoch"] == max(history) and "model" in load_state(last_good)
        print(
            f"\nkilled 1 of 2 workers at {killed_at:.1f} s, max_failures=0: status failed, error '{run['error'][:120]}'; "
            f"epochs rows {history}; last good checkpoint {last_good.name} kept; wall {wall:.1f} s"
        )


# ----------------------------------------------------------------------------- a writer killed mid-write
WRITER = """
import sys
from jobs.store import Store
store = Store(sys.argv[1])
rows = [{"run_id": "w", "workload": "crash", "epoch": i, "train_loss": float(i)} for i in range(1000)]
store.append("epochs", rows)
store.append("epochs", rows)
print(store.delta("epochs").version(), flush=True)
sys.stdin.readline()
store.append("epochs", rows)
"""


def test_writer_killed_mid_write_leaves_nothing_readers_pick_up(tmp_path):
    """A Delta append writes its data file, then commits it to the log: a writer killed in between leaves a
    file no commit names. Readers go by the log, so they never see it; `check` names it, `check --fix` removes it.
    A folder squats the next commit's file name, so the writer cannot commit and the kill always lands in between."""
    store_dir = tmp_path / "store"
    folder = store_dir / "epochs" / "workload=crash"
    proc = subprocess.Popen(
        [PY, "-c", WRITER, str(store_dir)],
        env=base_env(),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        version = int(proc.stdout.readline())
        squat = store_dir / "epochs" / "_delta_log" / f"{version + 1:020d}.json"
        squat.mkdir()
        committed = len(list(folder.glob("*.parquet")))
        proc.stdin.write("append\n")
        proc.stdin.flush()
        wait_until(lambda: len(list(folder.glob("*.parquet"))) > committed, 120, "the third append's data file")
        assert proc.poll() is None, "the writer ended before its kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    squat.rmdir()
    orphans = [f["path"] for f in Store(store_dir).check(older_than_s=0) if f["kind"] == "orphan_file"]
    assert orphans, "the killed writer left no data file outside the log"
    store = Store(store_dir)
    commits = sum(1 for c in store.versions("epochs", limit=None) if c["operation"] == "WRITE")
    table = store.read("epochs")
    assert commits == 2 and table.num_rows == 2000  # whole appends only: the torn one is not there

    import duckdb  # what a user points at the store: the Delta table's files, not a glob of the folder

    data = store.dataset("epochs")  # noqa: F841 - DuckDB finds it by name
    assert duckdb.sql("SELECT count(*) FROM data").fetchall()[0][0] == table.num_rows

    env = base_env()
    check = run_job(
        ["jobs.store", "--store", str(store_dir), "--format", "json", "check", "--older-than", "0"], env, timeout=400
    )
    assert check.returncode == 0 and "orphan_file" in check.stdout, check.stdout + check.stderr  # harmless: info
    fixed = run_job(["jobs.store", "--store", str(store_dir), "check", "--fix", "--older-than", "0"], env, timeout=400)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert len(list(folder.glob("*.parquet"))) == len(Store(store_dir).files("epochs"))
    again = run_job(["jobs.store", "--store", str(store_dir), "check", "--older-than", "0"], env, timeout=400)
    assert again.returncode == 0 and "no problems found" in again.stdout
    assert Store(store_dir).read("epochs").num_rows == table.num_rows
    print(
        f"\nwriter SIGKILLed mid-write: {len(orphans)} uncommitted data file(s) ignored by Store "
        f"and DuckDB; {commits} whole append(s), {table.num_rows} rows readable; check --fix removed the leftovers"
    )


# ----------------------------------------------------------------------------- no cluster at RAY_ADDRESS
def test_no_cluster_at_address_fails_fast_with_one_line(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    res = run_job(
        [
            "jobs.train",
            "--config",
            "configs/mlp.yaml",
            "--smoke-test",
            "--store",
            str(tmp_path / "store"),
            f"run.storage_path={tmp_path / 'runs'}",
        ],
        base_env(RAY_ADDRESS=address),
        timeout=400,
    )
    wall = time.monotonic() - t0
    lines = stderr_lines(res)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert (
        len(lines) == 1 and f"no Ray cluster at RAY_ADDRESS={address}" in lines[0] and "ray start --head" in lines[0]
    ), res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "runs").exists()
    print(f"\njobs.train with no cluster at {address}: exit 1 in {wall:.1f} s: {lines[0]}")
    assert wall < 30, f"no cluster took {wall:.1f} s to report (ray.init alone retries for minutes)"


def test_job_status_with_no_cluster_fails_fast_with_one_line():
    address = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    res = run_job(["jobs.submit", "--address", address, "status", "mlp-train-nope"], base_env(), timeout=400)
    wall = time.monotonic() - t0
    lines = stderr_lines(res)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(lines) == 1 and "127.0.0.1" in lines[0] and "Traceback" not in res.stderr, res.stderr
    print(f"\njobs.submit status with no cluster: exit 1 in {wall:.1f} s: {lines[0]}")
    assert wall < 30, f"no cluster took {wall:.1f} s to report"


# ----------------------------------------------------------------------------- NaN / inf loss
# AdamW at lr 3e5 on 256 digits in batches of 64 overflows at optimizer step 6 (epoch 2's 2nd batch, every seed
# tried: RELIABILITY.md): epoch 1 is a good checkpoint and epoch 2 diverges.
DIVERGE = [
    "data.source=digits",
    "data.max_train_samples=256",
    "train.batch_size=64",
    "train.lr=3e5",
    "train.epochs=3",
    "scaling.num_workers=1",
    "scaling.cpus_per_worker=1",
]


def _diverging_run(ray_cluster, tmp_path, on_nan: str):
    store_dir, runs = tmp_path / "store", tmp_path / "runs"
    res = run_job(
        [
            "jobs.train",
            "--config",
            "configs/mlp.yaml",
            "--store",
            str(store_dir),
            f"run.storage_path={runs}",
            f"train.on_nan={on_nan}",
            *DIVERGE,
        ],
        ray_cluster.job_env(),
        timeout=900,
    )
    store = Store(store_dir)
    runs_df, epochs_df = store.df("runs"), store.df("epochs").sort_values("epoch")
    assert res.returncode == 1 and len(runs_df) == 1, res.stdout[-4000:] + res.stderr[-2000:]
    run = runs_df.iloc[0]
    assert run["status"] == "failed" and run["checkpoint_uri"] == "" and run["export_uri"] == ""
    assert all(math.isfinite(v) for v in epochs_df["train_loss"])
    last_good = runs / run["run_id"] / f"epoch_{int(epochs_df['epoch'].max()):04d}"
    from jobs.loop import load_state

    state = load_state(last_good)["model"]
    assert all(bool(t.isfinite().all()) for t in state.values()), "the kept checkpoint holds non-finite weights"
    return res, run, epochs_df, last_good


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(ray_cluster, tmp_path):
    res, run, epochs_df, last_good = _diverging_run(ray_cluster, tmp_path, "fail")
    assert re.search(
        r"loss is (nan|inf|-inf) at batch \d+ — lower train.lr, or set train.on_nan=skip_batch", run["error"]
    ), run["error"]
    assert epochs_df["epoch"].tolist() == [1]  # epoch 2 diverged: not recorded as if it had finished
    assert "error: " in res.stdout and "loss is" in res.stdout  # the driver's summary says why
    print(
        f"\non_nan=fail: status failed, error '{run['error']}', epochs rows [1], last good checkpoint {last_good.name} kept"
    )


def test_nan_loss_skip_batch_skips_then_stops_when_nothing_is_left(ray_cluster, tmp_path):
    res, run, epochs_df, last_good = _diverging_run(ray_cluster, tmp_path, "skip_batch")
    assert epochs_df["epoch"].tolist() == [1, 2]
    skipped = epochs_df["skipped_batches"].tolist()
    assert skipped[0] == 0 and skipped[1] >= 1, (
        skipped
    )  # epoch 2: the batches after the overflow were skipped, and counted
    assert re.search(r"all \d+ batches of the epoch had a non-finite loss", run["error"]), run["error"]
    print(
        f"\non_nan=skip_batch: skipped batches per epoch {skipped}; then '{run['error']}'; last good checkpoint {last_good.name} kept"
    )


def test_skip_batch_survives_one_bad_batch():
    """In-process (no Ray): a single inf batch is skipped and counted; the others train; the weights stay finite."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from jobs.config import load_config
    from jobs.loop import make_optimizer, run_epoch
    from workloads import mlp

    cfg = load_config(None, ["workload=mlp", "train.on_nan=skip_batch", "train.batch_size=8"])
    x, y = torch.randn(64, 16), torch.randint(0, 3, (64,))
    x[20] = float("inf")  # batch 2 of 8
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = make_optimizer(cfg, model)
    stats = run_epoch(model, DataLoader(TensorDataset(x, y), batch_size=8), opt, mlp, cfg, torch.device("cpu"))
    assert stats["skipped_batches"] == 1 and stats["samples"] == 56 and math.isfinite(stats["train_loss"])
    assert all(bool(p.isfinite().all()) for p in model.parameters())
    cfg_fail = load_config(None, ["workload=mlp", "train.batch_size=8"])
    from jobs.loop import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="at batch 2 — lower train.lr"):
        run_epoch(model, DataLoader(TensorDataset(x, y), batch_size=8), opt, mlp, cfg_fail, torch.device("cpu"))


# ----------------------------------------------------------------------------- a full or read-only disk
@pytest.fixture
def small_fs(tmp_path):
    """A real 512 KiB tmpfs (root only): ENOSPC and EROFS from the kernel, not from a mock."""
    mnt = tmp_path / "small_fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):  # CI runs as root: a skip there would hide the full-disk and read-only tests
            pytest.fail(f"cannot mount a tmpfs under CI: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave: int) -> None:
    """Fill the file system until ``leave`` bytes or fewer are free."""
    with open(mnt / "ballast", "wb") as f:
        while os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize > leave:
            try:
                f.write(b"\0" * 4096)
                f.flush()
            except OSError:
                break


def test_disk_full_mid_append_leaves_no_partial_file(small_fs):
    from jobs.store import StoreError

    store = Store(small_fs / "store")
    row = {"run_id": "r", "workload": "mlp", "epoch": 1, "train_loss": 0.5}
    store.append("epochs", [row])  # room for a small file
    fill(small_fs, leave=16 * 1024)
    big = [
        {"run_id": f"r{i}", "workload": "mlp", "epoch": i, "train_loss": float(i), "note": "x" * 64}
        for i in range(20000)
    ]
    with pytest.raises(StoreError) as e:
        store.append("epochs", big)
    assert "No space left on device" in str(e.value) and "\n" not in str(e.value)
    store = Store(small_fs / "store")
    assert store.read("epochs").num_rows == 1  # the earlier row, whole; nothing of the failed one
    assert store.delta("epochs").version() == 0  # no commit of the failed append
    left = [f for f in store.check(older_than_s=0) if f["kind"] != "orphan_file"]
    assert not left, left  # at most a partial data file no commit names (`check --fix` removes it)


def test_read_only_store_is_rejected_before_ray_starts(small_fs, tmp_path):
    (small_fs / "store").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    env = base_env(RAY_ADDRESS=f"127.0.0.1:{free_port()}")  # a tripwire: reaching Ray would be exit 1, not 2
    res = run_job(
        [
            "jobs.train",
            "--config",
            "configs/mlp.yaml",
            "--smoke-test",
            "--store",
            str(small_fs / "store"),
            f"run.storage_path={tmp_path / 'runs'}",
        ],
        env,
        timeout=400,
    )
    lines = stderr_lines(res)
    assert "is not writable" in one_error_line(res), lines
    assert not list((small_fs / "store").iterdir()) and not (tmp_path / "runs").exists()


def test_disk_full_after_training_is_a_clear_error_and_no_partial_rows(ray_cluster, small_fs, tmp_path):
    store_dir = small_fs / "store"
    store_dir.mkdir()
    fill(small_fs, leave=2 * 1024)  # the store's folder exists and is writable; its first file will not fit
    res = run_job(
        [
            "jobs.train",
            "--config",
            "configs/mlp.yaml",
            "--smoke-test",
            "--store",
            str(store_dir),
            "data.source=digits",
            "train.epochs=1",
            f"run.storage_path={tmp_path / 'runs'}",
        ],
        ray_cluster.job_env(),
        timeout=900,
    )
    lines = stderr_lines(res)
    # delta-rs may print its own Rust panic note on a full disk ("Already shut down"): not ours to silence
    assert "No space left on device" in one_error_line(res, only_line=False), res.stderr[-2000:]
    assert not [p for p in store_dir.rglob("*") if p.is_file()], "partial rows or temp files in the store"
    print(f"\ndisk full at the store write: exit 2, '{lines[-1][:160]}'; store files 0")


# ----------------------------------------------------------------------------- security defaults of a running cluster
def listeners(procs) -> list[tuple[int, str, int]]:
    out = []
    for p in procs:
        try:
            out += [
                (p.pid, c.laddr.ip, c.laddr.port)
                for c in p.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
        except psutil.Error:  # a worker that exited meanwhile
            pass
    return out


def loopback(ip: str) -> bool:
    return ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


EMBEDDED = """
import sys
from jobs.train import init_ray
import ray
init_ray(2)
ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])
print("ready", flush=True)
sys.stdin.readline()  # the test reads this process tree's sockets meanwhile
ray.shutdown()
"""


def test_dashboard_listens_on_loopback_and_requires_the_token(ray_cluster):
    """The cluster the README tells users to start (same flags and env as the fixture): every server of every
    Ray process (GCS, raylet, dashboard and its metrics port, agents, workers) on loopback; job server needs the token."""
    head = psutil.Process(ray_cluster.proc.pid)
    procs = head.children(recursive=True)
    dashboard = [p for p in procs if "dashboard/dashboard.py" in " ".join(p.cmdline())]
    assert dashboard, "no dashboard process"
    listening = listeners(procs)
    assert listening and all(loopback(ip) for _, ip, _ in listening), [x for x in listening if not loopback(x[1])]
    assert any(pid == dashboard[0].pid and port == ray_cluster.dashboard_port for pid, _, port in listening)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{ray_cluster.dashboard}/api/jobs/", timeout=10)
    assert e.value.code in (401, 403)
    token = ray_cluster.token_file.read_text().strip()
    req = urllib.request.Request(f"{ray_cluster.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    assert urllib.request.urlopen(req, timeout=10).status == 200


def test_embedded_cluster_listens_on_loopback_only():
    """The cluster `jobs.train` starts when RAY_ADDRESS is unset (the laptop path and `make demo`)."""
    env = {k: v for k, v in base_env().items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    proc = subprocess.Popen(
        [PY, "-c", EMBEDDED], env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert any(line.strip() == "ready" for line in proc.stdout), "the embedded cluster did not start"
        driver = psutil.Process(proc.pid)
        listening = listeners([driver, *driver.children(recursive=True)])
        proc.communicate("\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert len(listening) >= 5, listening  # GCS, raylet, dashboard, agents, workers: something real was inspected
    assert all(loopback(ip) for _, ip, _ in listening), [x for x in listening if not loopback(x[1])]
