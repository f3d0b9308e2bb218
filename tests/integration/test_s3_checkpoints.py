"""Ray Train checkpoints and the store on S3, end to end against a real S3 API server on 127.0.0.1.

One 2-worker ``jobs.train`` run, submitted with ``ray job submit`` as on a cluster, with
``run.storage_path=s3://...`` and ``--store s3://...``: rank 1 is killed after epoch 1
(the test hook ``tests.plugins.faults:FaultAfterEpoch``) and ``failure.max_failures=1``
must bring the run back from epoch 1's S3 checkpoint; then ``jobs.evaluate`` loads the exported
model back from S3. Credentials come from the standard AWS_* variables, passed to the job (its
driver and its Train workers) through the runtime environment, as a cluster's instance profile
would provide them.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
from conftest import PY, ROOT, run_job

from jobs.store import Store
from tests.plugins import faults


@pytest.fixture(scope="module")
def s3_run(ray_cluster, s3_server):
    """Submit the run once; the tests below read what it left in S3."""
    bucket = s3_server.make_bucket(f"perennial-{uuid.uuid4().hex[:8]}")
    env_vars = {**s3_server.env, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    # no --working-dir upload (test_train_job covers it): the test cluster's PYTHONPATH already holds the repo
    cmd = [
        str(Path(PY).parent / "ray"),
        "job",
        "submit",
        "--address",
        ray_cluster.dashboard,
        "--runtime-env-json",
        json.dumps({"env_vars": env_vars}),
        "--",
        "python",
        "-m",
        "jobs.train",
        "--config",
        str(ROOT / "configs" / "mlp.yaml"),
        "--smoke-test",
        "--store",
        f"{bucket}/store",
        f"run.storage_path={bucket}/runs",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=1",
        "failure.max_failures=1",
        faults.after_epoch(1),
    ]
    res = subprocess.run(cmd, env=ray_cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert res.returncode == 0 and "succeeded" in res.stdout, res.stdout[-4000:] + res.stderr[-3000:]
    runs = Store(f"{bucket}/store").df("runs")
    return {"bucket": bucket, "log": res.stdout, "runs": runs, "run": runs.iloc[0].to_dict()}


def s3_keys(s3_server, bucket_uri: str, prefix: str) -> set[str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket_uri.removeprefix("s3://"), Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def test_train_checkpoints_to_s3(s3_run, s3_server):
    run = s3_run["run"]
    assert len(s3_run["runs"]) == 1 and run["status"] == "completed" and run["num_workers"] == 2
    assert run["checkpoint_uri"] == f"{s3_run['bucket']}/runs/{run['run_id']}/final"
    keys = s3_keys(s3_server, s3_run["bucket"], f"runs/{run['run_id']}/")
    prefix = f"runs/{run['run_id']}"
    assert {
        f"{prefix}/epoch_0002/state.pt",
        f"{prefix}/epoch_0002/meta.json",
        f"{prefix}/final/meta.json",
        f"{prefix}/final/export/model.safetensors",
    } <= keys, sorted(keys)
    assert run["test_accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_worker_failure_resumes_from_the_s3_checkpoint(s3_run):
    log = s3_run["log"]
    assert "fault injection: rank 1 exits after epoch 1" in log  # the failure did happen
    assert "resumed from the epoch 1 checkpoint" in log  # the new worker group started from S3
    progress = re.findall(r"epoch (\d)/2 +train_loss", log)  # the loop's per-epoch lines (rank 0)
    assert progress == ["1", "2"]  # epoch 1 was not trained again after the restart
    epochs = Store(f"{s3_run['bucket']}/store").df("epochs")
    assert sorted(epochs["epoch"]) == [1, 2]  # the history crossed the restart intact


def test_evaluate_loads_the_model_from_s3(s3_run, s3_server, ray_cluster):
    run = s3_run["run"]
    store = f"{s3_run['bucket']}/store"
    res = run_job(
        ["jobs.evaluate", "--run", run["run_id"], "--store", store], ray_cluster.job_env(**s3_server.env), timeout=300
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    scored = float(re.search(r"test_accuracy\s+([0-9.]+)", res.stdout).group(1))
    assert abs(scored - run["test_accuracy"]) < 1e-4  # the same weights as the run's own test score
    assert len(Store(store).df("evaluations")) == 1
