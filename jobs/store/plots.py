"""Plots of the store: learning curves per run, and a sweep's metric against each hyperparameter (PNG)."""

from __future__ import annotations

import json
import os
import re

import pyarrow.dataset as ds

from jobs.errors import StoreError
from jobs.store.engine import FINISHED, PARTITION, number


def plot(store, run_ids=(), sweep_id=None, workload=None, metric=None, out: str = "plots", top: int = 5) -> list[str]:
    """Learning curves of ``run_ids``, else a sweep's trials (and its metric against each hyperparameter), else
    the ``top`` runs of each workload. Returns the PNG paths written."""
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(out, exist_ok=True)
    if run_ids:
        groups = {"runs": list(run_ids)}
    elif sweep_id:
        trials = store.runs(sweep_id=sweep_id)
        if not len(trials):
            raise StoreError(
                f"no runs of sweep '{sweep_id}' in {store.uri} — list sweeps with: python -m jobs.store sql \"SELECT * FROM sweeps\""
            )
        groups = {sweep_id: list(trials["run_id"])}
    else:
        board = store.leaderboard(workload, metric, top)
        if not len(board):
            raise StoreError(
                f"no finished runs{f' of {workload}' if workload else ''} in {store.uri} — train one first"
            )
        groups = {w: list(g["run_id"]) for w, g in board.groupby(PARTITION, sort=True)}
    limit = len(run_ids) or top
    written = [
        _plot_curves(store, ids, metric, f"{out}/curves-{_safe(tag)}.png", tag, limit) for tag, ids in groups.items()
    ]
    if sweep_id:
        written.append(_plot_sweep(store, sweep_id, metric, f"{out}/sweep-{_safe(sweep_id)}.png"))
    return written


def _plot_curves(store, run_ids: list[str], metric: str | None, path: str, title: str, limit: int) -> str:
    import matplotlib.pyplot as plt

    runs = store.df("runs", filter=ds.field("run_id").isin(run_ids))
    epochs = store.df("epochs", filter=ds.field("run_id").isin(run_ids))
    missing = sorted(set(run_ids) - set(epochs["run_id"]))
    if len(missing) == len(set(run_ids)):
        raise StoreError(
            f"no epochs for run(s) {', '.join(missing)} in {store.uri} — list runs with: python -m jobs.store runs"
        )
    info = {r["run_id"]: r for r in runs.to_dict("records")}
    metric = metric or next((info[r].get("metric") for r in run_ids if r in info and info[r].get("metric")), None)
    if not metric or metric not in epochs or epochs[metric].isna().all():
        metric = next((c for c in epochs.columns if c.startswith("val_") and not epochs[c].isna().all()), None)
    total = len(set(run_ids))
    if total > limit and all(r in info for r in run_ids):  # a big sweep: only the best lines
        best_first = (info[run_ids[0]].get("mode") or "max") == "max"
        run_ids = sorted(run_ids, key=lambda r: number(info[r].get("best_metric")) or 0.0, reverse=best_first)
        run_ids = run_ids[:limit]
        title += f" (best {limit} of {total} runs)"
    panels = [m for m in (metric, "train_loss") if m and m in epochs and not epochs[m].isna().all()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    for ax, column in zip(axes[0], panels):
        for run_id in dict.fromkeys(run_ids):
            h = epochs[epochs["run_id"] == run_id].sort_values("epoch")
            if not len(h):
                continue
            status = info.get(run_id, {}).get("status", "")
            best = number(info.get(run_id, {}).get("best_metric"))
            label = run_id + (f" {best:.3f}" if best is not None else "")
            label += f" ({status})" if status and status != "completed" else ""
            style = "--" if status == "stopped_early" else "-"
            ax.plot(h["epoch"], h[column], style, marker="o", markersize=3, label=label)
        ax.set(xlabel="epoch", ylabel=column, title=f"{column} per epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].legend(fontsize=8, loc="best", title=f"run, best {metric}" if metric else None, title_fontsize=8)
    fig.suptitle(f"learning curves: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_sweep(store, sweep_id: str, metric: str | None, path: str) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    trials = store.runs(sweep_id=sweep_id)
    space: dict = {}
    sweeps = store.df("sweeps", filter=ds.field("sweep_id") == sweep_id)
    if len(sweeps) and sweeps.iloc[-1].get("search_space_json"):
        space = json.loads(sweeps.iloc[-1]["search_space_json"])
    params = [p for p in space if p in trials] or [
        c
        for c in trials.columns
        if c.split(".")[0] in ("data", "model", "train") and trials[c].nunique(dropna=True) > 1
    ]
    if not params:
        raise StoreError(f"sweep '{sweep_id}': no hyperparameter varies between its trials — nothing to plot")
    column = metric or "best_metric"
    named = trials["metric"].dropna() if "metric" in trials else []
    ylabel = metric or (named.iloc[0] if len(named) else "best_metric")
    finished = trials[trials["status"].isin(FINISHED) & trials[column].notna()]
    mode = finished["mode"].dropna().iloc[0] if "mode" in finished and finished["mode"].notna().any() else "max"
    best = (finished[column].idxmax() if mode == "max" else finished[column].idxmin()) if len(finished) else None
    ncols = min(3, len(params))
    nrows = -(-len(params) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), squeeze=False)
    styles = {
        "completed": ("o", "tab:blue", "completed"),
        "stopped_early": ("x", "tab:orange", "stopped early (ASHA)"),
        "failed": ("v", "tab:red", "failed"),
    }
    for ax, param in zip(axes.flat, params):
        values = trials[param]
        categorical = not all(isinstance(v, (int, float, np.integer, np.floating)) for v in values.dropna())
        if categorical:
            levels = sorted(values.dropna().astype(str).unique())
            xs = values.astype(str).map({v: i for i, v in enumerate(levels)})
            ax.set_xticks(range(len(levels)), levels)
        else:
            xs = values.astype(float)
            positive = xs.dropna()
            if (space.get(param, {}) or {}).get("loguniform") or (
                len(positive) and positive.min() > 0 and positive.max() / positive.min() > 50
            ):
                ax.set_xscale("log")
        for status, (marker, color, label) in styles.items():
            mask = (trials["status"] == status) & trials[column].notna()
            if mask.any():
                ax.scatter(xs[mask], trials.loc[mask, column], marker=marker, color=color, s=40, label=label)
        if best is not None:
            star = {"marker": "*", "s": 220, "facecolor": "none", "edgecolor": "tab:red", "linewidth": 1.4}
            ax.scatter(xs[best], trials.loc[best, column], label=f"best: {trials.loc[best, 'run_id']}", **star)
        ax.set(xlabel=param, ylabel=ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"sweep {sweep_id}: {ylabel} (best epoch) of each trial, {len(trials)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _safe(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)
