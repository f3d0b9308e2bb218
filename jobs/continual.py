"""Continual fine-tuning: the next round starts from a stored run's model and trains on new data.

    python -m jobs.continual --config configs/ner_wnut.yaml --from best|RUN_ID [--smoke-test] [--store PATH] [key=value ...]
    python -m jobs.store lineage RUN_ID          # the chain of rounds, with gain and forgetting

A round is a new Train run (new run id, not a resume) whose model starts from the parent's export:
  [1] parent: ``best`` = the workload's best finished run by its metric (ties: the newest), or a run id
  [2] before training, the parent's export is scored on the NEW test split   -> parent_new_test_<m>
  [3] the Train run (``_init_from`` = the parent's export; ``continual.replay_fraction`` mixes that share
      of the parent's training examples, rebuilt from the parent's stored config, into the new data)
  [4] after training, the child's export is scored on the parent's (OLD) test split -> old_test_<m>
The child's ``runs`` row carries ``parent_run_id``, ``round`` (parent's + 1; a jobs.train run is round 1)
and, with ``<m>`` the workload metric without ``val_`` (f1, accuracy):
  gain       = child's test_<m> - parent_new_test_<m>  (new test set: what the round learned)
  forgetting = parent's own test_<m> - old_test_<m>    (old test set: what the round lost)
both signed so that positive means "more" (for a metric to minimise the signs flip). Scoring runs in
this process, without Ray. Exit codes: 0 the round finished, 1 it failed, 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

from jobs import config as config_lib
from jobs.store import Store
from workloads import WORKLOADS

FINISHED = ("completed", "stopped_early")


# ----------------------------------------------------------------------------- [1] the parent
def pick_parent(store: Store, workload: str, spec: str, metric: str, mode: str) -> dict:
    """The parent's ``runs`` row: ``spec`` = ``best`` or a run id. Raises ConfigError (exit 2)."""
    if spec != "best":
        runs = store.df("runs", filter=ds.field("run_id") == spec)
        if not len(runs):
            raise config_lib.ConfigError(f"--from: no run '{spec}' in store '{store.uri}' — list runs with: python -m jobs.store runs")
        row = _clean(runs.sort_values("finished_at").iloc[-1].to_dict())
        if row["workload"] != workload:
            raise config_lib.ConfigError(f"--from: run '{spec}' is a {row['workload']} run, but the config trains {workload} — "
                                         f"pick a {workload} run (python -m jobs.store runs --workload {workload})")  # fmt: skip
        return row
    runs = store.df("runs", workload)
    if not len(runs):
        raise config_lib.ConfigError(f"--from best: no {workload} runs in store '{store.uri}' — train round 1 first "
                                     f"(python -m jobs.train --config configs/{workload}.yaml) or pass --store")  # fmt: skip
    done = runs[runs["status"].isin(FINISHED)]
    if metric not in done.columns or done[metric].isna().all():
        raise config_lib.ConfigError(f"--from best: no finished {workload} run in store '{store.uri}' has a {metric} — "
                                     "pass --from RUN_ID, or finish a run first")  # fmt: skip
    done = done.dropna(subset=[metric]).sort_values([metric, "finished_at"], ascending=[mode == "min", False])
    return _clean(done.iloc[0].to_dict())


def _clean(row: dict) -> dict:
    """pandas NaN/NaT -> None, so ``row.get(k) or default`` reads naturally."""
    return {k: (None if _missing(v) else v) for k, v in row.items()}


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in ("NaT", "nan")


def parent_config(parent: dict, workload: str):
    try:
        pcfg = config_lib.from_dict(json.loads(parent["config_json"]))
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError: a config from an older schema
        raise config_lib.ConfigError(f"--from: run '{parent['run_id']}' has a config this version cannot read ({e}) — pick another run") from None
    if pcfg.workload != workload:
        raise config_lib.ConfigError(f"--from: run '{parent['run_id']}' trained {pcfg.workload}, not {workload} — pick a {workload} run")
    return pcfg


def fetch_export(parent: dict, tmp: str) -> Path:
    """The parent's export as a local folder; a clear exit-2 error if it is gone."""
    from jobs.evaluate import fetch_export as fetch

    uri = parent.get("export_uri") or ""
    if not uri:
        raise config_lib.ConfigError(f"--from: run '{parent['run_id']}' has no exported model (status {parent.get('status')}) — "
                                     "continue from a finished run")  # fmt: skip
    return fetch(uri, tmp)


