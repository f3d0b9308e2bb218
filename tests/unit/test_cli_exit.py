"""jobs.errors.cli_main at exit: the exit code, and the objects left frozen so the interpreter's last collection
skips them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import atexit, gc
from jobs.errors import ConfigError, cli_main
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))  # runs after cli_main's
print("frozen before:", gc.get_freeze_count() > 0, flush=True)

def main(argv):
    if argv == ["bad"]:
        raise ConfigError("train.lr must be > 0, got -1 — set train.lr=1e-4")
    return 0

cli_main(main)
"""


@pytest.mark.parametrize("argv, code", [([], 0), (["bad"], 2)])
def test_cli_main_exits_with_the_verbs_code_and_freezes_what_is_left_at_exit(argv, code):
    out = subprocess.run([sys.executable, "-c", SCRIPT, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == code, out.stderr
    assert out.stdout.splitlines() == ["frozen before: False", "frozen at exit: True"]
    assert (out.stderr.strip() == "error: train.lr must be > 0, got -1 — set train.lr=1e-4") == (code == 2)
