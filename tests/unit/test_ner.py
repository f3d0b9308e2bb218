"""NER workload on a tiny random-init BERT (hidden 64, 2 layers, MiniLM vocabulary) and tiny CoNLL files."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from bench.vs_hf_trainer import padded_fraction
from jobs import config as config_lib
from jobs.loop import seed_everything
from workloads import ner
from workloads.data import DataError

TRAIN = """-DOCSTART- -X- -X- O

Kaczynski NNP B-NP B-PER
visited VBD B-VP O
Szczecin NNP B-NP B-LOC
. . O O

The DT B-NP O
Bundesbank NNP I-NP B-ORG
in IN B-PP O
Frankfurt NNP B-NP B-LOC

Peter NNP B-NP B-PER
Blackburnshire NNP I-NP I-PER
"""  # no final blank line on purpose
VAL = "Peter NNP B-NP B-PER\nvisited VBD B-VP O\nFrankfurt NNP B-NP B-LOC\n\nThe DT B-NP O\nBundesbank NNP I-NP B-ORG\n"


def conll_files(tmp_path: Path, train: str = TRAIN, val: str = VAL) -> dict[str, str]:
    paths = {}
    for split, text in (("train", train), ("val", val), ("test", val)):
        paths[split] = str(tmp_path / f"{split}.txt")
        Path(paths[split]).write_text(text)
    return paths


def make_cfg(paths: dict[str, str], *overrides: str):
    return config_lib.load_config(
        None,
        [
            "workload=ner",
            "model.name_or_path=tiny",
            "train.lr=0.003",
            *[f"data.{k}={v}" for k, v in paths.items()],
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = make_cfg(conll_files(tmp_path_factory.mktemp("conll")))
    seed_everything(0)
    splits = ner.build_data(cfg)
    return cfg, splits, ner.build_model(cfg, splits)


def test_labels_sit_on_the_first_sub_token_only(built):
    cfg, splits, _ = built
    tokenizer = ner.load_tokenizer(cfg)
    assert splits.labels == ["O", "B-LOC", "B-ORG", "B-PER", "I-PER"]
    for feature, (words, tags) in zip(splits.train, ner.read_splits(cfg)[0]["train"]):
        pieces = tokenizer.convert_ids_to_tokens(feature["input_ids"])
        labelled = [i for i, label in enumerate(feature["labels"]) if label != -100]
        assert len(labelled) == len(words)  # one label per word
        assert [splits.labels[feature["labels"][i]] for i in labelled] == tags
        assert all(not pieces[i].startswith("##") for i in labelled)
        assert all(
            feature["labels"][i] == -100 for i, p in enumerate(pieces) if p.startswith("##") or p in ("[CLS]", "[SEP]")
        )
    assert any(len(f["input_ids"]) > len(f["word_labels"]) + 2 for f in splits.train)  # some word did split


def test_batches_pad_to_their_longest_sentence(built):
    _, splits, model = built
    batch = splits.collate_fn(splits.train[:2])
    width = max(len(f["input_ids"]) for f in splits.train[:2])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    assert batch["attention_mask"].sum().item() == sum(len(f["input_ids"]) for f in splits.train[:2])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (2, width, len(splits.labels))


def test_loss_falls_over_a_few_steps(built):
    cfg, splits, _ = built
    seed_everything(0)
    model = ner.build_model(cfg, splits)
    batch = splits.collate_fn(splits.train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    losses = []
    for _ in range(15):
        loss = ner.train_step(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_evaluate_reports_entity_metrics_per_type(built):
    cfg, splits, model = built
    metrics = ner.evaluate(model, DataLoader(splits.val, batch_size=4, collate_fn=splits.collate_fn), splits)
    for key in ("loss", "precision", "recall", "f1", "token_accuracy", "f1_PER", "f1_LOC", "f1_ORG"):
        assert key in metrics and isinstance(metrics[key], float)
    p, r = metrics["precision"], metrics["recall"]
    assert metrics["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)  # seqeval's micro F1, not a stand-in


class Oracle(torch.nn.Module):
    """Predicts each word's gold tag on its first sub-token: isolates the scoring from the model."""

    def forward(self, input_ids, attention_mask, labels):
        logits = torch.nn.functional.one_hot(labels.clamp(min=0), 5).float()
        return SimpleNamespace(loss=torch.tensor(0.0), logits=logits)


def test_scoring_counts_words_cut_off_by_max_length(tmp_path):
    paths = conll_files(tmp_path)
    full = ner.build_data(make_cfg(paths))
    loader = DataLoader(full.val, batch_size=2, collate_fn=full.collate_fn)
    assert ner.evaluate(Oracle(), loader, full)["f1"] == 1.0
    cut = ner.build_data(make_cfg(paths, "data.max_length=4"))  # [CLS] + 2 sub-tokens + [SEP]: Frankfurt is cut
    metrics = ner.evaluate(Oracle(), DataLoader(cut.val, batch_size=2, collate_fn=cut.collate_fn), cut)
    assert metrics["precision"] == 1.0 and metrics["recall"] < 1.0 and metrics["f1_LOC"] == 0.0


