"""Re-score a stored run's exported model on a split, in this process (no Ray cluster needed).

    python -m jobs.evaluate --run RUN_ID [--split test|val] [--store PATH] [--no-record]

Prints the metrics beside the stored ones and appends an ``evaluations`` row (unless ``--no-record``).
Exit codes: 0 scored, 2 bad input (unknown run, no checkpoint, bad data), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import workloads
from jobs import config as config_lib
from jobs import preflight
from jobs.errors import StoreError
from jobs.fs import filesystem
from jobs.store import Store, missing, now


def fetch_export(uri: str, tmp: str) -> Path:
    """The export folder as a local path (downloaded first when it is a URI)."""
    import pyarrow.fs as pafs

    gone = config_lib.ConfigError(f"checkpoint '{uri}' is missing — it was moved or deleted; train the run again")
    if "://" not in uri:
        if not Path(uri).is_dir():
            raise gone
        return Path(uri)
    fs, inner = filesystem(uri, config_lib.ConfigError, "checkpoint")
    try:
        found = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    except Exception as e:
        raise config_lib.ConfigError(
            f"cannot read checkpoint '{uri}': {str(e).splitlines()[0]} — check the URI and AWS_* credentials"
        ) from None
    if not found:
        raise gone
    pafs.copy_files(inner, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return Path(tmp)


def score_export(wl, cfg, splits, dataset, export_dir) -> dict[str, float]:
    """``wl.evaluate`` of the export in ``export_dir`` on ``dataset``, in this process (jobs.continual uses it too)."""
    import torch

    from jobs import loop

    torch.set_num_threads(max(1, cfg.scaling.cpus_per_worker))
    try:
        model = loop.load_export(wl, cfg, splits, export_dir)
    except RuntimeError as e:  # e.g. a state dict whose shapes do not fit this config's model section
        raise config_lib.ConfigError(
            f"the stored model does not fit this config ({str(e).splitlines()[0][:200]}) — "
            "keep the run's model.* settings and the same kind of data"
        ) from None
    return {k: float(v) for k, v in loop.score(wl, cfg, model, splits, dataset, torch.device("cpu")).items()}


def evaluate_run(store: Store, run_id: str, split: str) -> tuple[dict, dict]:
    """Score ``run_id``'s export on ``split``: returns (metrics with the split prefix, the runs row)."""
    from jobs import loop

    try:
        run = store.run(run_id)
    except StoreError:
        raise config_lib.ConfigError(
            f"unknown run '{run_id}' in store '{store.uri}' — list runs with: python -m jobs.store runs"
        ) from None
    if not run.get("export_uri"):
        raise config_lib.ConfigError(
            f"run '{run_id}' has no exported model (status {run.get('status')}) — only finished runs can be evaluated"
        )
    cfg = config_lib.from_dict(json.loads(run["config_json"]))
    wl = workloads.module(cfg.workload)
    loop.seed_everything(cfg.train.seed)
    splits = wl.build_data(cfg)
    dataset = getattr(splits, split)
    if dataset is None:
        raise config_lib.ConfigError(
            f"run '{run_id}' has no {split} split (its config gives no {split} data) — use --split val"
        )
    if run.get("data_fingerprint") and splits.fingerprint != run["data_fingerprint"]:
        print(
            f"warning: the data changed since run {run_id} was trained (fingerprint {splits.fingerprint} != {run['data_fingerprint']})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        metrics = score_export(wl, cfg, splits, dataset, fetch_export(run["export_uri"], tmp))
    return {f"{split}_{k}": float(v) for k, v in metrics.items()}, run


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, metavar="RUN_ID", help="run id (python -m jobs.store runs lists them)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--store", help="evaluation store: a directory or s3:// URI (default $PERENNIAL_STORE or ./store)")
    p.add_argument("--no-record", action="store_true", help="do not append an evaluations row to the store")
    args = p.parse_args(argv)
    store = preflight.open_store(args.store, write=not args.no_record)
    t0 = time.perf_counter()
    metrics, run = evaluate_run(store, args.run, args.split)
    wall = time.perf_counter() - t0
    print(f"run {args.run} ({run['workload']}) on {args.split}, {wall:.1f} s")
    for key, value in metrics.items():
        stored = run.get(key)
        was = "" if missing(stored) else f"   (stored {stored:.4f})"
        print(f"  {key:<24} {value:.4f}{was}")
    if not args.no_record:
        keys = {"run_id": args.run, "workload": run["workload"], "split": args.split, "export_uri": run["export_uri"]}
        store.append("evaluations", [keys | {"evaluated_at": now(), "wall_s": wall, **metrics}])
    return 0


if __name__ == "__main__":
    config_lib.cli_main(main)
