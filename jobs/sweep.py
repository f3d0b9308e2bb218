"""One Ray Tune sweep whose trials are runs of one workload, recorded in the evaluation store.

    python -m jobs.sweep --config configs/mlp.yaml [--smoke-test] [--store PATH] [key=value ...]
    python -m jobs.sweep --resume SWEEP_ID [run.storage_path=...]       # after the driver was killed

Each trial is a Tune function trainable and one ``runs`` row, the sweep one ``sweeps`` row; its files live in
``<run.storage_path>/<sweep_id>/``. Exit codes: 0 finished (some trials may have failed), 1 none did, 2 bad input.
"""

from __future__ import annotations

import functools
import json
import os
import time
import types
import typing
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import yaml

import workloads
from jobs import config as config_lib
from jobs import preflight, tracking
from jobs.ray_compat import max_resources_from_cluster_config, wait_for_tune_report_queue
from jobs.store import Store, compact_if_due, now
from jobs.train import (
    check_cluster,
    checkpoint_meta,
    fit,
    git_sha,
    init_ray,
    job_id,
    last_checkpoint,
    parser,
    print_scores,
    record_run,
    resume_command,
    resume_state,
    run_trainer,
    storage_uri,
    write_state_file,
)

DISTRIBUTIONS = {  # name -> its arguments (Tune's own samplers; randint excludes `high`, as in Tune)
    "loguniform": "[low, high], low > 0",
    "uniform": "[low, high]",
    "quniform": "[low, high, q]",
    "randint": "[low, high) of integers",
    "choice": "[value, value, ...]",
    "grid": "[value, value, ...]",
}
STATE_FILE = "perennial_sweep.json"  # config + store of a sweep, read by --resume
SMOKE_MAX_SAMPLES = 4  # --smoke-test: at most this many samples, on top of the workload's own SMOKE_TEST


# ----------------------------------------------------------------------------- [1] search space
def search_space(cfg) -> dict:
    space = cfg.sweep.search_space or workloads.hook(workloads.module(cfg.workload), "SEARCH_SPACE")
    if not space:
        raise config_lib.ConfigError(
            f"no search space for workload '{cfg.workload}' — set sweep.search_space, e.g. "
            "{train.lr: {loguniform: [1.0e-4, 1.0e-2]}}"
        )
    return space


def tune_space(cfg, space: dict | None = None) -> dict:
    """``{"train.lr": tune.loguniform(...), ...}`` from the raw space; ConfigError for what the config would refuse."""
    from ray import tune

    space = search_space(cfg) if space is None else space
    search = cfg.sweep.search
    sections = list(config_lib.section_fields(workloads.module(cfg.workload).Config))
    out = {}
    for key, spec in space.items():
        where = f"sweep.search_space.{key}"
        if key.split(".")[0] not in sections or "." not in key:
            raise config_lib.ConfigError(
                f"{where}: '{key}' is not a hyperparameter of workload '{cfg.workload}' — use a dotted key "
                f"into its sections ({', '.join(sections)}), e.g. train.lr"
            )
        if key == "train.epochs":
            raise config_lib.ConfigError(
                f"{where}: train.epochs is every trial's budget (ASHA's max) — set it in train:, not in the search space"
            )
        field_type = _field_type(cfg, key, where)
        if not isinstance(spec, dict) or len(spec) != 1:
            raise config_lib.ConfigError(
                f"{where} must be one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-2]}}, got {spec!r}"
            )
        ((dist, args),) = spec.items()
        if dist not in DISTRIBUTIONS:
            raise config_lib.ConfigError(
                f"{where}: unknown distribution '{dist}' — use one of {', '.join(DISTRIBUTIONS)}"
            )
        for value in _samples(where, key, dist, args, field_type):  # each must fit the field, as an override would
            try:
                config_lib.set_dotted(cfg, key, value)
            except config_lib.ConfigError as e:
                raise config_lib.ConfigError(f"{where}: {dist} value {value!r} does not fit {key} ({e})") from None
        if search == "grid" and dist not in ("grid", "choice"):
            raise config_lib.ConfigError(
                f"{where}: search=grid needs grid or choice values, got {dist} — list the values, or use search=random"
            )
        if search == "optuna" and dist == "grid":
            raise config_lib.ConfigError(f"{where}: search=optuna samples; it has no grid — use choice")
        if dist == "grid" or (search == "grid" and dist == "choice"):
            out[key] = tune.grid_search(args)
        else:
            out[key] = getattr(tune, dist)(*args) if dist != "choice" else tune.choice(args)
    return out


