"""Your own workload, from a folder outside the repository: train, sweep, submit as a Ray job, evaluate.

Every step is the real verb in a subprocess on the session's `ray start --head` cluster, and every step
leaves its rows in the store under the module's workload name (the file's stem). Also: the scaffold
`python -m jobs.new` writes a workload that passes its own `--smoke-test` unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import ROOT, run_job

from jobs.store import Store

MODULE = '''"""A user's own loop: logistic regression on seeded random points (nothing to download)."""

from dataclasses import field

import torch
from torch.utils.data import TensorDataset

from workloads import Section, common
from workloads.data import Splits


class Data(Section):  # each section was a @dataclass: one line changed (docs/workloads.md)
    n: int = 256
    seed: int = 0


class Model(Section):
    hidden: int = 16


class Train(common.Train):
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.01


class Config(Section):
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)


METRIC, MODE = "val_accuracy", "max"
SEARCH_SPACE = {"train.lr": {"loguniform": [1e-3, 1e-1]}}


def build_data(cfg):
    g = torch.Generator().manual_seed(cfg.data.seed)
    x = torch.randn(cfg.data.n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    part = cfg.data.n // 4
    def ds(a, b):
        return TensorDataset(x[a:b], y[a:b])
    return Splits(train=ds(2 * part, None), val=ds(0, part), test=ds(part, 2 * part), labels=["below", "above"],
                  fingerprint="points-%d-%d" % (cfg.data.n, cfg.data.seed))


def build_model(cfg, splits):
    return torch.nn.Sequential(torch.nn.Linear(4, cfg.model.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.model.hidden, 2))


def train_step(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


@torch.no_grad()
def evaluate(model, loader, splits):
    right = total = 0
    for x, y in loader:
        right += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return {"accuracy": right / max(total, 1)}
'''
CONFIG = "# python -m jobs.train --config points.yaml\nworkload: points_clf.py\nscaling:\n  cpus_per_worker: 1\n"


def test_own_workload_outside_the_repo_trains_sweeps_submits_and_evaluates(ray_cluster, tmp_path):
    folder = tmp_path / "my_project"  # outside the repository
    folder.mkdir()
    (folder / "points_clf.py").write_text(MODULE)
    config = folder / "points.yaml"
    config.write_text(CONFIG)
    store_dir, runs = tmp_path / "store", f"run.storage_path={tmp_path / 'runs'}"
    env = ray_cluster.job_env()
    assert not str(folder).startswith(str(ROOT))

    # [1] train
    res = run_job(["jobs.train", "--config", str(config), "--store", str(store_dir), runs], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "epoch 2/2" in res.stdout
    store = Store(store_dir)
    trained = store.df("runs").iloc[0]
    assert trained["workload"] == "points_clf" and trained["status"] == "completed"
    assert trained["test_accuracy"] > 0.6  # it learned: the classes are a linear split of the points

    # [2] sweep, 2 trials
    res = run_job(
        ["jobs.sweep", "--config", str(config), "--store", str(store_dir), runs, "sweep.num_samples=2"],
        env,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sweeps = Store(store_dir).df("sweeps")
    assert len(sweeps) == 1 and sweeps.iloc[0]["workload"] == "points_clf" and sweeps.iloc[0]["num_trials"] == 2
    runs_now = Store(store_dir).df("runs")
    trials = runs_now[runs_now["sweep_id"] == sweeps.iloc[0]["sweep_id"]]
    assert len(trials) == 2 and set(trials["workload"]) == {"points_clf"}

    # [3] submit as a Ray job: the folder travels as the working_dir, jobs/ and workloads/ as py_modules
    submit_env = ray_cluster.env | {"RAY_ADDRESS": ray_cluster.dashboard}
    res = run_job(["jobs.submit", "submit", "--store", str(store_dir), str(config), "--follow", runs], submit_env, 600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sid = re.search(r"^submitted (\S+):", res.stdout, re.M).group(1)
    assert sid.startswith("points_clf-train-") and "--config points.yaml" in res.stdout
    store = Store(store_dir)
    jobs = store.df("jobs")
    assert set(jobs["status"]) == {"submitted", "succeeded"} and set(jobs["workload"]) == {"points_clf"}
    job_run = store.df("runs").query("job_id == @sid").iloc[0]
    assert job_run["workload"] == "points_clf" and job_run["status"] == "completed"

    # [4] evaluate the first run's export, from the store, in a fresh process
    res = run_job(["jobs.evaluate", "--run", trained["run_id"], "--store", str(store_dir)], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    evaluation = Store(store_dir).df("evaluations").iloc[0]
    assert evaluation["workload"] == "points_clf" and evaluation["test_accuracy"] == trained["test_accuracy"]

    # every table's rows sit under the module's name in the store
    for table in ("runs", "epochs", "sweeps", "jobs", "evaluations"):
        parts = {p.name for p in (store_dir / table).iterdir() if not p.name.startswith("_")}  # not _delta_log
        assert parts == {"workload=points_clf"}, (table, parts)


def test_the_scaffold_passes_its_own_smoke_test_unchanged(ray_cluster, tmp_path):
    res = run_job(["jobs.new", "my_digits", "--from", "mlp", "--dir", str(tmp_path)], ray_cluster.job_env())
    assert res.returncode == 0, res.stderr
    config = tmp_path / "configs" / "my_digits.yaml"
    assert (tmp_path / "my_digits.py").is_file() and config.is_file()
    store_dir = tmp_path / "store"
    res = run_job(
        ["jobs.train", "--config", str(config), "--smoke-test", "--store", str(store_dir)]
        + [f"run.storage_path={tmp_path / 'runs'}", "scaling.cpus_per_worker=1"],
        ray_cluster.job_env(),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = Store(store_dir).df("runs").iloc[0]
    assert run["workload"] == "my_digits" and run["status"] == "completed" and run["epochs"] == 2
    assert json.loads((Path(run["export_uri"]) / "model.json").read_text())["workload"] == "my_digits"
