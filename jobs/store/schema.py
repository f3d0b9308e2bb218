"""The store's column types: the fixed types of the core columns, and rows -> Arrow with types checked at the boundary.

A new column merges into a table; a value whose type differs from the table's column is refused before anything
is written (an int into a double column is widened, exactly; nothing else is cast).
"""

from __future__ import annotations

import datetime as dt
import numbers
from typing import Any

import pyarrow as pa

from jobs.errors import StoreError

TS = pa.timestamp("us", tz="UTC")
# Columns with a fixed type, whatever a given write holds (a None-only column must not become `null`
# in one write and `string` in another; a metric must never be int in one write and double in another).
CORE: dict[str, dict[str, pa.DataType]] = {
    "runs": {
        "run_id": pa.string(),
        "parent_run_id": pa.string(),
        "round": pa.int64(),
        "sweep_id": pa.string(),
        "trial_id": pa.string(),
        "job_id": pa.string(),
        "status": pa.string(),
        "error": pa.string(),
        "metric": pa.string(),
        "mode": pa.string(),
        "best_metric": pa.float64(),
        "best_epoch": pa.int64(),
        "epochs": pa.int64(),
        "config_json": pa.string(),
        "checkpoint_uri": pa.string(),
        "export_uri": pa.string(),
        "started_at": TS,
        "finished_at": TS,
        "wall_s": pa.float64(),
        "cpu_s": pa.float64(),
        "gpu_s": pa.float64(),
        "train_time_s": pa.float64(),
        "num_workers": pa.int64(),
        "use_gpu": pa.bool_(),
        "seed": pa.int64(),
        "git_sha": pa.string(),
        "data_fingerprint": pa.string(),
        "record_id": pa.string(),
    },
    "epochs": {
        "run_id": pa.string(),
        "sweep_id": pa.string(),
        "trial_id": pa.string(),
        "epoch": pa.int64(),
        "train_loss": pa.float64(),
        "train_time_s": pa.float64(),
        "samples_per_s": pa.float64(),
        "elapsed_s": pa.float64(),
        "skipped_batches": pa.int64(),
        "record_id": pa.string(),
    },
    "jobs": {
        "submission_id": pa.string(),
        "entrypoint": pa.string(),
        "verb": pa.string(),
        "status": pa.string(),
        "message": pa.string(),
        "submitted_at": TS,
        "started_at": TS,
        "finished_at": TS,
        "config_hash": pa.string(),
        "git_sha": pa.string(),
        "address": pa.string(),
        "batch_id": pa.string(),
        "attempt": pa.int64(),
    },
    "sweeps": {
        "sweep_id": pa.string(),
        "status": pa.string(),
        "search": pa.string(),
        "scheduler": pa.string(),
        "search_space_json": pa.string(),
        "metric": pa.string(),
        "mode": pa.string(),
        "best_trial_id": pa.string(),
        "best_run_id": pa.string(),
        "best_metric": pa.float64(),
        "best_config_json": pa.string(),
        "num_trials": pa.int64(),
        "trials_completed": pa.int64(),
        "trials_stopped_early": pa.int64(),
        "trials_failed": pa.int64(),
        "epochs_used": pa.int64(),
        "epochs_budget": pa.int64(),
        "started_at": TS,
        "finished_at": TS,
        "wall_s": pa.float64(),
        "cpu_s": pa.float64(),
    },
}
PARTITION = "workload"


