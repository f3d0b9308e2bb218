"""The evaluation store: every run, epoch, trial and job as rows of Delta Lake tables anyone can query.

    python -m jobs.store leaderboard [--workload mlp] [--as-of 7d]      (all verbs: python -m jobs.store -h)

engine.py appends and reads the tables (schema.py: their column types); maintenance.py compacts (one at a
time per table, under a lease), vacuums and checks; queries.py holds :class:`Store` (the engine plus
maintenance, leaderboard, runs, history, compare, lineage, sql); plots.py draws; cli.py is the command line. docs/store.md describes the layout, the guarantees and the readers.
"""

from jobs.errors import StoreError
from jobs.store.engine import (
    CORE,
    FINISHED,
    INFO_KINDS,
    PARTITION,
    RETENTION_HOURS,
    now,
    parse_as_of,
    parse_since,
    store_path,
    to_arrow,
)
from jobs.store.maintenance import compact_if_due
from jobs.store.queries import Store, clean_row, describe_data, lineage, missing, print_frame

__all__ = [
    "CORE",
    "FINISHED",
    "INFO_KINDS",
    "PARTITION",
    "RETENTION_HOURS",
    "Store",
    "StoreError",
    "clean_row",
    "compact_if_due",
    "describe_data",
    "lineage",
    "missing",
    "now",
    "parse_as_of",
    "parse_since",
    "print_frame",
    "store_path",
    "to_arrow",
]
