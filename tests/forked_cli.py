"""Run ``python -m MODULE ARGS`` many times over without paying the interpreter's imports each time.

A ``multiprocessing`` fork server imports the heavy third-party libraries once (torch alone is ~1.5 s); every
command is then a child forked from it that runs the module as ``__main__`` with its own argv, environment,
working directory and stdout/stderr, and ends with the module's own exit status. The project's modules are not
preloaded: each child imports them afresh under its own environment, as a new interpreter would.

What differs from a new interpreter: warnings the preloaded libraries print while importing are printed once by
the server, not by each child. Callers that check stderr line by line keep one plain subprocess as well.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PRELOAD = ["numpy", "pandas", "pyarrow.dataset", "pyarrow.parquet", "yaml", "torch", "ray", "deltalake"]


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _run_module(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str, status: str) -> None:
    """In the forked child: become ``python -m argv[0] argv[1:]`` and exit with its status."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    sys.stdin = open(os.devnull)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    sys.path.insert(0, cwd)  # what `python -m` puts first
    sys.argv[:] = [argv[0], *argv[1:]]  # run_module sets argv[0] to the module's file, as `python -m` does
    code = 0
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            code = 1
        else:
            code = e.code or 0
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    # multiprocessing's exit code read 255 (the fork server's status pipe) for one child of a batch that
    # had exited 2; the file is what the runner trusts
    Path(status).write_text(str(code))
    os._exit(code)


def run(argv: list[str], env: dict[str, str], cwd: str | os.PathLike, timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run([python, "-m", *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=...)``,
    forked from the preloaded server; on a timeout the child is killed and the result has returncode -9."""
    with tempfile.TemporaryDirectory(prefix="forked-cli-") as d:
        out, err, status = (str(Path(d) / name) for name in ("out", "err", "status"))
        p = _context().Process(target=_run_module, args=(list(argv), dict(env), str(cwd), out, err, status))
        p.start()
        p.join(timeout)
        timed_out = p.exitcode is None
        if timed_out:
            p.kill()
            p.join()
        stdout, stderr = Path(out).read_text(errors="replace"), Path(err).read_text(errors="replace")
        if timed_out:
            stderr += f"\n(timed out after {timeout} s)"
        code = -9 if timed_out else int(Path(status).read_text()) if Path(status).is_file() else p.exitcode
        return subprocess.CompletedProcess(["python", "-m", *argv], code, stdout, stderr)