def to_arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> a table whose column types do not depend on the values in this particular write."""
    core = CORE.get(table, {})
    columns: dict[str, list] = {}
    for r in rows:
        for k in r:
            columns.setdefault(k, [])
    for r in rows:
        for k, col in columns.items():
            col.append(r.get(k))
    arrays, names = [], []
    for name, values in columns.items():
        wanted = core.get(name) or (pa.string() if name == PARTITION else _infer(values))
        try:
            kinds = set(map(type, values))
            # values of a kind that always fits go in as they are; others are checked one by one
            wrong = (
                None
                if kinds <= _FITS_ALWAYS.get(wanted, set())
                else next((v for v in values if v is not None and not _fits(v, wanted)), None)
            )
            if wrong is not None:  # pyarrow would truncate 2.5 into an int64 column: refuse instead
                raise pa.ArrowInvalid(repr(wrong))
            arrays.append(pa.array(values, type=wanted))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            sample = wrong if wrong is not None else next(v for v in values if v is not None)
            raise StoreError(
                f"column '{name}' of table '{table}' holds {wanted} values, this write has {sample!r} "
                f"({type(sample).__name__}) — nothing written; fix the value"
            ) from None
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


_FITS_ALWAYS: dict[pa.DataType, set[type]] = {
    pa.float64(): {float, type(None)},
    pa.int64(): {int, type(None)},
    pa.string(): {str, type(None)},
    pa.bool_(): {bool, type(None)},
    TS: {dt.datetime, type(None)},
}


def _infer(values: list) -> pa.DataType:
    present = [v for v in values if v is not None]
    if not present:
        return pa.float64()  # an absent metric: the most common kind of extra column
    if all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        # ints stay ints only if the column is ints by nature (hyperparameters); metrics are floats
        return pa.int64() if all(isinstance(v, int) for v in present) else pa.float64()
    if all(isinstance(v, dt.datetime) for v in present):
        return TS
    if all(isinstance(v, (int, float, bool)) for v in present):
        return pa.float64()
    if len({type(v) for v in present}) > 1:
        kinds = ", ".join(sorted({type(v).__name__ for v in present}))
        raise StoreError(f"a column holds values of several types ({kinds}) in one write — write one type")
    return pa.string()


def _fits(v: Any, t: pa.DataType) -> bool:
    """Whether ``v`` goes into a column of type ``t`` as it is (an int into a double exactly, nothing else)."""
    if pa.types.is_boolean(t):
        return isinstance(v, (bool, np_bool()))
    if isinstance(v, (bool, np_bool())):
        return False
    if pa.types.is_integer(t):
        return isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer())
    if pa.types.is_floating(t):
        return isinstance(v, numbers.Real) and (not isinstance(v, numbers.Integral) or abs(int(v)) <= 2**53)
    if pa.types.is_timestamp(t):
        return isinstance(v, dt.datetime)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return isinstance(v, str)
    return True


def np_bool() -> type:
    try:
        import numpy

        return numpy.bool_
    except ImportError:  # pragma: no cover - numpy comes with pyarrow's pandas path
        return bool


def _exact_as_double(col) -> bool:
    import pyarrow.compute as pc

    biggest = pc.max(pc.abs(col)).as_py()
    return biggest is None or biggest <= 2**53


def _same_kind(have: pa.DataType, want: pa.DataType) -> bool:
    """Types that differ only in representation (string / large_string, timestamp units and zones)."""
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(f(have) for f in strings) and any(f(want) for f in strings):
        return True
    return pa.types.is_timestamp(have) and pa.types.is_timestamp(want)


def conform(table: str, arrow: pa.Table, d) -> pa.Table:
    """``arrow`` with the Delta table ``d``'s's column types; a value of another type is refused (one line)."""
    have = pa.schema(d.schema().to_arrow())
    columns = []
    for name in arrow.column_names:
        col = arrow.column(name)
        if name not in have.names or col.type == have.field(name).type:
            columns.append(col)
            continue
        want = have.field(name).type
        exact_int = pa.types.is_integer(col.type) and pa.types.is_floating(want)
        if col.null_count == len(col) or (exact_int and _exact_as_double(col)) or _same_kind(col.type, want):
            columns.append(col.cast(want))
            continue
        sample = next((v for v in col.to_pylist() if v is not None), None)
        raise StoreError(
            f"column '{name}' of table '{table}' is {want}, this write has {col.type} ({sample!r}) — "
            f"nothing written; write {want} values, or name the new column differently"
        )
    return pa.Table.from_arrays(columns, names=arrow.column_names)
