"""Read trackers' local files back for tests: W&B offline runs and TensorBoard event files, each with the
tracker's own format (W&B's protobuf records; TensorBoard's own EventAccumulator)."""

from __future__ import annotations

import json
from pathlib import Path

from jobs.tracking import wandb_offline_files, wandb_offline_history, wandb_records


def wandb_history(wandb_dir: Path, run_id: str) -> list[dict]:
    """Every ``run.log`` entry of W&B run ``run_id`` across its offline run folders (one per attempt)."""
    return wandb_offline_history(wandb_offline_files(wandb_dir, run_id))


def wandb_runs(wandb_dir: Path, run_id: str) -> list:
    """The ``RunRecord`` of each offline attempt of ``run_id`` (id, group, config, ...)."""
    runs = []
    for path in sorted(Path(wandb_dir).rglob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        runs += [r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run"]
    return runs


def wandb_summary(wandb_dir: Path, run_id: str) -> dict:
    out = {}
    for path in sorted(Path(wandb_dir).rglob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "summary":
                out |= {item.key: json.loads(item.value_json) for item in record.summary.update}
    return out


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar in ``logdir``, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_hparams(logdir: Path) -> dict:
    """The hparams plugin's session-start info: ``{"hparams": {...}, "metrics": [...]}``."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    out: dict = {"hparams": {}, "metrics": []}
    for raw in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                out["hparams"][key] = value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        if data.HasField("experiment"):
            out["metrics"] = [m.name.tag for m in data.experiment.metric_infos]
    return out
