"""The private Ray APIs of jobs/ray_compat.py still exist with the shapes the project uses. A Ray upgrade that
moves one fails here, by name, not in the middle of a sweep."""

from __future__ import annotations

import inspect
import logging

import ray

from jobs import ray_compat


def test_ray_is_the_version_the_private_apis_were_written_for():
    assert ray_compat.ray_version_matches(), (
        f"Ray {ray.__version__} is installed, jobs/ray_compat.py was written for {ray_compat.RAY_VERSION}: "
        "re-check every import there, then update RAY_VERSION"
    )


def test_train_v2_internals_have_the_methods_jobs_sweep_calls():
    v2 = ray_compat.train_v2_internals()
    assert {"after_report", "latest_checkpoint_result"} <= set(dir(v2.CheckpointManager))  # what run_in_process uses
    assert "report" in dir(v2.LocalTrainFnUtils) and callable(v2.set_train_fn_utils)
    assert "metrics" in inspect.signature(v2.TrainingReport).parameters


def test_report_loggers_and_single_machine_mode():
    loggers = ray_compat.train_report_loggers()
    assert loggers[0].name == "ray.train" and all(isinstance(lg, logging.Logger) for lg in loggers)
    from ray._private import ray_constants

    assert hasattr(ray_constants, "ENABLE_RAY_CLUSTER")


def test_autoscaler_validation_and_packaging_are_callable():
    prepare_config, validate_config = ray_compat.autoscaler_validation()
    assert callable(prepare_config) and callable(validate_config)
    assert "include_gitignore" in inspect.signature(ray_compat.create_package()).parameters


def test_preemption_reader_reads_the_notice_train_hands_its_workers():
    from ray.train.v2._internal.execution.context import set_train_context
    from ray.train.v2._internal.execution.preemption import PreemptionContext
    from ray.train.v2.api.preemption import PreemptionInfo

    assert ray_compat.preemption_reader() is None  # not in a Train worker: nothing to watch

    class Context:  # the one attribute of Train's internal context the reader uses
        preemption_context = PreemptionContext()

    set_train_context(Context())
    try:
        read = ray_compat.preemption_reader()
        assert read() is None
        info = PreemptionInfo(deadline_ms=123, preempted_node_to_ranks={"n1": [0]})
        Context.preemption_context.preemption_info = info  # as the worker's mark_preempt sets it
        assert read() is info
    finally:
        set_train_context(None)
