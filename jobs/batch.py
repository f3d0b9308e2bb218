"""A batch of jobs (``python -m jobs.submit batch FILE``): its file, what each driver asks Ray for, which failures
are retried (docs/jobs.md). A batch file holds entries, a grid, or both:

    verb: train                      # train (default) or sweep, for every job
    smoke_test: true                 # the workloads' tiny mode, for every job
    jobs:                            # one job per entry
      - {config: configs/mlp.yaml, overrides: [train.lr=0.01]}
    grid:                            # one job per config and combination of values
      configs: [configs/mlp.yaml, configs/cnn.yaml]
      overrides: {train.seed: [1, 2, 3]}
"""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import yaml

from jobs.errors import LOST_NODE_EXIT, ConfigError

JOB_SLOT = "perennial_job_slot"  # the head advertises N of it: at most N drivers run at once, the rest wait PENDING
# No CPU: the head, where the slots are, keeps its cores for Ray; the memory is the driver's and its Train controller's
DRIVER_RESOURCES = {"entrypoint_num_cpus": 0, "entrypoint_memory": 1 << 30, "entrypoint_resources": {JOB_SLOT: 1}}
# a driver lost with its node or supervisor, killed by a signal, or whose run lost a node (exit 75); any other
# failure is the job's own, never retried
LOST = {"JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE"}
BATCH_KEYS = {"verb", "smoke_test", "jobs", "grid"}


def lost_infrastructure(info) -> bool:
    code, kind = info.driver_exit_code, getattr(info.error_type, "value", info.error_type)  # list_jobs: a str
    return kind in LOST or (code is not None and (not 0 <= code < 128 or code == LOST_NODE_EXIT))  # -9, 137, 75


def read(path: str) -> tuple[str, bool, list[tuple[str, list[str]]]]:
    """``(verb, smoke_test, [(config, overrides), ...])`` of a batch file."""
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"batch file '{path}': {str(e).splitlines()[0]} — give a YAML file (docs/jobs.md)") from None
    if not isinstance(spec, dict) or not spec.keys() & {"jobs", "grid"} or spec.keys() - BATCH_KEYS:
        raise ConfigError(f"batch file '{path}': give a mapping of {sorted(BATCH_KEYS)} with jobs, grid or both")
    if spec.get("verb", "train") not in ("train", "sweep"):
        raise ConfigError(f"batch file '{path}': verb {spec['verb']!r} — use train or sweep")
    entries = []
    for i, job in enumerate(spec.get("jobs") or [], 1):
        if not isinstance(job, dict) or "config" not in job or job.keys() - {"config", "overrides"}:
            raise ConfigError(f"batch entry jobs[{i}]: give {{config: PATH, overrides: [key=value, ...]}}, not {job!r}")
        entries.append((str(job["config"]), [str(o) for o in job.get("overrides") or []]))
    grid = spec.get("grid") or {}
    if grid and (not isinstance(grid, dict) or "configs" not in grid or grid.keys() - {"configs", "overrides"}):
        raise ConfigError("batch grid: give {configs: [PATH, ...], overrides: {key: [value, ...]}}")
    axes = {k: v if isinstance(v, list) else [v] for k, v in (grid.get("overrides") or {}).items()}
    for config, values in itertools.product(grid.get("configs") or [], itertools.product(*axes.values())):
        entries.append((str(config), [f"{k}={_text(v)}" for k, v in zip(axes, values, strict=True)]))
    return spec.get("verb", "train"), bool(spec.get("smoke_test", False)), entries


def _text(value) -> str:
    """A grid value as an override's right-hand side (lists and mappings as YAML flow, as on a command line)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def counts(statuses: list[str]) -> str:
    """``3 succeeded, 1 running``: a batch's jobs by state, the commonest first."""
    return ", ".join(f"{n} {s}" for s, n in collections.Counter(sorted(statuses)).most_common()) or "no jobs"
