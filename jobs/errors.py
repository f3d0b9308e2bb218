"""The project's error classes, and :func:`cli_main`, which every verb runs through (the lowest layer)."""

from __future__ import annotations

import atexit
import gc
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad user input (exit code 2). The message names the problem and how to fix it."""


class ConfigError(UserError):
    """A bad config file, key, type or value."""


class DataError(UserError):
    """Bad or missing input data."""


class StoreError(UserError):
    """The evaluation store path is unusable, or a store operation was refused."""


class ClusterError(RuntimeError):
    """No Ray cluster at the given address, or it refused the request (exit code 1)."""


LOST_NODE_EXIT = 75  # EX_TEMPFAIL: the batch's watcher submits the job again with --resume (jobs.batch)


class NodeLost(ClusterError):
    """A node of the run's Train workers was lost, in a batch job that has retries left (exit code 75)."""


def freeze_at_exit() -> None:
    """Freeze what is left, so that the interpreter's last full collection skips it (after a local-mode NER run it
    walked torch's and pyarrow's objects for 1.3 s). Not while Ray is connected: its objects must go before Ray's own
    shutdown (a job's driver segfaulted at exit otherwise)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        gc.freeze()


def cli_main(main: Callable[[list[str]], int]) -> None:
    """Run a verb's ``main(argv)``: bad input -> one line on stderr and exit 2; no cluster -> exit 1."""
    try:
        code = main(sys.argv[1:])
    except (UserError, ClusterError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = LOST_NODE_EXIT if isinstance(e, NodeLost) else 2 if isinstance(e, UserError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    atexit.register(freeze_at_exit)  # runs before the other atexit handlers (last in, first out)
    sys.exit(code)
