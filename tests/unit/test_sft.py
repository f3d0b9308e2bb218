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
