"""Config: a YAML file over typed dataclass defaults, then trailing ``key=value`` overrides.

    cfg = load_config("configs/mlp.yaml", ["train.lr=0.01", "scaling.num_workers=2"])
    cfg.train.lr, cfg.scaling.num_workers, cfg.workload

A config has the workload's own sections (``data``, ``model``, ``train``: the dataclasses in
``workloads/<name>.py``) plus the job sections defined here (``scaling``, ``failure``, ``run``,
``sweep``, ``store``, ``continual``, ``log``, ``tracking``). Unknown keys and wrong types raise
:class:`ConfigError` with a one-line message that names the key and the fix; every ``jobs.*`` verb turns that into
exit code 2 (see :func:`cli_main`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import workloads
from jobs.errors import ConfigError, DataError, UserError, cli_main  # noqa: F401 — re-exported for the verbs
from workloads import WORKLOADS


# ----------------------------------------------------------------------------- job sections
@dataclass
class Scaling:
    num_workers: int | list = 1  # Ray Train workers (DDP ranks); [min, max] = elastic (docs/cluster.md#elastic-workers)
    use_gpu: bool = False  # one GPU per worker; NCCL backend
    cpus_per_worker: int = 1  # Ray CPUs per worker = torch threads in that worker
    gpus_per_worker: float = 1.0  # only with use_gpu
    placement_strategy: str = "PACK"  # PACK: fewest nodes | STRICT_PACK: one node or wait | SPREAD: one per node
    node_type: str = ""  # a cluster.yaml worker type (gpu_4x): every worker asks for that type's own resource
    elastic_resize_interval_s: float = 60.0  # elastic runs: how often a running worker group may grow
    local_mode: str = (
        "auto"  # auto: 1 worker, no cluster -> the loop runs in the driver (Ray Train local mode) | always | never
    )


PLACEMENT_STRATEGIES = ("PACK", "STRICT_PACK", "SPREAD")
LOCAL_MODES = ("auto", "always", "never")
PRECISIONS = (
    "auto",
    "fp32",
    "bf16",
    "fp16",
)  # auto: bf16 where the device runs it natively (jobs.loop.resolve_precision)
NODE_TYPE_SHARE = 0.01  # one worker's share of its node's {<type>: 1}: up to 100 workers fit a node


def worker_range(s: Scaling) -> tuple[int, int]:
    """(min, max) workers: ``scaling.num_workers`` N is (N, N); [min, max] is an elastic run."""
    n = s.num_workers
    return (n, n) if isinstance(n, int) else (int(n[0]), int(n[1]))


def max_workers(s: Scaling) -> int:
    return worker_range(s)[1]


def is_elastic(s: Scaling) -> bool:
    low, high = worker_range(s)
    return low != high


def one_worker(s: Scaling) -> bool:
    """Exactly one worker (``1`` or ``[1, 1]``): what local mode and in-process sweep trials run."""
    return worker_range(s) == (1, 1)


def worker_resources(s: Scaling) -> dict:
    """What one Ray Train worker holds: its CPUs, its GPU share with use_gpu, and its node type's resource."""
    resources = {"CPU": s.cpus_per_worker} | ({"GPU": s.gpus_per_worker} if s.use_gpu else {})
    return resources | ({s.node_type: NODE_TYPE_SHARE} if s.node_type else {})


@dataclass
class Failure:
    max_failures: int = 0  # worker-group restarts, each from the last checkpoint (-1 = forever)


@dataclass
class Run:
    storage_path: str = "./runs"  # Ray Train checkpoints: local dir or s3://bucket/prefix
    num_to_keep: int = 2  # epoch checkpoints kept per run (the export is kept apart)
    hooks: list = field(default_factory=list)  # extra loop hooks, "module:Class?key=value" (docs/architecture.md)


@dataclass
class Store:
    path: str = ""  # evaluation store; empty = $PERENNIAL_STORE or ./store


