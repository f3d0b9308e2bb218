"""Every private Ray API the project uses, here and nowhere else: an upgrade that moves one breaks this file (and
tests/unit/test_ray_compat.py), not a run in the middle of a sweep.
"""

from __future__ import annotations

import logging
import os
import time

RAY_VERSION = "2.60.0"  # the version these imports were written and tested against

RUNTIME_ENV_LOGGER = "ray._private.runtime_env"  # logs one line per file a job upload leaves out


def max_resources_from_cluster_config() -> dict | None:
    """The cluster's largest size as the autoscaler wrote it to the GCS (what Ray Train checks a run against)."""
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config()


def wait_for_tune_report_queue(timeout_s: float = 120.0, settle_s: float = 0.5) -> None:
    """Wait until Tune took a Train run's last report off TuneReportCallback's queue: a trainable that returns
    before deadlocks in Ray 2.60 (ray/train/_internal/session.py, ``_get_result_from_queues``)."""
    from ray.train._internal.session import get_session

    reports = getattr(get_session(), "_inter_actor_queue", None)  # created by TuneReportCallback
    if reports is None:
        return
    deadline = time.monotonic() + timeout_s
    while not reports.empty() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle_s)


def train_report_loggers() -> list[logging.Logger]:
    """The loggers Train V2 writes one INFO line per report to: "ray.train", and the worker context's own."""
    from ray.train.v2._internal.execution import context

    return [logging.getLogger("ray.train"), logging.getLogger(context.__file__)]


def preemption_reader():
    """This Train worker's preemption notice as one attribute read (``ray.train.get_preemption_info()`` is an actor
    round trip per step); None outside a Train worker group."""
    from ray.train.v2._internal.execution.context import get_train_context

    try:
        preemption = get_train_context().preemption_context
    except (RuntimeError, AttributeError):
        return None
    return lambda: preemption.preemption_info


def single_machine_mode() -> None:
    """Keep every server of a one-machine Ray on 127.0.0.1 (Ray's local-only mode), set before it starts."""
    from ray._private import ray_constants

    if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False


def autoscaler_validation() -> tuple:
    """``(prepare_config, validate_config)``: the cluster launcher's own offline checks of a cluster YAML."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    return prepare_config, validate_config


def create_package():
    """The job client's working_dir packer (what `ray job submit --working-dir` uploads)."""
    from ray._private.runtime_env.packaging import create_package as create

    return create
