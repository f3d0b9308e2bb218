"""ner and sentiment on encoders beyond BERT, built offline: a tiny random-init RoBERTa with a byte-level BPE
tokenizer trained here with `tokenizers`, and a tiny DistilBERT on MiniLM's WordPiece vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs import config as config_lib
from jobs import evaluate as evaluate_verb
from jobs import loop
from jobs.store import Store, now
from tests.unit.test_ner import TRAIN, conll_files
from tests.unit.test_sentiment import WORDS, write_tweets
from workloads import common, ner, sentiment

TINY = {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 32, "intermediate_size": 64}


def roberta_bpe(folder: Path) -> Path:
    """RoBERTa (random init) + a byte-level BPE tokenizer trained on the test texts: no download."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    corpus = [line.split()[0] for line in TRAIN.splitlines() if line.split()] + " ".join(WORDS.values()).split()
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(corpus * 5, vocab_size=300, min_frequency=1, special_tokens=specials)
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    tok = RobertaTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    config = RobertaConfig(vocab_size=len(tok), max_position_embeddings=130, pad_token_id=tok.pad_token_id, **TINY)
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def distilbert(folder: Path) -> Path:
    """DistilBERT (random init) on MiniLM's WordPiece tokenizer."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    tok = AutoTokenizer.from_pretrained(common.default_checkpoint())
    config = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    torch.manual_seed(0)
    DistilBertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


BUILDERS = {"roberta-bpe": roberta_bpe, "distilbert": distilbert}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


def test_bpe_word_pieces_carry_the_tag_on_their_first_piece_only(tmp_path):
    folder = roberta_bpe(tmp_path / "roberta")
    cfg = config_lib.load_config(
        None,
        ["workload=ner", f"model.name_or_path={folder}", *[f"data.{k}={v}" for k, v in conll_files(tmp_path).items()]],
    )
    tokenizer = ner.load_tokenizer(cfg)
    assert tokenizer.add_prefix_space  # byte-level BPE needs it for pre-split words (else transformers refuses)
    sentences = [(["Peter", "Blackburnshire", "visited", "Zzyzx-Qwv"], ["B-PER", "I-PER", "O", "B-LOC"])]
    labels = ["O", "B-LOC", "B-PER", "I-PER"]
    (feature,) = ner.encode(sentences, labels, tokenizer, max_length=64)
    pieces = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    labelled = [i for i, label in enumerate(feature["labels"]) if label != -100]
    assert len(pieces) > len(sentences[0][0]) + 2  # some word did split into several BPE pieces
    assert [labels[feature["labels"][i]] for i in labelled] == sentences[0][1]  # one tag per word, in order
    assert all(pieces[i].startswith("Ġ") for i in labelled)  # each word's first piece carries the word-start space
    assert all(feature["labels"][i] == -100 for i, p in enumerate(pieces) if not p.startswith("Ġ"))  # <s>, </s>, rest
    words, current = [], ""  # the pieces of each word join back to the word
    for p in pieces[1:-1]:
        if p.startswith("Ġ") and current:
            words.append(current)
            current = ""
        current += p.removeprefix("Ġ")
    assert [*words, current] == sentences[0][0]


def _train_and_record(wl, cfg, splits, store: Store, tmp_path: Path, run_id: str) -> dict:
    """A few real steps, the export in the loop's format, and a runs row as jobs.train writes it."""
    loop.seed_everything(0)
    model = wl.build_model(cfg, splits)
    optimizer = loop.make_optimizer(cfg, model)
    for _ in range(2):
        loop.run_epoch(model, loop.train_loader(wl, cfg, splits), optimizer, wl, cfg, torch.device("cpu"))
    export = tmp_path / run_id / "export"
    loop.export_model(wl, model, cfg, splits, export)
    with loop.autocast(cfg.train.precision, torch.device("cpu")):  # as the loop scores test (ner: auto = bf16 here)
        test = wl.evaluate(model, loop.eval_loader(splits, splits.test, cfg.train.batch_size * 2), splits)
    row = {"run_id": run_id, "workload": cfg.workload, "status": "completed", "finished_at": now()}
    row |= {"config_json": json.dumps(config_lib.to_dict(cfg)), "export_uri": str(export)}
    row |= {"data_fingerprint": splits.fingerprint, **{f"test_{k}": float(v) for k, v in test.items()}}
    store.append("runs", [row])
    return test


@pytest.mark.parametrize("workload", ["ner", "sentiment"])
def test_export_round_trips_through_jobs_evaluate(checkpoint, workload, tmp_path, capsys):
    family, folder = checkpoint
    if workload == "ner":
        data = [f"data.{k}={v}" for k, v in conll_files(tmp_path).items()]
        wl = ner
    else:
        data = [f"data.train={write_tweets(tmp_path / 'tweets.csv')}", "data.max_length=24"]
        wl = sentiment
    cfg = config_lib.load_config(
        None, [f"workload={workload}", f"model.name_or_path={folder}", "train.batch_size=8", "train.lr=0.003", *data]
    )
    wl.validate(cfg)
    loop.seed_everything(0)
    splits = wl.build_data(cfg)
    model = wl.build_model(cfg, splits)
    assert model.config.model_type == {"roberta-bpe": "roberta", "distilbert": "distilbert"}[family]
    store = Store(tmp_path / "store")
    test = _train_and_record(wl, cfg, splits, store, tmp_path, f"{workload}-{family}")
    assert evaluate_verb.main(["--run", f"{workload}-{family}", "--store", str(store.uri)]) == 0
    evaluation = store.df("evaluations").iloc[0]
    for key, value in test.items():  # the export, reloaded and rescored from the store, scores the same
        assert evaluation[f"test_{key}"] == pytest.approx(value, abs=1e-6), key
    assert f"run {workload}-{family} ({workload}) on test" in capsys.readouterr().out
