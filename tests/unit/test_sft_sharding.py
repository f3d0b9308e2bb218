"""jobs/sharding.py in one process (a one-rank gloo group, no Ray): FSDP2 computes what the plain model computes,
and its sharded checkpoint loads back, into a sharded model or a plain one; for sft, ner and sentiment."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from jobs import config as config_lib
from jobs import sharding
from workloads import ner, sentiment, sft


@pytest.fixture
def one_rank_group():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def tiny(overrides=()):
    cfg = config_lib.load_config("configs/sft.yaml", ["data.num_examples=100", *overrides])
    torch.manual_seed(0)
    splits = sft.build_data(cfg)
    return cfg, splits, sft.build_model(cfg, splits), sft.collate(splits.train[:8], 0)


@pytest.mark.parametrize("lora", [False, True])
def test_fsdp_step_matches_the_plain_model_and_its_checkpoint_loads_back(one_rank_group, tmp_path, lora):
    cfg, splits, model, batch = tiny([f"model.lora.enabled={lora}", "model.lora.dropout=0", "scaling.strategy=fsdp"])
    assert sharding.active(cfg)
    plain = copy.deepcopy(model)
    sharded = sharding.shard(model, "fp32", torch.device("cpu"))
    assert sft.train_step(sharded, batch).item() == pytest.approx(sft.train_step(plain, batch).item(), abs=1e-6)
    optimizer = torch.optim.AdamW([p for p in sharded.parameters() if p.requires_grad], lr=1e-2)
    sft.train_step(sharded, batch).backward()
    torch.nn.utils.clip_grad_norm_(sharded.parameters(), 1.0, foreach=True)
    optimizer.step()
    rest = sharding.save(tmp_path, sharded, optimizer, {"model": {}, "scheduler": {"last": 1}, "best_model": {}})
    assert rest == {"scheduler": {"last": 1}} and (tmp_path / sharding.SHARDS).is_dir()
    trained = sft.train_step(sharded, batch).item()

    fresh = sft.build_model(cfg, splits)  # a plain model (one worker, no FSDP) reads the sharded checkpoint
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    assert sharding.load(tmp_path, fresh, fresh_optimizer) is None
    assert sft.train_step(fresh, batch).item() == pytest.approx(trained, abs=1e-5)
    assert len(fresh_optimizer.state) == len(optimizer.state) > 0
    gathered = sharding.gather(sharded, lambda: sft.build_model(cfg, splits), rank=0)
    assert sft.train_step(gathered, batch).item() == pytest.approx(trained, abs=1e-5)


@pytest.mark.parametrize("workload", [ner, sentiment], ids=["ner", "sentiment"])
def test_fsdp_shards_the_encoder_workloads_with_lora(one_rank_group, tmp_path, workload):
    from tests.unit.test_ner import conll_files, make_cfg
    from tests.unit.test_sentiment import cfg_for

    overrides = ["scaling.strategy=fsdp", "model.lora.enabled=true", "model.lora.dropout=0"]
    cfg = make_cfg(conll_files(tmp_path), *overrides) if workload is ner else cfg_for(tmp_path, *overrides)
    torch.manual_seed(0)
    splits = workload.build_data(cfg)
    batch = next(iter(workload.train_loader(cfg, splits)))
    model = workload.build_model(cfg, splits).eval()  # eval: no dropout, so both models compute the same
    plain = copy.deepcopy(model)
    sharded = sharding.shard(model, "fp32", torch.device("cpu"))
    assert sum(isinstance(m, torch.distributed.fsdp.FSDPModule) for m in sharded.modules()) > 2  # blocks + root
    loss = workload.train_step(sharded, batch)
    assert loss.item() == pytest.approx(workload.train_step(plain, batch).item(), abs=1e-5)
    optimizer = torch.optim.AdamW([p for p in sharded.parameters() if p.requires_grad], lr=1e-2)
    loss.backward()
    optimizer.step()
    sharding.save(tmp_path, sharded, optimizer, {})
    trained = workload.train_step(sharded, batch).item()
    fresh = workload.build_model(cfg, splits).eval()
    sharding.load(tmp_path, fresh)
    assert workload.train_step(fresh, batch).item() == pytest.approx(trained, abs=1e-5)


def test_the_gpu_benchmark_runs_its_plumbing_on_the_cpu(capsys):
    from bench import gpu_sft

    assert gpu_sft.main(["--tiny"]) == 0
    assert "samples/s" in capsys.readouterr().out and not dist.is_initialized()
