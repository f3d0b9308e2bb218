"""Convert a plain-Parquet store (the layout before Delta Lake) into Delta tables, in place.

    python -m jobs.store migrate OLD_PATH

The old layout is ``<store>/<table>/workload=<name>/*.parquet``, where a ``*-compacted.parquet`` file's
footer names the files it replaced. Per table: read the live files (not dot-named temp files, not
files a compacted file replaced), unify their schemas, write them as the table's first Delta commit,
check the row count, then move every old file to ``<store>/_legacy/<table>/`` (nothing is deleted:
remove ``_legacy`` yourself once you trust the result). A table that is already a Delta table only
has its leftover old files moved; running migrate again after a crash finishes the job.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.errors import StoreError
from jobs.store.engine import CORE, LOG, PARTITION, Engine, _same_kind, first_line

REPLACES_KEY = b"perennial.replaces"  # footer metadata of an old compacted file: JSON list of replaced names
LEGACY = "_legacy"


def migrate(uri: str) -> list[dict]:
    """Convert every plain-Parquet table of the store at ``uri``; returns one summary per table."""
    from deltalake import CommitProperties, DeltaTable, write_deltalake

    engine = Engine(uri)
    fs, root = engine.fs, engine.root
    if fs.get_file_info(root).type != pafs.FileType.Directory and engine.local:
        raise StoreError(f"no store at '{uri}' — give the folder that holds runs/, epochs/, ...")
    summary = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        table = os.path.basename(info.path)
        if info.type != pafs.FileType.Directory or table.startswith((".", "_")):
            continue
        is_delta = fs.get_file_info(f"{info.path}/{LOG}").type != pafs.FileType.NotFound
        files = _old_files(fs, info.path, engine if is_delta else None, table)
        if not files and is_delta:
            continue
        live, replaced = _live(fs, files)
        rows = 0
        if not is_delta:
            data = _read_old(fs, info.path, table, live)
            rows = data.num_rows
            write_deltalake(
                engine.table_uri(table),
                data,
                mode="append",
                partition_by=[PARTITION],
                storage_options=engine.options,
                commit_properties=CommitProperties(
                    custom_metadata={"perennial.migrated_from": "plain-parquet", "perennial.rows": str(rows)}
                ),
            )
            written = DeltaTable(engine.table_uri(table), storage_options=engine.options).count()
            if written != rows:
                raise StoreError(
                    f"migrate: table '{table}' has {written} rows in Delta, {rows} in Parquet; old files kept"
                )
        for path in files:  # only now, the Delta commit checked: move the old files aside, never delete
            target = f"{root}/{LEGACY}/{table}/{path[len(info.path) + 1 :]}"
            fs.create_dir(os.path.dirname(target), recursive=True)
            fs.move(path, target)
        summary.append(
            {"table": table, "rows": rows, "old_files": len(live), "superseded": len(replaced)}
            | {"moved_to": f"{engine.uri}/{LEGACY}/{table}" if files else "", "was_delta": is_delta}
        )
    if not summary:
        raise StoreError(f"nothing to migrate in '{uri}': no plain-Parquet table there")
    return summary


def _old_files(fs: pafs.FileSystem, folder: str, delta: Engine | None, table: str) -> list[str]:
    """Files of the old layout in ``folder``: everything but the Delta log and files a Delta commit names."""
    named: set[str] = set()
    if delta is not None:
        from jobs.store.engine import _files_named_in_log

        named = _files_named_in_log(fs, f"{folder}/{LOG}")
    out = []
    for f in fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True)):
        rel = f.path[len(folder) + 1 :]
        if f.type == pafs.FileType.File and not rel.startswith(LOG) and rel not in named:
            out.append(f.path)
    return sorted(out)


def _live(fs: pafs.FileSystem, files: list[str]) -> tuple[list[str], list[str]]:
    """(data files a reader of the old layout read, files an old compaction replaced or temp files)."""
    data = [p for p in files if p.endswith(".parquet") and not os.path.basename(p).startswith((".", "_"))]
    replaced: set[str] = set()
    for p in data:
        if p.endswith("-compacted.parquet"):
            meta = _footer(fs, p).schema.to_arrow_schema().metadata or {}
            if REPLACES_KEY in meta:
                replaced.update(f"{os.path.dirname(p)}/{n}" for n in json.loads(meta[REPLACES_KEY]))
    live = [p for p in data if p not in replaced]
    return live, [p for p in files if p not in live]


def _footer(fs: pafs.FileSystem, path: str) -> pq.FileMetaData:
    try:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata
    except Exception as e:
        raise StoreError(
            f"migrate: cannot read {path}: {first_line(e)} — fix or move the file away, run again"
        ) from None


def _read_old(fs: pafs.FileSystem, folder: str, table: str, paths: list[str]) -> pa.Table:
    """The rows of ``paths`` with one schema: CORE types, else the types the files agree on (ints widen to
    double where files disagree); a real conflict names the file instead of dropping it."""
    parts = []
    for p in paths:
        with fs.open_input_file(p) as f:
            t = pq.read_table(f)
        workload = next(
            (s.split("=", 1)[1] for s in p[len(folder) + 1 :].split("/") if s.startswith("workload=")), None
        )
        t = t.drop_columns([c for c in t.column_names if c == PARTITION])
        parts.append((p, t.append_column(PARTITION, pa.array([workload or "none"] * t.num_rows, pa.string()))))
    core = CORE.get(table, {})
    types: dict[str, pa.DataType] = {}
    for _, t in parts:
        for field in t.schema:
            types.setdefault(field.name, pa.null())
            if field.type == pa.null():
                continue
            have = types[field.name]
            if have == pa.null():
                types[field.name] = field.type
            elif have != field.type:
                try:
                    types[field.name] = (
                        pa.unify_schemas(
                            [pa.schema([("c", have)]), pa.schema([("c", field.type)])], promote_options="permissive"
                        )
                        .field("c")
                        .type
                    )
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                    types[field.name] = core.get(field.name) or have
    schema = pa.schema([(n, core.get(n) or (t if t != pa.null() else pa.float64())) for n, t in types.items()])
    out = []
    for p, t in parts:
        columns = []
        for field in schema:
            if field.name not in t.column_names:
                columns.append(pa.nulls(t.num_rows, field.type))
                continue
            column, have = t.column(field.name), t.schema.field(field.name).type
            widen = have == pa.null() or have == field.type or _same_kind(have, field.type)
            widen = widen or (
                pa.types.is_integer(have) and (pa.types.is_floating(field.type) or pa.types.is_integer(field.type))
            )
            try:
                if not widen:  # a string where the table has doubles: cast nothing silently
                    raise pa.ArrowInvalid(have)
                columns.append(column.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                raise StoreError(
                    f"migrate: column '{field.name}' is {t.schema.field(field.name).type} in {p} but {field.type} "
                    "in the table — fix or move that file away, then run migrate again (nothing was changed)"
                ) from None
        out.append(pa.Table.from_arrays(columns, schema=schema))
    return pa.concat_tables(out) if out else schema.empty_table()