def _samples(where: str, key: str, dist: str, args, field_type: type) -> list:
    """The values of ``dist`` that must fit the field: every listed one, or both bounds."""
    usage = f"{where}: {dist} takes {DISTRIBUTIONS[dist]}"
    listed = dist in ("choice", "grid")
    if not isinstance(args, list) or not args or (not listed and len(args) != (3 if dist == "quniform" else 2)):
        raise config_lib.ConfigError(f"{usage}, got {args!r}")
    if listed:
        return args
    number = int if dist == "randint" else (int, float)
    if not all(isinstance(a, number) and not isinstance(a, bool) for a in args):
        kind = "integers" if dist == "randint" else "numbers"
        raise config_lib.ConfigError(
            f"{usage} — its bounds must be {kind}, got {args!r} (in YAML write 1.0e-4, not 1e-4)"
        )
    low, high = args[0], args[1]
    if low > high or (dist == "randint" and low == high):
        raise config_lib.ConfigError(f"{where}: lower bound {low} > upper bound {high} — swap them")
    if dist == "loguniform" and low <= 0:
        raise config_lib.ConfigError(f"{usage} — low must be > 0 on a log scale, got {low}")
    if dist == "quniform" and args[2] <= 0:
        raise config_lib.ConfigError(f"{usage} — q must be > 0, got {args[2]}")
    if dist in ("uniform", "loguniform") and field_type is not float:
        raise config_lib.ConfigError(
            f"{where}: {dist} samples floats but {key} is {field_type.__name__} — use randint, quniform or choice"
        )
    return [low, high - 1] if dist == "randint" else [low, high]


def _field_type(cfg, key: str, where: str) -> type:
    obj = cfg
    for part in key.split("."):
        if part not in config_lib.section_fields(obj):
            raise config_lib.ConfigError(
                f"{where}: '{key}' is not in workload '{cfg.workload}''s config — check the spelling (see workloads/{cfg.workload}.py)"
            )
        tp, obj = config_lib.section_fields(obj)[part], getattr(obj, part)
    if config_lib.section_fields(obj):
        raise config_lib.ConfigError(f"{where}: '{key}' is a section, not a hyperparameter — name a key inside it")
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # `float | None` is a float field
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def with_trial_overrides(cfg, given: list[str] = ()):
    """``cfg`` with ``sweep.trial_overrides`` applied, except keys the command line (or --smoke-test) set."""
    for key, value in cfg.sweep.trial_overrides.items():
        if key.split(".")[0] in ("sweep", "workload"):
            raise config_lib.ConfigError(
                f"sweep.trial_overrides.{key}: only the workload's and job sections (train, data, scaling, ...) can be set per trial"
            )
        if key not in given:
            try:
                cfg = config_lib.set_dotted(cfg, key, value)
            except config_lib.ConfigError as e:
                raise config_lib.ConfigError(f"sweep.trial_overrides: {e}") from None
    return cfg


def trial_config(base: dict, params: dict):
    raw = json.loads(json.dumps(base))
    for key, value in params.items():
        config_lib._set_dotted(raw, key, value.item() if hasattr(value, "item") else value)  # numpy scalars
    return config_lib.from_dict(raw)


