"""jobs.continual without Ray: picking the parent, exit-2 inputs, WNUT-16 label mapping, replay, lineage."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from jobs import config as config_lib
from jobs import continual
from jobs import store as store_lib
from jobs.store import Store
from workloads import data, ner
from workloads.data import CONLL2003_TAGS, DataError, map_wnut16_tag, read_conll, read_wnut16, wnut16_path

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MLP_CONFIG = json.dumps(config_lib.to_dict(config_lib.load_config("configs/mlp.yaml", smoke_test=True)))


def run_row(run_id: str, metric: float | None, minute: int, workload: str = "mlp", **extra) -> dict:
    return {
        "run_id": run_id,
        "workload": workload,
        "status": "completed",
        "metric": "val_accuracy",
        "mode": "max",
        "val_accuracy": metric,
        "best_metric": metric,
        "finished_at": T0 + dt.timedelta(minutes=minute),
        "config_json": MLP_CONFIG,
        "export_uri": f"/nonexistent/{run_id}/export",
        **extra,
    }


def store_with(tmp_path: Path, rows: list[dict]) -> Store:
    store = Store(tmp_path / "store")
    for r in rows:  # one file per row, as separate runs would write them
        store.append("runs", [r])
    return store


# ----------------------------------------------------------------------------- --from best
def test_best_is_the_highest_metric_and_ties_go_to_the_newest(tmp_path):
    store = store_with(
        tmp_path,
        [
            run_row("old-best", 0.9, minute=1),
            run_row("new-best", 0.9, minute=5),
            run_row("worse", 0.5, minute=9),
            run_row("failed", 0.99, minute=10, status="failed"),
            run_row("other", 0.95, minute=3, workload="cnn"),
        ],
    )
    assert continual.pick_parent(store, "mlp", "best", "val_accuracy", "max")["run_id"] == "new-best"
    assert continual.pick_parent(store, "mlp", "best", "val_accuracy", "min")["run_id"] == "worse"


def test_best_skips_runs_without_the_metric(tmp_path):
    store = store_with(tmp_path, [run_row("no-metric", None, minute=9), run_row("scored", 0.4, minute=1)])
    assert continual.pick_parent(store, "mlp", "best", "val_accuracy", "max")["run_id"] == "scored"


@pytest.mark.parametrize(
    "rows, words",
    [
        ([], "no mlp runs"),
        ([run_row("a", None, 1), run_row("b", None, 2)], "has a val_accuracy"),
        ([run_row("c", 0.9, 1, workload="cnn")], "no mlp runs"),
    ],
)
def test_best_with_nothing_to_pick_is_a_clear_error(tmp_path, rows, words):
    store = store_with(tmp_path, rows)
    with pytest.raises(config_lib.ConfigError, match=words):
        continual.pick_parent(store, "mlp", "best", "val_accuracy", "max")


def test_an_explicit_run_must_exist_and_be_of_the_workload(tmp_path):
    store = store_with(tmp_path, [run_row("mine", 0.5, 1), run_row("cnn-run", 0.5, 2, workload="cnn")])
    assert continual.pick_parent(store, "mlp", "mine", "val_accuracy", "max")["run_id"] == "mine"
    with pytest.raises(config_lib.ConfigError, match="no run 'nope'"):
        continual.pick_parent(store, "mlp", "nope", "val_accuracy", "max")
    with pytest.raises(config_lib.ConfigError, match="is a cnn run"):
        continual.pick_parent(store, "mlp", "cnn-run", "val_accuracy", "max")


def _store_files(store_dir: Path) -> list[Path]:
    return sorted(p for p in store_dir.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "parent, words",
    [
        (run_row("gone", 0.9, 1), "is missing"),  # the export folder was deleted
        (run_row("unfinished", 0.9, 1, export_uri="", status="failed"), "no exported model"),
        (run_row("wrong-config", 0.9, 1, config_json=json.dumps({"workload": "cnn"})), "trained cnn"),
    ],
)
def test_from_a_run_without_a_usable_model_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, parent, words):
    store = store_with(tmp_path, [parent])
    before = _store_files(tmp_path / "store")
    argv = [
        "--config",
        "configs/mlp.yaml",
        "--smoke-test",
        "--from",
        parent["run_id"],
        "--store",
        str(tmp_path / "store"),
        "data.source=digits",
        f"run.storage_path={tmp_path / 'runs'}",
    ]
    monkeypatch.setattr("sys.argv", ["jobs.continual", *argv])
    with pytest.raises(SystemExit) as exit_info:
        config_lib.cli_main(continual.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert _store_files(tmp_path / "store") == before and not (tmp_path / "runs").exists()
    assert store.df("runs")["run_id"].tolist() == [parent["run_id"]]


def test_replay_fraction_outside_0_1_is_rejected(tmp_path, monkeypatch):
    store_with(tmp_path, [run_row("a", 0.5, 1)])
    with pytest.raises(config_lib.ConfigError, match="replay_fraction"):
        continual.main(
            [
                "--config",
                "configs/mlp.yaml",
                "--from",
                "best",
                "--store",
                str(tmp_path / "store"),
                "continual.replay_fraction=1.5",
            ]
        )


# ----------------------------------------------------------------------------- WNUT-16 -> CoNLL-2003 tags
@pytest.mark.parametrize(
    "wnut, conll",
    [
        ("O", "O"),
        ("B-person", "B-PER"),
        ("I-person", "I-PER"),
        ("B-geo-loc", "B-LOC"),
        ("I-geo-loc", "I-LOC"),
        ("B-company", "B-ORG"),
        ("B-sportsteam", "B-ORG"),
        ("I-sportsteam", "I-ORG"),
        ("B-facility", "B-MISC"),
        ("B-product", "B-MISC"),
        ("I-musicartist", "I-MISC"),
        ("B-movie", "B-MISC"),
        ("B-tvshow", "B-MISC"),
        ("I-other", "I-MISC"),
    ],
)
def test_wnut16_tags_map_onto_conll_types(wnut, conll):
    assert map_wnut16_tag(wnut) == conll


def test_an_unmapped_wnut16_type_is_a_data_error():
    with pytest.raises(DataError, match="B-band"):
        map_wnut16_tag("B-band")


def test_wnut16_splits_are_seeded_disjoint_and_share_one_test_set():
    splits, fp = read_wnut16(seed=0)
    again, fp_again = read_wnut16(seed=0)
    other, fp_other = read_wnut16(seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1723, "val": 192, "test": 479}  # 2,394 tweets
    assert splits == again and fp == fp_again and fp != fp_other
    assert other["test"] == splits["test"] and other["val"] != splits["val"]  # the test tweets are the data set's
    key = lambda s: " ".join(s[0])  # noqa: E731
    every_tweet = Counter(key(s) for s in read_conll(wnut16_path())[0])
    assert (
        sum((Counter(map(key, splits[k])) for k in ("train", "val", "test")), Counter()) == every_tweet
    )  # a partition
    tags = {t for part in splits.values() for _, ts in part for t in ts}
    assert tags == set(CONLL2003_TAGS)  # every CoNLL tag occurs; nothing else does


def test_ner_reads_wnut16_with_the_conll2003_tag_list():
    cfg = config_lib.load_config("configs/ner_wnut.yaml")
    sentences, labels, _ = ner.read_splits(cfg)
    assert labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert len(sentences["test"]) == 479
    with pytest.raises(DataError, match="data.source 'wnut17'"):
        ner.read_splits(config_lib.set_dotted(cfg, "data.source", "wnut17"))


# ----------------------------------------------------------------------------- replay
def test_replay_takes_a_seeded_share():
    a, b = data.replay_indices(1000, 0.2, seed=3), data.replay_indices(1000, 0.2, seed=3)
    assert len(a) == 200 and len(set(a.tolist())) == 200 and np.array_equal(a, b)
    assert len(data.replay_indices(10, 0.01, 0)) == 1 and len(data.replay_indices(10, 0.0, 0)) == 0


class Columns(torch.utils.data.Dataset):  # a workload's own dataset: concat appends the replayed items
    def __init__(self, input_ids, labels):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "labels": int(self.labels[i])}


def test_replay_concatenates_lists_tensor_datasets_and_other_datasets():
    idx = np.array([0, 2])
    assert data.concat(["n1"], ["o0", "o1", "o2"], idx) == ["n1", "o0", "o2"]
    mixed = data.concat(
        TensorDataset(torch.zeros(2, 3), torch.zeros(2)), TensorDataset(torch.ones(4, 3), torch.ones(4)), idx
    )
    assert isinstance(mixed, TensorDataset) and len(mixed) == 4 and mixed.tensors[0].sum() == 6
    cols = data.concat(Columns([[1], [2]], np.array([0, 1])), Columns([[7], [8], [9]], np.array([2, 2, 2])), idx)
    assert [cols[i]["input_ids"] for i in range(len(cols))] == [[1], [2], [7], [9]]
    assert [cols[i]["labels"] for i in range(len(cols))] == [0, 1, 2, 2]


# ----------------------------------------------------------------------------- lineage
def test_lineage_lists_ancestors_then_descendants_with_gain_and_forgetting(tmp_path):
    store = store_with(
        tmp_path,
        [
            run_row("r1", 0.8, 1, test_accuracy=0.7),
            run_row(
                "r2",
                0.6,
                2,
                parent_run_id="r1",
                round=2,
                test_accuracy=0.5,
                gain=0.3,
                forgetting=0.1,
                old_test_accuracy=0.6,
                parent_new_test_accuracy=0.2,
            ),
            run_row("r3", 0.7, 3, parent_run_id="r2", round=3, test_accuracy=0.55, gain=0.05, forgetting=0.02),
            run_row("unrelated", 0.9, 4),
        ],
    )
    for start in ("r1", "r2", "r3"):
        df = store_lib.lineage(store, start)
        assert df["run_id"].tolist() == ["r1", "r2", "r3"] and df["round"].tolist() == [1, 2, 3]
    row = store_lib.lineage(store, "r2").iloc[1]
    assert (row["new_test"], row["parent_new_test"], row["gain"], row["old_test"], row["forgetting"]) == (
        0.5,
        0.2,
        0.3,
        0.6,
        0.1,
    )
    with pytest.raises(store_lib.StoreError, match="no run 'r9'"):
        store_lib.lineage(store, "r9")


def test_signs_make_positive_gain_and_forgetting_mean_more():
    assert continual.signed(0.1, "max") == 0.1 and continual.signed(0.1, "min") == -0.1
