"""Queries over the store: leaderboard, runs, history, compare, lineage and SQL (DuckDB over the Delta tables)."""

from __future__ import annotations

import itertools
import json
import sys

import pyarrow as pa
import pyarrow.dataset as ds

from jobs.errors import StoreError
from jobs.store import maintenance
from jobs.store.engine import CORE, FINISHED, PARTITION, Engine, first_line, number, parse_since


class Store(Engine):
    """A store at a local directory or ``s3://bucket/prefix``: Delta tables plus the queries over them."""

    compact, check, vacuum = maintenance.compact, maintenance.check, maintenance.vacuum

    def runs(self, workload: str | None = None, sweep_id: str | None = None, status: str | None = None, since=None):
        """Runs, newest first; ``since`` is a datetime, an ISO date/time or an age like ``12h`` / ``7d``."""
        expr = ds.scalar(True)
        for column, value in (("sweep_id", sweep_id), ("status", status)):
            if value:
                expr &= ds.field(column) == value
        df = self.df("runs", workload, expr)
        if since is not None and len(df):
            cutoff = parse_since(since)
            when = df["finished_at"] if "finished_at" in df else df["started_at"]
            df = df[when >= cutoff]
        return df.sort_values("finished_at", ascending=False) if len(df) and "finished_at" in df else df

    def leaderboard(self, workload: str | None = None, metric: str | None = None, top: int = 10):
        """Best runs per workload by ``best_metric`` (or ``metric``) in the workload's ``mode``; ``*loss`` low first."""
        import pandas as pd

        d = self.dataset("runs", workload)
        names = d.schema.names if d is not None else []
        col = metric or "best_metric"
        if metric and d is not None and metric not in names:
            numeric = sorted(n for n in names if pa.types.is_floating(d.schema.field(n).type))
            raise StoreError(f"no column '{metric}' in runs — rank by one of: {', '.join(numeric)}")
        test_cols = [c for c in names if c.startswith("test_") and not c.endswith("_loss")][:2]
        cols = ["workload", "rank", "run_id", "metric", col, *test_cols, "best_epoch", "epochs", "status"]
        cols += ["sweep_id", "wall_s", "finished_at"]
        wanted = list(dict.fromkeys([c for c in cols if c != "rank"] + ["mode"]))
        df = self.df("runs", workload, ds.field("status").isin(list(FINISHED)) if "status" in names else None, wanted)
        if col not in df:
            return df.iloc[0:0]
        df = df.dropna(subset=[col])
        # one sort for all workloads: ascending key = the metric, negated where higher is better
        modes = df[PARTITION].map(df.groupby(PARTITION)["mode"].first()) if "mode" in df else pd.Series(index=df.index)
        df = df.assign(_key=df[col].where((modes == "min") | bool(metric and metric.endswith("loss")), -df[col]))
        keys, ascending = [PARTITION, "_key"], [True, True]
        if "finished_at" in df:  # ties: newest first
            keys, ascending = keys + ["finished_at"], ascending + [False]
        out = df.sort_values(keys, ascending=ascending, kind="stable").groupby(PARTITION, sort=False).head(top)
        out = out.assign(rank=out.groupby(PARTITION, sort=False).cumcount() + 1)
        return out[[c for c in dict.fromkeys(cols) if c in out.columns]].reset_index(drop=True)

    def history(self, run_id: str):
        df = self.df("epochs", filter=ds.field("run_id") == run_id)
        return df.sort_values("epoch") if len(df) else df

    def run(self, run_id: str) -> dict:
        """The runs row of ``run_id`` (the newest, if written twice); StoreError if none."""
        df = self.df("runs", filter=ds.field("run_id") == run_id)
        if not len(df):
            raise StoreError(f"no run '{run_id}' in {self.uri} — list runs with: python -m jobs.store runs")
        if "finished_at" in df:
            df = df.sort_values("finished_at")
        return df.iloc[-1].to_dict()

    def compare(self, run_a: str, run_b: str):
        """Config differences and metric differences of two runs: one frame with a ``section`` column."""
        import pandas as pd

        a, b = self.run(run_a), self.run(run_b)
        rows = []

        def add(section: str, key: str, va, vb, delta: str = "") -> None:
            rows.append({"section": section, "key": key, run_a: _text(va), run_b: _text(vb), "delta": delta})

        config_a, config_b = _flat_json(a.get("config_json")), _flat_json(b.get("config_json"))
        for key in sorted(set(config_a) | set(config_b)):
            if config_a.get(key) != config_b.get(key):
                add("config", key, config_a.get(key), config_b.get(key))
        metric_keys = ["best_metric", "best_epoch", "epochs"]
        metric_keys += sorted(k for k in set(a) | set(b) if k.startswith(("val_", "test_")))
        metric_keys += ["wall_s", "train_time_s", "cpu_s"]
        for key in metric_keys:
            va, vb = number(a.get(key)), number(b.get(key))
            if va is None and vb is None:
                continue
            add("metric", key, va, vb, f"{vb - va:+.4g}" if va is not None and vb is not None else "")
        for key in ("status", "metric", "workload", "git_sha", "data_fingerprint"):
            if a.get(key) != b.get(key):
                add("run", key, a.get(key), b.get(key))
        return pd.DataFrame(rows, columns=["section", "key", run_a, run_b, "delta"])

    def sql(self, query: str):
        """DuckDB SQL over the store's tables, each registered by its name (at ``as_of`` if given)."""
        import duckdb

        con = duckdb.connect()
        names = sorted(set(self.tables()) | set(CORE))
        for name in names:
            data = self.dataset(name)
            con.register(name, data if data is not None else self.empty(name))
        try:
            relation = con.sql(query)  # a relation's Arrow output: no copy, no pandas round trip in DuckDB
            return relation.to_arrow_table().to_pandas() if relation is not None else pa.table({}).to_pandas()
        except duckdb.Error as e:
            raise StoreError(f"sql: {first_line(e)} — tables: {', '.join(names)}") from None
        finally:
            con.close()


