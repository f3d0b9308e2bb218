"""The rnn workload without Ray: every cell, packing, a loss that falls, metric keys, bad config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs import config as config_lib
from jobs.loop import eval_loader, make_optimizer, run_epoch
from workloads import rnn
from workloads.data import DataError

WORDS = {"positive": "love great happy wonderful", "negative": "hate awful sad terrible", "neutral": "the car is blue"}


def write_tweets(path: Path, n: int = 120) -> Path:
    labels = list(WORDS)
    path.write_text(
        "\n".join(
            json.dumps({"tweet": f"{WORDS[labels[i % 3]]} {'so ' * (i % 5)}#{i}", "mood": labels[i % 3]})
            for i in range(n)
        )
    )
    return path


def cfg_for(tmp_path: Path, *overrides: str):
    train = write_tweets(tmp_path / "tweets.jsonl")
    return config_lib.load_config(
        None,
        [
            "workload=rnn",
            f"data.train={train}",
            "data.text_column=tweet",
            "data.label_column=mood",
            "model.embedding_dim=16",
            "model.hidden_size=16",
            "train.batch_size=8",
            *overrides,
        ],
    )


@pytest.mark.parametrize("cell,bidirectional,layers", [("gru", True, 1), ("lstm", True, 2), ("rnn", False, 1)])
def test_every_cell_gives_one_logit_row_per_text_regardless_of_padding(tmp_path, cell, bidirectional, layers):
    cfg = cfg_for(
        tmp_path,
        f"model.cell={cell}",
        f"model.bidirectional={str(bidirectional).lower()}",
        f"model.num_layers={layers}",
    )
    splits = rnn.build_data(cfg)
    assert splits.labels == ["negative", "positive"]  # neutral is dropped by default: binary sentiment
    assert splits.info["vocab_size"] == 30522  # MiniLM's WordPiece vocabulary
    model = rnn.build_model(cfg, splits).eval()
    items = sorted(splits.train, key=lambda it: len(it["input_ids"]))
    short, long = items[0], items[-1]
    alone, together = splits.collate_fn([short]), splits.collate_fn([short, long])
    assert together["input_ids"].shape == (2, len(long["input_ids"]))
    assert together["lengths"].tolist() == [len(short["input_ids"]), len(long["input_ids"])]
    with torch.no_grad():
        logits = model(together["input_ids"], together["lengths"])
        assert logits.shape == (2, 2)
        torch.testing.assert_close(
            model(alone["input_ids"], alone["lengths"])[0], logits[0]
        )  # packing: pads never enter the cell


def test_loss_falls_and_metrics_have_every_key(tmp_path):
    torch.manual_seed(0)
    cfg = cfg_for(tmp_path, "train.lr=0.01", "model.dropout=0.0")
    splits = rnn.build_data(cfg)
    model = rnn.build_model(cfg, splits)
    optimizer = make_optimizer(cfg, model)
    loader = rnn.train_loader(cfg, splits)
    losses = []
    for epoch in range(4):
        loader.sampler.set_epoch(epoch)
        losses.append(run_epoch(model, loader, optimizer, rnn, cfg, torch.device("cpu"))["train_loss"])
    assert losses[-1] < 0.3 * losses[0], losses
    metrics = rnn.evaluate(model, eval_loader(splits, splits.val, 16), splits)
    assert set(metrics) == {"loss", "accuracy", "precision", "recall", "f1", "majority_accuracy"}
    assert metrics["accuracy"] > metrics["majority_accuracy"]


def test_empty_text_is_one_unknown_token(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "text,label\n" + "".join(f"{'good' if i % 2 else ''},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    )
    cfg = config_lib.load_config(None, ["workload=rnn", f"data.train={path}"])
    splits = rnn.build_data(cfg)
    assert min(len(it["input_ids"]) for it in splits.train) == 1


def test_unknown_cell_is_a_config_error_and_bad_label_a_data_error(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="model.cell must be gru, lstm or rnn, got 'transformer'"):
        cfg_for(tmp_path, "model.cell=transformer")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "nice", "label": "positive"}\n\n{"text": "hmm", "label": "mixed"}\n')
    cfg = config_lib.load_config(None, ["workload=rnn", f"data.train={bad}", "data.labels=[negative, positive]"])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: unknown label 'mixed'"):
        rnn.validate(cfg)