def with_data(cfg, data: dict):
    """``cfg`` with its ``data`` section replaced (the parent's data, read by this round's model settings)."""
    return config_lib.from_dict(config_lib.to_dict(cfg) | {"data": data})


# ----------------------------------------------------------------------------- [2]/[4] scoring without Ray
def score(wl, cfg, splits, dataset, export_dir) -> dict[str, float]:
    """``wl.evaluate`` of the export in ``export_dir`` on ``dataset`` (a split of ``splits``), in this process."""
    import torch

    from jobs import loop

    torch.set_num_threads(max(1, cfg.scaling.cpus_per_worker))
    try:
        model = loop.load_export(wl, cfg, splits, export_dir)
    except RuntimeError as e:  # e.g. a state dict whose shapes do not fit this config's model section
        raise config_lib.ConfigError(f"the parent's model does not fit this config ({str(e).splitlines()[0][:200]}) — "
                                     "keep the parent's model.* settings and the same kind of data")  # fmt: skip
    loader = loop.eval_loader(splits, dataset, cfg.train.batch_size * 2)
    with loop.autocast(cfg.train.precision, torch.device("cpu")):
        return {k: float(v) for k, v in wl.evaluate(model, loader, splits).items()}


def signed(delta: float, mode: str) -> float:
    return delta if mode == "max" else -delta


