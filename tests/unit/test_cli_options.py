"""Shared options go before or after the verb, for every jobs.* CLI (the README writes them after)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)))
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("where", ["before", "after"])
def test_submit_takes_address_and_format_before_or_after_the_subcommand(where):
    address = f"http://127.0.0.1:{free_port()}"
    shared = ["--address", address, "--format", "json"]
    argv = [*shared, "status", "mlp-train-x"] if where == "before" else ["status", "mlp-train-x", *shared]
    res = run("jobs.submit", *argv)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 1 and len(lines) == 1 and f"no Ray cluster at {address}" in lines[0], res.stderr


def test_submit_store_after_the_subcommand_reaches_the_preflight(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    res = run("jobs.submit", "submit", "configs/mlp.yaml", "--store", str(tmp_path / "a_file"))
    assert res.returncode == 2 and "is a file, not a directory" in res.stderr, res.stderr


def test_train_takes_store_after_the_overrides(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    res = run("jobs.train", "--config", "configs/mlp.yaml", "train.lr=0.01", "--store", str(tmp_path / "a_file"))
    assert res.returncode == 2 and "is a file, not a directory" in res.stderr, res.stderr


def test_job_commands_that_train_nothing_import_no_torch():
    """`jobs.submit status/logs/list/stop`, `jobs.new` and `jobs.store` answer without importing torch or Ray
    Train (the shipped workloads are imported when a config names one): about 1 s less per call."""
    code = "import sys, jobs.submit, jobs.new, jobs.store.cli; print(sorted(m for m in ('torch', 'ray.train') if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_an_unusable_store_warns_and_the_other_stores_still_get_their_jobs_rows(tmp_path, capsys):
    from types import SimpleNamespace

    from jobs import submit
    from jobs.store import Store

    bad, good = tmp_path / "a-file", tmp_path / "store"
    bad.write_text("not a store")

    def ended(sid: str, store) -> SimpleNamespace:
        meta = {"perennial": "1", "store": str(store), "workload": "mlp", "verb": "train"}
        status = SimpleNamespace(value="SUCCEEDED")
        return SimpleNamespace(
            submission_id=sid,
            status=status,
            entrypoint="python -m jobs.train",
            metadata=meta,
            message="",
            start_time=None,
            end_time=None,
        )

    submit.observe([ended("job-a", bad), ended("job-b", good)])
    assert f"could not record the end of 1 job(s) in {bad}" in capsys.readouterr().err
    assert Store(str(good)).read("jobs")["submission_id"].to_pylist() == ["job-b"]
