"""sentiment and rnn end to end: `python -m jobs.train --smoke-test` on 2 Ray Train workers, rows in the store."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import run_job

from jobs.store import Store

KEYWORDS = {"negative": "awful", "neutral": "okay", "positive": "great"}
FILLER = "the a movie film plot actor scene day time story music end start show".split()


def learnable_tweets(path: Path, labels: list[str], n: int = 900) -> Path:
    """A toy set a working model learns in two short epochs: the label is given by one keyword among filler
    words. Half the rows carry the first label, so the majority baseline is 0.5."""
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(n):
        label = labels[0] if i % 2 == 0 else labels[1 + (i // 2) % (len(labels) - 1)]
        words = rng.sample(FILLER, 5)
        words.insert(rng.randrange(6), KEYWORDS[label])
        rows.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("workload", ["sentiment", "rnn"])
def test_smoke_test_on_two_workers_writes_run_epochs_and_export(workload, ray_cluster, store_dir, tmp_path):
    labels = ["negative", "neutral", "positive"] if workload == "sentiment" else ["negative", "positive"]
    data = learnable_tweets(tmp_path / "toy.csv", labels)
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
            f"data.train={data}",
            *(["train.batch_size=8"] if workload == "sentiment" else []),  # the tiny BERT needs the steps
        ],
        ray_cluster.job_env(),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    store = Store(store_dir)
    runs = store.df("runs")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "completed" and run["workload"] == workload and run["num_workers"] == 2
    assert abs(run["test_majority_accuracy"] - 0.5) < 0.1  # the toy set's majority baseline
    assert run["test_accuracy"] >= 0.7, run[["val_accuracy", "test_accuracy"]]  # clearly above the baseline: it learned
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
