"""scaling.strategy=fsdp through Ray Train (2 CPU workers, gloo), against DDP on the same tiny LoRA Llama and data:
the same first-step loss, half the parameter memory per worker, a killed worker resumed from the sharded checkpoint
to the uninterrupted run's final loss, that checkpoint read back by one process, and a merged export that
jobs.evaluate scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_job
from safetensors.torch import load_file

from jobs import config as config_lib
from jobs import loop, sharding
from jobs.store import Store
from tests.plugins import faults
from workloads import sft

TINY_LORA = ["--smoke-test", "train.epochs=2", "model.lora.enabled=true", "model.lora.dropout=0"]
TWO_WORKERS = ["scaling.num_workers=2", "scaling.cpus_per_worker=1"]
FINAL_LOSS_TOLERANCE = 1e-3  # DDP all-reduces and FSDP reduce-scatters the same gradients: float rounding apart


def train(ray_cluster, store_dir: Path, tmp_path: Path, name: str, *overrides: str) -> tuple[dict, list[dict], str]:
    """One 2-worker sft run: its runs row, the hook's lines (tests/plugins/losses.py), its output."""
    lines = tmp_path / f"{name}.jsonl"
    hooks = ["tests.plugins.losses:StepLosses?path=" + str(lines), *overrides[1:2]]  # overrides[1]: a fault hook
    args = ["jobs.train", "--config", "configs/sft.yaml", "--store", str(store_dir), *TINY_LORA, *TWO_WORKERS]
    args += [f"run.storage_path={tmp_path / 'runs'}", overrides[0], faults.hooks(*hooks), *overrides[2:]]
    res = run_job(args, ray_cluster.job_env(), timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    row = Store(store_dir).df("runs").set_index("run_id").loc[res.stdout.split("run ", 1)[1].split()[0]]
    return row, [json.loads(ln) for ln in lines.read_text().splitlines()], res.stdout + res.stderr


def first_step_loss(lines: list[dict]) -> float:
    return next(r["loss"] for r in lines if r.get("rank") == 0 and r.get("epoch") == 0 and r.get("step") == 1)


def test_fsdp_matches_ddp_halves_memory_resumes_from_shards_and_exports(ray_cluster, store_dir, tmp_path):
    ddp, ddp_lines, _ = train(ray_cluster, store_dir, tmp_path, "ddp", "scaling.strategy=ddp")
    fault = "tests.plugins.faults:FaultAfterEpoch?epoch=1"
    fsdp, fsdp_lines, out = train(
        ray_cluster, store_dir, tmp_path, "fsdp", "scaling.strategy=fsdp", fault, "failure.max_failures=1"
    )
    assert first_step_loss(fsdp_lines) == pytest.approx(first_step_loss(ddp_lines), abs=1e-4)
    ddp_bytes = max(r["param_bytes"] for r in ddp_lines if "param_bytes" in r)
    fsdp_bytes = [r["param_bytes"] for r in fsdp_lines if "param_bytes" in r]
    assert max(fsdp_bytes) < 0.55 * ddp_bytes  # each of 2 workers holds about half (shards are padded to equal size)

    assert "resumed from the epoch 1 checkpoint" in out and any(r.get("resumed") for r in fsdp_lines), out[-3000:]
    assert fsdp["status"] == "completed" and ddp["status"] == "completed"
    assert abs(fsdp["val_loss"] - ddp["val_loss"]) < FINAL_LOSS_TOLERANCE

    # the sharded checkpoint: one file per rank, read back whole by one process without a process group
    checkpoint = tmp_path / "runs" / fsdp.name / "epoch_0002"
    assert sorted(p.name for p in (checkpoint / sharding.SHARDS).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    cfg = config_lib.from_dict(json.loads(fsdp["config_json"]))
    splits = sft.build_data(cfg)
    model = sft.build_model(cfg, splits)
    sharding.load(checkpoint, model)
    val_loss = sft.evaluate(model, loop.eval_loader(splits, splits.val, 64), splits)["loss"]
    assert val_loss == pytest.approx(fsdp["val_loss"], abs=1e-4)

    export = Path(fsdp["export_uri"])  # gathered once, adapters merged: a plain transformers model
    assert not [k for k in load_file(str(export / "model.safetensors")) if "lora" in k]
    res = run_job(["jobs.evaluate", "--run", fsdp.name, "--store", str(store_dir)], ray_cluster.job_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    scored = Store(store_dir).df("evaluations").iloc[0]
    assert scored["test_loss"] == pytest.approx(fsdp["test_loss"], abs=1e-4)
