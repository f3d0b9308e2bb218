"""LoRA via peft on tiny random-init BERTs: what trains, what the export holds, and that merging keeps the logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import workloads
from jobs import config as config_lib
from jobs.loop import seed_everything
from workloads import lora
from workloads.data import DataError

TINY = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_bert(task: str) -> torch.nn.Module:
    seed_everything(0)
    config = transformers.BertConfig(**TINY, num_labels=5)
    cls = transformers.BertForTokenClassification if task == "token" else transformers.BertForSequenceClassification
    return cls(config)


def train_a_little(model: torch.nn.Module, task: str, steps: int = 3) -> None:
    """A few optimizer steps, so the adapters are no longer the identity (lora_B starts at zero)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY["vocab_size"], (4, 12), generator=g)
    labels = torch.randint(0, 5, (4, 12) if task == "token" else (4,), generator=g)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()


FIXED_INPUT = torch.tensor([[2, 17, 45, 99, 3, 0], [2, 8, 8, 61, 110, 3]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_only_adapters_and_the_head_train(task):
    model = lora.wrap(tiny_bert(task), lora.Lora(enabled=True, r=4), task)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_A" in n or "lora_B" in n or "classifier" in n) for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    adapters = [n for n in trainable if "lora_" in n]
    assert all(".query." in n or ".value." in n for n in adapters)  # the default target modules only
    n_trainable, n_total = lora.parameter_counts(model)
    assert n_trainable < 0.2 * n_total


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_merged_export_loads_in_plain_transformers_with_the_same_logits(task, tmp_path):
    model = lora.wrap(tiny_bert(task), lora.Lora(enabled=True, r=4, dropout=0.1), task)
    train_a_little(model, task)
    model.eval()
    with torch.no_grad():
        adapter_logits = model(input_ids=FIXED_INPUT, attention_mask=MASK).logits
    lora.merged(model).save_pretrained(tmp_path)
    assert lora.is_lora(model)  # merged() works on a copy: the training model keeps its adapters
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k or "modules_to_save" in k for k in saved)
    assert not (tmp_path / "adapter_config.json").exists()
    auto = (
        transformers.AutoModelForTokenClassification
        if task == "token"
        else transformers.AutoModelForSequenceClassification
    )
    plain = auto.from_pretrained(tmp_path).eval()
    assert not lora.is_lora(plain)
    with torch.no_grad():
        plain_logits = plain(input_ids=FIXED_INPUT, attention_mask=MASK).logits
    torch.testing.assert_close(plain_logits, adapter_logits, atol=1e-5, rtol=1e-4)
    base = tiny_bert(task).eval()  # ...and the training did change the model: not a vacuous comparison
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=FIXED_INPUT, attention_mask=MASK).logits, plain_logits, atol=1e-3)


def test_disabled_lora_leaves_the_model_alone():
    model = tiny_bert("token")
    assert lora.wrap(model, lora.Lora(enabled=False), "token") is model
    assert lora.merged(model) is model


@pytest.mark.parametrize(
    "change, words",
    [
        ({"r": 0}, "model.lora.r"),
        ({"dropout": 1.5}, "model.lora.dropout"),
        ({"target_modules": []}, "target_modules"),
    ],
)
def test_bad_lora_settings_are_config_errors(change, words):
    key, value = next(iter(change.items()))
    with pytest.raises(config_lib.ConfigError, match=words):
        config_lib.load_config(None, ["workload=ner", "model.lora.enabled=true", f"model.lora.{key}={value}"])


def test_target_modules_that_match_no_layer_are_named():
    with pytest.raises(DataError, match="qkv"):
        lora.wrap(tiny_bert("token"), lora.Lora(enabled=True, target_modules=["qkv"]), "token")


def test_lora_keys_are_config_keys_for_train_and_sweep():
    cfg = config_lib.load_config(None, ["workload=ner", "model.lora.enabled=true", "model.lora.r=16"])
    assert cfg.model.lora.enabled and cfg.model.lora.r == 16 and cfg.model.lora.target_modules == ["query", "value"]
    assert config_lib.set_dotted(cfg, "model.lora.r", 4).model.lora.r == 4  # how a sweep trial sets it
    assert config_lib.flatten(cfg)["model.lora.r"] == 16  # a runs-table column
    with pytest.raises(config_lib.ConfigError, match="model.lora.rank"):
        config_lib.load_config(None, ["workload=ner", "model.lora.rank=4"])


def test_lora_rank_is_a_sweep_dimension():
    from jobs import sweep

    cfg = config_lib.load_config(None, ["workload=ner", "model.lora.enabled=true"])
    space = sweep.tune_space(cfg, {"model.lora.r": {"choice": [4, 8, 16]}, "train.lr": {"loguniform": [1e-4, 1e-3]}})
    assert sorted(space) == ["model.lora.r", "train.lr"]


CONLL = "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\ncall NN I-NP O\n\nPeter NNP B-NP B-PER\nin IN B-PP O\nBonn NNP B-NP B-LOC\n"
TWEETS = "label,text\n" + "".join(
    f"{lab},{lab} words number {i}\n" for i in range(30) for lab in ("good", "bad", "meh")
)


def workload_config(name: str, tmp_path: Path, *overrides: str):
    if name == "ner":
        for split in ("train", "val", "test"):
            Path(tmp_path, f"{split}.txt").write_text(CONLL)
        data = ["model.name_or_path=tiny", *[f"data.{s}={tmp_path / s}.txt" for s in ("train", "val", "test")]]
    else:
        Path(tmp_path, "tweets.csv").write_text(TWEETS)
        data = ["model.name_or_path=tiny", f"data.train={tmp_path / 'tweets.csv'}", "data.max_length=16"]
    return config_lib.load_config(None, [f"workload={name}", *data, *overrides])


@pytest.mark.parametrize("name", ["ner", "sentiment"])
def test_bert_workloads_with_lora_export_a_plain_model(name, tmp_path):
    """build_model wraps, export merges, load_export reads it back (without peft when LoRA is off)."""
    wl = workloads.module(name)
    cfg = workload_config(name, tmp_path, "model.lora.enabled=true")
    splits = wl.build_data(cfg)
    seed_everything(0)
    model = wl.build_model(cfg, splits)
    assert lora.is_lora(model)
    with torch.no_grad():  # non-zero adapters: lora_B starts at zero, which would make merging trivially exact
        for param_name, p in model.named_parameters():
            if "lora_B" in param_name:
                p.normal_(0, 0.5)
    batch = splits.collate_fn([splits.val[i] for i in range(min(4, len(splits.val)))])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.eval()
    with torch.no_grad():
        want = model(**inputs).logits
    (tmp_path / "export").mkdir()
    wl.export(model, cfg, splits, tmp_path / "export")
    assert json.loads((tmp_path / "export" / "labels.json").read_text()) == splits.labels
    served = wl.load_export(config_lib.set_dotted(cfg, "model.lora.enabled", False), splits, tmp_path / "export").eval()
    assert not lora.is_lora(served)
    with torch.no_grad():
        got = served(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert lora.is_lora(wl.load_export(cfg, splits, tmp_path / "export"))  # a LoRA round goes on with new adapters
