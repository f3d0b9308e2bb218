"""The private Ray APIs of jobs/ray_compat.py still exist with the shapes the project uses. A Ray upgrade that
moves one fails here, by name, not in the middle of a sweep."""

from __future__ import annotations

import inspect
import logging

import ray

from jobs import ray_compat


def test_ray_is_the_version_the_private_apis_were_written_for():
    assert ray.__version__ == ray_compat.RAY_VERSION, (
        f"Ray {ray.__version__} is installed, jobs/ray_compat.py was written for {ray_compat.RAY_VERSION}: "
        "re-check every import there, then update RAY_VERSION"
    )


def test_cluster_maximum_runtime_env_logger_and_tune_report_queue_exist():
    import importlib

    from ray.train._internal.session import _TrainSession

    assert ray_compat.max_resources_from_cluster_config is not None
    from ray._private.state import state

    assert callable(state.get_max_resources_from_cluster_config)  # what max_resources_from_cluster_config calls
    importlib.import_module(ray_compat.RUNTIME_ENV_LOGGER)  # the logger is named after this module
    assert "_get_or_create_inter_actor_queue" in dir(_TrainSession)  # TuneReportCallback's queue, which we drain
    assert "_inter_actor_queue" in inspect.getsource(_TrainSession.__init__) + inspect.getsource(_TrainSession.reset)


def test_ray_train_local_mode_still_keeps_no_checkpoint_of_its_own(tmp_path):
    """What jobs.train.LocalSession adds: Ray 2.60's local mode (num_workers=0) copies no checkpoint to
    storage_path and gives its Result no path. When this fails, Ray persists them itself: LocalSession can shrink."""
    import ray.train
    from ray.train.torch import TorchTrainer

    def loop():
        folder = tmp_path / "tmp_checkpoint"
        folder.mkdir()
        (folder / "meta.json").write_text("{}")
        ray.train.report({"epoch": 1}, checkpoint=ray.train.Checkpoint.from_directory(folder))

    trainer = TorchTrainer(
        loop,
        scaling_config=ray.train.ScalingConfig(num_workers=0),
        run_config=ray.train.RunConfig(name="local", storage_path=str(tmp_path / "runs")),
    )
    result = trainer.fit()
    assert result.path is None and result.checkpoint.path == str(tmp_path / "tmp_checkpoint")
    assert not (tmp_path / "runs" / "local").exists()


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
