"""``scaling.strategy=fsdp``: FSDP2 sharding and its ``torch.distributed.checkpoint``, for jobs/loop.py. Each
rank writes ``shards/__<rank>_0.distcp`` and reports its folder; Ray Train merges them into one checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

SHARDS = "shards"  # the DCP folder inside a checkpoint
SHARDED = ("model", "optimizer", "best_model")  # what goes to the shards; the rest of the state stays in state.pt


def active(cfg) -> bool:
    """FSDP applies: ``scaling.strategy=fsdp`` and a process group (one worker alone has nothing to shard over)."""
    return cfg.scaling.strategy == "fsdp" and dist.is_initialized()


def shard(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """``model`` sharded over every rank, one FSDP unit per ``ModuleList`` entry (the transformer blocks)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if device.type == "cuda":
        torch.cuda.set_device(device)
    model.to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
    for block in [block for m in model.modules() if isinstance(m, torch.nn.ModuleList) for block in m]:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # the root reshards after forward too: an eval-only forward must not leave it unsharded for the checkpoint
    return fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=True)


def local_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters this rank holds (its shards under FSDP, everything otherwise)."""
    return sum(getattr(p, "_local_tensor", p).numel() * p.element_size() for p in model.parameters())


def save(folder: str | Path, model, optimizer, state: dict) -> dict:
    """Write this rank's shard (a collective); returns the rest of ``state``, which rank 0 saves as usual."""
    shards = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if state.get("best_model"):
        shards["best_model"] = state["best_model"]
    dcp.save(shards, checkpoint_id=Path(folder, SHARDS))
    return {k: v for k, v in state.items() if k not in SHARDED}


def load(folder: str | Path, model, optimizer=None) -> dict | None:
    """Load a sharded checkpoint on any worker count; returns the best weights if held apart from the model's."""
    path = Path(folder, SHARDS)
    saved = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    state = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    if any(k.startswith("best_model.") for k in saved):  # a copy to load into: never the live parameters
        state["best_model"] = {k: v.detach().clone() for k, v in state["model"].items()}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return state.get("best_model")


def gather(model, build, rank: int):
    """The full weights gathered (a collective) into a fresh ``build()`` model on rank 0; ``model`` elsewhere."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return model
    plain = build()
    plain.load_state_dict(full)
    return plain.to(next(model.parameters()).device)