@dataclass
class Sweep:
    search_space: dict = field(default_factory=dict)  # {"train.lr": {"loguniform": [1e-4, 1e-2]}}
    search: str = "random"  # random | grid | optuna
    scheduler: str = "asha"  # asha | fifo
    num_samples: int = 8  # trials (for grid: repeats of the whole grid)
    max_concurrent_trials: int = 0  # 0 = derived from cluster resources and scaling
    metric: str = ""  # empty = the workload's METRIC
    mode: str = ""  # empty = the workload's MODE
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = 3  # ASHA: keep the top 1/reduction_factor at each rung
    seed: int = 0  # search algorithm seed
    in_process: bool = True  # 1-worker trials run the loop in the trial's own process: no Train worker-group start-up
    trial_overrides: dict = field(
        default_factory=dict
    )  # {"train.epochs": 6}: every trial's budget, not the final run's


@dataclass
class Continual:
    replay_fraction: float = 0.0  # share of the parent's training data mixed into a new round
    init_from: str = ""  # a stored run's export (local path or s3://) the model starts from; set by jobs.continual
    replay_data: dict = field(default_factory=dict)  # the parent's `data` section, replayed with replay_fraction


@dataclass
class Log:
    every_s: float = 30.0  # rank 0 prints a progress line this often within an epoch (0 = off; a bar on a TTY)
    every_steps: int = 50  # train loss and lr go to TensorBoard / MLflow / W&B every this many steps (0 = off)


@dataclass
class Tracking:
    tensorboard: bool = True  # event files in <run.storage_path>/<run_id>/tensorboard (extra: tensorboard)
    mlflow_uri: str = ""  # e.g. sqlite:///mlflow.db, file:./mlruns or http://host:5000; empty = off (extra: mlflow)
    wandb_project: str = ""  # empty = off (extra: wandb); WANDB_API_KEY, or wandb_mode=offline
    wandb_mode: str = ""  # online | offline | disabled; empty = $WANDB_MODE, else online
    experiment: str = ""  # MLflow experiment name; empty = the workload's name
    log_model: bool = True  # MLflow: the final export as the run's artifact "export"


JOB_SECTIONS: dict[str, type] = {
    "scaling": Scaling,
    "failure": Failure,
    "run": Run,
    "sweep": Sweep,
    "store": Store,
    "continual": Continual,
    "log": Log,
    "tracking": Tracking,
}

TRACKER_EXTRAS = {  # config key -> (module it needs, the extra that installs it)
    "tracking.tensorboard": ("tensorboard", "tensorboard"),
    "tracking.mlflow_uri": ("mlflow", "mlflow"),
    "tracking.wandb_project": ("wandb", "wandb"),
}


