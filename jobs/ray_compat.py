"""Every private Ray API the project uses, in one place, for the Ray version it was written against.

Ray's public API does not cover four things perennial needs; each is imported here and nowhere else, so that a
Ray upgrade that moves one breaks this file (and tests/unit/test_ray_compat.py, which imports them all) instead
of a run in the middle of a sweep:

- Train V2's checkpoint manager, local train-fn utilities and training report (jobs.sweep runs a 1-worker trial
  in its own process through Ray Train's own checkpoint bookkeeping);
- the logger Train V2's worker context logs each report to (named by its file path in 2.60);
- ``ray_constants.ENABLE_RAY_CLUSTER``, Ray's single-machine mode, which keeps every listener on 127.0.0.1;
- the preemption notice Ray Train's watcher hands each worker, read in place (the public
  ``ray.train.get_preemption_info()`` is a round trip to an actor, too slow to poll every step);
- the autoscaler's offline config validation (jobs.cluster_check) and the job client's packaging
  (what a job upload holds, for the upload tests).
"""

from __future__ import annotations

import logging
import types

RAY_VERSION = "2.60.0"  # the version these imports were written and tested against


def ray_version_matches() -> bool:
    import ray

    return ray.__version__ == RAY_VERSION


def train_v2_internals() -> types.SimpleNamespace:
    """CheckpointManager, LocalTrainFnUtils, set_train_fn_utils and _TrainingReport of Ray Train V2."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2._internal.execution.train_fn_utils import LocalTrainFnUtils, set_train_fn_utils
    from ray.train.v2._internal.execution.training_report import _TrainingReport

    return types.SimpleNamespace(
        CheckpointManager=CheckpointManager,
        LocalTrainFnUtils=LocalTrainFnUtils,
        set_train_fn_utils=set_train_fn_utils,
        TrainingReport=_TrainingReport,
    )


def train_report_loggers() -> list[logging.Logger]:
    """The loggers Train V2 writes one INFO line per report to: "ray.train", and the worker context's own."""
    from ray.train.v2._internal.execution import context

    return [logging.getLogger("ray.train"), logging.getLogger(context.__file__)]


def preemption_reader():
    """A function returning this Train worker's copy of Ray Train's preemption notice (a ``PreemptionInfo``, or
    None before any): one attribute read, what ``ray.train.get_preemption_info()`` broadcasts from rank 0. None
    outside a Train worker group (an in-process sweep trial has no watcher)."""
    from ray.train.v2._internal.execution.context import get_train_context

    try:
        preemption = get_train_context().preemption_context
    except (RuntimeError, AttributeError):
        return None
    return lambda: preemption.preemption_info


def single_machine_mode() -> None:
    """Keep every server of a one-machine Ray on 127.0.0.1 (Ray's own local-only mode, its default on macOS).
    Set before the cluster starts: the processes it spawns read the variable, this process the constant."""
    import os

    from ray._private import ray_constants

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False


def autoscaler_validation() -> tuple:
    """``(prepare_config, validate_config)``: the cluster launcher's own offline checks of a cluster YAML."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    return prepare_config, validate_config


def create_package():
    """The job client's working_dir packer (what `ray job submit --working-dir` uploads)."""
    from ray._private.runtime_env.packaging import create_package as create

    return create
