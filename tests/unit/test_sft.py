"""The sft workload without Ray: rows become response-only labels, files of either shape read, and the tiny model
learns the shipped addition task to a validation loss a random model does not reach."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs import config as config_lib
from jobs import loop
from workloads import sft
from workloads.data import DataError


def cfg_of(*overrides: str):
    return config_lib.load_config("configs/sft.yaml", list(overrides))


def test_the_loss_counts_response_tokens_only():
    tok = sft.tiny_tokenizer()
    row = sft.encode(tok, sft.conversation({"prompt": "2+3=", "response": "5"}, "row"), 64)
    scored = [t for t, label in zip(row["input_ids"], row["labels"]) if label != sft.IGNORE]
    assert tok.decode(scored) == "5</s>"  # the answer and its end, nothing of the prompt or the chat roles
    assert tok.decode(row["input_ids"]).startswith("<|user|>2+3=</s><|assistant|>")
    assert sft.encode(tok, sft.conversation({"prompt": "2+3=" * 20, "response": "5"}, "row"), 16) is None


def test_jsonl_messages_and_parquet_prompt_rows_train(tmp_path):
    chat = [[{"role": "user", "content": f"copy {i}"}, {"role": "assistant", "content": str(i)}] for i in range(20)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"messages": m}) for m in chat))
    pq.write_table(pa.Table.from_pylist([{"prompt": "1+1=", "response": "2"}] * 5), tmp_path / "v.parquet")
    splits = sft.build_data(cfg_of(f"data.train={tmp_path / 't.jsonl'}", f"data.val={tmp_path / 'v.parquet'}"))
    assert len(splits.train) == 18 and len(splits.val) == 5 and len(splits.test) == 2  # test: 10% of the training rows
    (tmp_path / "bad.jsonl").write_text("\n".join([json.dumps({"text": "no response"})] * 10))
    with pytest.raises(DataError, match="needs prompt and response, or messages"):
        sft.build_data(cfg_of(f"data.train={tmp_path / 'bad.jsonl'}"))


def test_the_tiny_model_learns_addition():
    torch.set_num_threads(1)
    cfg = cfg_of("data.num_examples=2000", "data.max_operand=49")
    loop.seed_everything(0)
    splits = sft.build_data(cfg)
    model = sft.build_model(cfg, splits)
    val = loop.eval_loader(splits, splits.val, 256)
    random_loss = sft.evaluate(model, val, splits)["loss"]
    optimizer = loop.make_optimizer(cfg, model)
    for _ in range(2):
        for batch in loop.train_loader(sft, cfg, splits):
            sft.train_step(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad()
    # random init: about ln(107) = 4.7 per token; knowing only that answers are digits + EOS: ln(11) = 2.4
    assert random_loss > 4.0 and sft.evaluate(model, val, splits)["loss"] < 2.0


def test_a_causal_lm_folder_trains_and_its_export_loads_back(tmp_path):
    cfg = cfg_of("data.num_examples=50")
    splits = sft.build_data(cfg)
    sft.export(sft.build_model(cfg, splits), cfg, splits, tmp_path)  # any save_pretrained folder with a tokenizer
    folder = cfg_of("data.num_examples=50", f"model.name_or_path={tmp_path}", "model.lora.enabled=true")
    model = sft.build_model(folder, sft.build_data(folder))
    assert sft.tokenizer(folder).chat_template and any("lora_A" in n for n, _ in model.named_parameters())
    assert type(sft.load_export(cfg, splits, tmp_path)).__name__ == "LlamaForCausalLM"


def test_packed_batches_give_the_padded_loss_and_keep_items_apart():
    cfg = cfg_of("data.num_examples=200", "data.max_length=64")
    loop.seed_everything(0)
    splits = sft.build_data(cfg)
    model = sft.build_model(cfg, splits).eval()  # eval: no dropout, so both layouts compute the same
    items = splits.train[:16]
    padded = sft.collate(items, pad_id=0)
    packed = sft.pack(items, max_length=64, pad_id=0)
    assert packed["input_ids"].shape[0] < len(items) and loop._batch_size(packed) == len(items)
    assert packed["input_ids"].shape[1] <= 64 and int((packed["position_ids"] == 0).sum()) >= len(items)
    assert sft.train_step(model, packed).item() == pytest.approx(sft.train_step(model, padded).item(), abs=1e-5)
    scores = [sft.evaluate(model, [batch], splits) for batch in (padded, packed)]
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)
    # a packed config's loader packs; without attention across items, an item's loss ignores its neighbours
    packing = sft.build_data(cfg_of("data.num_examples=200", "data.max_length=64", "data.pack=true"))
    assert "position_ids" in next(iter(loop.train_loader(sft, cfg, packing)))
    alone = sft.train_step(model, sft.pack(items[:1], 64, 0)).item()
    swapped = sft.pack([items[0], items[5]], 64, 0)
    assert swapped["input_ids"].shape[0] == 1
    first_only = {**swapped, "labels": swapped["labels"].clone()}
    first_only["labels"][0, len(items[0]["input_ids"]) :] = sft.IGNORE
    assert sft.train_step(model, first_only).item() == pytest.approx(alone, abs=1e-5)
