"""THE training loop: ``train_loop_per_worker`` runs inside every Ray Train worker, for every workload.

    TorchTrainer(train_loop_per_worker, train_loop_config=config.to_dict(cfg), ...)

Per epoch: train (DDP via ``prepare_model``/``prepare_data_loader``, AMP, gradient accumulation,
NaN policy), validate on rank 0, broadcast the metrics, and ``ray.train.report`` them with a
checkpoint (rank 0 attaches it). After the last epoch (or early stop) the best epoch's weights are
restored, scored on the test split, exported for serving, and reported once more as the final
checkpoint. A restarted worker group resumes from ``ray.train.get_checkpoint()``.

With ``train.checkpoint_every_steps=N`` the loop also reports a checkpoint every N optimizer steps within an
epoch (``epoch_0003_step_000120``: 120 steps into epoch 3); a run resumed from one skips the batches already
trained, in the same order (:func:`seed_epoch_order`), and goes on from the next step.

Checkpoint directory (also readable without Ray, see :func:`read_meta`):
    meta.json     epoch (finished), history (one dict per finished epoch), best metric/epoch, final metrics;
                  mid-epoch also ``partial``: the epoch, its optimizer step and batches so far, its loss sums
    state.pt      model + optimizer (+ best-epoch weights; mid-epoch also the RNG states), ``weights_only=True``
    export/       only in the final checkpoint: the servable model (workload-defined format)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import workloads
from jobs import config as config_lib
from jobs import tracking
from jobs.ray_compat import preemption_reader, train_report_loggers
from workloads.data import add_replay

META, STATE, EXPORT = "meta.json", "state.pt", "export"


def log(message: str) -> None:
    """Print from rank 0. ``sys.__stdout__`` bypasses Ray Train's print patch, which would tee
    every line to the console twice; Ray still forwards the worker's stdout to the driver."""
    print(message, file=sys.__stdout__ or sys.stdout, flush=True)


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN/inf and ``train.on_nan=fail``."""


# ----------------------------------------------------------------------------- helpers (also used without Ray)
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a training step may draw from (dropout, augmentation), as tensors and plain values: a
    mid-epoch checkpoint saves it so the resumed steps draw what the lost ones would have."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


def seed_epoch_order(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make epoch ``epoch``'s batch order a function of (seed, epoch) alone, so a run resumed mid-epoch
    draws the same order and skips the batches it had trained: a ``DistributedSampler`` (several workers, or a
    workload's own sampler) through ``set_epoch``; the default shuffled loader by reseeding its generator."""
    if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed + epoch)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU (Linux): bf16 matmuls in hardware. Elsewhere torch emulates bf16, slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision=auto``: bf16 where the device computes it natively (an Ampere-or-newer GPU, a CPU with
    AVX512-BF16/AMX), else fp32. Measured: docs/performance.md (speed, and test F1 against fp32)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native = device.type == "cpu" and cpu_has_native_bf16()
    return "bf16" if native else "fp32"


