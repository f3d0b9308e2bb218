"""Start your own workload from a copy of a shipped one (torchtune's ``tune cp`` habit): ``DIR/NAME.py`` and
``DIR/configs/NAME.yaml``, which run as they are; then change the hooks (docs/workloads.md).

    python -m jobs.new NAME [--from mlp|cnn|ner|sentiment|rnn] [--dir DIR] [--force]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

from jobs import config as config_lib
from workloads import WORKLOADS

ROOT = Path(__file__).resolve().parent.parent


def render(name: str, source: str) -> tuple[str, str]:
    """(the workload module's text, its config's text) for a new workload ``name`` copied from ``source``."""
    module = (ROOT / "workloads" / f"{source}.py").read_text()
    config = (ROOT / "configs" / f"{source}.yaml").read_text()
    command = f"python -m jobs.train --config configs/{name}.yaml"
    module = module.replace(f"python -m jobs.train --config configs/{source}.yaml", command, 1)
    module = f"# {name}: your workload, copied from workloads/{source}.py by `python -m jobs.new`.\n" + module
    config = config.replace(f"configs/{source}.yaml", f"configs/{name}.yaml")
    return module, re.sub(rf"(?m)^workload: {source}\b.*$", f"workload: ../{name}.py  # relative to this file", config)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.new", description="Start a workload from a copy of a shipped one.")
    p.add_argument("name", help="the new workload's module name, e.g. my_classifier")
    p.add_argument("--from", dest="source", choices=sorted(WORKLOADS), default="mlp", help="the workload to copy")
    p.add_argument("--dir", default=".", help="where NAME.py and configs/NAME.yaml go (default: here)")
    p.add_argument("--force", action="store_true", help="overwrite files already there")
    args = p.parse_args(argv)
    name = args.name
    if not name.isidentifier() or name != name.lower():
        raise config_lib.ConfigError(f"'{name}' is not a module name — use lower_case_with_underscores, e.g. my_ner")
    module_path, config_path = Path(args.dir, f"{name}.py"), Path(args.dir, "configs", f"{name}.yaml")
    for path in (module_path, config_path):
        if path.exists() and not args.force:
            raise config_lib.ConfigError(f"'{path}' exists — pass --force to overwrite it, or pick another name")
    if name in WORKLOADS or (not module_path.exists() and importlib.util.find_spec(name) is not None):
        raise config_lib.ConfigError(
            f"'{name}' is already an importable module or shipped workload — pick another name"
        )
    module, config = render(name, args.source)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    module_path.write_text(module)
    config_path.write_text(config)
    print(f"wrote {module_path} (from workloads/{args.source}.py) and {config_path}")
    print(f"  try it:  python -m jobs.train --config {config_path} --smoke-test")
    print("  the hooks to change: docs/workloads.md")
    return 0


if __name__ == "__main__":
    config_lib.cli_main(main)
