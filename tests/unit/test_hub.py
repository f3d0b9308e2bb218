"""Hub ids resolved offline from a Hugging Face cache laid out in a temporary HF_HOME (from the shipped MiniLM)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs import config as config_lib
from jobs.errors import DataError
from workloads import common, hub, ner, rnn, sentiment

ROOT = Path(__file__).resolve().parents[2]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"  # any 40-hex commit: the cache layout names snapshots so


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """$HF_HOME/hub/models--org--name/{refs/main, snapshots/<rev>/...}: what huggingface_hub writes after a download."""
    repo = tmp_path / "hf" / "hub" / ("models--" + MINILM.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    source = Path(common.default_checkpoint())
    for f in source.iterdir():
        (snapshot / f.name).symlink_to(f)  # the real cache links into blobs/; a link per file is what the reader sees
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_a_cached_hub_id_resolves_offline_to_its_snapshot(hf_home):
    path = hub.resolve(MINILM)
    assert Path(path) == hf_home / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / REVISION
    assert Path(path, "config.json").is_file()
    assert hub.resolve(f"{MINILM}@main") == path
    assert hub.resolve(str(hf_home)) == str(hf_home)  # a directory is used as it is


def test_an_uncached_hub_id_offline_is_one_data_error(hf_home):
    with pytest.raises(
        DataError, match=r"'someone/not-cached' is not in the Hugging Face cache .* HF_HUB_OFFLINE"
    ) as e:
        hub.resolve("someone/not-cached")
    assert "\n" not in str(e.value)


def test_ner_sentiment_and_rnn_load_their_model_or_tokenizer_by_hub_id(hf_home, tmp_path):
    from tests.unit.test_ner import conll_files
    from tests.unit.test_sentiment import write_tweets

    cfg = config_lib.load_config(
        None,
        ["workload=ner", f"model.name_or_path={MINILM}", *[f"data.{k}={v}" for k, v in conll_files(tmp_path).items()]],
    )
    ner.validate(cfg)
    splits = ner.build_data(cfg)
    model = ner.build_model(cfg, splits)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384  # the real MiniLM, from the cache
    assert model.config.num_labels == len(splits.labels)

    tweets = write_tweets(tmp_path / "tweets.csv")
    cfg = config_lib.load_config(None, ["workload=sentiment", f"model.name_or_path={MINILM}", f"data.train={tweets}"])
    sentiment.validate(cfg)
    splits = sentiment.build_data(cfg)
    assert sentiment.build_model(cfg, splits).config.hidden_size == 384

    cfg = config_lib.load_config(None, ["workload=rnn", f"model.tokenizer={MINILM}", f"data.train={tweets}"])
    rnn.validate(cfg)
    assert rnn.build_data(cfg).info["vocab_size"] == 30522


@pytest.mark.parametrize("workload, key", [("ner", "model.name_or_path"), ("rnn", "model.tokenizer")])
def test_uncached_hub_id_exits_2_with_one_line_before_ray_and_writes_nothing(hf_home, tmp_path, workload, key):
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--config", f"configs/{workload}.yaml", "--store", str(store)]
        + ["--smoke-test", f"{key}=someone/not-cached", f"run.storage_path={tmp_path / 'runs'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{key} 'someone/not-cached' is not in the Hugging Face cache" in lines[0], proc.stderr
    assert not store.exists() and not (tmp_path / "runs").exists()