def test_length_grouped_batches_pad_less_than_random_ones(tmp_path):
    rng = random.Random(0)
    sentences = "\n".join("\n".join(f"w{j} O" for j in range(rng.randint(1, 40))) + "\n" for _ in range(300))
    paths = conll_files(tmp_path, train=sentences, val="a O\n")
    cfg = make_cfg(paths, "train.batch_size=8")
    splits = ner.build_data(cfg)
    grouped = ner.train_loader(cfg, splits)
    shuffled = DataLoader(splits.train, batch_size=8, shuffle=True, collate_fn=splits.collate_fn)
    assert sorted(grouped.sampler) == list(range(300))  # every sentence once per epoch
    assert padded_fraction(grouped) < 0.5 * padded_fraction(shuffled)


def test_scheduler_warms_up_then_decays_to_zero(built):
    cfg, _, model = built
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = ner.build_scheduler(cfg, optimizer, steps_per_epoch=10)  # 3 epochs -> 30 steps, 3 warm-up
    lrs = []
    for _ in range(30):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and max(lrs) == lrs[3] == 1.0 and lrs[-1] < 0.05


def test_export_round_trip_gives_the_same_predictions(built, tmp_path):
    cfg, splits, model = built
    ner.export(model, cfg, splits, tmp_path)
    loaded = ner.load_export(cfg, splits, tmp_path)
    batch = splits.collate_fn(splits.val)
    model.eval(), loaded.eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(a, b, atol=1e-6)
    assert (tmp_path / "tokenizer.json").is_file() or (tmp_path / "vocab.txt").is_file()


def test_val_tag_missing_from_training_file_is_a_data_error(tmp_path):
    paths = conll_files(tmp_path, val="Bonn B-MISC\n")
    with pytest.raises(DataError, match=r"val.txt:1: unknown label 'B-MISC'"):
        ner.validate(make_cfg(paths))


def test_no_val_file_carves_val_from_train(tmp_path):
    paths = conll_files(tmp_path)
    cfg = make_cfg({"train": paths["train"]}, "data.val_fraction=0.3")
    sentences, _, _ = ner.read_splits(cfg)
    assert len(sentences["train"]) == 2 and len(sentences["val"]) == 1 and "test" not in sentences


def test_missing_model_directory_is_a_data_error(tmp_path):
    cfg = make_cfg(conll_files(tmp_path), f"model.name_or_path={tmp_path / 'nope'}")
    with pytest.raises(DataError, match="config.json"):
        ner.validate(cfg)


def test_tokenized_data_is_cached_per_files_code_and_settings(tmp_path, monkeypatch):
    """A repeated build reads the cache instead of tokenizing; a changed file or setting is a new entry;
    a damaged entry is rebuilt, never trusted; PERENNIAL_DATA_CACHE=0 turns the cache off."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PERENNIAL_DATA_CACHE", str(cache))
    paths = conll_files(tmp_path)
    first = ner.build_data(make_cfg(paths))
    entries = list(cache.glob("*.json"))
    assert len(entries) == 1
    calls = []
    monkeypatch.setattr(ner, "encode_splits", lambda cfg: calls.append(cfg) or pytest.fail("tokenized again"))
    again = ner.build_data(make_cfg(paths))
    assert (again.train, again.val, again.test, again.labels) == (first.train, first.val, first.test, first.labels)
    assert again.fingerprint == first.fingerprint and again.collate_fn(again.train)["input_ids"].shape[0] == 3
    monkeypatch.undo()
    monkeypatch.setenv("PERENNIAL_DATA_CACHE", str(cache))
    ner.build_data(make_cfg(paths, "data.max_length=8"))  # another setting: another entry
    Path(paths["train"]).write_text(TRAIN.replace("Frankfurt", "Hamburg"))  # another file: another entry
    changed = ner.build_data(make_cfg(paths))
    assert len(list(cache.glob("*.json"))) == 3 and changed.fingerprint != first.fingerprint
    for entry in cache.glob("*.json"):
        entry.write_bytes(b"not json")
    assert ner.build_data(make_cfg(paths)).train == changed.train  # damaged: rebuilt and replaced
    monkeypatch.setenv("PERENNIAL_DATA_CACHE", "0")
    off = tmp_path / "off"
    ner.build_data(make_cfg(conll_files(off if off.mkdir() is None else off)))
    assert len(list(cache.glob("*.json"))) == 3


def test_preflight_skips_parsing_files_the_cache_already_holds(tmp_path, monkeypatch):
    """validate() parses the files on a miss (and finds a bad one); on a cache hit for the same files, code
    and settings they parsed when they were cached, so the pre-flight check does not read them again."""
    monkeypatch.setenv("PERENNIAL_DATA_CACHE", str(tmp_path / "cache"))
    paths = conll_files(tmp_path)
    parsed = []
    real = ner.read_splits
    monkeypatch.setattr(ner, "read_splits", lambda cfg: parsed.append(1) or real(cfg))
    ner.validate(make_cfg(paths))
    assert parsed == [1]  # a miss: parsed
    ner.build_data(make_cfg(paths))  # a run tokenizes and caches them
    ner.validate(make_cfg(paths))
    assert parsed == [1, 1]  # build_data's own parse; validate did not parse again
    ner.validate(make_cfg(paths, "data.max_length=8"))  # other settings: another key, parsed again
    assert parsed == [1, 1, 1]
