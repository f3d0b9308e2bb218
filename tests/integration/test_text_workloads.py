"""sentiment and rnn end to end: `python -m jobs.train --smoke-test` on 2 Ray Train workers, rows in the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_job

from jobs.store import Store


@pytest.mark.parametrize("workload", ["sentiment", "rnn"])
def test_smoke_test_on_two_workers_writes_run_epochs_and_export(workload, ray_cluster, store_dir, tmp_path):
    res = run_job(
        [
            "jobs.train",
            "--config",
            f"configs/{workload}.yaml",
            "--smoke-test",
            "--store",
            str(store_dir),
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=1",
            f"run.storage_path={tmp_path / 'runs'}",
        ],
        ray_cluster.job_env(),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    store = Store(store_dir)
    runs = store.df("runs")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "completed" and run["workload"] == workload and run["num_workers"] == 2
    for split in ("val", "test"):
        for metric in ("accuracy", "precision", "recall", "f1", "majority_accuracy"):
            assert 0.0 <= run[f"{split}_{metric}"] <= 1.0, f"{split}_{metric}"
    assert run["test_accuracy"] >= run["test_majority_accuracy"] - 0.15  # a smoke run, but not a broken one
    epochs = store.df("epochs")
    assert sorted(epochs["epoch"]) == [1, 2] and set(epochs["run_id"]) == {run["run_id"]}
    assert (epochs["samples_per_s"] > 0).all()
    export = Path(run["export_uri"])
    if workload == "sentiment":  # a Hugging Face checkpoint a pipeline can load
        assert json.loads((export / "labels.json").read_text()) == ["negative", "neutral", "positive"]
        assert (export / "config.json").is_file() and (export / "tokenizer.json").is_file()
    else:
        assert json.loads((export / "model.json").read_text())["labels"] == ["negative", "positive"]
    assert "epoch 2/2" in res.stdout


def test_unknown_label_in_own_csv_exits_2_before_ray_and_writes_nothing(ray_cluster, store_dir, tmp_path):
    train = tmp_path / "mine.csv"
    train.write_text("review,stars\ngreat,pos\nawful,neg\nfine,maybe\n")
    res = run_job(
        [
            "jobs.train",
            "--config",
            "configs/sentiment.yaml",
            "--smoke-test",
            "--store",
            str(store_dir),
            f"data.train={train}",
            "data.text_column=review",
            "data.label_column=stars",
            "data.labels=[neg, pos]",
        ],
        ray_cluster.job_env(),
    )
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"{train}:4: unknown label 'maybe'" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not store_dir.exists()


def test_text_splits_read_from_s3(s3_server):
    import pyarrow.fs as pafs

    from workloads.data import load_text_splits
    from workloads.sentiment import Data

    bucket = s3_server.make_bucket("text-tables")
    fs, _ = pafs.FileSystem.from_uri(bucket)
    with fs.open_output_stream("text-tables/tweets.jsonl") as f:
        f.write(
            "".join(
                json.dumps({"text": f"tweet {i}", "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(50)
            ).encode()
        )
    with fs.open_output_stream("text-tables/bad.csv") as f:
        f.write(b"text,label\nok,pos\n")
    splits, labels, _ = load_text_splits(Data(train=f"{bucket}/tweets.jsonl"))
    assert labels == ["neg", "pos"] and sum(len(t) for t, _ in splits.values()) == 50
    with pytest.raises(ValueError, match=r"s3://text-tables/bad\.csv:1: no column 'tweet'"):
        load_text_splits(Data(train=f"{bucket}/bad.csv", text_column="tweet"))
