"""The shape rules of the product code (jobs/, workloads/) that ruff cannot state: no function past 80 lines, no
``nonlocal``, no test switch read by production code, and private Ray APIs only in jobs/ray_compat.py."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 80
PRIVATE_RAY = re.compile(r"ray\.(train\.v2\._internal|train\._internal|_private|tune\.impl)")
TEST_SWITCH = re.compile(r"PERENNIAL_(FAULT|STEP_DELAY)")


def product_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "jobs/*.py", "workloads/*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / n for n in names]


def test_no_function_runs_past_80_lines_and_none_uses_nonlocal():
    long, nonlocals = [], []
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines} lines)")
            elif isinstance(node, ast.Nonlocal):
                nonlocals.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert product_files() and long == [] and nonlocals == [], (long, nonlocals)


def test_private_ray_apis_only_in_ray_compat_and_no_test_switches():
    private, switches = [], []
    for path in product_files():
        text = path.read_text()
        if PRIVATE_RAY.search(text) and path.name != "ray_compat.py":
            private.append(str(path.relative_to(ROOT)))
        if TEST_SWITCH.search(text):
            switches.append(str(path.relative_to(ROOT)))
    assert private == [] and switches == [], (private, switches)
