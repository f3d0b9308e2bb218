"""The HF Trainer side of bench.vs_hf_trainer: a plain ``transformers.Trainer`` token-classification script,
as a user would write it from Hugging Face's own example, run as its own process and timed whole.

    python -m bench.hf_trainer_ner [--sentences 2000] [--eval-sentences 1000] [--precision fp32|bf16]
                                   [--random-order] [--threads 2] [--smoke] --out DIR

What it shares with ``python -m jobs.train --config configs/ner.yaml``, so that the two commands do the
same work: the same CoNLL-2003 sentences (the project's reader and seeded ``subsample``, val and test
capped alike), MiniLM-L6, batch 16, lr 1e-4 with 10% linear warm-up then decay, weight decay 0.01,
clipping at 1.0, one epoch, seed 0, sub-tokens labelled on each word's first piece, dynamic padding.
Like jobs.train it scores val and test with seqeval (entity F1) and saves the model. Its last stdout line
is ``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

T_START = time.perf_counter()


def trainer_args(out: str, bf16: bool, **overrides):
    """The TrainingArguments every HF arm of the benches shares (batch 16, lr 1e-4 with 10% warm-up, weight decay
    0.01, clipping at 1.0, length-grouped batches, seed 0, no saving or logging); ``overrides`` replace any of them."""
    import transformers

    settings = dict(
        output_dir=out,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        num_train_epochs=1,
        learning_rate=1e-4,
        weight_decay=0.01,
        warmup_steps=0.1,  # < 1: a ratio of all steps
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=0,
        use_cpu=True,
        bf16=bf16,
        train_sampling_strategy="group_by_length",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    return transformers.TrainingArguments(**(settings | overrides))


def prepare(sentences: int, eval_sentences: int, smoke: bool) -> tuple:
    """(tokenized splits, tags, tokenizer, model factory): the seeded sample of CoNLL-2003 that jobs.train reads,
    tokenized as Hugging Face's token-classification example does (each word's tag on its first sub-token)."""
    import numpy as np
    import transformers

    from jobs import config as config_lib
    from workloads import common, ner
    from workloads.data import subsample

    transformers.utils.logging.set_verbosity_error()
    tiny = ["model.name_or_path=tiny", "data.max_length=48"] if smoke else []
    cfg = config_lib.load_config("configs/ner.yaml", tiny)  # for the data paths and the tag order only
    rows_by_split, labels, _ = ner.read_splits(cfg)
    caps = {"train": sentences, "val": eval_sentences, "test": eval_sentences}
    picked = {
        split: [rows[i] for i in subsample(np.arange(len(rows)), caps[split], 0)]
        for split, rows in rows_by_split.items()
    }
    path = common.checkpoint(cfg.model.name_or_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    label_id = {t: i for i, t in enumerate(labels)}

    def tokenize(rows):
        enc = tokenizer([w for w, _ in rows], is_split_into_words=True, truncation=True, max_length=256)
        out = []
        for i, (_, tags) in enumerate(rows):
            ids, previous, lab = enc.word_ids(i), None, []
            for w in ids:
                lab.append(label_id[tags[w]] if w is not None and w != previous else -100)
                previous = w
            out.append({"input_ids": enc["input_ids"][i], "labels": lab})
        return out

    def make_model():
        if smoke:
            return ner.build_model(cfg, ner.build_data(cfg))
        return transformers.AutoModelForTokenClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_id
        )

    return {split: tokenize(rows) for split, rows in picked.items()}, labels, tokenizer, make_model


def entity_f1(predictions, label_ids, labels: list[str]) -> float:
    """seqeval entity F1 of token-classification logits, on the labelled (first) sub-tokens."""
    from seqeval.metrics import f1_score

    gold_tags, pred_tags = [], []
    for logits, gold in zip(predictions, label_ids):
        keep = gold != -100
        gold_tags.append([labels[i] for i in gold[keep]])
        pred_tags.append([labels[i] for i in logits.argmax(-1)[keep]])
    return float(f1_score(gold_tags, pred_tags))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hf_trainer_ner")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--eval-sentences", type=int, default=1000)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--random-order", action="store_true", help="HF's default sampler instead of group_by_length")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="a tiny random-init BERT, short sentences")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.set_seed(0)
    data, labels, tokenizer, make_model = prepare(args.sentences, args.eval_sentences, args.smoke)
    model = make_model()
    targs = trainer_args(
        args.out,
        args.precision == "bf16",
        train_sampling_strategy="random" if args.random_order else "group_by_length",
    )
    trainer = transformers.Trainer(
        model=model,
        args=targs,
        train_dataset=data["train"],
        data_collator=transformers.DataCollatorForTokenClassification(tokenizer),
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    train = trainer.train()

    def score(split: str) -> float:
        pred = trainer.predict(data[split])
        return entity_f1(pred.predictions, pred.label_ids, labels)

    val_f1, test_f1 = score("val"), score("test")
    trainer.save_model(os.path.join(args.out, "model"))
    result = {
        "samples_per_s": len(data["train"]) / train.metrics["train_runtime"],
        "train_s": train.metrics["train_runtime"],
        "val_f1": val_f1,
        "test_f1": test_f1,
        "train_loss": train.training_loss,
        "in_process_s": time.perf_counter() - T_START,
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
