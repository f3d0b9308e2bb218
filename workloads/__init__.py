"""The workload registry and contract: ``resolve("mlp" | "my_pkg.my_workload" | "path/to/my_workload.py")``.

What a module must define is :class:`Workload` (docs/workloads.md); :func:`check` holds a module to it before
Ray starts, so a missing or misspelt hook is one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import pydantic

from jobs.errors import ConfigError


class Section(pydantic.BaseModel):
    """A config section (``data``, ``train``, ``scaling``, ...): typed fields, each with its bounds; unknown keys are errors."""

    model_config = pydantic.ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # data.train=2024 is a path


def sections(config: type) -> dict[str, pydantic.fields.FieldInfo]:
    """A workload ``Config``'s (or a section's) fields, name -> field; {} for a value."""
    return dict(config.model_fields) if isinstance(config, type) and issubclass(config, pydantic.BaseModel) else {}


WORKLOADS = ("mlp", "cnn", "ner", "rnn", "sentiment", "sft")  # the shipped ones: workloads.<name>, imported on use
CONTRACT_DOC = "docs/workloads.md"


@runtime_checkable
class Workload(Protocol):
    """The hooks the jobs call; ``splits`` is a :class:`workloads.data.Splits`, ``cfg`` the typed config."""

    Config: type  # data / model / train sections (workloads.Section models); train subclasses workloads.common.Train
    METRIC: str  # e.g. "val_accuracy": what sweeps, early stopping and "best" optimise
    MODE: str  # "max" | "min"

    def build_data(self, cfg) -> Any: ...  # -> Splits

    def build_model(self, cfg, splits) -> Any: ...  # -> torch.nn.Module

    def train_step(self, model, batch) -> Any: ...  # -> scalar loss tensor

    def evaluate(self, model, loader, splits) -> dict[str, float]: ...  # the loop adds val_ / test_


REQUIRED = ("Config", "METRIC", "MODE", "build_data", "build_model", "train_step", "evaluate")
# Optional hooks: listed, not discovered, so a misspelt one is an error. name -> what it does (docs/workloads.md)
OPTIONAL = {
    "SEARCH_SPACE": "dict: the sweep's default search space",
    "SMOKE_TEST": "dict: dotted overrides for --smoke-test",
    "validate": "validate(cfg): cheap driver-side checks before Ray starts (raise DataError)",
    "train_loader": "train_loader(cfg, splits) -> DataLoader: e.g. length-grouped batches",
    "build_optimizer": "build_optimizer(cfg, model) -> Optimizer (default: fused AdamW over trainable params)",
    "build_scheduler": "build_scheduler(cfg, optimizer, batches_per_epoch) -> LR scheduler, stepped per optimizer step",
    "export": "export(model, cfg, splits, out_dir): a servable model (default: safetensors + model.json)",
    "load_export": "load_export(cfg, splits, export_dir) -> model: the inverse of export",
}
HOOKS = (*REQUIRED, *OPTIONAL)


def hook(wl: ModuleType, name: str):
    """An optional hook of ``wl``, or None. Only names in OPTIONAL may be asked for."""
    assert name in OPTIONAL, name  # internal: the loop asks only for listed hooks
    return getattr(wl, name, None)


def check(wl: ModuleType, name: str) -> ModuleType:
    """``wl`` if it meets the contract, else ConfigError naming the first missing hook and the docs."""
    for attr in REQUIRED:
        if not hasattr(wl, attr):
            raise ConfigError(
                f"workload '{name}' has no '{attr}' — a workload module defines {', '.join(REQUIRED)} (see {CONTRACT_DOC})"
            )
    from workloads.common import Train

    found = {k: f.annotation for k, f in sections(wl.Config).items()}
    old = next((c for c in (wl.Config, *found.values()) if dataclasses.is_dataclass(c)), None)
    if old is not None:  # written before sections were pydantic models
        raise ConfigError(
            f"workload '{name}': {old.__name__} is a @dataclass — make it `class {old.__name__}(Section):`, "
            f"with `from workloads import Section` (see {CONTRACT_DOC})"
        )
    train = found.get("train")
    if not {"data", "model"} <= found.keys() or not (isinstance(train, type) and issubclass(train, Train)):
        raise ConfigError(
            f"workload '{name}': Config must have data, model and train sections, its train a "
            f"subclass of workloads.common.Train (see {CONTRACT_DOC})"
        )
    if wl.MODE not in ("max", "min"):
        raise ConfigError(f"workload '{name}': MODE must be 'max' or 'min', got {wl.MODE!r} (see {CONTRACT_DOC})")
    if near := sorted(n for n in vars(wl) if not n.startswith("_") and _near_hook(n)):  # a hook itself: None
        raise ConfigError(
            f"workload '{name}' defines '{near[0]}', which is not a hook — did you mean '{_near_hook(near[0])}'? "
            f"(hooks: {CONTRACT_DOC})"
        )
    return wl


def _near_hook(name: str) -> str | None:
    """The hook a misspelt name was meant to be (``build_sheduler`` -> ``build_scheduler``), else None."""
    match = difflib.get_close_matches(name, HOOKS, n=1, cutoff=0.85)
    return match[0] if match and match[0] != name else None


def resolve(spec: str, base_dir: str | os.PathLike | None = None) -> tuple[str, ModuleType]:
    """``(name, module)`` for a ``workload:`` value: a shipped name, a dotted module, or a ``.py`` file (from
    ``base_dir`` first)."""
    if spec in WORKLOADS:
        return spec, importlib.import_module(f"workloads.{spec}")
    if spec.endswith(".py"):
        candidates = [Path(base_dir, spec)] if base_dir and not os.path.isabs(spec) else []
        path = next((p for p in [*candidates, Path(spec)] if p.is_file()), None)
        if path is None:
            raise ConfigError(f"workload file '{spec}' not found — give a path to a .py file, or a shipped workload")
        name = path.stem
        if not name.isidentifier():
            raise ConfigError(f"workload file '{spec}': '{name}' is not a Python module name — rename the file")
        add_to_path(str(path.resolve().parent))
        found = sys.modules.get(name)
        if found is not None and Path(getattr(found, "__file__", "") or "").resolve() != path.resolve():
            raise ConfigError(
                f"workload file '{spec}': a module '{name}' is already imported from elsewhere — rename the file"
            )
    else:
        name = spec
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise ConfigError(
                f"unknown workload '{spec}' — use one of {sorted(WORKLOADS)}, an importable module (my_pkg.my_workload) "
                f"or a .py file (see {CONTRACT_DOC})"
            ) from None
        raise ConfigError(f"workload '{spec}' cannot be imported: {e} — install what it needs") from None
    except Exception as e:  # the module's own code failed: the user's fix, one line
        raise ConfigError(f"workload '{spec}' failed to import: {type(e).__name__}: {e}") from None
    if module.__file__:
        add_to_path(module_root(module))
    return name, check(module, name)


def module_root(module: ModuleType) -> str:
    """The folder a module's top-level package is imported from (``/x`` for ``a.b`` in ``/x/a/b.py``)."""
    path = Path(module.__file__).resolve()
    if path.name == "__init__.py":
        path = path.parent
    return str(path.parents[module.__name__.count(".")])


def add_to_path(folder: str) -> None:
    """``folder`` importable here and in processes started from here (a local Ray cluster's workers)."""
    if folder not in sys.path:
        sys.path.insert(0, folder)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if folder not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([*parts, folder])


def module(name: str) -> ModuleType:
    """The module of a resolved workload name (``cfg.workload``)."""
    return resolve(name)[1]
