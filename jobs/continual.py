"""Continual fine-tuning: the next round starts from a stored run's model and trains on new data.

    python -m jobs.continual --config configs/ner_wnut.yaml --from best|RUN_ID [--smoke-test] [--store PATH] [key=value ...]
    python -m jobs.store lineage RUN_ID          # the chain of rounds, with gain and forgetting

  [1] parent: ``best`` = the workload's best finished run by its metric (ties: the newest), or a run id
  [2] the parent's export scored on the NEW test split                      -> parent_new_test_<m>
  [3] a new Train run from the parent's export (``continual.replay_fraction`` mixes in the parent's data)
  [4] the child's export scored on the parent's (OLD) test split            -> old_test_<m>
The child's runs row carries ``parent_run_id``, ``round`` (parent's + 1), ``gain`` = child's test_<m> -
parent_new_test_<m> and ``forgetting`` = parent's test_<m> - old_test_<m>, signed so that positive means
"more" (the signs flip for a metric to minimise). Scoring runs in this process. Exit codes: 0, 1 failed, 2 bad input.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass

import workloads
from jobs import config as config_lib
from jobs import preflight
from jobs.errors import StoreError
from jobs.evaluate import fetch_export, score_export
from jobs.store import FINISHED, Store, clean_row, describe_data, missing
from jobs.train import checkpoint_meta, checkpoint_uri, fit, parser, start
from workloads.data import replay_indices


def pick_parent(store: Store, workload: str, spec: str, metric: str, mode: str) -> dict:
    """The parent's ``runs`` row: ``spec`` = ``best`` or a run id. Raises ConfigError (exit 2)."""
    if spec != "best":
        try:
            row = clean_row(store.run(spec))
        except StoreError:
            raise config_lib.ConfigError(
                f"--from: no run '{spec}' in store '{store.uri}' — list runs with: python -m jobs.store runs"
            ) from None
        if row["workload"] != workload:
            raise config_lib.ConfigError(
                f"--from: run '{spec}' is a {row['workload']} run, but the config trains {workload} — "
                f"pick a {workload} run (python -m jobs.store runs --workload {workload})"
            )
        return row
    runs = store.df("runs", workload)
    if not len(runs):
        raise config_lib.ConfigError(
            f"--from best: no {workload} runs in store '{store.uri}' — train round 1 first "
            f"(python -m jobs.train --config configs/{workload}.yaml) or pass --store"
        )
    done = runs[runs["status"].isin(FINISHED)]
    if metric not in done.columns or done[metric].isna().all():
        raise config_lib.ConfigError(
            f"--from best: no finished {workload} run in store '{store.uri}' has a {metric} — "
            "pass --from RUN_ID, or finish a run first"
        )
    done = done.dropna(subset=[metric]).sort_values([metric, "finished_at"], ascending=[mode == "min", False])
    return clean_row(done.iloc[0].to_dict())


def parent_config(parent: dict, workload: str):
    try:
        pcfg = config_lib.from_dict(json.loads(parent["config_json"]))
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError: a config from an older schema
        raise config_lib.ConfigError(
            f"--from: run '{parent['run_id']}' has a config this version cannot read ({e}) — pick another run"
        ) from None
    if pcfg.workload != workload:
        raise config_lib.ConfigError(
            f"--from: run '{parent['run_id']}' trained {pcfg.workload}, not {workload} — pick a {workload} run"
        )
    return pcfg


def signed(delta: float, mode: str) -> float:
    return delta if mode == "max" else -delta


@dataclass
class Baseline:
    """What [2] measured before training, and what [4] needs to score the child on the parent's data."""

    old_cfg: object  # the round's config with the parent's data
    old: object  # the parent's splits
    old_split: str  # "test", or "val" for a parent trained without a test split
    parent_new: float  # the parent on the new test split
    parent_old: float  # the parent on its own split
    replay_samples: int


def score_parent(wl, cfg, old_cfg, parent: dict, base: str) -> Baseline:
    """[2]: the parent's export on the new test split, and on its own split (stored, or scored here)."""
    if not parent.get("export_uri"):
        raise config_lib.ConfigError(
            f"--from: run '{parent['run_id']}' has no exported model (status {parent.get('status')}) — "
            "continue from a finished run"
        )
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = fetch_export(parent["export_uri"], tmp)
        new = wl.build_data(cfg)
        if new.test is None:
            raise config_lib.ConfigError("the new data has no test split — give data.test (gain is measured on it)")
        old = wl.build_data(old_cfg)
        if old.labels != new.labels:
            raise config_lib.ConfigError(
                f"the new data's labels {new.labels} differ from the parent's {old.labels} — "
                "a round keeps the parent's label set (map the new labels onto it)"
            )
        if new.fingerprint and new.fingerprint == parent.get("data_fingerprint"):
            print(f"note: the new data has the parent's fingerprint {new.fingerprint} — this round sees no new data")
        parent_new = score_export(wl, cfg, new, new.test, export_dir)[base]
        old_split = "test" if old.test is not None else "val"  # a parent trained without a test split: its val split
        parent_old = parent.get(f"{old_split}_{base}")
        if parent_old is None:  # not stored (an older run): score it here
            parent_old = score_export(wl, old_cfg, old, getattr(old, old_split), export_dir)[base]
    replay_samples = len(replay_indices(len(old.train), cfg.continual.replay_fraction, cfg.train.seed))
    return Baseline(old_cfg, old, old_split, parent_new, parent_old, replay_samples)