def make_search(cfg, metric: str, mode: str, concurrency: int = 0):
    """The Tune search algorithm and scheduler the ``sweep`` section asks for (0 = no concurrency cap)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    sw = cfg.sweep
    if sw.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=metric, mode=mode, seed=sw.seed)
        if concurrency:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=concurrency)
    else:  # random and grid: Tune's variant generator, seeded so a sweep's trials are reproducible
        search_alg = BasicVariantGenerator(random_state=sw.seed, max_concurrent=concurrency)
    if sw.scheduler == "fifo":
        return search_alg, FIFOScheduler()
    epochs = cfg.train.epochs
    if sw.grace_period >= epochs:
        raise config_lib.ConfigError(
            f"ASHA needs 1 <= sweep.grace_period < train.epochs, got grace_period {sw.grace_period}, "
            f"train.epochs {epochs} — or use sweep.scheduler=fifo"
        )
    # rungs before the last epoch (a stop there saves nothing and loses the export); a trial past the last rung
    # runs to its end, final report included
    return search_alg, ASHAScheduler(
        time_attr="epoch",
        max_t=epochs - 1,
        grace_period=sw.grace_period,
        reduction_factor=sw.reduction_factor,
        stop_last_trials=False,
    )


def in_process(cfg) -> bool:
    return cfg.sweep.in_process and config_lib.one_worker(cfg.scaling)


def trial_resources(cfg) -> dict:
    """A trial actor's resources: the worker's in process, else 1 MB of memory (the Train workers hold the rest)."""
    return config_lib.worker_resources(cfg.scaling) if in_process(cfg) else {"memory": 1e6}


def default_concurrency(cfg) -> int:
    """Trials at once for ``sweep.max_concurrent_trials=0``: as many as the largest cluster holds (autoscaler config,
    else Ray's record of the cluster's maximum, else the nodes up now)."""
    import ray

    s, per_worker = cfg.scaling, config_lib.worker_resources(cfg.scaling)
    per_trial = config_lib.max_workers(s)  # ranks of one trial (an elastic trial counted at its largest)
    if (largest := autoscaler_nodes()) is not None:
        head, workers, max_workers, where = largest
        ranks = sorted((ranks_per_node(node, per_worker) for node in workers), reverse=True)[:max_workers]
        ranks = [ranks_per_node(node, per_worker) for node in head] + ranks
        strict = s.placement_strategy == "STRICT_PACK"  # a trial's ranks never share a node with another's
        fits = sum(r // per_trial for r in ranks) if strict else sum(ranks) // per_trial
        print(f"sweep: {max(1, fits)} trials at a time fit the autoscaler's largest cluster ({where})")
        return max(1, fits)
    try:
        maximum = max_resources_from_cluster_config() or None
    except Exception:  # a private API: absent or changed in another Ray, then the nodes up now decide
        maximum = None
    res = maximum or ray.cluster_resources()
    fits = ranks_per_node(res, per_worker) // per_trial
    if fits >= 1:
        return fits
    need = {k: v * per_trial for k, v in per_worker.items()}
    have = {k: res.get(k, 0) for k in per_worker}
    if os.environ.get("RAY_ADDRESS") and not maximum:
        raise config_lib.ConfigError(
            f"set sweep.max_concurrent_trials=N: one trial needs {need}, the cluster's nodes hold {have} now and "
            f"its maximum size is unknown (no autoscaler config at {BOOTSTRAP_CONFIG} or $PERENNIAL_CLUSTER_CONFIG)"
        )
    print(f"warning: one trial needs {need}, the cluster has {have}: trials wait for more nodes")
    return 1


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # `ray up` writes the autoscaler's config here, on the head


def autoscaler_nodes() -> tuple[list[dict], list[dict], int, str] | None:
    """(head resources, every worker node it may launch, max_workers, path) of the autoscaler config, or None."""
    given = os.environ.get("PERENNIAL_CLUSTER_CONFIG") or (BOOTSTRAP_CONFIG if os.environ.get("RAY_ADDRESS") else "")
    path = Path(given).expanduser()
    if not given or not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        if not os.environ.get("PERENNIAL_CLUSTER_CONFIG") and "available_node_types" not in raw:
            return None  # a head's bootstrap file without node types (one naming its provider): no autoscaler
        types, head = raw["available_node_types"], raw.get("head_node_type")
    except (yaml.YAMLError, KeyError, TypeError):
        raise config_lib.ConfigError(
            f"cluster config {path} has no available_node_types — point $PERENNIAL_CLUSTER_CONFIG at a cluster YAML"
        ) from None
    workers = [t.get("resources", {}) for name, t in types.items() if name != head for _ in range(t["max_workers"])]
    head_resources = [types[head].get("resources", {})] if head in types else []
    return head_resources, workers, int(raw.get("max_workers", len(workers))), str(path)


def ranks_per_node(node: dict, per_worker: dict) -> int:
    return int(min((node.get(k, 0) // v for k, v in per_worker.items() if v > 0), default=0))


# ----------------------------------------------------------------------------- [2] trials
def run_trial(ctx: dict, params: dict, trial_id: str, callbacks, runner) -> tuple[dict, bool]:
    """Train (or only record) one trial: (its runs row, whether it trained now)."""
    os.environ.update(ctx["env"])  # the driver's job id and git sha: a trial's actor may not see the job or repo
    cfg, store, sweep_id = trial_config(ctx["base"], params), Store(ctx["store"]), ctx["sweep_id"]
    run_id = f"{sweep_id}-{trial_id}"
    recorded = store.runs(sweep_id=sweep_id)
    if run_id in set(recorded["run_id"]):
        return recorded[recorded["run_id"] == run_id].iloc[0].to_dict(), False
    checkpoint = last_checkpoint(f"{cfg.run.storage_path}/{run_id}")
    ids = {"sweep_id": sweep_id, "trial_id": trial_id}
    if checkpoint is not None and checkpoint_meta(checkpoint).get("finished"):
        return record_run(cfg, store, run_id, checkpoint, started=now(), wall=0.0, **ids), False
    tags = {"_tracking": ids | ctx["tracking"]}
    return fit(
        cfg, store, run_id=run_id, runner=runner, callbacks=callbacks, extra_config=tags, quiet=True, **ids
    ), True


class TuneSession:
    """The loop's session in a one-worker trial's own thread (not Train's local mode: in a Tune function
    ``ray.train.get_context`` raises, Ray 2.60 ``requires_train_worker``). Tune's scheduler reads the metric from
    every report, so a mid-epoch report carries the last epoch's metrics."""

    world_rank, world_size = 0, 1

    def __init__(self, run_id: str, storage_path: str, use_gpu: bool):
        import torch
        from ray import tune

        self.run_name, self.storage_path, self.last_epoch = run_id, storage_path, None
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")  # Ray sets CUDA_VISIBLE_DEVICES
        self.get_checkpoint = tune.get_checkpoint

    def report(self, metrics: dict, checkpoint=None, checkpoint_dir_name: str | None = None) -> None:
        from ray import tune

        if metrics.get("mid_epoch"):
            if self.last_epoch is None:
                return
            metrics = self.last_epoch | metrics
        else:
            self.last_epoch = metrics
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint.path) if checkpoint else None)

    def prepare_model(self, model):
        return model.to(self.device)  # one worker needs no DDP

    def prepare_data_loader(self, loader, auto_transfer: bool):
        return loader  # the loop moves each batch to the device

    def run(self, cfg, run_id: str, callbacks=(), extra_config: dict | None = None) -> tuple:
        """A ``jobs.train.fit`` runner: the loop in this thread; SystemExit (the scheduler's stop) passes through."""
        from jobs.loop import train_loop_per_worker

        try:
            train_loop_per_worker({"config": cfg} | (extra_config or {}), self)
        except Exception as e:
            return self.get_checkpoint(), e
        return self.get_checkpoint(), None


