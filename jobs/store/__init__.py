"""The evaluation store: every run, epoch, trial and job as rows of Delta Lake tables (docs/store.md);
its command line: ``python -m jobs.store -h``."""

from jobs.errors import StoreError
from jobs.store.engine import FINISHED, INFO_KINDS, now, store_path
from jobs.store.maintenance import compact_if_due
from jobs.store.queries import Store, clean_row, describe_data, lineage, missing, print_frame

__all__ = ["FINISHED", "INFO_KINDS", "Store", "StoreError", "clean_row", "compact_if_due", "describe_data"]
__all__ += ["lineage", "missing", "now", "print_frame", "store_path"]