def lineage(store: Store, run_id: str):
    """The rounds around ``run_id``: its ancestors, itself, then its descendants (one row per run)."""
    import pandas as pd

    runs = store.df("runs")
    if not len(runs) or run_id not in set(runs["run_id"]):
        raise StoreError(f"no run '{run_id}' in store '{store.uri}' — list runs with: python -m jobs.store runs")
    runs = runs.sort_values("finished_at")
    rows = {r["run_id"]: clean_row(r) for r in runs.to_dict("records")}  # a run id has one row; the newest wins
    chain, current = [], run_id
    while current in rows and current not in chain:  # ancestors
        chain.append(current)
        current = rows[current].get("parent_run_id")
    chain.reverse()
    for rid in itertools.islice(chain, len(chain) - 1, None):  # then descendants, breadth first, as they are added
        chain += [r["run_id"] for r in rows.values() if r.get("parent_run_id") == rid and r["run_id"] not in chain]
    out = []
    for rid in chain:
        r = rows[rid]
        base = (r.get("metric") or "").removeprefix("val_")
        out.append(
            {
                "round": int(r.get("round") or 1),
                "run_id": rid,
                "parent_run_id": r.get("parent_run_id") or "",
                "status": r.get("status"),
                "data": describe_data(r.get("config_json")),
                "data_fingerprint": r.get("data_fingerprint") or "",
                "metric": base,
                "new_test": r.get(f"test_{base}"),
                "parent_new_test": r.get(f"parent_new_test_{base}"),
                "gain": r.get("gain"),
                "old_test": r.get(f"old_test_{base}"),
                "forgetting": r.get("forgetting"),
                "replay": r.get("continual.replay_fraction"),
            }
        )
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


def clean_row(row: dict) -> dict:
    """pandas NaN/NaT -> None, so ``row.get(k) or default`` reads naturally."""
    return {k: (None if missing(v) else v) for k, v in row.items()}


def missing(v) -> bool:
    return v is None or str(v) in ("NaT", "nan")  # float and numpy NaN print as nan


def _flat_json(text) -> dict:
    import pandas as pd

    return pd.json_normalize(json.loads(text)).iloc[0].to_dict() if isinstance(text, str) and text else {}


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def print_frame(df, fmt: str = "table", empty: str = "(no rows)") -> None:
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso", indent=1) + "\n")
    elif not len(df):
        print(empty)
    else:
        print(df.to_string(index=False, max_colwidth=80, float_format="{:.4f}".format))
