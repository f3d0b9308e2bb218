"""Config: a YAML file over typed defaults, then trailing ``key=value`` overrides; checked once, on the driver.

    cfg = load_config("configs/mlp.yaml", ["train.lr=0.01", "scaling.num_workers=2"])
    python -m jobs.config --schema --workload ner > ner.schema.json   # for an editor to check configs/*.yaml

The workload's sections (``data``, ``model``, ``train``) plus the job sections here, all pydantic models; the
first finding becomes one :class:`ConfigError` line (exit 2).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import AfterValidator, Field

import workloads
from jobs.errors import ConfigError, DataError, UserError, cli_main  # noqa: F401 — re-exported for the verbs
from workloads import WORKLOADS, Section


def check_num_workers(n):
    fix = "set e.g. scaling.num_workers=2, or scaling.num_workers=[1,4] for an elastic run"
    if isinstance(n, list):
        if len(n) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in n):
            raise ConfigError(f"scaling.num_workers as a list must be [min, max], two integers, got {n} — {fix}")
        if not 1 <= n[0] <= n[1]:
            raise ConfigError(f"scaling.num_workers=[min, max] needs 1 <= min <= max, got {n} — {fix}")
    elif n < 1:  # pydantic made it an int
        raise ConfigError(f"scaling.num_workers must be >= 1, got {n} — {fix}")
    return n


class Scaling(Section):
    # Ray Train workers (DDP ranks); [min, max] = elastic (docs/cluster.md#elastic-workers)
    num_workers: Annotated[int | list, AfterValidator(check_num_workers)] = 1
    use_gpu: bool = False  # one GPU per worker; NCCL backend
    cpus_per_worker: int = Field(1, ge=0)  # Ray CPUs per worker = torch threads in that worker
    gpus_per_worker: float = Field(1.0, ge=0)  # only with use_gpu
    placement_strategy: Literal["PACK", "STRICT_PACK", "SPREAD"] = "PACK"  # fewest nodes | one node or wait | spread
    node_type: str = ""  # a cluster.yaml worker type (gpu_4x): every worker asks for that type's own resource
    elastic_resize_interval_s: float = Field(60.0, ge=0)  # elastic runs: how often a running worker group may grow
    local_mode: Literal["auto", "always", "never"] = "auto"  # auto: 1 worker, no cluster -> Train local mode
    strategy: Literal["ddp", "fsdp"] = "ddp"  # ddp: a full replica per worker; fsdp: FSDP2 shards (jobs/sharding.py)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 where the device runs it natively (jobs.loop)
NODE_TYPE_SHARE = 0.01  # one worker's share of its node's {<type>: 1}: up to 100 workers fit a node


def worker_range(s: Scaling) -> tuple[int, int]:
    n = s.num_workers
    return (n, n) if isinstance(n, int) else tuple(n)


def max_workers(s: Scaling) -> int:
    return worker_range(s)[1]


def is_elastic(s: Scaling) -> bool:
    return worker_range(s)[0] != worker_range(s)[1]


def one_worker(s: Scaling) -> bool:
    return worker_range(s) == (1, 1)


def worker_resources(s: Scaling) -> dict:
    resources = {"CPU": s.cpus_per_worker} | ({"GPU": s.gpus_per_worker} if s.use_gpu else {})
    return resources | ({s.node_type: NODE_TYPE_SHARE} if s.node_type else {})


class Failure(Section):
    max_failures: int = Field(0, ge=-1)  # worker-group restarts, each from the last checkpoint (-1 = forever)


class Run(Section):
    storage_path: str = "./runs"  # Ray Train checkpoints: local dir or s3://bucket/prefix
    num_to_keep: int = Field(2, ge=1)  # epoch checkpoints kept per run (the export is kept apart)
    hooks: list[str] = []  # extra loop hooks, "module:Class?key=value" (docs/architecture.md)


class Store(Section):
    path: str = ""  # evaluation store; empty = $PERENNIAL_STORE or ./store


class Sweep(Section):
    search_space: dict = {}  # {"train.lr": {"loguniform": [1e-4, 1e-2]}}
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["asha", "fifo"] = "asha"
    num_samples: int = Field(8, ge=1)  # trials (for grid: repeats of the whole grid)
    max_concurrent_trials: int = Field(0, ge=0)  # 0 = derived from cluster resources and scaling
    metric: str = ""  # empty = the workload's METRIC
    mode: Literal["", "max", "min"] = ""  # empty = the workload's MODE
    grace_period: int = Field(1, ge=1)  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = Field(3, ge=2)  # ASHA: keep the top 1/reduction_factor at each rung
    seed: int = 0  # search algorithm seed
    in_process: bool = True  # 1-worker trials run the loop in the trial's own process: no Train worker-group start-up
    trial_overrides: dict = {}  # {"train.epochs": 6}: every trial's budget, not the final run's


class Continual(Section):
    replay_fraction: float = Field(0.0, ge=0, le=1)  # share of the parent's training data mixed into a new round
    init_from: str = ""  # a stored run's export (local path or s3://) the model starts from; set by jobs.continual
    replay_data: dict = {}  # the parent's `data` section, replayed with replay_fraction


class Log(Section):
    every_s: float = Field(30.0, ge=0)  # rank 0 prints a progress line this often within an epoch (0 = off)
    every_steps: int = Field(50, ge=0)  # train loss and lr go to TensorBoard / MLflow / W&B every this many steps


class Tracking(Section):
    tensorboard: bool = True  # event files in <run.storage_path>/<run_id>/tensorboard (extra: tensorboard)
    mlflow_uri: str = ""  # e.g. sqlite:///mlflow.db, file:./mlruns or http://host:5000; empty = off (extra: mlflow)
    wandb_project: str = ""  # empty = off (extra: wandb); WANDB_API_KEY, or wandb_mode=offline
    wandb_mode: Literal["", "online", "offline", "disabled"] = ""  # empty = $WANDB_MODE, else online
    experiment: str = ""  # MLflow experiment name; empty = the workload's name
    log_model: bool = True  # MLflow: the final export as the run's artifact "export"


JOB_SECTIONS = {cls.__name__.lower(): cls for cls in (Scaling, Failure, Run, Sweep, Store, Continual, Log, Tracking)}

# tracking.<key> -> the module it needs, which the extra of the same name installs
TRACKER_MODULES = {"tensorboard": "tensorboard", "mlflow_uri": "mlflow", "wandb_project": "wandb"}


class JobConfig(Section):
    def __reduce__(self):  # the class is made per workload: a worker rebuilds it by name, then takes the values
        return _bare_config, (self.workload, self.workload_dir), self.__getstate__()


def _bare_config(workload: str, workload_dir: str):
    if workload_dir and os.path.isdir(workload_dir):  # an external workload, importable on this worker
        workloads.add_to_path(workload_dir)
    cls = config_class(workload)
    return cls.__new__(cls)


@functools.cache  # one class per workload, so configs compare equal and pickle by the same class
def config_class(workload: str) -> type[JobConfig]:
    fields: dict[str, Any] = {
        "workload": (str, workload),
        "workload_dir": (str, ""),  # where an external workload module is imported from
    }
    fields |= {name: (f.annotation, f) for name, f in workloads.sections(workloads.module(workload).Config).items()}
    fields |= {name: (cls, cls()) for name, cls in JOB_SECTIONS.items()}
    return pydantic.create_model(f"{workload.replace('.', '_').capitalize()}Config", __base__=JobConfig, **fields)


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), smoke_test: bool = False):
    raw: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file '{path}' not found — pass an existing YAML, e.g. --config configs/mlp.yaml")
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(
                f"config file '{path}'{where} is not valid YAML ({getattr(e, 'problem', e)}) — fix the syntax"
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{path}' must be a YAML mapping of sections, got {type(raw).__name__}")
    pairs = [_split_override(o) for o in overrides]
    workload = dict(pairs).get("workload", raw.get("workload"))  # `workload=...` may come from the command line
    if not workload:
        raise ConfigError(f"no workload given — add 'workload: <name>' to the config, one of {sorted(WORKLOADS)}")
    if not isinstance(workload, str):
        raise ConfigError(f"'workload' must be a string naming a workload, got {workload!r}")
    name, module = workloads.resolve(workload, Path(path).parent if path is not None else None)
    raw["workload"] = name
    raw["workload_dir"] = "" if name in WORKLOADS else workloads.module_root(module)
    smoke = list((workloads.hook(module, "SMOKE_TEST") or {}).items()) if smoke_test else []
    for key, value in smoke + [(k, v) for k, v in pairs if k != "workload"]:
        _set_dotted(raw, key, value)
    return absolutize_paths(from_dict(raw))


def absolutize_paths(cfg):
    """Relative local paths in ``data``/``model`` made absolute: workers run in another working directory."""
    for section in (getattr(cfg, "data", None), getattr(cfg, "model", None)):
        for name in section_fields(section):
            value = getattr(section, name)
            if isinstance(value, str) and "://" not in value and not os.path.isabs(value) and os.path.exists(value):
                setattr(section, name, os.path.abspath(value))
    return cfg


def from_dict(raw: dict):
    """Typed, checked config from a plain dict (as :func:`to_dict` returns)."""
    if raw.get("workload_dir") and os.path.isdir(raw["workload_dir"]):  # jobs.evaluate of a stored run
        workloads.add_to_path(raw["workload_dir"])
    cls = config_class(raw["workload"])
    try:
        return cls.model_validate(raw)
    except pydantic.ValidationError as e:
        raise _one_line(cls, e.errors()[0]) from None


def to_dict(cfg) -> dict:
    return cfg.model_dump()


def section_fields(obj) -> dict[str, Any]:
    """A section's (or a whole config's) keys -> their types; {} for a value."""
    cls = obj if isinstance(obj, type) else type(obj)
    return {name: f.annotation for name, f in workloads.sections(cls).items()}


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 0.001, ...}`` — the hyperparameters of a run (dicts and lists as JSON)."""
    skip = () if prefix else ("sweep", "store", "workload", "log", "tracking", "workload_dir")
    out: dict[str, Any] = {}
    for name in (n for n in section_fields(cfg) if n not in skip):
        key, value = f"{prefix}{name}", getattr(cfg, name)
        if section_fields(value):
            out |= flatten(value, f"{key}.")
        else:
            out[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value
    return out


def with_data(cfg, data: dict):
    return from_dict(to_dict(cfg) | {"data": data})


def set_dotted(cfg, key: str, value: Any):
    """A new typed config with one dotted key changed, checked like an override."""
    raw = to_dict(cfg)
    _set_dotted(raw, key, value)
    return from_dict(raw)


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
    parts, node = key.split("."), raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(
                f"override '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section — set it as {'.'.join(parts[: i + 1])}=VALUE"
            )
        node = nxt
    node[parts[-1]] = value


TYPE_WORDS = {  # pydantic's error type starts with the key -> what the value must be
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "dict": "a mapping",
    "list": "a list",
    "model": "a section (mapping)",
}
SIGNS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _one_line(cls: type, err: dict) -> ConfigError:
    if isinstance(cause := err.get("ctx", {}).get("error"), ConfigError):  # a field validator's own message
        return cause
    names, section = [], cls
    for part in err["loc"]:  # ("train", "lr") -> train.lr; union members and list indexes are not keys
        fields = section_fields(section)
        if part not in fields:
            break
        names.append(part)
        section = fields[part]
    key, kind, got = ".".join(names), err["type"], err.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        where = key or "the top level"
        unknown = f"{key}.{err['loc'][len(names)]}" if key else err["loc"][0]
        valid = ", ".join(sorted(section_fields(section)))
        return ConfigError(f"unknown config key '{unknown}' — valid keys in {where}: {valid}")
    if kind in SIGNS:  # ctx holds the one bound: {"ge": 0}
        return ConfigError(f"{key} must be {SIGNS[kind]} {next(iter(err['ctx'].values()))}, got {got!r}")
    if kind == "literal_error":
        choices = [c.strip("'") for c in re.split(r", | or ", err["ctx"]["expected"]) if c != "''"]
        return ConfigError(f"{key} must be {', '.join(choices[:-1])} or {choices[-1]}, got {got!r}")
    if words := next((w for t, w in TYPE_WORDS.items() if kind.startswith(t)), None):
        return ConfigError(f"config key '{key}' must be {words}, got {got!r}")
    return ConfigError(f"config key '{key}': {err['msg']}, got {got!r} — fix the value in the config or the override")


def metric_and_mode(cfg) -> tuple[str, str]:
    wl = workloads.module(cfg.workload)
    return cfg.sweep.metric or wl.METRIC, cfg.sweep.mode or wl.MODE


def check_values(cfg) -> None:
    """What one key's type and bounds cannot say, and each configured tracker installed: on the driver, exit 2."""
    s = cfg.scaling
    if s.local_mode == "always" and not one_worker(s):
        raise ConfigError(
            f"scaling.local_mode=always runs one worker in this process, but scaling.num_workers={s.num_workers}"
            " — set scaling.num_workers=1 or scaling.local_mode=auto"
        )
    if s.node_type and (s.node_type in ("CPU", "GPU", "memory") or not re.fullmatch(r"[A-Za-z0-9_-]+", s.node_type)):
        raise ConfigError(
            f"scaling.node_type must name a worker type of cluster.yaml (e.g. gpu_4x), got '{s.node_type}'"
        )
    for name, module in TRACKER_MODULES.items():
        key = f"tracking.{name}"
        if getattr(cfg.tracking, name) and importlib.util.find_spec(module) is None:
            off = f"{key}=false" if name == "tensorboard" else f"{key}="
            raise ConfigError(f"{key} is set but {module} is not installed — pip install -e .[{module}], or set {off}")


def schema(workload: str) -> dict:
    return config_class(workloads.resolve(workload)[0]).model_json_schema()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.config", description=__doc__.splitlines()[0])
    parser.add_argument("--schema", action="store_true", help="print the JSON schema of a config")
    parser.add_argument("--workload", default="mlp", help="whose data/model/train sections (default: mlp)")
    args = parser.parse_args(argv)
    if not args.schema:
        parser.error("give --schema")
    print(json.dumps(schema(args.workload), indent=2))
    return 0


if __name__ == "__main__":
    cli_main(main)
