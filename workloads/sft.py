"""SFT: supervised fine-tuning of a causal LM on prompt -> response pairs; the loss counts response tokens only.

    python -m jobs.train --config configs/sft.yaml [--smoke-test] [key=value ...]

Data: JSONL / Parquet rows of ``{prompt, response}`` or chat ``messages`` (the last one the response), or the
generated ``addition`` task; through the tokenizer's chat template where it has one. ``tiny``: a random-init
2-layer Llama on a character tokenizer, for tests.
"""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from workloads import Section, common
from workloads import lora as lora_lib
from workloads.data import DataError, Splits, fingerprint, read_bytes, read_parquet
from workloads.lora import Lora


# ----------------------------------------------------------------------------- config
class Data(Section):
    source: str = "addition"  # the shipped generated task; used when data.train is empty
    train: str = ""  # your .jsonl / .parquet of {prompt, response} or {messages} rows (local or s3://)
    val: str = ""  # empty = data.val_fraction of the training rows
    test: str = ""  # empty = data.test_fraction of the training rows
    num_examples: int = Field(4000, ge=10)  # rows the addition task generates
    max_operand: int = Field(99, ge=1)  # addition: a + b with 0 <= a, b <= max_operand
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    max_train_samples: int = Field(0, ge=0)  # 0 = all
    max_eval_samples: int = Field(0, ge=0)  # caps val and test; 0 = all
    max_length: int = Field(512, ge=4)  # tokens per row, prompt included
    pack: bool = False  # several rows end to end per sequence of <= max_length tokens: no padding computed
    seed: int = 0  # the generated task and the splits


class CausalLora(Lora):
    target_modules: list[str] = Field(["q_proj", "v_proj"], min_length=1)  # Llama/Qwen/Mistral attention projections


class Model(Section):
    name_or_path: str = "tiny"  # HF causal LM folder or Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct); tiny = test model
    lora: CausalLora = CausalLora()  # model.lora.enabled=true: only adapters train (workloads/lora.py)


class Train(common.Train):
    epochs: int = 2
    batch_size: int = 8
    lr: float = 2e-5
    max_grad_norm: float = 1.0


class Config(Section):
    data: Data = Data()
    model: Model = Model()
    train: Train = Train()


