"""Concurrent writers, a reader and a compaction on one Delta table: nothing lost, nothing duplicated.

The suite runs 8 writers x 300 appends on local disk; the full size (8 x 1,000, local disk and moto S3) is
``python -m bench.store_query`` (docs/store.md), which this test shares its harness with.
"""

from __future__ import annotations

from bench.store_query import concurrent_appends

WRITERS, APPENDS = 8, 300


def test_writers_a_reader_and_a_compaction_at_once_lose_and_duplicate_nothing(tmp_path):
    figures = concurrent_appends(str(tmp_path / "store"), WRITERS, APPENDS)  # asserts rows, commits, reads, check
    assert figures["rows"] == WRITERS * APPENDS and figures["lost"] == figures["duplicated"] == 0
    assert figures["compactions"] >= 1  # the compactor ran beside the writers, under its lease
    print(f"\n{WRITERS} writers x {APPENDS} appends with a reader and a compactor: {figures}")
