"""GPU smoke test: a jobs.train run with `scaling.use_gpu=true` on an embedded cluster. Skipped without CUDA;
run it on a GPU machine with `pytest -m gpu tests/integration/test_gpu.py`."""

from __future__ import annotations

import pytest
import torch
from conftest import base_env, run_job

from jobs.store import Store


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_on_one_gpu_records_gpu_seconds_and_uses_nccl(store_dir, tmp_path):
    res = run_job(
        ["jobs.train", "--config", "configs/mlp.yaml", "--smoke-test", "--store", str(store_dir)]
        + ["scaling.use_gpu=true", f"run.storage_path={tmp_path / 'runs'}"],
        base_env(),
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "on cuda, backend nccl" in res.stdout + res.stderr
    run = Store(store_dir).df("runs").iloc[0]
    assert run["status"] == "completed" and run["use_gpu"] and run["gpu_s"] > 0 and run["test_accuracy"] > 0.3