METRIC, MODE = "val_loss", "min"
SEARCH_SPACE = {"train.lr": {"loguniform": [1e-5, 1e-3]}}
SMOKE_TEST = {"data.num_examples": 400, "data.max_length": 32, "train.epochs": 1, "train.lr": 3e-3}
IGNORE = -100  # the label of a token the loss skips (prompt, padding): cross_entropy's ignore_index
CHAT_TEMPLATE = (  # the tiny tokenizer's, so the tests take the chat-template path
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


# ----------------------------------------------------------------------------- [1] data
def addition_rows(n: int, max_operand: int, seed: int) -> list[dict]:
    """The shipped task: "a+b=" -> "a+b" written out, seeded."""
    rng = random.Random(seed)
    pairs = [(rng.randint(0, max_operand), rng.randint(0, max_operand)) for _ in range(n)]
    return [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a, b in pairs]


@functools.cache
def tiny_tokenizer():
    """A character tokenizer (printable ASCII, the chat roles, pad/eos), built here: nothing is downloaded."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join without spaces
    tok.add_special_tokens(specials)
    fast = common.transformers().PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tokenizer(cfg):
    if cfg.model.name_or_path == "tiny":
        return tiny_tokenizer()
    tok = common.load_tokenizer(common.checkpoint(cfg.model.name_or_path))
    if tok.pad_token_id is None:  # most causal LMs have none; padding is masked out anyway
        tok.pad_token = tok.eos_token
    return tok


def read_rows(path: str) -> list[dict]:
    if path.endswith(".parquet"):
        return read_parquet(path).to_pylist()
    try:
        return [json.loads(line) for line in read_bytes(path).decode().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise DataError(f"'{path}' is not JSONL ({e}) — one JSON object per line") from None


def conversation(row: dict, where: str) -> list[dict]:
    """A row as chat messages, the last one the response."""
    if "messages" in row:
        messages = list(row["messages"])
    elif "prompt" in row and "response" in row:
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    else:
        raise DataError(f"{where}: a row needs prompt and response, or messages — it has {sorted(row)}")
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise DataError(f"{where}: messages must end with an assistant message (the response)")
    return messages


def encode(tok, messages: list[dict], max_length: int) -> dict | None:
    """Token ids and labels (IGNORE on the prompt): None when truncation leaves no response token."""
    if tok.chat_template:
        prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    else:
        prompt = tok("\n".join(m["content"] for m in messages[:-1]) + "\n")["input_ids"]
        ids = prompt + tok(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = ids[:max_length]
    labels = [IGNORE] * len(prompt) + ids[len(prompt) :]
    return {"input_ids": ids, "labels": labels[: len(ids)]} if len(ids) > len(prompt) else None


def build_data(cfg) -> Splits:
    d = cfg.data
    if d.train:
        tables = {split: read_rows(path) for split in ("train", "val", "test") if (path := getattr(d, split))}
    elif d.source == "addition":
        tables = {"train": addition_rows(d.num_examples, d.max_operand, d.seed)}
    else:
        raise DataError(f"data.source '{d.source}' is not a shipped task (addition) — or set data.train to a file")
    rows = tables["train"]
    random.Random(d.seed).shuffle(rows)
    for split, fraction in (("test", d.test_fraction), ("val", d.val_fraction)):
        if split not in tables and fraction > 0:
            cut = max(1, int(len(rows) * fraction))
            tables[split], rows = rows[:cut], rows[cut:]
    tables["train"] = rows[: d.max_train_samples or None]
    for split in ("val", "test"):
        if split in tables:
            tables[split] = tables[split][: d.max_eval_samples or None]
    if "val" not in tables:
        raise DataError("no validation rows — set data.val or data.val_fraction > 0")
    tok = tokenizer(cfg)
    encoded = {}
    for split, table in tables.items():
        items = [encode(tok, conversation(row, f"data.{split} row {i}"), d.max_length) for i, row in enumerate(table)]
        encoded[split] = [it for it in items if it is not None]
        if not encoded[split]:
            raise DataError(f"data.{split}: no row keeps a response token within data.max_length={d.max_length}")
    return Splits(
        train=encoded["train"],
        val=encoded["val"],
        test=encoded.get("test"),
        labels=[],
        collate_fn=functools.partial(pack, max_length=d.max_length, pad_id=tok.pad_token_id)
        if d.pack
        else functools.partial(collate, pad_id=tok.pad_token_id),
        fingerprint=fingerprint(json.dumps(tables, sort_keys=True)),
        info={"vocab_size": len(tok)},
    )


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    return {**common.pad_batch(items, pad_id), "labels": common.pad([it["labels"] for it in items], IGNORE)}


def pack(items: list[dict], max_length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """``items`` end to end in sequences of at most ``max_length`` tokens, ``position_ids`` restarting at each: with
    no attention mask, transformers masks attention to within each item. ``lengths`` first: the loop counts items."""
    rows: list[list[dict]] = [[]]
    used = 0  # tokens in the last sequence
    for it in items:
        if rows[-1] and used + len(it["input_ids"]) > max_length:
            rows.append([])
            used = 0
        rows[-1].append(it)
        used += len(it["input_ids"])
    joined = {key: [[t for it in row for t in it[key]] for row in rows] for key in ("input_ids", "labels")}
    positions = [[p for it in row for p in range(len(it["input_ids"]))] for row in rows]
    return {
        "lengths": torch.tensor([len(it["input_ids"]) for it in items]),
        "input_ids": common.pad(joined["input_ids"], pad_id),
        "labels": common.pad(joined["labels"], IGNORE),
        "position_ids": common.pad(positions, 0),  # each padding token a sequence of its own
    }


# ----------------------------------------------------------------------------- [2] model
def build_model(cfg, splits: Splits) -> nn.Module:
    transformers = common.transformers()
    if cfg.model.name_or_path == "tiny":
        config = transformers.LlamaConfig(
            vocab_size=splits.info["vocab_size"],
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=0,
            eos_token_id=1,
        )
        return lora_lib.wrap(transformers.LlamaForCausalLM(config), cfg.model.lora, "causal")
    path = common.checkpoint(cfg.model.name_or_path)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load model.name_or_path '{path}' as a causal LM ({str(e).splitlines()[0]})") from None
    return lora_lib.wrap(model, cfg.model.lora, "causal")


# ----------------------------------------------------------------------------- [3] step / eval
def inputs(batch: dict) -> dict:
    """The model's inputs of a padded batch (attention mask) or a packed one (position ids); no KV cache, without
    which transformers keeps each packed row's attention to itself."""
    keys = ("input_ids", "attention_mask", "position_ids")
    return {k: v for k, v in batch.items() if k in keys} | {"use_cache": False}


def train_step(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**inputs(batch), labels=batch["labels"]).loss


@torch.no_grad()
def evaluate(model: nn.Module, loader, splits: Splits) -> dict[str, float]:
    """Mean loss per response token, its perplexity, and the share of response tokens predicted right."""
    model.eval()
    loss_sum, right, tokens = 0.0, 0, 0
    for batch in loader:
        logits = model(**inputs(batch)).logits.float()
        logits, labels = logits[:, :-1], batch["labels"][:, 1:]  # position t predicts token t + 1
        loss_sum += nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum")
        scored = labels != IGNORE
        right += int((logits.argmax(-1) == labels)[scored].sum())
        tokens += int(scored.sum())
    loss = float(loss_sum) / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": right / max(tokens, 1)}


# ----------------------------------------------------------------------------- [4] export
def export(model: nn.Module, cfg, splits: Splits, out_dir: Path) -> None:
    lora_lib.merged(model).save_pretrained(out_dir)
    tokenizer(cfg).save_pretrained(out_dir)


def load_export(cfg, splits: Splits, export_dir: Path) -> nn.Module:
    model = common.transformers().AutoModelForCausalLM.from_pretrained(export_dir)
    return lora_lib.wrap(model, cfg.model.lora, "causal")  # a LoRA round goes on from the merged model
