"""jobs.errors.cli_main at exit: the exit code, and the objects left frozen so the interpreter's last collection
skips them, unless Ray is connected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import atexit, gc, sys
from jobs.errors import ConfigError, cli_main
if "ray" in sys.argv:
    import ray
    ray.init(num_cpus=1, include_dashboard=False)
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))  # runs after cli_main's
print("frozen before:", gc.get_freeze_count() > 0, flush=True)

def main(argv):
    if "bad" in argv:
        raise ConfigError("train.lr must be > 0, got -1 — set train.lr=1e-4")
    return 0

cli_main(main)
"""


@pytest.mark.parametrize("argv, code, frozen", [([], 0, True), (["bad"], 2, True), (["ray"], 0, False)])
def test_cli_main_exits_with_the_verbs_code_and_freezes_what_is_left_unless_ray_is_connected(argv, code, frozen):
    out = subprocess.run([sys.executable, "-c", SCRIPT, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stderr
    assert out.stdout.splitlines()[-2:] == ["frozen before: False", f"frozen at exit: {frozen}"]
    assert ("error: train.lr must be > 0, got -1 — set train.lr=1e-4" in out.stderr) == (code == 2)