def autocast(precision: str, device: torch.device):
    """The autocast context for ``train.precision`` (fp32 = disabled; auto = :func:`resolve_precision`)."""
    if precision not in config_lib.PRECISIONS:
        raise config_lib.ConfigError(
            f"train.precision must be {', '.join(config_lib.PRECISIONS[:-1])} or fp16, got '{precision}'"
        )
    precision = resolve_precision(precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """Loss scaling for fp16 only: its 5-bit exponent flushes small gradients to zero; bf16 has fp32's range."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def check_precision(precision: str, device: torch.device) -> None:
    """Reject a precision the device cannot run (bf16 needs an Ampere-or-newer GPU; emulated bf16 is slow)."""
    autocast(precision, device)  # validates the name
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise config_lib.ConfigError(
            f"train.precision=bf16 needs an Ampere or newer GPU, not {torch.cuda.get_device_name(device)} — use train.precision=fp16"
        )


def make_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # fused AdamW: faster than the default on CPU (docs/performance.md, levers) and supported on CUDA
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)


def better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def resumed_from(meta: dict) -> str:
    """Where a checkpoint stands: "epoch 3" (the end of epoch 3), or "epoch 4 step 120" for a mid-epoch
    checkpoint 120 optimizer steps into epoch 4 (its meta's ``epoch`` is 3, the epochs finished)."""
    partial = meta.get("partial")
    return f"epoch {meta['epoch'] + 1} step {partial['step']}" if partial else f"epoch {meta['epoch']}"


def read_meta(checkpoint_dir: str | os.PathLike) -> dict:
    return json.loads(Path(checkpoint_dir, META).read_text())


def load_state(checkpoint_dir: str | os.PathLike) -> dict:
    # weights_only: a checkpoint is data, never code (no arbitrary unpickling)
    import pickle

    path = Path(checkpoint_dir, STATE)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's own text advises weights_only=False: exactly what must not happen
        why = next(
            (ln.strip() for ln in str(e).splitlines() if ln.startswith(("Trying to load", "Unsupported"))),
            type(e).__name__,
        )
        raise config_lib.ConfigError(
            f"checkpoint '{path}' holds more than tensors ({why[:200]}) — refused: loading it could run code; "
            "use only checkpoints this project wrote"
        ) from None


def export_model(wl, model: torch.nn.Module, cfg, splits, out_dir: Path) -> None:
    """Servable model: the workload's own format, else safetensors + a JSON of what built it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if export := workloads.hook(wl, "export"):
        export(model, cfg, splits, out_dir)
        return
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    (out_dir / "model.json").write_text(
        json.dumps(
            {
                "workload": cfg.workload,
                "labels": splits.labels,
                "info": splits.info,
                "config": config_lib.to_dict(cfg),
            },
            indent=1,
            default=str,
        )
    )


def load_export(wl, cfg, splits, export_dir: str | os.PathLike) -> torch.nn.Module:
    """The inverse of :func:`export_model`."""
    if load := workloads.hook(wl, "load_export"):
        return load(cfg, splits, Path(export_dir))
    from safetensors.torch import load_file

    model = wl.build_model(cfg, splits)
    model.load_state_dict(load_file(str(Path(export_dir) / "model.safetensors")))
    return model


def eval_loader(splits, dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=splits.collate_fn)


def train_loader(wl, cfg, splits) -> DataLoader:
    if make_loader := workloads.hook(wl, "train_loader"):  # e.g. length-grouped batches for text
        return make_loader(cfg, splits)
    g = torch.Generator().manual_seed(cfg.train.seed)
    return DataLoader(
        splits.train,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        generator=g,
        collate_fn=splits.collate_fn,
        drop_last=False,
    )


def run_epoch(
    model,
    loader,
    optimizer,
    wl,
    cfg,
    device,
    scheduler=None,
    scaler=None,
    dist=False,
    on_step=None,
    after_step=None,
    partial: dict | None = None,
) -> dict:
    """One pass over ``loader``: returns train_loss, samples, train_time_s, step_time_median_s, skipped_batches.

    ``on_step(step, total, loss, samples)``, if given, is called after each batch (1-based step; total None
    for a loader without a length): progress and trackers on rank 0. ``after_step(partial)``, if given, is
    called after each optimizer step but the epoch's last, with the epoch so far (:func:`epoch_so_far`): the
    loop checkpoints there. ``partial``, from a mid-epoch checkpoint, resumes the epoch: its first
    ``partial["batches"]`` batches are drawn but not trained (the loader's order is the same, see
    :func:`seed_epoch_order`), the RNGs are set back to their state at that step, and the sums go on."""
    model.train()
    accum = max(1, cfg.train.grad_accum_steps)
    on_nan = cfg.train.on_nan
    max_norm = cfg.train.max_grad_norm
    if on_nan not in ("fail", "skip_batch"):
        raise config_lib.ConfigError(f"train.on_nan must be fail or skip_batch, got '{on_nan}'")
    loss_sum, n_batches, samples, skipped = 0.0, 0, 0, 0
    skip, time_before = 0, 0.0
    if partial:
        skip, time_before = partial["batches"], partial["train_time_s"]
        loss_sum, n_batches, samples, skipped = (partial[k] for k in ("loss_sum", "n_batches", "samples", "skipped"))
    t0 = time.perf_counter()
    step_starts = [t0]  # the clock as each batch arrives: per-step times for step_time_median_s
    optimizer.zero_grad(set_to_none=True)
    n_total = len(loader) if hasattr(loader, "__len__") else None
    for i, batch in enumerate(loader):
        if i < skip:  # done before the mid-epoch checkpoint: drawn (the order goes on) but not trained
            if i + 1 == skip:  # the RNGs as they were after that step (the loader's start may have drawn from them)
                set_rng_state(partial["rng"])
                t0, step_starts = time.perf_counter(), [time.perf_counter()]
            continue
        step_starts.append(time.perf_counter())
        batch = to_device(batch, device)
        last_micro = (i + 1) % accum == 0 or (n_total is not None and i + 1 == n_total)
        # the epoch's last window may be short: average over the micro-batches it has, as one bigger batch would
        window = accum if n_total is None else min(accum, n_total - (i // accum) * accum)
        sync = model.no_sync() if (dist and not last_micro and hasattr(model, "no_sync")) else _null()
        with sync:
            with autocast(cfg.train.precision, device):
                loss = wl.train_step(model, batch)
            finite = bool(torch.isfinite(loss.detach()))
            if dist and on_nan == "skip_batch":  # every rank must agree, or DDP's all-reduce hangs
                flag = torch.tensor([0.0 if finite else 1.0], device=device)
                torch.distributed.all_reduce(flag)
                finite = flag.item() == 0.0
            if not finite:
                if on_nan == "fail":
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at batch {i} — lower train.lr, or set train.on_nan=skip_batch"
                    )
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            scaled = loss / window
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if last_micro:
            if max_norm > 0:  # on the true (unscaled, all-reduced) gradients
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
        loss_value, batch_samples = loss.item(), _batch_size(batch)
        loss_sum += loss_value
        n_batches += 1
        samples += batch_samples
        if on_step is not None:
            on_step(i + 1, n_total, loss_value, batch_samples)
        if after_step is not None and last_micro and (n_total is None or i + 1 < n_total):
            after_step(
                {
                    "batches": i + 1,
                    "step": i // accum + 1,  # optimizer steps so far in this epoch
                    "loss_sum": loss_sum,
                    "n_batches": n_batches,
                    "samples": samples,
                    "skipped": skipped,
                    "train_time_s": time_before + time.perf_counter() - t0,
                }
            )
    if skipped and not n_batches:  # skip_batch must not turn a diverged run into "completed" with train_loss 0
        raise NonFiniteLossError(
            f"all {skipped} batches of the epoch had a non-finite loss — lower train.lr or check the data for NaN/inf"
        )
    step_starts.append(time.perf_counter())
    return {
        "train_loss": loss_sum / max(n_batches, 1),
        "samples": samples,
        "train_time_s": time_before + step_starts[-1] - t0,
        "step_time_median_s": median_step_time(step_starts),
        "skipped_batches": skipped,
    }


def median_step_time(step_starts: list[float], warmup: int = 3) -> float:
    """Median seconds per step (compute + loading the next batch) from the clock at each batch's arrival.

    The first interval is the loader's start-up alone and is left out, and so are ``warmup`` steps
    (allocator, lazy init) when the epoch has more than ``2 * warmup`` of them (bench/overhead.py)."""
    steps = np.diff(step_starts)[1:]
    if len(steps) > 2 * warmup:
        steps = steps[warmup:]
    return float(np.median(steps)) if len(steps) else float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB): the per-worker figure of bench/memory.py."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    return 0


# ----------------------------------------------------------------------------- the Ray Train worker loop
def elastic_batch_policy(cfg, world: int) -> tuple[Any, str]:
    """An elastic run (``scaling.num_workers=[min, max]``) keeps its global batch whatever its worker count:
    each optimizer step averages ``batch_size x grad_accum_steps x max`` samples, so with ``world`` < max
    workers each one accumulates ``ceil(max / world)`` times as many micro-batches (exact when ``world``
    divides max; otherwise the global batch is up to one worker's share larger). Per-worker memory, the
    learning rate and the schedule in optimizer steps stay as configured: the steps per epoch and the lr
    at each step do not depend on how many nodes the run had. Returns the config for the steps (``cfg``
    itself, or a copy with that ``train.grad_accum_steps``) and a note for the start-up line."""
    if not config_lib.is_elastic(cfg.scaling):
        return cfg, ""
    low, high = config_lib.worker_range(cfg.scaling)
    factor = -(-high // max(1, world))
    train = dataclasses.replace(cfg.train, grad_accum_steps=max(1, cfg.train.grad_accum_steps) * factor)
    note = f" (elastic {low}-{high}: {world} now, global batch kept by accumulating {factor}x)"
    return dataclasses.replace(cfg, train=train), note


class TrainSession:
    """Where the loop reports to, resumes from and places its model: a Ray Train worker's own session. Another
    session (local mode's, a Tune trial's) has the same attributes and methods."""

    def __init__(self):
        import ray.train

        ctx = ray.train.get_context()
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.run_id = ctx.get_experiment_name()
        storage = ctx.get_storage()
        self.storage_path = _fs_uri(storage.storage_filesystem, storage.storage_fs_path)

    def report(self, metrics: dict, checkpoint=None, checkpoint_dir_name: str | None = None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name)

    def get_checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # DDP + device placement (+ torch.cuda.set_device)

    def prepare_data_loader(self, loader: DataLoader, auto_transfer: bool) -> DataLoader:
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader, auto_transfer=auto_transfer)


def train_loop_per_worker(config_dict: dict, session=None) -> None:
    trackers: list[tracking.Tracker] = []  # rank 0's, once started: closed with the run's status if the loop raises
    try:
        _train_loop(config_dict, trackers, session or TrainSession())
    except BaseException as e:
        # a Tune scheduler stops a trial by raising SystemExit from its report: not a failure
        status = "stopped_early" if isinstance(e, SystemExit) else "failed"
        for tracker in trackers:
            tracker.finish(status)
        raise


def _train_loop(config_dict: dict, trackers: list, session) -> None:
    import ray.train
    import ray.train.torch

    # Train logs every report at INFO; the per-epoch line below says it better (PERENNIAL_TRAIN_LOG_LEVEL=INFO for both)
    for logger in train_report_loggers():
        logger.setLevel(os.environ.get("PERENNIAL_TRAIN_LOG_LEVEL", "WARNING"))
    cfg = config_lib.from_dict({k: v for k, v in config_dict.items() if not k.startswith("_")})  # _keys: job extras
    wl = workloads.module(cfg.workload)
    rank, world = session.world_rank, session.world_size
    dist = world > 1
    torch.set_num_threads(max(1, cfg.scaling.cpus_per_worker))  # threads = CPUs this worker holds
    step_cfg, elastic_note = elastic_batch_policy(cfg, world)  # the config the optimizer steps follow
    metric, mode = config_lib.metric_and_mode(cfg)
    cpu0 = time.process_time()

    # [1] data and model, seeded (the same init on every rank; DDP broadcasts rank 0's anyway)
    seed_everything(cfg.train.seed)
    splits = wl.build_data(cfg)
    if cfg.continual.replay_data and cfg.continual.replay_fraction > 0:  # continual: a share of the parent's data
        old = wl.build_data(config_lib.with_data(cfg, cfg.continual.replay_data))
        splits.train = add_replay(splits, old, cfg.continual.replay_fraction, cfg.train.seed)
    model = wl.build_model(cfg, splits)
    if cfg.continual.init_from:  # continual: start from the parent's export
        model = _init_from_parent(wl, cfg, splits, cfg.continual.init_from)

    # [2] resume: a restarted worker group (or a resumed sweep trial) gets the last checkpoint
    state, meta = None, {"epoch": 0, "history": [], "best_metric": None, "best_epoch": None}
    ckpt = session.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            meta = read_meta(d)
            if not meta.get("finished"):
                state = load_state(d)
        if state is not None:
            model.load_state_dict(state["model"])
    best_state = (state.get("best_model") or state["model"]) if state and meta["best_epoch"] else None
    cpu_prior = meta.get("cpu_s", 0.0)  # CPU-seconds (all ranks) of earlier attempts of this run

    model = session.prepare_model(model)
    device = session.device()
    cfg.train.precision = resolve_precision(cfg.train.precision, device)  # auto -> what this device runs: bf16 or fp32
    check_precision(cfg.train.precision, device)
    if rank == 0:  # Ray picks the backend: nccl when workers hold GPUs, gloo on CPUs
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
        log(
            f"{world} worker(s) on {device.type}, backend {backend}, precision {cfg.train.precision}, grad_accum_steps {step_cfg.train.grad_accum_steps}"
            + elastic_note
            + (f", resumed from the {resumed_from(meta)} checkpoint" if state is not None else "")
        )
    workers = _all_gather(node_placement(rank), dist)  # where each rank runs: the runs row records it
    build_optimizer = workloads.hook(wl, "build_optimizer")
    optimizer = build_optimizer(cfg, unwrap(model)) if build_optimizer else make_optimizer(cfg, model)
    on_gpu = device.type == "cuda"
    base_loader = train_loader(wl, cfg, splits)
    base_loader.pin_memory = on_gpu  # page-locked host batches, so the host->GPU copy can run asynchronously
    loader = session.prepare_data_loader(base_loader, auto_transfer=on_gpu)  # copies on a side CUDA stream
    build_scheduler = workloads.hook(wl, "build_scheduler")
    scheduler = build_scheduler(step_cfg, optimizer, len(loader)) if build_scheduler else None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
    scaler = grad_scaler(cfg.train.precision, device)
    if scaler is not None and state is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])  # keep the learned loss scale across a restart
    val_loader = eval_loader(splits, splits.val, cfg.train.batch_size * 2)
    tracker = None
    if rank == 0:  # progress, TensorBoard, MLflow, W&B: only rank 0 (docs/tracking.md)
        tracker = tracking.Tracker(cfg, log)
        trackers.append(tracker)
        info = tracking.RunInfo(
            run_id=session.run_id,
            workload=cfg.workload,
            storage_path=session.storage_path,
            git_sha=os.environ.get("PERENNIAL_GIT_SHA", ""),
            data_fingerprint=splits.fingerprint or "",
            metric=metric,
            mode=mode,
            epochs=cfg.train.epochs,
            steps_per_epoch=len(loader) if hasattr(loader, "__len__") else 0,
            world_size=world,
            **config_dict.get("_tracking", {}),  # sweep_id, trial_id, mlflow_parent_run_id (jobs.sweep)
        )
        resumed = state is not None or bool(meta.get("finished"))
        tracker.start(info, config_lib.flatten(cfg), meta["epoch"] if resumed else 0, history=meta["history"])

    def train_state(mid_epoch: bool = False) -> dict:
        """What a checkpoint holds besides meta.json (best_model {} = the same as model)."""
        return {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            # mid-epoch the model has moved on from the best epoch's weights: keep the snapshot
            "best_model": {} if best_epoch == meta["epoch"] and not mid_epoch else (best_state or {}),
            "scaler": scaler.state_dict() if scaler is not None else {},
        }

    # [3] epochs
    every_steps = cfg.train.checkpoint_every_steps
    history: list[dict] = meta["history"]
    best_metric, best_epoch = meta["best_metric"], meta["best_epoch"]
    epochs = cfg.train.epochs
    patience = cfg.train.patience
    start_epoch = meta["epoch"] if not meta.get("finished") else epochs
    run_t0 = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    stopped_early = bool(meta.get("stopped_early"))
    resumed_meta = meta if state is not None else None
    partial = meta.get("partial") if state is not None else None  # a mid-epoch checkpoint: that epoch's steps so far
    if partial is not None and len(state["rng"]) != world:
        # another worker count splits the epoch's batches differently: which ones were trained is unknown here,
        # so the epoch starts over (its samples trained once more, none skipped)
        if rank == 0:
            log(
                f"the epoch {partial['epoch'] + 1} checkpoint was written by {len(state['rng'])} workers: epoch restarts"
            )
        partial = None
    if partial is not None:
        partial = partial | {"rng": state["rng"][rank]}  # this rank's RNG states
    steps_this_attempt, last_checkpoint = 0, None  # optimizer steps this worker group trained; fault injection
    preempted = preemption_watch(dist, device)  # None when Ray Train's preemption watcher is off
    notice_handled, poll_s = False, 0.0
    step_delay = float(os.environ.get(STEP_DELAY, "") or 0)  # test-only: a floor under each step's wall time
    for epoch in range(start_epoch, epochs):
        for epoch_loader in {id(loader): loader, id(base_loader): base_loader}.values():  # Ray may have rebuilt it
            seed_epoch_order(epoch_loader, epoch, cfg.train.seed)
        epoch_meta = meta  # the last epoch-end meta: what a mid-epoch checkpoint adds its step to

        def after_step(so_far: dict, epoch=epoch, epoch_meta=epoch_meta) -> None:
            nonlocal steps_this_attempt, last_checkpoint, notice_handled, poll_s
            steps_this_attempt += 1
            if step_delay:
                time.sleep(step_delay)
            name = f"epoch_{epoch + 1:04d}_step_{so_far['step']:06d}"
            notice = None
            if preempted is not None and not notice_handled:  # once per worker group: it ends at the deadline
                t_poll = time.perf_counter()
                notice = preempted()
                poll_s += time.perf_counter() - t_poll
            if not (notice or (every_steps and so_far["step"] % every_steps == 0)):
                inject_fault(name, rank, world, ckpt is not None, last_checkpoint, steps_this_attempt)
                return
            # epoch_meta["epoch"] stays the count of finished epochs and the history only theirs: the store's
            # epochs rows come from the history, so a mid-epoch checkpoint never yields a half-epoch row
            step_meta = epoch_meta | {"partial": so_far | {"epoch": epoch}}
            # each rank's own: they differ (rank 0 alone validates, and its val loader draws a seed)
            step_state = train_state(mid_epoch=True) | {"rng": _all_gather(rng_state(), dist)}
            t_wall = time.time()
            _report(
                {"epoch": epoch, "step": so_far["step"], "train_loss": so_far["loss_sum"] / max(so_far["n_batches"], 1)}
                | {"mid_epoch": True},
                step_meta,
                rank,
                step_state,
                name,
                session,
            )
            last_checkpoint, saved_at = name, time.time()
            if rank == 0:
                log(f"  checkpoint {name} ({saved_at - t_wall:.2f} s)")
            if notice:
                notice_handled = True
                if rank == 0:  # the figure docs/cluster.md reports: the checkpoint against the deadline
                    log(preemption_line(notice, name, saved_at - t_wall, saved_at))
            inject_fault(name, rank, world, ckpt is not None, last_checkpoint, steps_this_attempt)

        on_step = None
        if tracker is not None:

            def on_step(step, total, loss, samples, epoch=epoch):
                tracker.on_step(epoch, step, total or 0, loss, samples, optimizer.param_groups[0]["lr"])

        stats = run_epoch(
            model,
            loader,
            optimizer,
            wl,
            step_cfg,
            device,
            scheduler,
            scaler,
            dist,
            on_step=on_step,
            after_step=after_step,
            partial=partial if partial is not None and partial["epoch"] == epoch else None,
        )
        steps_this_attempt += 1  # the epoch's last optimizer step (after_step is not called for it)
        partial = None
        val = {}
        if rank == 0:  # full val set on rank 0: exact metrics, no sampler padding
            with autocast(cfg.train.precision, device):
                val = {f"val_{k}": v for k, v in wl.evaluate(unwrap(model), _on(val_loader, device), splits).items()}
        val = _broadcast(val, dist)
        train_time = _all_sum(stats["train_time_s"], device, dist) / world
        samples = _all_sum(stats["samples"], device, dist)
        row = {
            "epoch": epoch + 1,
            "train_loss": stats["train_loss"],
            **val,
            "train_time_s": train_time,
            "samples_per_s": samples / max(train_time, 1e-9),
            "skipped_batches": stats["skipped_batches"],
            "step_time_median_s": _all_sum(stats["step_time_median_s"], device, dist) / world,  # mean over ranks
            "peak_rss_mb": _all_max(peak_rss_mb(), device, dist),  # the largest worker
            "elapsed_s": time.perf_counter() - run_t0,
            "num_workers": world,  # this epoch's worker count (a run restarted on fewer nodes shows it)
        }
        if metric not in row:
            raise config_lib.ConfigError(
                f"metric '{metric}' is not reported by workload '{cfg.workload}' (it reports {sorted(row)})"
            )
        improved = better(row[metric], best_metric, mode)
        if improved:  # snapshot: early stopping and the test score use the best epoch's weights
            best_metric, best_epoch = row[metric], epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
        history.append(row)
        stopped_early = bool(patience) and epoch + 1 - best_epoch >= patience and epoch + 1 < epochs
        meta = {
            "epoch": epoch + 1,
            "history": history,
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "metric": metric,
            "mode": mode,
            "stopped_early": stopped_early,  # cpu_s: a stopped run's cost too
            "workers": workers,
            "precision": cfg.train.precision,  # as resolved on the worker (train.precision=auto)
            "cpu_s": cpu_prior + _all_sum(time.process_time() - cpu0, device, dist),
        }
        if rank == 0:
            log(_progress_line(row, epochs, metric, improved))
        _report(row | {"best_metric": best_metric}, meta, rank, train_state(), f"epoch_{epoch + 1:04d}", session)
        if tracker is not None:  # after the report: an epoch a tracker shows has its checkpoint uploaded
            tracker.on_epoch(row)
        last_checkpoint = f"epoch_{epoch + 1:04d}"
        inject_fault(last_checkpoint, rank, world, ckpt is not None, last_checkpoint, steps_this_attempt)
        if stopped_early:
            if rank == 0:
                log(f"early stop: no {metric} gain for {patience} epochs (best epoch {best_epoch})")
            break

    # [4] best weights -> test split -> export -> final report
    if rank == 0:
        log(  # steps redone after a restart; the watch's cost per step (docs/cluster.md)
            f"{steps_this_attempt} optimizer steps trained by this worker group"
            + (f", preemption watch {poll_s / max(steps_this_attempt, 1) * 1e6:.1f} us/step" if preempted else "")
        )
    if best_state:
        unwrap(model).load_state_dict(best_state)
    final = {"epoch": meta["epoch"], "best_metric": best_metric, "best_epoch": best_epoch}
    best_row = next((h for h in history if h["epoch"] == best_epoch), history[-1] if history else {})
    final.update({k: v for k, v in best_row.items() if k.startswith("val_")})
    cpu_s = cpu_prior + _all_sum(time.process_time() - cpu0, device, dist)
    final["cpu_s"] = cpu_s
    final["train_time_s"] = sum(h["train_time_s"] for h in history)
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            if splits.test is not None:
                test_loader = eval_loader(splits, splits.test, cfg.train.batch_size * 2)
                with autocast(cfg.train.precision, device):
                    final.update(
                        {
                            f"test_{k}": v
                            for k, v in wl.evaluate(unwrap(model), _on(test_loader, device), splits).items()
                        }
                    )
            export_model(
                wl, unwrap(model).cpu() if device.type != "cpu" else unwrap(model), cfg, splits, Path(tmp, EXPORT)
            )
            meta_final = meta | {
                "finished": True,
                "final": final,
                "fingerprint": splits.fingerprint,
                "labels": splits.labels,
                "cpu_s": cpu_s,
                # the worker group that finished: where it started, what it trained (a restart's redone steps)
                "last_attempt": {
                    "resumed_from": resumed_from(resumed_meta) if resumed_meta is not None else "",
                    "steps": steps_this_attempt,
                    "preemption_watch_us_per_step": poll_s / max(steps_this_attempt, 1) * 1e6 if preempted else None,
                },
            }
            Path(tmp, META).write_text(json.dumps(meta_final, default=float))
            if splits.test is not None:
                log("test: " + "  ".join(f"{k} {v:.4f}" for k, v in final.items() if k.startswith("test_")))
        final = _broadcast(final, dist)
        session.report(
            final | {metric: best_metric, "final": True},
            checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None,
            checkpoint_dir_name="final",
        )
        if tracker is not None:
            tracker.on_test(final)
            tracker.finish("stopped_early" if stopped_early else "completed", Path(tmp, EXPORT))


PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


PREEMPTION_CHECK_EVERY_S = 0.5  # with several workers: how often (in step time) the ranks agree on a notice


def preemption_watch(dist: bool, device: torch.device, read=None):
    """A per-step check for a preemption notice (``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION``, a
    spot reclaim): returns a function giving this rank's ``PreemptionInfo``, ``True`` when only another rank
    has it yet, or None; every rank gets a truthy answer at the same step (they must checkpoint together).
    None when Ray Train's preemption watcher is off (jobs.train turns it off on its one-node embedded cluster).

    On one worker: one attribute read per step. With several, Ray Train fans the notice out to every worker but
    not at the same instant, so the ranks agree through an all-reduce of a flag. Every step, that cost 0.76 ms
    (+22% on a 4 ms DDP step, bench/preemption_watch.py); so it runs about every
    ``PREEMPTION_CHECK_EVERY_S`` of training (rank 0 sets the step interval from its step time, carried in the
    same all-reduce), asynchronously: started at one check and read at the next. A notice is acted on within
    about two intervals, against Ray's 5 s poll of the draining nodes and a deadline of tens of seconds."""
    if os.environ.get(PREEMPTION_WATCHER, "1").strip().lower() in ("0", "false"):
        return None
    read = read or preemption_reader()  # bench/preemption_watch.py passes its own
    if read is None:
        return None
    if not dist:
        return read
    leader = torch.distributed.get_rank() == 0
    pending: list = []  # (work, buffer) of the all-reduce started at the previous check
    every = {"steps": 1, "left": 1, "t": time.perf_counter()}  # the same on every rank: set from the all-reduce

    def agreed():
        every["left"] -= 1
        if every["left"] > 0:
            return None
        seen = False
        now = time.perf_counter()
        step_s = (now - every["t"]) / every["steps"]
        every["t"] = now
        if pending:
            work, buffer = pending.pop()
            work.wait()
            seen = buffer[0].item() > 0
            every["steps"] = max(1, int(buffer[1].item()))
        every["left"] = every["steps"]
        suggest = min(1000, max(1, int(PREEMPTION_CHECK_EVERY_S / max(step_s, 1e-6)))) if leader else 0
        buffer = torch.tensor([0.0 if read() is None else 1.0, float(suggest)], device=device)
        pending.append((torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.MAX, async_op=True), buffer))
        return (read() or True) if seen else None

    return agreed


def preemption_line(notice, name: str, took_s: float, saved_at: float) -> str:
    """The log line of a checkpoint written on a preemption notice: how long it took, and how long before
    the deadline it was done."""
    deadline_ms = getattr(notice, "deadline_ms", None)
    left = f"{deadline_ms / 1000 - saved_at:.1f} s before the deadline" if deadline_ms else "no deadline given"
    nodes = ", ".join(getattr(notice, "preempted_node_ids", [])) or "another rank's node"
    return f"preemption notice for {nodes}: checkpoint {name} written in {took_s:.2f} s, {left}"


FAULT_AFTER_EPOCH = "PERENNIAL_FAULT_AFTER_EPOCH"
FAULT_AT_STEP = "PERENNIAL_FAULT_AT_STEP"
# Test-only: seconds each worker sleeps after an optimizer step, so that a run's epochs last long enough for a test
# to act between them on a quiet machine and still use no CPU meanwhile (tests/integration/test_elastic.py)
STEP_DELAY = "PERENNIAL_STEP_DELAY_S"


def inject_fault(
    position: str, rank: int, world: int, resumed: bool, last_checkpoint: str | None, steps_this_attempt: int
) -> None:
    """Test-only fault injection: rank 1 (rank 0 when alone) dies with ``os._exit(1)`` once — a worker group
    that resumed from a checkpoint never fires — at ``position`` (``epoch_NNNN`` at an epoch's end,
    ``epoch_NNNN_step_SSSSSS`` after an optimizer step), when the workers' environment names it:

    - ``PERENNIAL_FAULT_AFTER_EPOCH=N``: right after epoch N's report;
    - ``PERENNIAL_FAULT_AT_STEP=E:S``: after optimizer step S of epoch E (1-based), checkpointed or not.

    It dies only once Train has committed the last checkpoint (its checkpoint manager's snapshot lists it),
    so with ``failure.max_failures>=1`` the run must resume from there and redo the steps after it
    (tests/integration/test_s3_checkpoints.py, test_mid_epoch_checkpoints.py; reusable by reliability tests)."""
    if resumed:
        return
    epoch_fault, step_fault = os.environ.get(FAULT_AFTER_EPOCH, ""), os.environ.get(FAULT_AT_STEP, "")
    wanted = set()
    if epoch_fault.isdigit():
        wanted.add(f"epoch_{int(epoch_fault):04d}")
    if step_fault.count(":") == 1 and step_fault.replace(":", "").isdigit():
        e, s = step_fault.split(":")
        wanted.add(f"epoch_{int(e):04d}_step_{int(s):06d}")
    if position not in wanted:
        return
    if world > 1:
        torch.distributed.barrier()  # rank 0 has uploaded the checkpoint and queued its report
    if rank == min(1, world - 1):
        import ray

        numbers = [int(n) for n in position.removeprefix("epoch_").split("_step_")]
        after = f"epoch {numbers[0]}" + (f" step {numbers[1]}" if len(numbers) > 1 else "")
        if not ray.is_initialized():  # local mode: this process is the driver; its exit would be a driver loss
            log(f"fault injection: the loop fails after {after} (last checkpoint {last_checkpoint})")
            raise RuntimeError(f"fault injection after {after}")
        deadline = time.monotonic() + 300
        committed = last_checkpoint is None
        while not committed and (committed := checkpoint_committed(last_checkpoint)) is False:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if committed is None:  # no Train storage context (an in-process sweep trial): give Train two polls
            time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")) + 0.5)
        log(
            f"fault injection: rank {rank} exits after {after} "
            f"({steps_this_attempt} steps this attempt, last checkpoint {last_checkpoint})"
        )
        os._exit(1)


def checkpoint_committed(name: str) -> bool | None:
    """True once this run's ``checkpoint_manager_snapshot.json`` lists the checkpoint dir ``name``; None when
    this process has no Train storage context to look in."""
    import ray.train

    try:
        storage = ray.train.get_context().get_storage()
        fs, run_dir = storage.storage_filesystem, storage.experiment_fs_path
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    try:
        with fs.open_input_stream(f"{run_dir}/checkpoint_manager_snapshot.json") as f:
            snapshot = json.loads(f.read())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return False
    names = {str(r.get("checkpoint_dir_name", "")) for r in snapshot.get("checkpoint_results", [])}
    return name in names


def _fs_uri(fs, path: str) -> str:
    """A pyarrow filesystem's path as a URI (a plain path for the local disk)."""
    if type(fs).__name__ == "LocalFileSystem":
        return path
    scheme = {"S3FileSystem": "s3", "GcsFileSystem": "gs"}.get(type(fs).__name__, fs.type_name)
    return f"{scheme}://{path}"


def _init_from_parent(wl, cfg, splits, export_dir: str) -> torch.nn.Module:
    import ray.train

    with ray.train.Checkpoint(export_dir).as_directory() as d:  # local path or s3:// URI
        return load_export(wl, cfg, splits, d)


def _on(loader: DataLoader, device: torch.device):
    for batch in loader:
        yield to_device(batch, device)


def _report(metrics: dict, meta: dict, rank: int, state: dict, name: str, session) -> None:
    """``session.report`` of ``metrics`` with a checkpoint dir ``name`` (meta.json + state.pt) from rank 0."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save(state, Path(tmp, STATE))
            Path(tmp, META).write_text(json.dumps(meta, default=float))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        session.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def node_placement(rank: int) -> dict:
    """This worker's rank, Ray node id and node type (the cluster.yaml type its node was launched as)."""
    import ray

    # the autoscaler starts a node with RAY_NODE_TYPE_NAME set; other nodes are typed later by the driver
    return {
        "rank": rank,
        # local mode (no Ray started): no node to name, and asking the runtime context would start a cluster
        "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
        "node_type": os.environ.get("RAY_NODE_TYPE_NAME", ""),
    }


def _all_gather(obj: dict, dist: bool) -> list[dict]:
    if not dist:
        return [obj]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _broadcast(obj: dict, dist: bool) -> dict:
    if not dist:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _all_max(value: float, device: torch.device, dist: bool) -> float:
    if not dist:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def _all_sum(value: float, device: torch.device, dist: bool) -> float:
    if not dist:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item())


def _progress_line(row: dict, epochs: int, metric: str, improved: bool) -> str:
    vals = "  ".join(
        f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and isinstance(v, float) and not math.isnan(v)
    )
    star = " *" if improved else ""
    return (
        f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  {vals}  "
        f"({row['train_time_s']:.1f} s, {row['samples_per_s']:.0f} samples/s){star}"
    )
