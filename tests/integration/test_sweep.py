"""jobs.sweep end to end on the shared real Ray cluster (`ray_cluster`): ASHA, the store, kill + resume, ray job submit.

Every sweep runs as a real `python -m jobs.sweep` subprocess connected to the session's `ray start --head`
cluster (2 CPUs), exactly as under `ray job submit`; the resume test SIGKILLs that driver process.
The sweeps are smoke-sized mlp runs (2,000 samples, 2 epochs) whose learning-rate grid holds one good
value and copies of a hopeless one (1e-6): ASHA must stop a copy at its first rung, deterministically,
since copies of one config reach the same accuracy.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from conftest import PY, ROOT, run_job

from jobs.store import Store
from jobs.train import checkpoint_meta, last_checkpoint

GRID = (
    "workload: mlp\n"
    "sweep:\n"
    "  search: grid\n"
    "  scheduler: asha\n"
    "  num_samples: 1\n"
    "  search_space:\n"
    "    train.lr: {grid: [0.01, 0.000001, 0.000001, 0.000001]}\n"
)


def sweep_args(
    tmp_path: Path, store: Path, *extra: str, grid: str = "[0.01, 0.000001, 0.000001, 0.000001]"
) -> list[str]:
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(GRID.replace("[0.01, 0.000001, 0.000001, 0.000001]", grid))
    return [
        "jobs.sweep",
        "--config",
        str(cfg),
        "--smoke-test",
        "--store",
        str(store),
        f"run.storage_path={tmp_path / 'runs'}",
        "scaling.cpus_per_worker=1",
        *extra,
    ]


def check_sweep(store_dir: Path, runs_root: Path, n_trials: int, asha: bool | None = True) -> tuple:
    """What every finished sweep must satisfy; returns (runs, the sweeps row). ``asha``: whether a trial must have
    been stopped early (None: either; a resumed sweep's ASHA rungs hold only the results reported after it resumed,
    so whether a copy of the hopeless config is stopped depends on which trials finished before the kill)."""
    store = Store(store_dir)
    runs, sweeps, epochs = store.df("runs"), store.df("sweeps"), store.df("epochs")
    assert len(sweeps) == 1, sweeps
    sweep = sweeps.iloc[0]
    assert len(runs) == n_trials and runs["run_id"].is_unique and runs["trial_id"].is_unique
    assert set(runs["sweep_id"]) == {sweep["sweep_id"]}
    assert not epochs.duplicated(["run_id", "epoch"]).any() and len(epochs) == runs["epochs"].sum()
    assert set(runs["status"]) <= {"completed", "stopped_early"}
    assert sweep["num_trials"] == n_trials and sweep["epochs_budget"] == 2 * n_trials
    assert sweep["epochs_used"] == runs["epochs"].sum()
    if asha is not None:
        assert (runs["status"] == "stopped_early").any() == asha and (
            sweep["epochs_used"] < sweep["epochs_budget"]
        ) == asha
    best = runs[runs["run_id"] == sweep["best_run_id"]].iloc[0]
    assert best["status"] == "completed" and best["train.lr"] == 0.01 and best["best_metric"] == sweep["best_metric"]
    assert (Path(best["export_uri"]) / "model.safetensors").is_file()
    for run in runs.itertuples():  # every trial's folder holds its checkpoints, whichever way it ran
        folders = sorted((runs_root / sweep["sweep_id"]).glob(f"{run.run_id}*"))  # Tune suffixes a restarted trial's
        meta = max(
            (checkpoint_meta(c) for f in folders if (c := last_checkpoint(str(f)))),
            key=lambda m: (m["epoch"], bool(m.get("finished"))),
        )
        assert meta["epoch"] == run.epochs and bool(meta.get("finished")) == (run.status == "completed")
    return runs, sweep


def test_asha_sweep_stops_a_trial_early_and_records_every_trial(ray_cluster, store_dir, tmp_path):
    res = run_job(sweep_args(tmp_path, store_dir), ray_cluster.job_env(), timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs, sweep = check_sweep(store_dir, tmp_path / "runs", 4)
    stopped = runs[runs["status"] == "stopped_early"]
    assert (
        (stopped["epochs"] == 1).all() and (stopped["train.lr"] == 1e-6).all() and (stopped["export_uri"] == "").all()
    )
    assert (runs["cpu_s"] > 0).all() and (runs["wall_s"] >= runs["train_time_s"]).all()
    assert (
        f"best: trial {sweep['best_trial_id']}" in res.stdout and sweep["best_run_id"] in res.stdout
    )  # summary + model
    # by default one line per trial event: no trial's per-epoch lines (--verbose prints them), each trial once
    assert not re.search(r"^(\(.* pid=\d+.*\) )?epoch \d+/\d+ ", res.stdout, re.MULTILINE), res.stdout[-3000:]
    assert "pid=" not in res.stdout and all(
        len(re.findall(rf"^\[\d\] trial {t} ", res.stdout, re.MULTILINE)) == 1 for t in runs["trial_id"]
    )
    # one set of TensorBoard runs: the loop's, in each trial's tensorboard/ folder; none from Tune's own logger
    events = list((tmp_path / "runs").rglob("events.out.tfevents*"))
    assert {p.parent.name for p in events} == {"tensorboard"} and len({p.parent for p in events}) == 4, events


def kill_sweep_after_first_row(cluster, tmp_path: Path, store_dir: Path) -> tuple:
    """Start the grid sweep, SIGKILL its driver once the first `runs` row lands; returns (runs rows, driver log).
    Also used by bench/sweep_resume.py."""
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [PY, "-m", *sweep_args(tmp_path, store_dir)],
            env=cluster.job_env(),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    store = Store(store_dir)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None and not len(store.df("runs")):
        time.sleep(0.5)
    os.kill(driver.pid, signal.SIGKILL)  # the driver only: its trials die with it, as in a lost laptop session
    driver.wait()
    return store.df("runs"), log


def test_killed_sweep_resumes_without_rerunning_or_duplicating(ray_cluster, store_dir, tmp_path):
    before, log = kill_sweep_after_first_row(ray_cluster, tmp_path, store_dir)
    assert 1 <= len(before) < 4, f"kill came too late or too early ({len(before)} rows): {log.read_text()[-2000:]}"
    sweep_id = before["sweep_id"].iloc[0]
    finals = {
        r.run_id: os.stat(Path(r.checkpoint_uri) / "meta.json").st_mtime_ns
        for r in before.itertuples()
        if r.checkpoint_uri
    }

    res = run_job(
        ["jobs.sweep", "--resume", sweep_id, f"run.storage_path={tmp_path / 'runs'}"],
        ray_cluster.job_env(),
        timeout=400,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs, sweep = check_sweep(store_dir, tmp_path / "runs", 4, asha=None)
    assert sweep["sweep_id"] == sweep_id
    kept = runs.set_index("run_id").loc[before["run_id"]]
    assert list(kept["finished_at"]) == list(before["finished_at"])  # rows written before the kill stay the only ones
    for run_id, mtime in finals.items():  # and those trials were not trained again
        assert os.stat(Path(kept.loc[run_id, "checkpoint_uri"]) / "meta.json").st_mtime_ns == mtime


def test_ray_job_submit_runs_a_sweep_of_two_worker_train_runs(ray_cluster, store_dir, tmp_path):
    """Under `ray job submit`, trials of 2 DDP workers: each a TorchTrainer run inside a Tune function trainable."""
    args = sweep_args(tmp_path, store_dir, "scaling.num_workers=2", "sweep.scheduler=fifo", grid="[0.01, 0.000001]")
    cmd = [
        str(Path(PY).parent / "ray"),
        "job",
        "submit",
        "--address",
        ray_cluster.dashboard,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        *args,
    ]
    res = subprocess.run(cmd, env=ray_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "succeeded" in res.stdout and "1 at a time" in res.stdout  # 2 workers x 1 CPU on a 2-CPU cluster
    runs, _ = check_sweep(store_dir, tmp_path / "runs", 2, asha=False)
    assert (runs["num_workers"] == 2).all() and runs["job_id"].str.startswith("raysubmit_").all()


def test_demo_config_sweeps_two_trials_with_random_search_and_with_optuna(ray_cluster, store_dir, tmp_path):
    """The `make demo` path: configs/mlp.yaml's own sweep section (search: random, its SEARCH_SPACE, trial_overrides,
    concurrency derived from the cluster), then the same with search: optuna — 2 trials each."""
    for search in ("random", "optuna"):
        store = store_dir / search
        res = run_job(
            [
                "jobs.sweep",
                "--config",
                "configs/mlp.yaml",
                "--smoke-test",
                "--store",
                str(store),
                f"run.storage_path={tmp_path / 'runs'}",
                "scaling.cpus_per_worker=1",
                "sweep.num_samples=2",
                f"sweep.search={search}",
                "sweep.trial_overrides={train.batch_size: 64}",  # a key --smoke-test does not set: applies
            ],
            ray_cluster.job_env(),
            timeout=600,
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        runs, sweeps = Store(store).df("runs"), Store(store).df("sweeps")
        assert len(sweeps) == 1 and sweeps.iloc[0]["search"] == search and sweeps.iloc[0]["num_trials"] == 2
        assert len(runs) == 2 and runs["trial_id"].is_unique and set(runs["status"]) <= {"completed", "stopped_early"}
        assert runs["train.lr"].between(1e-4, 3e-3).all() and runs["train.lr"].nunique() == 2  # sampled, not copied
        assert set(runs["model.hidden1"]) <= {128, 256, 512} and runs["model.dropout"].between(0.0, 0.4).all()
        assert (runs["train.batch_size"] == 64).all() and (runs["data.max_train_samples"] == 2000).all()
        assert sweeps.iloc[0]["best_run_id"] in set(runs["run_id"])