# ----------------------------------------------------------------------------- building
@functools.cache  # one class per workload, so configs compare equal and pickle by the same class
def config_class(workload: str) -> type:
    """The dataclass of a full config for ``workload`` (a resolved name): its sections plus the job sections."""
    wl_config = workloads.module(workload).Config
    hints = typing.get_type_hints(wl_config)  # resolves `from __future__ import annotations` strings
    specs: list[tuple[str, Any, Any]] = [
        ("workload", str, field(default=workload)),
        ("workload_dir", str, field(default="")),  # where an external workload module is imported from
    ]
    for f in dataclasses.fields(wl_config):
        specs.append((f.name, hints[f.name], field(default_factory=f.default_factory)))
    for name, cls in JOB_SECTIONS.items():
        specs.append((name, cls, field(default_factory=cls)))
    return dataclasses.make_dataclass(f"{workload.capitalize()}JobConfig", specs)


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), smoke_test: bool = False):
    """Read ``path`` (YAML), apply the workload's smoke-test overrides if asked, then ``overrides``."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' not found — pass an existing YAML, e.g. --config configs/mlp.yaml")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(
                f"config file '{path}'{where} is not valid YAML ({getattr(e, 'problem', e)}) — fix the syntax"
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{path}' must be a YAML mapping of sections, got {type(raw).__name__}")
    pairs = [_split_override(o) for o in overrides]
    workload = raw.get("workload")
    for key, value in pairs:  # `workload=...` may come from the command line
        if key == "workload":
            workload = value
    if not workload:
        raise ConfigError(f"no workload given — add 'workload: <name>' to the config, one of {sorted(WORKLOADS)}")
    if not isinstance(workload, str):
        raise ConfigError(f"'workload' must be a string naming a workload, got {workload!r}")
    name, module = workloads.resolve(workload, Path(path).parent if path is not None else None)
    pairs = [(k, v) for k, v in pairs if k != "workload"]
    raw["workload"] = name
    raw["workload_dir"] = "" if name in WORKLOADS else workloads.module_root(module)
    if smoke_test:
        smoke = workloads.hook(module, "SMOKE_TEST") or {}
        pairs = [(k, v) for k, v in smoke.items()] + pairs
    for key, value in pairs:
        _set_dotted(raw, key, value)
    return absolutize_paths(from_dict(raw))


def absolutize_paths(cfg):
    """Relative local paths in ``data``/``model`` made absolute: Ray Train workers (and Ray jobs) run in
    another working directory than the driver that parsed the config."""
    for section in ("data", "model"):
        obj = getattr(cfg, section, None)
        if obj is None or not dataclasses.is_dataclass(obj):
            continue
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if (
                isinstance(value, str)
                and value
                and "://" not in value
                and not os.path.isabs(value)
                and os.path.exists(value)
            ):
                setattr(obj, f.name, os.path.abspath(value))
    return cfg


def from_dict(raw: dict):
    """Typed config from a plain dict (as :func:`to_dict` returns); raises :class:`ConfigError`."""
    workload = raw.get("workload")
    if not isinstance(workload, str):
        raise ConfigError("'workload' must be a string naming a workload")
    if raw.get("workload_dir") and os.path.isdir(raw["workload_dir"]):  # a worker, or jobs.evaluate of a stored run
        workloads.add_to_path(raw["workload_dir"])
    return _build(config_class(workload), raw, "")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flatten(cfg, sections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``{"train.lr": 0.001, ...}`` — the hyperparameters of a run (dicts and lists as JSON)."""
    out: dict[str, Any] = {}
    keep = sections or tuple(
        f.name
        for f in dataclasses.fields(cfg)
        if f.name not in ("sweep", "store", "workload", "log", "tracking", "workload_dir")
    )

    def walk(prefix: str, obj: Any) -> None:
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(f"{prefix}.{f.name}" if prefix else f.name, getattr(obj, f.name))
        elif isinstance(obj, (dict, list, tuple)):
            out[prefix] = json.dumps(obj, sort_keys=True)
        else:
            out[prefix] = obj

    for name in keep:
        walk(name, getattr(cfg, name))
    return out


def with_data(cfg, data: dict):
    """``cfg`` with its ``data`` section replaced (e.g. a parent run's data, read by this round's model settings)."""
    return from_dict(to_dict(cfg) | {"data": data})


def set_dotted(cfg, key: str, value: Any):
    """A new typed config with one dotted key changed (type-checked like an override)."""
    raw = to_dict(cfg)
    _set_dotted(raw, key, value)
    return from_dict(raw)


# ----------------------------------------------------------------------------- internals
def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override '{text}' is not key=value — write e.g. train.lr=0.01")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(
                f"override '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section — set it as {'.'.join(parts[: i + 1])}=VALUE"
            )
        node = nxt
    node[parts[-1]] = value


