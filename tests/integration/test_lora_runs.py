"""LoRA (peft) through the verbs, not only build_model: a Train run whose worker dies after epoch 1 resumes from a
checkpoint that holds the adapters, and a sweep takes the LoRA rank as a dimension. Tiny NER model, CoNLL sample."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import base_env, run_job
from safetensors.torch import load_file

from jobs.store import Store
from tests.plugins import faults

TINY_LORA = ["--smoke-test", "model.name_or_path=tiny", "model.lora.enabled=true", "scaling.cpus_per_worker=1"]


def test_lora_run_resumes_with_its_adapters_and_exports_a_plain_model(store_dir, tmp_path):
    runs = tmp_path / "runs"
    res = run_job(
        ["jobs.train", "--config", "configs/ner.yaml", "--store", str(store_dir), *TINY_LORA]
        + [f"run.storage_path={runs}", "failure.max_failures=1", faults.after_epoch(1)],
        base_env(RAY_DEDUP_LOGS="0"),
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from the epoch 1 checkpoint" in res.stdout + res.stderr, res.stdout[-3000:]  # the worker died
    store = Store(store_dir)
    run = store.df("runs").iloc[0]
    assert (
        run["status"] == "completed"
        and run["model.lora.enabled"]
        and sorted(store.history(run["run_id"])["epoch"]) == [1, 2]
    )
    kept = sorted((runs / run["run_id"]).glob("epoch_*"))  # run.num_to_keep=2: the last epoch and the final one
    state = torch.load(kept[-1] / "state.pt", map_location="cpu", weights_only=True)
    adapters = [k for k in state["model"] if "lora_A" in k or "lora_B" in k]
    assert adapters, "the epoch checkpoint holds no LoRA adapters: a resumed run would restart them from zero"
    export = Path(run["export_uri"])
    weights = load_file(str(export / "model.safetensors"))
    assert not [k for k in weights if "lora" in k], "the export must be a plain (merged) model"
    assert json.loads((export / "config.json").read_text())["model_type"] == "bert"


def test_sweep_takes_the_lora_rank_as_a_dimension(ray_cluster, store_dir, tmp_path):
    res = run_job(
        ["jobs.sweep", "--config", "configs/ner.yaml", "--store", str(store_dir), *TINY_LORA]
        + [f"run.storage_path={tmp_path / 'runs'}", "train.epochs=1", "sweep.search=grid", "sweep.num_samples=1"]
        + ["sweep.scheduler=fifo", "sweep.search_space={model.lora.r: {grid: [2, 4]}}"],
        ray_cluster.job_env(),
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = Store(store_dir).df("runs")
    assert sorted(runs["model.lora.r"]) == [2, 4] and set(runs["status"]) == {"completed"}
    assert runs["model.lora.enabled"].all()
