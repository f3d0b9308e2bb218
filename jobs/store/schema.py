"""The store's column types, checked at the boundary: a value of another type than its column's is refused before
anything is written (an int into a double column is widened, exactly; nothing else is cast)."""

from __future__ import annotations

import datetime as dt
import numbers
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import StoreError

TS = pa.timestamp("us", tz="UTC")
STRINGS = {pa.string(), pa.large_string(), pa.string_view()}
TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "ts": TS}


def _columns(**by_type: str) -> dict[str, pa.DataType]:
    return {name: TYPES[kind] for kind, names in by_type.items() for name in names.split()}


# Fixed types, whatever one write holds: a None-only column must not be `null` in one write and `string` in another.
CORE: dict[str, dict[str, pa.DataType]] = {
    "runs": _columns(
        str="run_id parent_run_id sweep_id trial_id job_id status error metric mode config_json checkpoint_uri "
        "export_uri git_sha data_fingerprint record_id",
        int="round best_epoch epochs num_workers seed",
        float="best_metric wall_s cpu_s gpu_s train_time_s",
        bool="use_gpu",
        ts="started_at finished_at",
    ),
    "epochs": _columns(
        str="run_id sweep_id trial_id record_id",
        int="epoch skipped_batches",
        float="train_loss train_time_s samples_per_s elapsed_s",
    ),
    "jobs": _columns(
        str="submission_id entrypoint verb status message config_hash git_sha address batch_id",
        int="attempt",
        ts="submitted_at started_at finished_at",
    ),
    "sweeps": _columns(
        str="sweep_id status search scheduler search_space_json metric mode best_trial_id best_run_id best_config_json",
        int="num_trials trials_completed trials_stopped_early trials_failed epochs_used epochs_budget",
        float="best_metric wall_s cpu_s",
        ts="started_at finished_at",
    ),
}
PARTITION = "workload"


def to_arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> a table whose column types do not depend on the values in this particular write."""
    core = CORE.get(table, {})
    names = list(dict.fromkeys(k for r in rows for k in r))
    arrays = []
    for name in names:
        values = [r.get(name) for r in rows]
        wanted = core.get(name) or (pa.string() if name == PARTITION else _infer(values))
        wrong = None
        try:
            # values of a kind that always fits go in as they are; others are checked one by one
            if not set(map(type, values)) <= {*_FITS_ALWAYS.get(wanted, ()), type(None)}:
                wrong = next((v for v in values if v is not None and not _fits(v, wanted)), None)
            if wrong is not None:  # pyarrow would truncate 2.5 into an int64 column: refuse instead
                raise pa.ArrowInvalid(repr(wrong))
            arrays.append(pa.array(values, type=wanted))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            sample = wrong if wrong is not None else next(v for v in values if v is not None)
            raise StoreError(
                f"column '{name}' of table '{table}' holds {wanted} values, this write has {sample!r} "
                f"({type(sample).__name__}) — nothing written; fix the value"
            ) from None
    return pa.Table.from_arrays(arrays, names=names)


_FITS_ALWAYS = {pa.float64(): {float}, pa.int64(): {int}, pa.string(): {str}, pa.bool_(): {bool}, TS: {dt.datetime}}


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
    if pa.types.is_boolean(t) or isinstance(v, (bool, np.bool_)):
        return pa.types.is_boolean(t) and isinstance(v, (bool, np.bool_))
    if pa.types.is_integer(t):
        return isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer())
    if pa.types.is_floating(t):
        return isinstance(v, numbers.Real) and (not isinstance(v, numbers.Integral) or abs(int(v)) <= 2**53)
    if pa.types.is_timestamp(t):
        return isinstance(v, dt.datetime)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return isinstance(v, str)
    return True


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
        widen = pa.types.is_integer(col.type) and pa.types.is_floating(want)
        exact_int = widen and (pc.max(pc.abs(col)).as_py() or 0) <= 2**53  # exact as a double up to 2**53
        # types that differ only in representation: string / large_string / string_view, timestamp units and zones
        same_kind = {col.type, want} <= STRINGS or (pa.types.is_timestamp(col.type) and pa.types.is_timestamp(want))
        if col.null_count == len(col) or exact_int or same_kind:
            columns.append(col.cast(want))
            continue
        sample = next((v for v in col.to_pylist() if v is not None), None)
        raise StoreError(
            f"column '{name}' of table '{table}' is {want}, this write has {col.type} ({sample!r}) — "
            f"nothing written; write {want} values, or name the new column differently"
        )
    return pa.Table.from_arrays(columns, names=arrow.column_names)