def _build(cls: type, raw: Any, path: str):
    where = path.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where}' must be a section (mapping), got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{path}{key}' — valid keys in {where}: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(hints[key], value, f"{path}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) > 1 and isinstance(value, list) and list in args:  # int | list: [min, max] and the like
            return _coerce(list, value, key)
        return _coerce(args[0], value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e5` and `1e-4` (no dot) as strings
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. data.train=2024 from a key=value override
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, list):
            return value
        raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
    return value


USER_ERRORS = (UserError,)


def metric_and_mode(cfg) -> tuple[str, str]:
    """The metric a run optimises: the sweep's override, else the workload's METRIC/MODE."""
    wl = workloads.module(cfg.workload)
    mode = cfg.sweep.mode or wl.MODE
    if mode not in ("max", "min"):
        raise ConfigError(f"sweep.mode must be max or min, got '{mode}'")
    return cfg.sweep.metric or wl.METRIC, mode


def check_values(cfg) -> None:
    """Value checks the types cannot express, made on the driver before Ray starts (a bad value found
    inside a Train worker would cost a cluster start and end as a failed run, exit 1, not exit 2)."""
    s, t = cfg.scaling, cfg.train
    check_num_workers(s.num_workers)
    for key, value, low in (
        ("scaling.cpus_per_worker", s.cpus_per_worker, 0),
        ("failure.max_failures", cfg.failure.max_failures, -1),
        ("train.epochs", t.epochs, 1),
        ("train.batch_size", t.batch_size, 1),
        ("train.grad_accum_steps", t.grad_accum_steps, 1),
    ):
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value} — set e.g. {key}={max(low, 1)}")
    if s.local_mode not in LOCAL_MODES:
        raise ConfigError(f"scaling.local_mode must be one of {', '.join(LOCAL_MODES)}, got '{s.local_mode}'")
    if s.elastic_resize_interval_s < 0:
        raise ConfigError(f"scaling.elastic_resize_interval_s must be >= 0, got {s.elastic_resize_interval_s}")
    if s.local_mode == "always" and not one_worker(s):
        raise ConfigError(
            f"scaling.local_mode=always runs one worker in this process, but scaling.num_workers={s.num_workers}"
            " — set scaling.num_workers=1 or scaling.local_mode=auto"
        )
    if s.placement_strategy not in PLACEMENT_STRATEGIES:
        raise ConfigError(
            f"scaling.placement_strategy must be one of {', '.join(PLACEMENT_STRATEGIES)}, got '{s.placement_strategy}'"
        )
    if s.node_type and (s.node_type in ("CPU", "GPU", "memory") or not re.fullmatch(r"[A-Za-z0-9_-]+", s.node_type)):
        raise ConfigError(
            f"scaling.node_type must name a worker type of cluster.yaml (e.g. gpu_4x), got '{s.node_type}'"
        )
    if t.checkpoint_every_steps < 0:
        raise ConfigError(
            f"train.checkpoint_every_steps must be >= 0 (0 = a checkpoint per epoch only), got {t.checkpoint_every_steps}"
            " — set e.g. train.checkpoint_every_steps=500"
        )
    if t.max_grad_norm < 0:
        raise ConfigError(f"train.max_grad_norm must be >= 0 (0 turns clipping off), got {t.max_grad_norm}")
    if t.on_nan not in ("fail", "skip_batch"):
        raise ConfigError(f"train.on_nan must be fail or skip_batch, got '{t.on_nan}'")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be {', '.join(PRECISIONS[:-1])} or fp16, got '{t.precision}'")
    if not 0.0 <= cfg.continual.replay_fraction <= 1.0:
        raise ConfigError(f"continual.replay_fraction must be between 0 and 1, got {cfg.continual.replay_fraction}")
    metric_and_mode(cfg)
    check_tracking(cfg)


def check_num_workers(n) -> None:
    """``scaling.num_workers``: an integer >= 1, or [min, max] with 1 <= min <= max (an elastic run)."""
    fix = "set e.g. scaling.num_workers=2, or scaling.num_workers=[1,4] for an elastic run"
    if isinstance(n, list):
        if len(n) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in n):
            raise ConfigError(f"scaling.num_workers as a list must be [min, max], two integers, got {n} — {fix}")
        if not 1 <= n[0] <= n[1]:
            raise ConfigError(f"scaling.num_workers=[min, max] needs 1 <= min <= max, got {n} — {fix}")
    elif isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"scaling.num_workers must be >= 1, got {n} — {fix}")


def check_tracking(cfg) -> None:
    """``log`` values, and each configured tracker's package installed (else the extra that installs it)."""
    import importlib.util

    if cfg.log.every_s < 0 or cfg.log.every_steps < 0:
        raise ConfigError(
            f"log.every_s and log.every_steps must be >= 0 (0 = off), got {cfg.log.every_s} and {cfg.log.every_steps}"
        )
    if cfg.tracking.wandb_mode not in ("", "online", "offline", "disabled"):
        raise ConfigError(f"tracking.wandb_mode must be online, offline or disabled, got '{cfg.tracking.wandb_mode}'")
    for key, (module, extra) in TRACKER_EXTRAS.items():
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) and importlib.util.find_spec(module) is None:
            off = f"{key}=false" if name == "tensorboard" else f"{key}="
            raise ConfigError(f"{key} is set but {module} is not installed — pip install -e .[{extra}], or set {off}")
