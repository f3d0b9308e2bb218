"""The sentiment workload without Ray, on a tiny random-init BERT (MiniLM's tokenizer, never its weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs import config as config_lib
from jobs.loop import eval_loader, make_optimizer, run_epoch
from workloads import sentiment
from workloads.data import DataError

WORDS = {
    "positive": "love great happy wonderful",
    "negative": "hate awful sad terrible",
    "neutral": "the car is blue today",
}


def write_tweets(path: Path, n: int = 90) -> Path:
    labels = list(WORDS)
    lines = ["label,text"] + [f"{labels[i % 3]},{WORDS[labels[i % 3]]} {'x ' * (i % 7)}number {i}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def cfg_for(tmp_path: Path, *overrides: str):
    train = write_tweets(tmp_path / "tweets.csv")
    return config_lib.load_config(
        None,
        [
            "workload=sentiment",
            "model.name_or_path=tiny",
            f"data.train={train}",
            "data.max_length=32",
            "train.batch_size=8",
            *overrides,
        ],
    )


def test_shapes_padding_and_metric_keys(tmp_path):
    cfg = cfg_for(tmp_path)
    splits = sentiment.build_data(cfg)
    assert splits.labels == ["negative", "neutral", "positive"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (72, 9, 9)
    batch = splits.collate_fn([splits.train[i] for i in range(4)])
    width = max(len(splits.train[i]["input_ids"]) for i in range(4))
    assert (
        batch["input_ids"].shape == batch["attention_mask"].shape == (4, width)
    )  # padded to the longest, not max_length
    assert batch["attention_mask"].sum().item() == sum(len(splits.train[i]["input_ids"]) for i in range(4))
    model = sentiment.build_model(cfg, splits)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2  # tiny, not the 90 MB MiniLM
    assert model.config.vocab_size == 30522  # the real MiniLM WordPiece vocabulary
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (4, 3)
    metrics = sentiment.evaluate(model, eval_loader(splits, splits.val, 16), splits)
    assert set(metrics) == {"loss", "accuracy", "precision", "recall", "f1", "majority_accuracy"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("accuracy", "precision", "recall", "f1"))


def test_loss_falls_through_the_shared_loop(tmp_path):
    torch.manual_seed(0)
    cfg = cfg_for(tmp_path, "train.lr=0.003", "train.epochs=6", "train.warmup_ratio=0.1")
    splits = sentiment.build_data(cfg)
    model = sentiment.build_model(cfg, splits)
    optimizer = make_optimizer(cfg, model)
    loader = sentiment.train_loader(cfg, splits)
    scheduler = sentiment.build_scheduler(cfg, optimizer, len(loader))
    losses = []
    for epoch in range(cfg.train.epochs):
        loader.sampler.set_epoch(epoch)
        losses.append(run_epoch(model, loader, optimizer, sentiment, cfg, torch.device("cpu"), scheduler)["train_loss"])
    assert losses[-1] < 0.5 * losses[0], losses
    assert sentiment.evaluate(model, eval_loader(splits, splits.train, 32), splits)["accuracy"] > 0.9


def test_warmup_then_linear_decay(tmp_path):
    cfg = cfg_for(tmp_path, "train.lr=0.001", "train.epochs=2", "train.warmup_ratio=0.25")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    scheduler = sentiment.build_scheduler(cfg, optimizer, 10)  # 20 steps, 5 of warmup
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(1e-3) and lrs[1] < lrs[4] < lrs[5] > lrs[10] > lrs[19] > 0


def test_length_grouped_loader_pads_less_and_reshuffles_per_epoch(tmp_path):
    cfg = cfg_for(tmp_path)
    splits = sentiment.build_data(cfg)
    loader = sentiment.train_loader(cfg, splits)
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)  # Ray's prepare_data_loader keeps it

    def padding(batches) -> int:
        return sum(int((b["attention_mask"] == 0).sum()) for b in batches)

    loader.sampler.set_epoch(0)
    grouped = list(loader)
    assert sum(len(b["labels"]) for b in grouped) == len(splits.train)
    shuffled = list(
        torch.utils.data.DataLoader(
            splits.train,
            batch_size=8,
            shuffle=True,
            collate_fn=splits.collate_fn,
            generator=torch.Generator().manual_seed(0),
        )
    )
    assert padding(grouped) < padding(shuffled)
    loader.sampler.set_epoch(1)
    assert [b["labels"].tolist() for b in loader] != [b["labels"].tolist() for b in grouped]


def test_export_round_trip_keeps_predictions_and_labels(tmp_path):
    cfg = cfg_for(tmp_path)
    splits = sentiment.build_data(cfg)
    model = sentiment.build_model(cfg, splits).eval()
    out = tmp_path / "export"
    out.mkdir()
    sentiment.export(model, cfg, splits, out)
    assert json.loads((out / "labels.json").read_text()) == splits.labels
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    loaded = sentiment.load_export(cfg, splits, out).eval()
    assert loaded.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    batch = splits.collate_fn([splits.val[i] for i in range(4)])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_validate_rejects_bad_data_and_a_missing_model_dir(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,text\npositive,fine\nnegative,bad\nsarcastic,oh great\n")
    cfg = config_lib.load_config(None, ["workload=sentiment", f"data.train={bad}", "data.labels=[negative, positive]"])
    with pytest.raises(DataError, match=r"bad\.csv:4: unknown label 'sarcastic'"):
        sentiment.validate(cfg)
    cfg = cfg_for(tmp_path, f"model.name_or_path={tmp_path / 'nope'}")
    with pytest.raises(DataError, match=r"model\.name_or_path .* is not a directory"):
        sentiment.validate(cfg)