def scoring_runner(train_runner, wl, baseline: Baseline, base: str, mode: str, extra_row: dict):
    """Ray Train's runner, then [4] on the driver, before fit() writes the runs row."""

    def runner(cfg_, run_id, callbacks, extra):
        checkpoint, error = train_runner(cfg_, run_id, callbacks, extra)
        meta = checkpoint_meta(checkpoint) if error is None and checkpoint is not None else {}
        if meta.get("finished"):
            child_new = meta.get("final", {}).get(f"test_{base}")
            export_uri = f"{checkpoint_uri(checkpoint)}/export"
            extra_row.update(round_scores(wl, baseline, export_uri, base, mode, child_new))
        return checkpoint, error

    return runner


def round_scores(wl, baseline: Baseline, export_uri: str, base: str, mode: str, child_new: float | None) -> dict:
    """The child's export on the parent's split, gain and forgetting; an error is recorded: the run's row must land."""
    out = {"gain": signed(child_new - baseline.parent_new, mode) if child_new is not None else None}
    old, split = baseline.old, baseline.old_split
    try:
        with tempfile.TemporaryDirectory() as tmp:
            metrics = score_export(wl, baseline.old_cfg, old, getattr(old, split), fetch_export(export_uri, tmp))
    except Exception as e:
        print(f"warning: could not score the new model on the parent's {split} split: {e}", file=sys.stderr)
        return out | {"continual_error": str(e)[:500]}
    out |= {f"old_test_{k}": v for k, v in metrics.items()}
    return out | {"forgetting": signed(baseline.parent_old - metrics[base], mode)}


def main(argv: list[str]) -> int:
    p = parser("python -m jobs.continual", "Next continual round: a new run initialised from a stored run's model.")
    from_help = "best = the workload's best finished run in the store (ties: newest); or a run id"
    p.add_argument("--from", dest="parent", required=True, metavar="best|RUN_ID", help=from_help)
    args = p.parse_args(argv)
    cfg, store = preflight.prepare(args.config, args.overrides, args.smoke_test, args.store)
    wl = workloads.module(cfg.workload)
    metric, mode = config_lib.metric_and_mode(cfg)
    base = metric.removeprefix("val_")

    # [1] the parent, its config and its export (every check before anything is written)
    parent = pick_parent(store, cfg.workload, args.parent, metric, mode)
    parent_data = config_lib.to_dict(parent_config(parent, cfg.workload))["data"]
    old_cfg = config_lib.with_data(cfg, parent_data)
    round_ = int(parent.get("round") or 1) + 1
    print(
        f"round {round_} of {cfg.workload} from run {parent['run_id']} (round {round_ - 1}, {metric} "
        f"{_fmt(parent.get(metric))}), new data: {describe_data(json.dumps(config_lib.to_dict(cfg)))}"
    )
    # [2] the parent on the new test split and on its own
    baseline = score_parent(wl, cfg, old_cfg, parent, base)
    replay = f"; replaying {baseline.replay_samples} of its {len(baseline.old.train)} training examples"
    print(
        f"parent: {base} {baseline.parent_new:.4f} on the new test split, {baseline.parent_old:.4f} on its own "
        f"{baseline.old_split} split{replay if cfg.continual.replay_fraction else ''}"
    )
    # [3] the round: a fresh Train run whose loop starts from the parent's export; [4] in its runner
    cfg = config_lib.set_dotted(cfg, "continual.init_from", parent["export_uri"])
    if cfg.continual.replay_fraction:  # the parent's data mixed into the new
        cfg = config_lib.set_dotted(cfg, "continual.replay_data", parent_data)
    extra_row = {
        "parent_new_test_" + base: baseline.parent_new,
        "parent_old_test_" + base: baseline.parent_old,
        "replay_samples": baseline.replay_samples,
        "old_split": baseline.old_split,
    }
    train_runner, path = start(cfg)  # a ClusterError is exit 1 (cli_main)
    print(f"round {round_} trains {path}")
    runner = scoring_runner(train_runner, wl, baseline, base, mode, extra_row)
    row = fit(cfg, store, parent_run_id=parent["run_id"], round=round_, extra_row=extra_row, runner=runner)
    print(
        f"  round {row['round']}: gain {_fmt(row.get('gain'), '+')} ({base} on the new test split vs the parent's), "
        f"forgetting {_fmt(row.get('forgetting'), '+')} ({base} lost on the parent's {row.get('old_split')} split)"
    )
    print(f"  lineage: python -m jobs.store lineage {row['run_id']}")
    return 0 if row["status"] in FINISHED else 1


def _fmt(v, sign: str = "") -> str:
    return "n/a" if missing(v) else f"{v:{sign}.4f}"


if __name__ == "__main__":
    config_lib.cli_main(main)