# ----------------------------------------------------------------------------- [3] replay (called by jobs/loop.py)
def replay_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` share of ``n`` examples (at least one when fraction > 0)."""
    k = min(n, max(1, round(fraction * n))) if fraction > 0 else 0
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False)) if k else np.arange(0)


def add_replay(wl, cfg, splits, replay: dict):
    """The round's training set plus ``replay["fraction"]`` of the parent's training examples.

    The parent's examples are rebuilt from its data config (``replay["data"]``) with this round's
    model settings (the same tokenizer); lists, TensorDatasets and column-style datasets (equal-length
    list/array attributes) are concatenated in place of a ConcatDataset, so workloads that read
    ``splits.train``'s columns (lengths for length-grouped batches) keep working.
    """
    old = wl.build_data(with_data(cfg, replay["data"]))
    if old.labels != splits.labels:
        raise config_lib.ConfigError(f"replay: the parent's data has labels {old.labels}, this round's {splits.labels} — they must match")
    idx = replay_indices(len(old.train), replay["fraction"], cfg.train.seed)
    return concat(splits.train, old.train, idx)


def concat(new, old, idx: np.ndarray):
    import torch
    from torch.utils.data import ConcatDataset, Subset, TensorDataset

    if isinstance(new, list):
        return new + [old[int(i)] for i in idx]
    if isinstance(new, TensorDataset) and isinstance(old, TensorDataset):
        index = torch.as_tensor(idx, dtype=torch.long)
        return TensorDataset(*[torch.cat([a, b[index]]) for a, b in zip(new.tensors, old.tensors)])
    columns = vars(new) if hasattr(new, "__dict__") else {}
    if type(new) is type(old) and columns and all(_is_column(v, len(new)) for v in columns.values()):
        out = copy.copy(new)
        for name, column in columns.items():
            extra = getattr(old, name)
            if isinstance(column, np.ndarray):
                setattr(out, name, np.concatenate([column, extra[idx]]))
            elif isinstance(column, torch.Tensor):
                setattr(out, name, torch.cat([column, extra[torch.as_tensor(idx, dtype=torch.long)]]))
            else:
                setattr(out, name, list(column) + [extra[int(i)] for i in idx])
        return out
    return ConcatDataset([new, Subset(old, idx.tolist())])


def _is_column(value, n: int) -> bool:
    return (isinstance(value, (list, tuple, np.ndarray)) or hasattr(value, "shape")) and hasattr(value, "__len__") and len(value) == n


# ----------------------------------------------------------------------------- lineage (python -m jobs.store lineage)
def lineage(store: Store, run_id: str):
    """The rounds around ``run_id``: its ancestors, itself, then its descendants (one row per run)."""
    import pandas as pd

    runs = store.df("runs")
    if not len(runs) or run_id not in set(runs["run_id"]):
        raise config_lib.ConfigError(f"no run '{run_id}' in store '{store.uri}' — list runs with: python -m jobs.store runs")
    runs = runs.sort_values("finished_at")
    rows = {r["run_id"]: _clean(r) for r in runs.to_dict("records")}  # a run id has one row; the newest wins
    chain, seen, current = [], set(), run_id
    while current and current in rows and current not in seen:  # ancestors (a cycle cannot happen; guard anyway)
        chain.append(current)
        seen.add(current)
        current = rows[current].get("parent_run_id")
    chain.reverse()
    children: dict[str, list[str]] = {}
    for r in rows.values():
        if r.get("parent_run_id"):
            children.setdefault(r["parent_run_id"], []).append(r["run_id"])
    queue = list(children.get(run_id, []))
    while queue:  # descendants, breadth first (in finishing order within a parent)
        child = queue.pop(0)
        if child not in seen:
            chain.append(child)
            seen.add(child)
            queue.extend(children.get(child, []))
    out = []
    for rid in chain:
        r = rows[rid]
        base = (r.get("metric") or "").removeprefix("val_")
        out.append({
            "round": int(r.get("round") or 1), "run_id": rid, "parent_run_id": r.get("parent_run_id") or "",
            "status": r.get("status"), "data": describe_data(r.get("config_json")),
            "data_fingerprint": r.get("data_fingerprint") or "",
            "metric": base, "new_test": r.get(f"test_{base}"), "parent_new_test": r.get(f"parent_new_test_{base}"),
            "gain": r.get("gain"), "old_test": r.get(f"old_test_{base}"), "forgetting": r.get("forgetting"),
            "replay": r.get("continual.replay_fraction"),
        })  # fmt: skip
    return pd.DataFrame(out)


def describe_data(config_json) -> str:
    """A short name for a run's data: its train file, else its shipped source, plus any cap."""
    try:
        data = json.loads(config_json).get("data", {})
    except (TypeError, ValueError):
        return ""
    name = data.get("train") or data.get("source") or "default"
    name = name if len(name) <= 40 else "…" + name[-39:]
    cap = data.get("max_train_samples")
    return f"{name} (≤{cap})" if cap else name


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str]) -> int:
    from jobs.train import ClusterError, checkpoint_meta, checkpoint_uri, fit, init_ray, parser, run_trainer

    p = parser("python -m jobs.continual", "Next continual fine-tuning round: a new run initialised from a stored run's model.")
    p.add_argument("--from", dest="parent", required=True, metavar="best|RUN_ID",
                   help="best = the workload's best finished run in the store (ties: newest); or a run id")  # fmt: skip
    args = p.parse_args(argv)
    cfg = config_lib.load_config(args.config, args.overrides, smoke_test=args.smoke_test)
    store = Store(config_lib.store_path(args.store, cfg))
    wl = WORKLOADS[cfg.workload]
    metric, mode = config_lib.metric_and_mode(cfg)
    base = metric.removeprefix("val_")
    fraction = cfg.continual.replay_fraction
    if not 0.0 <= fraction <= 1.0:
        raise config_lib.ConfigError(f"continual.replay_fraction must be between 0 and 1, got {fraction}")
    if hasattr(wl, "validate"):
        wl.validate(cfg)

    # [1] the parent, its config and its export (every check before anything is written)
    parent = pick_parent(store, cfg.workload, args.parent, metric, mode)
    pcfg = parent_config(parent, cfg.workload)
    old_cfg = with_data(cfg, config_lib.to_dict(pcfg)["data"])
    round_ = int(parent.get("round") or 1) + 1
    print(f"round {round_} of {cfg.workload} from run {parent['run_id']} (round {round_ - 1}, {metric} "
          f"{_fmt(parent.get(metric))}), new data: {describe_data(json.dumps(config_lib.to_dict(cfg)))}")  # fmt: skip

    # [2] the parent on the new test split; the old (parent's) split kept for [4]
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = fetch_export(parent, tmp)
        new = wl.build_data(cfg)
        if new.test is None:
            raise config_lib.ConfigError("the new data has no test split — give data.test (gain is measured on it)")
        old = wl.build_data(old_cfg)
        if old.labels != new.labels:
            raise config_lib.ConfigError(f"the new data's labels {new.labels} differ from the parent's {old.labels} — "
                                         "a round keeps the parent's label set (map the new labels onto it)")  # fmt: skip
        if new.fingerprint and new.fingerprint == parent.get("data_fingerprint"):
            print(f"note: the new data has the parent's fingerprint {new.fingerprint} — this round sees no new data")
        parent_new = score(wl, cfg, new, new.test, export_dir)
        old_split = "test" if old.test is not None else "val"  # a parent trained without a test split: its val split
        parent_old = parent.get(f"{old_split}_{base}")
        if parent_old is None:  # not stored (an older run): score it here
            parent_old = score(wl, old_cfg, old, getattr(old, old_split), export_dir)[base]
    replay_samples = len(replay_indices(len(old.train), fraction, cfg.train.seed))
    del new  # the Train workers build their own
    print(f"parent: {base} {parent_new[base]:.4f} on the new test split, {parent_old:.4f} on its own {old_split} split"
          + (f"; replaying {replay_samples} of its {len(old.train)} training examples" if fraction else ""))  # fmt: skip

    # [3] the round: a fresh Train run whose loop starts from the parent's export
    extra_config = {"_init_from": parent["export_uri"]}
    if fraction:
        extra_config["_replay"] = {"data": config_lib.to_dict(pcfg)["data"], "fraction": fraction}
    extra_row = {"parent_new_test_" + base: parent_new[base], "parent_old_test_" + base: parent_old,
                 "replay_samples": replay_samples, "old_split": old_split}  # fmt: skip

    def runner(cfg_, run_id, callbacks, extra):
        """Ray Train, then [4] on the driver, before fit() writes the runs row (it writes extra_row as it is then)."""
        checkpoint, error = run_trainer(cfg_, run_id, callbacks, extra)
        meta = checkpoint_meta(checkpoint) if error is None and checkpoint is not None else {}
        if meta.get("finished"):
            extra_row.update(round_scores(wl, old_cfg, old, old_split, f"{checkpoint_uri(checkpoint)}/export", base,
                                          mode, meta.get("final", {}).get(f"test_{base}"), parent_new[base], parent_old))  # fmt: skip
        return checkpoint, error

    try:
        init_ray()
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    row = fit(cfg, store, parent_run_id=parent["run_id"], round=round_, extra_config=extra_config,
              extra_row=extra_row, runner=runner)  # fmt: skip
    print_round(row, base)
    return 0 if row["status"] in FINISHED else 1


def round_scores(wl, old_cfg, old, old_split: str, export_uri: str, base: str, mode: str,
                 child_new: float | None, parent_new: float, parent_old: float | None) -> dict:  # fmt: skip
    """The child's export on the parent's split (``old_test_*``), then gain and forgetting. A scoring
    error is recorded, not raised: the run itself finished, and its row must still land."""
    from jobs.evaluate import fetch_export as fetch

    out = {"gain": signed(child_new - parent_new, mode) if child_new is not None else None}
    dataset = old.test if old_split == "test" else old.val
    try:
        with tempfile.TemporaryDirectory() as tmp:
            metrics = score(wl, old_cfg, old, dataset, fetch(export_uri, tmp))
    except Exception as e:  # noqa: BLE001 — scoring is an add-on to a finished run
        print(f"warning: could not score the new model on the parent's {old_split} split: {e}", file=sys.stderr)
        return out | {"continual_error": str(e)[:500]}
    out |= {f"old_test_{k}": v for k, v in metrics.items()}
    out["forgetting"] = signed(parent_old - metrics[base], mode) if parent_old is not None else None
    return out


def _fmt(v, sign: str = "") -> str:
    return "n/a" if _missing(v) else f"{v:{sign}.4f}"


def print_round(row: dict, base: str) -> None:
    print(f"  round {row['round']}: gain {_fmt(row.get('gain'), '+')} ({base} on the new test split vs the parent's), "
          f"forgetting {_fmt(row.get('forgetting'), '+')} ({base} lost on the parent's {row.get('old_split')} split)")
    print(f"  lineage: python -m jobs.store lineage {row['run_id']}")


if __name__ == "__main__":
    config_lib.cli_main(main)