def train_trial(params: dict, ctx: dict) -> None:
    """Tune function trainable: one trial = one run, in process or a TorchTrainer run reported through Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    if ctx["in_process"]:
        run_id, use_gpu = f"{ctx['sweep_id']}-{trial_id}", ctx["base"]["scaling"]["use_gpu"]
        callbacks, runner = [], TuneSession(run_id, ctx["base"]["run"]["storage_path"], use_gpu).run
    else:
        callbacks, runner = [TuneReportCallback()], run_trainer
    row, trained = run_trial(ctx, params, trial_id, callbacks, runner)
    if not trained:  # recorded earlier (a resumed sweep): Tune sees its last epoch and best metric
        last = {"epoch": int(row["epochs"] or 0), row["metric"]: row["best_metric"]}
        tune.report(last | {"final": True, "status": row["status"]})
    elif not ctx["in_process"]:
        wait_for_tune_report_queue()
    if row["status"] == "failed":
        raise RuntimeError(row["error"])  # Tune marks the trial errored; its runs row is already written


# ----------------------------------------------------------------------------- [3] the sweep
def make_progress_callback(state: dict, directory: str, attempt: int, t0: float, metric: str, record):
    """A line per finished trial; records a trial the scheduler stopped (a trial records only a run it finished)."""
    from ray.tune import Callback

    class Progress(Callback):
        done = 0  # trials finished in this attempt

        def _line(self, trial, status: str) -> None:
            self.done += 1
            r = trial.last_result or {}
            value = r.get(metric)
            params = "  ".join(f"{k}={_short(v)}" for k, v in (trial.config or {}).items())
            print(
                f"[{self.done}] trial {trial.trial_id}  {status:<13} epoch {r.get('epoch', 0)}  "
                f"{metric} {'n/a' if value is None else f'{value:.4f}'}  {params}",
                flush=True,
            )
            state["attempts"][attempt][1] = time.time() - t0
            write_state_file(directory, STATE_FILE, state)
            if self.done % 10 == 0:  # every 10 finished trials the driver merges small files (one compactor)
                compact_if_due(Store(state["store"]), state["config"]["workload"])

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            if not r.get("final"):
                record(trial.trial_id, trial.config, r, path=trial.path)
            self._line(trial, r.get("status") or ("completed" if r.get("final") else "stopped_early"))

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "failed")

    return Progress()


def make_tuner(cfg, ctx: dict, state: dict, callbacks: list, resume: bool, concurrency: int):
    """A new Tuner for the sweep, or the killed one restored from its folder (``--resume``)."""
    from ray import tune

    sweep_id = ctx["sweep_id"]
    trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), trial_resources(cfg))
    directory = ctx["base"]["run"]["storage_path"]  # the sweep's folder
    if resume and tune.Tuner.can_restore(directory):
        tuner = tune.Tuner.restore(directory, trainable=trainable, resume_unfinished=True, resume_errored=False)
        tuner._local_tuner.get_run_config().callbacks = callbacks  # restore takes no RunConfig: swap in this run's
        print(f"resuming sweep {sweep_id}: finished trials are kept, unfinished ones continue from their last epoch")
        return tuner
    metric, mode = config_lib.metric_and_mode(cfg)
    search_alg, scheduler = make_search(cfg, metric, mode, concurrency)
    dirname = (lambda trial: f"{sweep_id}-{trial.trial_id}") if in_process(cfg) else None  # <sweep dir>/<run_id>
    return tune.Tuner(
        trainable,
        param_space=tune_space(cfg, state["search_space"]),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=cfg.sweep.num_samples,
            reuse_actors=in_process(cfg),  # torch and the data are imported once per actor
            trial_dirname_creator=dirname,
        ),
        run_config=tune.RunConfig(
            name=sweep_id,
            storage_path=storage_uri(cfg.run.storage_path),
            callbacks=callbacks,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=max(2, cfg.run.num_to_keep)),
        ),
    )


def run_sweep(cfg, store: Store, sweep_id: str, state: dict, resume: bool) -> int:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    metric, mode = config_lib.metric_and_mode(cfg)
    directory = f"{storage_uri(cfg.run.storage_path).rstrip('/')}/{sweep_id}"
    base = config_lib.to_dict(cfg)
    base["run"]["storage_path"] = directory  # trial runs in <sweep dir>/<run_id>
    base["log"]["every_s"] = 0.0  # a sweep prints trial events, not every trial's steps
    ctx = {
        "sweep_id": sweep_id,
        "base": base,
        "in_process": in_process(cfg),
        "store": store.uri,
        "env": {"PERENNIAL_JOB_ID": job_id(), "PERENNIAL_GIT_SHA": git_sha()},
        "tracking": tracking.start_sweep(cfg, sweep_id, state["search_space"]),  # MLflow parent run
    }
    concurrency = cfg.sweep.max_concurrent_trials or default_concurrency(cfg)
    attempt, t0 = len(state["attempts"]), time.time()
    state["attempts"].append([t0, 0.0])
    write_state_file(directory, STATE_FILE, state)
    record = functools.partial(record_trial, base, ctx["store"], sweep_id)  # Tune pickles its callbacks
    progress = make_progress_callback(state, directory, attempt, t0, metric, record)
    # Tune's result files, without its TensorBoard logger (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS in main)
    tuner = make_tuner(cfg, ctx, state, [progress, CSVLoggerCallback(), JsonLoggerCallback()], resume, concurrency)
    print(
        f"sweep {sweep_id}: {cfg.workload}, search={cfg.sweep.search}, scheduler={cfg.sweep.scheduler}, "
        f"{cfg.sweep.num_samples} samples, up to {cfg.train.epochs} epochs, {concurrency} at a time"
        f"{', in process' if in_process(cfg) else ''}\n  resume with: {resume_command('sweep', sweep_id, cfg)}",
        flush=True,
    )
    results = tuner.fit()
    state["attempts"][attempt][1] = time.time() - t0
    recorded = set(store.runs(sweep_id=sweep_id)["run_id"])
    for result in results:  # trials lost with their actor or a killed driver, found in a resumed sweep's results
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id and f"{sweep_id}-{trial_id}" not in recorded:
            record(trial_id, result.config, result.metrics, result.error, path=result.path)
    write_state_file(directory, STATE_FILE, state)
    tracking.finish_sweep(cfg, ctx["tracking"], store.runs(sweep_id=sweep_id))
    compact_if_due(store, cfg.workload)  # the sweep's end: its partition's small files, one compactor at a time
    return summarize(cfg, store, sweep_id, state, metric, mode)


def record_trial(base: dict, store_uri: str, sweep_id: str, trial_id: str, params, metrics, error=None, path=""):
    """Record a trial that did not (stopped, or its actor lost) from its last checkpoint; ``path``: its Tune folder."""
    run_id = f"{sweep_id}-{trial_id}"
    tcfg, store = trial_config(base, params or {}), Store(store_uri)
    # Tune's trial.path has no scheme on S3 (and a suffix after a restart): only its name is used
    name = path.rstrip("/").rpartition("/")[2] if in_process(tcfg) and path else run_id
    checkpoint = last_checkpoint(f"{storage_uri(base['run']['storage_path']).rstrip('/')}/{name}")
    if checkpoint is None and error is None:  # no report yet: nothing to record
        return
    wall = float(metrics.get("time_total_s") or 0.0)
    record_run(tcfg, store, run_id, checkpoint, error, started=now(), wall=wall, sweep_id=sweep_id, trial_id=trial_id)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------- [4] summary + sweeps row
def summarize(cfg, store: Store, sweep_id: str, state: dict, metric: str, mode: str, finished: bool = False) -> int:
    """Print the sweep's leaderboard and best model; write its ``sweeps`` row unless ``finished`` (written)."""
    runs = store.runs(sweep_id=sweep_id)
    if not len(runs):
        print(f"sweep {sweep_id}: no trial recorded")
        return 1
    runs = runs.drop_duplicates("run_id")
    ranked = runs[runs["status"] != "failed"].dropna(subset=["best_metric"])
    ranked = ranked.sort_values("best_metric", ascending=mode == "min")
    # the best trial must have a servable model: a completed trial; a stopped one only if none completed
    with_model = ranked[ranked["export_uri"].fillna("") != ""]
    best = (with_model if len(with_model) else ranked).iloc[0] if len(ranked) else None
    params = [k for k in state["search_space"] if k in runs.columns]
    counts = runs["status"].value_counts()
    totals = {
        "num_trials": len(runs),
        **{f"trials_{s}": int(counts.get(s, 0)) for s in ("completed", "stopped_early", "failed")},
        "epochs_used": int(runs["epochs"].fillna(0).sum()),
        "epochs_budget": len(runs) * cfg.train.epochs,
        "wall_s": sum(w for _, w in state["attempts"]),
        "cpu_s": float(runs["cpu_s"].fillna(0).sum()),
    }
    table = pd.concat([ranked, runs[~runs["run_id"].isin(ranked["run_id"])]])
    table = table.assign(rank=[str(i) for i in range(1, len(ranked) + 1)] + ["-"] * (len(table) - len(ranked)))
    cols = ["rank", "trial_id", "status", "best_metric", "epochs", *params, "wall_s"]
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.4g}".format):
        print(
            f"\nsweep {sweep_id} — {len(runs)} trials: {totals['trials_completed']} completed, "
            f"{totals['trials_stopped_early']} stopped early, {totals['trials_failed']} failed  ({metric}, {mode})"
        )
        print(table[cols].rename(columns={"best_metric": metric}).to_string(index=False))
    used, budget = totals["epochs_used"], totals["epochs_budget"]
    print(
        f"epochs used: {used} of {budget} ({1 - used / max(budget, 1):.0%} saved by {cfg.sweep.scheduler})  "
        f"wall {totals['wall_s']:.0f} s  CPU {totals['cpu_s']:.0f} s"
    )
    if best is not None:
        print(
            f"best: trial {best['trial_id']}  {metric} {best['best_metric']:.4f}  "
            + "  ".join(f"{k}={_short(best[k])}" for k in params)
        )
        print_scores(best.to_dict())
    print(f"  store: {store.uri}  (python -m jobs.store runs --sweep {sweep_id})")
    if not finished:
        write_sweeps_row(cfg, store, state, best, totals | {"sweep_id": sweep_id, "metric": metric, "mode": mode})
    return 0 if best is not None else 1


