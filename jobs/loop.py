"""The training loop every workload, Ray Train worker and sweep trial runs (:func:`run`): setup steps, then
:meth:`Loop.run_epoch` per epoch, then :meth:`Loop.finish`; everything optional is a hook (jobs/hooks.py).

A checkpoint folder holds ``meta.json`` (epochs, history, best; mid-epoch ``partial``), ``state.pt`` and, final
only, ``export/``. Mid-epoch ones are named ``epoch_0003_step_000120`` (120 optimizer steps into epoch 3).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pickle
import random
import re
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

import workloads
from jobs import config as config_lib
from jobs import hooks as hooks_lib
from jobs import sharding
from jobs.fs import META, fs_uri
from jobs.hooks import PREEMPTION_WATCHER, log, preemption_watch  # noqa: F401 — the loop's API (bench, tests)
from jobs.ray_compat import train_report_loggers
from workloads.data import add_replay

STATE, EXPORT = "state.pt", "export"  # with META: a checkpoint folder's files


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN/inf and ``train.on_nan=fail``."""


# ----------------------------------------------------------------------------- helpers (also used without Ray)
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a step may draw from, as tensors: a mid-epoch checkpoint resumes with the same draws."""
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
    random.setstate(state["python"])


def seed_epoch_order(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make an epoch's batch order a function of (seed, epoch), so a run resumed mid-epoch skips the same batches."""
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
    """AVX512-BF16 or AMX on this CPU (Linux); elsewhere torch emulates bf16, slower than fp32."""
    try:
        return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision=auto``: bf16 where the device computes it natively, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision, device))
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """Loss scaling for fp16 only: its 5-bit exponent flushes small gradients to zero; bf16 has fp32's range."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def check_precision(precision: str, device: torch.device) -> None:
    """Reject a precision name, or bf16 on a GPU older than Ampere (emulated bf16 is slow)."""
    if precision not in config_lib.PRECISIONS:
        raise config_lib.ConfigError(
            f"train.precision must be {', '.join(config_lib.PRECISIONS[:-1])} or fp16, got '{precision}'"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise config_lib.ConfigError(
            f"train.precision=bf16 needs an Ampere or newer GPU, not {torch.cuda.get_device_name(device)} — use train.precision=fp16"
        )


def make_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)


def resumed_from(meta: dict) -> str:
    """ "epoch 3" (its end), or "epoch 4 step 120" for a mid-epoch checkpoint (meta's ``epoch`` counts finished ones)."""
    partial = meta.get("partial")
    return f"epoch {meta['epoch'] + 1} step {partial['step']}" if partial else f"epoch {meta['epoch']}"


# ----------------------------------------------------------------------------- checkpoint save and restore
def read_meta(checkpoint_dir: str | os.PathLike) -> dict:
    return json.loads(Path(checkpoint_dir, META).read_text())


def load_state(checkpoint_dir: str | os.PathLike) -> dict:
    """``state.pt`` with ``weights_only=True``: a checkpoint is data, never code."""
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
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    built = {"workload": cfg.workload, "labels": splits.labels, "info": splits.info, "config": config_lib.to_dict(cfg)}
    (out_dir / "model.json").write_text(json.dumps(built, indent=1, default=str))


def load_export(wl, cfg, splits, export_dir: str | os.PathLike) -> torch.nn.Module:
    """The inverse of :func:`export_model`."""
    if load := workloads.hook(wl, "load_export"):
        return load(cfg, splits, Path(export_dir))
    model = wl.build_model(cfg, splits)
    model.load_state_dict(load_file(str(Path(export_dir) / "model.safetensors")))
    return model


def eval_loader(splits, dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=splits.collate_fn)


def score(wl, cfg, model, splits, dataset, device: torch.device) -> dict:
    loader = eval_loader(splits, dataset, cfg.train.batch_size * 2)
    with autocast(cfg.train.precision, device):
        return wl.evaluate(model, (to_device(batch, device) for batch in loader), splits)


def train_loader(wl, cfg, splits) -> DataLoader:
    if make_loader := workloads.hook(wl, "train_loader"):  # e.g. length-grouped batches for text
        return make_loader(cfg, splits)
    g = torch.Generator().manual_seed(cfg.train.seed)
    return DataLoader(
        splits.train, batch_size=cfg.train.batch_size, shuffle=True, generator=g, collate_fn=splits.collate_fn
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
    """One pass over ``loader``; ``on_step`` after each batch, ``after_step`` after each optimizer step but the
    epoch's last; ``partial`` (a ``so_far`` plus ``rng``) resumes mid-epoch. Returns the epoch's train stats."""
    model.train()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)  # disabled: a plain backward and step
    accum = cfg.train.grad_accum_steps
    sums = {k: (partial or {}).get(k, 0) for k in ("loss_sum", "n_batches", "samples", "skipped")}
    skip, time_before = (partial["batches"], partial["train_time_s"]) if partial else (0, 0.0)
    t0 = time.perf_counter()
    step_starts = [t0]  # the clock as each batch arrives: per-step times for step_time_median_s
    optimizer.zero_grad(set_to_none=True)
    n_total = len(loader)
    for i, batch in enumerate(loader):
        if i < skip:  # trained before the mid-epoch checkpoint: drawn (the order goes on) but not trained
            if i + 1 == skip:  # the RNGs as they were after that step (the loader's start may have drawn from them)
                set_rng_state(partial["rng"])
                t0, step_starts = time.perf_counter(), [time.perf_counter()]
            continue
        step_starts.append(time.perf_counter())
        batch = to_device(batch, device)
        last_micro = (i + 1) % accum == 0 or i + 1 == n_total
        # the epoch's last window may be short: average over the micro-batches it has, as one bigger batch would
        window = min(accum, n_total - (i // accum) * accum)
        loss = _backward(model, batch, i, wl, cfg, device, scaler, dist, sync=last_micro, window=window)
        if loss is None:  # not finite, and train.on_nan=skip_batch
            sums["skipped"] += 1
            optimizer.zero_grad(set_to_none=True)
            continue
        if last_micro:
            _optimizer_step(model, optimizer, scheduler, scaler, cfg.train.max_grad_norm)
        loss_value, batch_samples = loss.item(), _batch_size(batch)
        sums["loss_sum"] += loss_value
        sums["n_batches"] += 1
        sums["samples"] += batch_samples
        if on_step is not None:
            on_step(i + 1, n_total, loss_value, batch_samples)
        if after_step is not None and last_micro and i + 1 < n_total:
            step = i // accum + 1  # optimizer steps so far in this epoch
            after_step({"batches": i + 1, "step": step, **sums, "train_time_s": time_before + time.perf_counter() - t0})
    step_starts.append(time.perf_counter())
    if sums["skipped"] and not sums["n_batches"]:  # skip_batch must not turn a diverged run into "completed"
        raise NonFiniteLossError(
            f"all {sums['skipped']} batches of the epoch had a non-finite loss — lower train.lr or check the data for NaN/inf"
        )
    return {
        "train_loss": sums["loss_sum"] / max(sums["n_batches"], 1),
        "samples": sums["samples"],
        "train_time_s": time_before + step_starts[-1] - t0,
        "step_time_median_s": median_step_time(step_starts),
        "skipped_batches": sums["skipped"],
    }


def _backward(model, batch, index: int, wl, cfg, device, scaler, dist: bool, sync: bool, window: int):
    """One micro-batch's loss (None if not finite under skip_batch); gradients all-reduce only when ``sync``."""
    no_sync = dist and not sync and hasattr(model, "no_sync")
    with model.no_sync() if no_sync else contextlib.nullcontext():
        with autocast(cfg.train.precision, device):
            loss = wl.train_step(model, batch)
        finite = bool(torch.isfinite(loss.detach()))
        if dist and cfg.train.on_nan == "skip_batch":  # every rank must agree, or DDP's all-reduce hangs
            flag = torch.tensor([0.0 if finite else 1.0], device=device)
            torch.distributed.all_reduce(flag)
            finite = flag.item() == 0.0
        if not finite:
            if cfg.train.on_nan == "fail":
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at batch {index} — lower train.lr, or set train.on_nan=skip_batch"
                )
            return None
        scaler.scale(loss / window).backward()
    return loss


def _optimizer_step(model, optimizer, scheduler, scaler, max_norm: float) -> None:
    if max_norm > 0:  # on the true (unscaled, all-reduced) gradients
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


def median_step_time(step_starts: list[float], warmup: int = 3) -> float:
    """Median seconds per step, without the loader's start-up and (in a long epoch) the first ``warmup`` steps."""
    steps = np.diff(step_starts)[1:]
    if len(steps) > 2 * warmup:
        steps = steps[warmup:]
    return float(np.median(steps)) if len(steps) else float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    return 0


def elastic_batch_policy(cfg, world: int) -> tuple[Any, str]:
    """(step config, note): an elastic run on fewer workers accumulates ``ceil(max / world)``x to keep its batch."""
    if not config_lib.is_elastic(cfg.scaling):
        return cfg, ""
    low, high = config_lib.worker_range(cfg.scaling)
    factor = -(-high // max(1, world))
    train = cfg.train.model_copy(update={"grad_accum_steps": max(1, cfg.train.grad_accum_steps) * factor})
    note = f" (elastic {low}-{high}: {world} now, global batch kept by accumulating {factor}x)"
    return cfg.model_copy(update={"train": train}), note


# ----------------------------------------------------------------------------- where the loop runs: a Session
class TrainSession:
    """All the loop asks of Ray, here a Train worker's (jobs.train.LocalSession: local mode's; jobs.sweep.TuneSession:
    a trial's). Every rank calls ``report``, rank 0 with a temporary checkpoint folder to persist before returning."""

    def __init__(self):
        import ray.train.torch

        ctx, torch_ = ray.train.get_context(), ray.train.torch
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.run_name, storage = ctx.get_experiment_name(), ctx.get_storage()
        # as Train resolved it: absolute (the worker's cwd is not the driver's)
        self.storage_path = fs_uri(storage.storage_filesystem, storage.storage_fs_path)
        self.device, self.report, self.get_checkpoint = torch_.get_device(), ray.train.report, ray.train.get_checkpoint
        self.prepare_model, self.prepare_data_loader = torch_.prepare_model, torch_.prepare_data_loader


def train_loop_per_worker(config_dict: dict, session=None) -> None:
    """The Ray Train entry: ``{"config": the checked config, "_tracking": extra tracker tags}``."""
    for logger in train_report_loggers():  # Train logs every report at INFO; the per-epoch line says it better
        logger.setLevel(os.environ.get("PERENNIAL_TRAIN_LOG_LEVEL", "WARNING"))
    run(config_dict["config"], session or TrainSession(), config_dict.get("_tracking", {}))


def run(cfg, session, tags: dict | None = None) -> None:
    """Train ``cfg`` in this worker; an error closes the hooks as failed, a Tune stop (SystemExit) as stopped_early."""
    loop = Loop(cfg, session, tags or {})
    try:
        loop.fit()
    except BaseException as e:
        loop.call("on_exception", "stopped_early" if isinstance(e, SystemExit) else "failed")
        raise


# ----------------------------------------------------------------------------- the loop
class Loop:
    """One worker's run: setup steps, :meth:`run_epoch` per epoch, :meth:`finish`. Hooks read its attributes."""

    def __init__(self, cfg, session, tags: dict):
        self.cfg, self.session, self.tags = cfg, session, tags
        self.rank, self.world = session.world_rank, session.world_size
        self.dist = self.world > 1
        self.wl = workloads.module(cfg.workload)
        self.metric, self.mode = config_lib.metric_and_mode(cfg)
        self.hooks: list[hooks_lib.Hook] = []
        self.cpu0 = time.process_time()
        self.epoch = 0
        self.steps_this_attempt, self.last_checkpoint = 0, None  # optimizer steps this worker group trained

    def call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def fit(self) -> None:
        torch.set_num_threads(max(1, self.cfg.scaling.cpus_per_worker))  # threads = CPUs this worker holds
        self._setup_data()
        self._setup_model()
        self._restore()
        self._prepare_model()
        self._setup_optimizer()
        self._setup_hooks()
        start = self.meta["epoch"] if not self.meta.get("finished") else self.cfg.train.epochs
        for epoch in range(start, self.cfg.train.epochs):
            self.run_epoch(epoch)
            if self.stopped_early:
                break
        self.finish()

    # [1] setup: data and model, seeded (the same init on every rank)
    def _setup_data(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.train.seed)
        self.splits = self.wl.build_data(cfg)
        if cfg.continual.replay_data and cfg.continual.replay_fraction > 0:  # continual: a share of the parent's data
            old = self.wl.build_data(config_lib.with_data(cfg, cfg.continual.replay_data))
            self.splits.train = add_replay(self.splits, old, cfg.continual.replay_fraction, cfg.train.seed)

    def _setup_model(self) -> None:
        self.model = self.wl.build_model(self.cfg, self.splits)
        if self.cfg.continual.init_from:  # continual: start from the parent's export (local path or s3://)
            import ray.train

            with ray.train.Checkpoint(self.cfg.continual.init_from).as_directory() as d:
                self.model = load_export(self.wl, self.cfg, self.splits, d)

    def _restore(self) -> None:
        """A restarted worker group (or a resumed sweep trial) goes on from the session's checkpoint."""
        self.state, self.meta = None, {"epoch": 0, "history": [], "best_metric": None, "best_epoch": None}
        self.checkpoint = self.session.get_checkpoint()
        if self.checkpoint is not None:
            with self.checkpoint.as_directory() as d:
                self.meta = read_meta(d)
                if not self.meta.get("finished"):
                    self.state = load_state(d)
        state, meta = self.state, self.meta
        if state is not None and "model" in state:  # else sharded: loaded once sharded (_setup_optimizer)
            self.model.load_state_dict(state["model"])
        self.best_state = (state.get("best_model") or state.get("model")) if state and meta["best_epoch"] else None
        self.history, self.best_metric, self.best_epoch = meta["history"], meta["best_metric"], meta["best_epoch"]
        self.cpu_prior = meta.get("cpu_s", 0.0)  # CPU-seconds (all ranks) of earlier attempts of this run
        self.run_t0 = time.perf_counter() - (self.history[-1]["elapsed_s"] if self.history else 0.0)
        self.stopped_early = bool(meta.get("stopped_early"))
        self.last_attempt = {  # the worker group that finishes: where it started, what it trained
            "resumed_from": resumed_from(meta) if state is not None else "",
            "steps": 0,
            "preemption_watch_us_per_step": None,
        }
        self.partial = self._partial_epoch()

    def _partial_epoch(self) -> dict | None:
        """A mid-epoch checkpoint's epoch so far, with this rank's RNG states; None to start the epoch over."""
        partial = self.meta.get("partial") if self.state is not None else None
        if partial is None:
            return None
        if len(self.state["rng"]) != self.world:  # another worker count splits the batches otherwise: start over
            if self.rank == 0:
                log(
                    f"the epoch {partial['epoch'] + 1} checkpoint was written by {len(self.state['rng'])} workers: epoch restarts"
                )
            return None
        return partial | {"rng": self.state["rng"][self.rank]}

    def _prepare_model(self) -> None:
        """Wrap the model for this worker group (DDP through the session) and resolve the precision on its device."""
        cfg = self.cfg
        self.device = self.session.device
        cfg.train.precision = resolve_precision(cfg.train.precision, self.device)  # auto -> bf16 or fp32 here
        check_precision(cfg.train.precision, self.device)
        self.sharded = sharding.active(cfg)
        if self.sharded:
            self.model = sharding.shard(self.model, cfg.train.precision, self.device)
        else:
            self.model = self.session.prepare_model(self.model)
        self.step_cfg, elastic_note = elastic_batch_policy(cfg, self.world)  # the config the optimizer steps follow
        if self.rank == 0:
            backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
            log(
                f"{self.world} worker(s) on {self.device.type}, backend {backend}, precision {cfg.train.precision}, "
                f"grad_accum_steps {self.step_cfg.train.grad_accum_steps}"
                + elastic_note
                + (f", resumed from the {resumed_from(self.meta)} checkpoint" if self.state is not None else "")
            )
        self.workers = _all_gather(node_placement(self.rank), self.dist)  # where each rank runs: the runs row

    def _setup_optimizer(self) -> None:
        """Optimizer, train loader (its length sets the schedule), scheduler and loss scaler, restored if resumed."""
        cfg, wl, state, on_gpu = self.cfg, self.wl, self.state, self.device.type == "cuda"
        self.optimizer = (workloads.hook(wl, "build_optimizer") or make_optimizer)(cfg, unwrap(self.model))
        self.base_loader = train_loader(wl, cfg, self.splits)
        self.base_loader.pin_memory = on_gpu  # page-locked host batches: the host->GPU copy runs asynchronously
        self.loader = self.session.prepare_data_loader(self.base_loader, auto_transfer=on_gpu)
        build_scheduler = workloads.hook(wl, "build_scheduler")
        self.scheduler = build_scheduler(self.step_cfg, self.optimizer, len(self.loader)) if build_scheduler else None
        self.scaler = grad_scaler(cfg.train.precision, self.device)
        if state is not None:
            if "optimizer" in state:
                self.optimizer.load_state_dict(state["optimizer"])
            else:  # sharded (jobs/sharding.py), by any worker count: the model, optimizer and best weights
                with self.checkpoint.as_directory() as d:
                    best = sharding.load(d, self.model, self.optimizer)
                if self.meta["best_epoch"]:
                    self.best_state = best or {
                        k: v.detach().clone() for k, v in unwrap(self.model).state_dict().items()
                    }
            for key, part in (("scheduler", self.scheduler), ("scaler", self.scaler)):
                if part is not None and state.get(key):  # the scaler keeps its learned loss scale across a restart
                    part.load_state_dict(state[key])

    def _setup_hooks(self) -> None:
        self.hooks = hooks_lib.built_in(self.cfg, self.rank, self.dist, self.device)
        self.hooks += [hooks_lib.from_spec(spec) for spec in self.cfg.run.hooks]
        self.call("on_train_start")

    # [2] the epochs
    def run_epoch(self, epoch: int) -> None:
        """Train one epoch, validate it, report its checkpoint."""
        self.epoch = epoch
        for loader in (self.loader, self.base_loader):
            seed_epoch_order(loader, epoch, self.cfg.train.seed)  # both: Ray may have rebuilt the loader
        partial, self.partial = self.partial, None  # a mid-epoch checkpoint's epoch is the first one run
        stats = run_epoch(
            self.model,
            self.loader,
            self.optimizer,
            self.wl,
            self.step_cfg,
            self.device,
            self.scheduler,
            self.scaler,
            self.dist,
            on_step=lambda *args: self.call("on_batch_end", *args),
            after_step=self._after_step,
            partial=partial,
        )
        self.steps_this_attempt += 1  # the epoch's last optimizer step (after_step is not called for it)
        row = self._epoch_row(stats)
        improved = self.best_metric is None or (
            row[self.metric] > self.best_metric if self.mode == "max" else row[self.metric] < self.best_metric
        )
        if improved:  # snapshot: early stopping and the test score use the best epoch's weights
            self.best_metric, self.best_epoch = row[self.metric], epoch + 1
            self.best_state = {k: v.detach().cpu().clone() for k, v in unwrap(self.model).state_dict().items()}
        self.history.append(row)
        self.stopped_early = False
        self.call("on_evaluate", row)
        self.meta = self._epoch_meta()
        if self.rank == 0:
            log(_progress_line(row, self.cfg.train.epochs, self.metric, improved))
        name = f"epoch_{epoch + 1:04d}"
        self._report(row | {"best_metric": self.best_metric}, self.meta, self.train_state(), name)
        self.last_checkpoint = name
        self.call("on_epoch_end", row)

    def _after_step(self, so_far: dict) -> None:
        self.steps_this_attempt += 1
        self.call("on_step_end", so_far)

    def _epoch_row(self, stats: dict) -> dict:
        """The epoch's row of the history: train stats summed or averaged over the ranks, val metrics of rank 0."""
        val = {}
        if self.rank == 0 or self.sharded:  # full val set on rank 0 (every rank under FSDP: its forward is collective)
            metrics = score(self.wl, self.cfg, unwrap(self.model), self.splits, self.splits.val, self.device)
            val = {f"val_{k}": v for k, v in metrics.items()}
        ranks = _all_gather(stats | {"val": val, "peak_rss_mb": peak_rss_mb()}, self.dist)
        mean = {k: sum(r[k] for r in ranks) / self.world for k in ("train_time_s", "step_time_median_s")}
        row = {
            "epoch": self.epoch + 1,
            "train_loss": stats["train_loss"],
            **ranks[0]["val"],  # rank 0's
            "train_time_s": mean["train_time_s"],
            "samples_per_s": sum(r["samples"] for r in ranks) / max(mean["train_time_s"], 1e-9),
            "skipped_batches": stats["skipped_batches"],
            "step_time_median_s": mean["step_time_median_s"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),  # the largest worker
            "elapsed_s": time.perf_counter() - self.run_t0,
            "num_workers": self.world,  # this epoch's worker count (a run restarted on fewer nodes shows it)
        }
        if self.metric not in row:
            raise config_lib.ConfigError(
                f"metric '{self.metric}' is not reported by workload '{self.cfg.workload}' (it reports {sorted(row)})"
            )
        return row

    def _epoch_meta(self) -> dict:
        return {
            "epoch": self.epoch + 1,
            "history": self.history,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "metric": self.metric,
            "mode": self.mode,
            "stopped_early": self.stopped_early,
            "workers": self.workers,
            "precision": self.cfg.train.precision,  # as resolved on the worker (train.precision=auto)
            "cpu_s": self._cpu_s(),  # a stopped run's cost too
        }

    def _cpu_s(self) -> float:
        return self.cpu_prior + sum(_all_gather(time.process_time() - self.cpu0, self.dist))

    def train_state(self, mid_epoch: bool = False) -> dict:
        """What a checkpoint holds besides meta.json (best_model {} = the same as model)."""
        same_as_model = self.best_epoch == self.meta["epoch"] and not mid_epoch  # mid-epoch the model moved on
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "best_model": {} if same_as_model else (self.best_state or {}),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
        }

    def save_step_checkpoint(self, so_far: dict) -> tuple[str, float, float]:
        """Report a mid-epoch checkpoint, once per step (every rank at once): (name, seconds taken, when saved)."""
        name = f"epoch_{self.epoch + 1:04d}_step_{so_far['step']:06d}"
        if name == self.last_checkpoint:
            return name, 0.0, time.time()
        # meta's epoch and history stay the finished epochs': the store never gets a half-epoch row
        step_meta = self.meta | {"partial": so_far | {"epoch": self.epoch}}
        # each rank's own RNG states: they differ (rank 0 alone validates, and its val loader draws a seed)
        step_state = self.train_state(mid_epoch=True) | {"rng": _all_gather(rng_state(), self.dist)}
        loss = so_far["loss_sum"] / max(so_far["n_batches"], 1)
        t_wall = time.time()
        metrics = {"epoch": self.epoch, "step": so_far["step"], "train_loss": loss, "mid_epoch": True}
        self._report(metrics, step_meta, step_state, name)
        self.last_checkpoint, saved_at = name, time.time()
        if self.rank == 0:
            log(f"  checkpoint {name} ({saved_at - t_wall:.2f} s)")
        return name, saved_at - t_wall, saved_at

    def _report(self, metrics: dict, meta: dict, state: dict, name: str) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            if self.sharded:  # every rank writes its shard and reports its folder; Train merges them
                state = sharding.save(tmp, self.model, self.optimizer, state)
            if self.rank == 0:  # state.pt before meta.json: meta.json marks the folder whole
                torch.save(state, Path(tmp, STATE))
                Path(tmp, META).write_text(json.dumps(meta, default=float))
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if self.sharded or self.rank == 0 else None
            self.session.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    # [3] finish: best weights -> test split -> export -> final report
    def finish(self) -> None:
        self.last_attempt["steps"] = self.steps_this_attempt
        self.call("on_train_end")
        watch_us = self.last_attempt["preemption_watch_us_per_step"]
        if self.rank == 0:  # steps redone after a restart; the watch's cost per step (docs/cluster.md)
            log(
                f"{self.steps_this_attempt} optimizer steps trained by this worker group"
                + (f", preemption watch {watch_us:.1f} us/step" if watch_us is not None else "")
            )
        if self.best_state:
            unwrap(self.model).load_state_dict(self.best_state)
        if self.sharded:  # the test score and the export need the whole model: gathered once, on rank 0
            self.model = sharding.gather(self.model, lambda: self.wl.build_model(self.cfg, self.splits), self.rank)
        best_row = next(h for h in self.history if h["epoch"] == self.best_epoch)  # epochs >= 1: there is one
        final = {"epoch": self.meta["epoch"], "best_metric": self.best_metric, "best_epoch": self.best_epoch}
        final |= {k: v for k, v in best_row.items() if k.startswith("val_")}
        final |= {"cpu_s": self._cpu_s(), "train_time_s": sum(h["train_time_s"] for h in self.history)}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = self._final_checkpoint(final, Path(tmp)) if self.rank == 0 else None
            final = _all_gather(final, self.dist)[0]
            metrics = final | {self.metric: self.best_metric, "final": True}
            self.session.report(metrics, checkpoint=checkpoint, checkpoint_dir_name="final")
            self.call("on_final", final, Path(tmp, EXPORT))

    def _final_checkpoint(self, final: dict, tmp: Path):
        """Rank 0: the test split's metrics into ``final``, the export and meta.json into ``tmp``."""
        import ray.train

        model, splits, device = unwrap(self.model), self.splits, self.device
        if splits.test is not None:
            metrics = score(self.wl, self.cfg, model, splits, splits.test, device)
            final.update({f"test_{k}": v for k, v in metrics.items()})
            log("test: " + "  ".join(f"{k} {v:.4f}" for k, v in final.items() if k.startswith("test_")))
        export_model(self.wl, model.cpu(), self.cfg, splits, tmp / EXPORT)  # cpu(): a no-op on CPU
        meta_final = self.meta | {
            "finished": True,
            "final": final,
            "fingerprint": splits.fingerprint,
            "labels": splits.labels,
            "cpu_s": final["cpu_s"],
            "last_attempt": self.last_attempt,
        }
        (tmp / META).write_text(json.dumps(meta_final, default=float))
        return ray.train.Checkpoint.from_directory(str(tmp))


# ----------------------------------------------------------------------------- small parts of the loop
def node_placement(rank: int) -> dict:
    """This worker's rank, Ray node id and node type (the autoscaler sets RAY_NODE_TYPE_NAME on nodes it starts)."""
    import ray

    # local mode starts no Ray: asking the runtime context would start a cluster
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return {"rank": rank, "node_id": node_id, "node_type": os.environ.get("RAY_NODE_TYPE_NAME", "")}


def _all_gather(obj: Any, dist: bool) -> list:
    if not dist:
        return [obj]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _progress_line(row: dict, epochs: int, metric: str, improved: bool) -> str:
    vals = "  ".join(
        f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and isinstance(v, float) and not math.isnan(v)
    )
    return (
        f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  {vals}  "
        f"({row['train_time_s']:.1f} s, {row['samples_per_s']:.0f} samples/s){' *' if improved else ''}"
    )
