"""jobs/loop.py's training-step paths (no Ray, tiny models): gradient accumulation, clipping, precision selection.

Gradient accumulation goes through ``jobs.loop.run_epoch`` itself; precision selection through
``autocast`` / ``grad_scaler`` / ``check_precision``; bench/gpu_ner.py's plain loop on ``mlp``.
The real GPU run (bf16 vs fp32 on CUDA, NCCL) is bench/gpu_ner.py on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from jobs import config as config_lib
from jobs import loop
from workloads import mlp

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def tiny_mlp(overrides: list[str] = ()):
    """A real mlp config and a 20 -> 16 -> 8 -> 3 model, without dropout (so passes are deterministic)."""
    cfg = config_lib.load_config(
        None, ["workload=mlp", "model.hidden1=16", "model.hidden2=8", "model.dropout=0", *overrides]
    )
    splits = SimpleNamespace(info={"in_features": 20}, labels=["a", "b", "c"])
    torch.manual_seed(0)
    return cfg, mlp.build_model(cfg, splits)


def data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 20, generator=g), torch.randint(0, 3, (n,), generator=g))


def train_once(model, loader, cfg, precision: str = "fp32", scaler=None) -> dict:
    cfg = config_lib.set_dotted(cfg, "train.precision", precision)
    # plain SGD: its update is proportional to the gradient, so a mis-scaled accumulation shows
    # (Adam's first step is scale-invariant and would hide it)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return loop.run_epoch(model, loader, optimizer, mlp, cfg, CPU, scaler=scaler)


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("k, b, batches", [(4, 8, 4), (2, 8, 5)], ids=["one full window", "short last window"])
def test_k_accumulated_steps_of_batch_b_equal_one_step_of_batch_kb(k, b, batches):
    ds = data(b * batches)
    cfg_acc, model_acc = tiny_mlp([f"train.grad_accum_steps={k}"])
    cfg_big, model_big = tiny_mlp(["train.grad_accum_steps=1"])
    start = flat(model_acc)
    assert torch.equal(start, flat(model_big))
    # batch b with k-step windows vs. one batch per window: batch k*b (the last one shorter when 5 % 2 != 0)
    train_once(model_acc, DataLoader(ds, batch_size=b, shuffle=False), cfg_acc)
    train_once(model_big, DataLoader(ds, batch_size=k * b, shuffle=False), cfg_big)
    moved = (flat(model_big) - start).abs().max()
    assert moved > 1e-3  # the comparison below is about real updates
    torch.testing.assert_close(flat(model_acc), flat(model_big), rtol=1e-5, atol=1e-6)


def test_accumulation_steps_the_optimizer_once_per_window():
    cfg, model = tiny_mlp(["train.grad_accum_steps=3"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    loop.run_epoch(model, DataLoader(data(7 * 4), batch_size=4), optimizer, mlp, cfg, CPU)
    assert len(steps) == 3  # windows of 3, 3 and the short last 1


# ----------------------------------------------------------------------------- gradient clipping
@pytest.mark.parametrize("max_norm", [0.0, 0.01])
def test_max_grad_norm_bounds_the_norm_each_step_sees(max_norm):
    """``train.max_grad_norm`` clips the global gradient norm before every optimizer step; 0 leaves it alone."""
    cfg, model = tiny_mlp([f"train.max_grad_norm={max_norm}"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    norms = []
    optimizer.register_step_pre_hook(
        lambda *_: norms.append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))
    )
    loop.run_epoch(model, DataLoader(data(16), batch_size=4), optimizer, mlp, cfg, CPU)
    assert len(norms) == 4
    if max_norm:
        assert max(norms) <= max_norm * 1.0001
    else:
        assert min(norms) > 0.05  # the unclipped norms of this model are far above 0.01: the clip above is real


def test_negative_max_grad_norm_is_refused():
    with pytest.raises(config_lib.ConfigError, match="train.max_grad_norm must be >= 0"):
        tiny_mlp(["train.max_grad_norm=-1"])


# ----------------------------------------------------------------------------- precision selection
@pytest.mark.parametrize(
    "precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)]
)
def test_autocast_runs_matmuls_in_the_chosen_precision(precision, dtype):
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with loop.autocast(precision, CPU):
        assert (a @ b).dtype == dtype


def test_autocast_for_a_gpu_worker_targets_cuda_with_the_chosen_dtype():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": this machine has none
        ctx = loop.autocast("bf16", torch.device("cuda"))
        assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
        assert not loop.autocast("fp32", torch.device("cuda"))._enabled


def test_grad_scaler_only_for_fp16():
    assert isinstance(loop.grad_scaler("fp16", CPU), torch.amp.GradScaler)
    assert loop.grad_scaler("bf16", CPU) is None and loop.grad_scaler("fp32", CPU) is None


def test_unknown_precision_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="train.precision must be auto, fp32, bf16 or fp16"):
        loop.check_precision("fp8", CPU)


def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_it_natively():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    native = "avx512_bf16" in flags.split() or "amx_bf16" in flags.split()
    assert loop.resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert [loop.resolve_precision(p, CPU) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    with loop.autocast("auto", CPU):  # the context follows the resolved precision
        assert torch.is_autocast_enabled("cpu") == native


def test_bf16_on_a_pre_ampere_gpu_is_rejected_with_the_fix(monkeypatch):
    # the only branch that needs a GPU to reach: stand in for the device query of a V100
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": this machine has none
        with pytest.raises(config_lib.ConfigError, match="use train.precision=fp16"):
            loop.check_precision("bf16", torch.device("cuda"))
        loop.check_precision("fp16", torch.device("cuda"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_epoch_trains_like_fp32(precision):
    ds = data(64)
    cfg, model_amp = tiny_mlp()
    _, model_fp32 = tiny_mlp()
    start = flat(model_amp)
    scaler = loop.grad_scaler(precision, CPU)
    amp = train_once(model_amp, DataLoader(ds, batch_size=16), cfg, precision, scaler)
    ref = train_once(model_fp32, DataLoader(ds, batch_size=16), cfg)
    assert amp["samples"] == 64 and abs(amp["train_loss"] - ref["train_loss"]) < 0.05 * ref["train_loss"]
    assert not torch.equal(flat(model_amp), start)  # the optimizer stepped (GradScaler did not skip every step)
    assert all(p.dtype == torch.float32 for p in model_amp.parameters())  # master weights stay fp32
    if scaler is not None:
        assert scaler.get_scale() > 0 and scaler.state_dict()["scale"] == scaler.get_scale()  # what a checkpoint keeps


# ----------------------------------------------------------------------------- bench/gpu_ner.py plumbing on mlp
def _bench():
    spec = importlib.util.spec_from_file_location("gpu_ner", ROOT / "bench" / "gpu_ner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_measures_plain_loop_per_precision(tmp_path, capsys):
    bench = _bench()
    code = bench.main(
        [
            "--workload",
            "mlp",
            "--device",
            "cpu",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
            "--batch-sizes",
            "8,32",
            "data.source=digits",
            "data.max_train_samples=128",
            "model.hidden1=32",
            "model.hidden2=16",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "gpu_mlp.json").read_text())["results"]
    assert [(r["batch_size"], r["precision"]) for r in results] == [
        (8, "bf16"),
        (8, "fp32"),
        (32, "bf16"),
        (32, "fp32"),
    ]
    for r in results:  # each timed step trained on a batch of the asked size
        assert r["samples_per_s"] * r["step_ms"] / 1000 == pytest.approx(r["batch_size"])
    for r in results:
        assert r["samples_per_s"] > 0 and r["peak_memory_gib"] > 0 and 0 < r["mfu"] < 1
        assert r["dense_params"] == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10  # digits: 8x8 inputs, 10 classes
    out = capsys.readouterr().out
    assert "bf16 / fp32 =" in out and "MFU" in out


def test_bench_counts_padded_tokens_and_skips_embeddings():
    bench = _bench()
    batch = {
        "input_ids": torch.ones(2, 5, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]),
    }
    assert bench.tokens_in(batch) == (10, 7)
    model = torch.nn.Sequential(torch.nn.Embedding(100, 4), torch.nn.Linear(4, 2))
    assert bench.dense_params(model) == 4 * 2 + 2


def test_bench_without_cuda_exits_2_with_the_way_out(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert _bench().main(["--steps", "1"]) == 2
    assert "--device cpu" in capsys.readouterr().err