def write_sweeps_row(cfg, store: Store, state: dict, best, row: dict) -> None:
    row |= {
        "workload": cfg.workload,
        "status": "completed" if best is not None else "failed",
        "search": cfg.sweep.search,
        "scheduler": cfg.sweep.scheduler,
        "search_space_json": json.dumps(state["search_space"], sort_keys=True),
        "best_trial_id": best["trial_id"] if best is not None else "",
        "best_run_id": best["run_id"] if best is not None else "",
        "best_metric": float(best["best_metric"]) if best is not None else None,
        "best_config_json": best["config_json"] if best is not None else "",
        "started_at": pd.Timestamp(state["started_at"]).to_pydatetime(),
        "finished_at": now(),
    }
    store.append("sweeps", [row])


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str]) -> int:
    p = parser("python -m jobs.sweep", "A Ray Tune sweep of Ray Train runs, recorded in the store.", "sweep")
    verbose_help = "also print every trial's per-epoch lines and the autoscaler's events"
    p.add_argument("--verbose", action="store_true", help=verbose_help)
    args = p.parse_args(argv)
    # before Tune is imported (it reads some of these once)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # trials keep the job's working dir (relative data paths)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # experiment state fresh enough for --resume
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no Tune TensorBoard: the loop writes its own
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's verbose=0 then prints nothing; the sweep prints its lines
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # num_to_keep's snapshots
    if args.resume:
        cfg, store, state = resume_state(args, "sweep", STATE_FILE)
    else:  # every bad-input check before Ray starts (exit 2)
        if not args.config:
            raise config_lib.ConfigError("give --config configs/<workload>.yaml (or --resume SWEEP_ID)")
        cfg = config_lib.load_config(args.config, args.overrides, smoke_test=args.smoke_test)
        given = [config_lib._split_override(o)[0] for o in args.overrides]
        if args.smoke_test:
            given += list(workloads.hook(workloads.module(cfg.workload), "SMOKE_TEST") or {})
            if "sweep.num_samples" not in given:
                cfg = config_lib.set_dotted(cfg, "sweep.num_samples", min(cfg.sweep.num_samples, SMOKE_MAX_SAMPLES))
        cfg = with_trial_overrides(cfg, given)
        preflight.check_config(cfg)  # the checks jobs.train makes, on every trial's base config
        store = preflight.open_store(args.store, cfg)
        space = search_space(cfg)
        tune_space(cfg, space)
        make_search(cfg, *config_lib.metric_and_mode(cfg))
        state = {
            "sweep_id": f"{cfg.workload}-sweep-{uuid.uuid4().hex[:8]}",
            "config": config_lib.to_dict(cfg),
            "search_space": space,
            "store": store.uri,
            "started_at": now().isoformat(),
            "attempts": [],
        }
    sweep_id = state["sweep_id"]
    if len(store.df("sweeps", filter=ds.field("sweep_id") == sweep_id)):
        print(f"sweep {sweep_id} already finished")
        return summarize(cfg, store, sweep_id, state, *config_lib.metric_and_mode(cfg), finished=True)
    init_ray(log_to_driver=args.verbose)  # a ClusterError is exit 1 (cli_main)
    check_cluster(cfg)
    return run_sweep(cfg, store, sweep_id, state, resume=bool(args.resume))


if __name__ == "__main__":
    config_lib.cli_main(main)
