"""The performance suite's plumbing: each bench script's --smoke mode runs without Ray and writes sane figures.

The figures themselves come from `python -m bench` (make bench), not from tests: here tiny models on a
few samples, arms in the test's own process, only the parts that need no Ray.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import memory, overhead, scaling, vs_hf_trainer
from jobs.loop import median_step_time

ROOT = Path(__file__).resolve().parents[2]


def results(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())["results"]


def test_median_step_time_leaves_out_loader_start_and_warmup():
    # first interval = loader start-up alone (5 s), then 3 slow warm-up steps, then 10 steady 0.1 s steps
    durations = [5.0, 1.0, 1.0, 1.0] + [0.1] * 10
    starts = [0.0]
    for d in durations:
        starts.append(starts[-1] + d)
    assert median_step_time(starts) == pytest.approx(0.1)
    assert median_step_time(starts[:4]) == pytest.approx(
        1.0
    )  # too few steps to drop a warm-up: all but the first interval
    assert math.isnan(median_step_time(starts[:1]))


def test_overhead_smoke_times_the_plain_loop(tmp_path, capsys):
    assert overhead.main(["--smoke", "--no-ray", "--cpus", "1", "--out", str(tmp_path)]) == 0
    steps = results(tmp_path, "overhead")["step"]
    assert set(steps) == {"mlp", "ner"}  # --cpus 1 makes the default ner@1 case the ner case
    for pairs in steps.values():
        plain = pairs[0]["plain"]
        assert (
            0 < plain["step_time_median_s"] < 60 and plain["samples_per_s"] > 0 and math.isfinite(plain["train_loss"])
        )
        local = pairs[0]["local"]  # jobs.train's single-machine path: no Ray, so in --no-ray too
        assert local["step_time_median_s"] > 0 and local["cluster_start_s"] < 1.0
    assert "local/plain" in capsys.readouterr().out


def test_overhead_cases_name_their_cpus_and_refuse_bad_ones(tmp_path, capsys):
    assert overhead.main(["--smoke", "--no-ray", "--cpus", "2", "--cases", "ner@1", "--out", str(tmp_path)]) == 0
    steps = results(tmp_path, "overhead")["step"]
    assert list(steps) == ["ner@1"] and steps["ner@1"][0]["plain"]["cpus"] == 1
    assert "ner@1" in capsys.readouterr().out
    for bad in ("ner@0", "bert", "ner@two"):
        with pytest.raises(SystemExit, match="bad case"):
            overhead.main(["--smoke", "--no-ray", "--cases", bad, "--out", str(tmp_path)])


def test_vs_hf_trainer_smoke_times_both_commands_the_cache_and_a_lever(tmp_path, capsys):
    """The HF Trainer script and python -m jobs.train, each a whole process (tiny BERT): both score val and
    test, ours takes local mode and reports its precision; the cache builds identical splits."""
    argv = ["--smoke", "--threads", "1", "--arms", "hf_fp32", "ours", "--levers", "shipped", "--out", str(tmp_path)]
    assert vs_hf_trainer.main(argv) == 0
    res = results(tmp_path, "vs_hf_trainer")
    hf, ours = res["arms"]["hf_fp32"][0], res["arms"]["ours"][0]
    for r in (hf, ours):
        assert r["samples_per_s"] > 0 and r["wall_s"] > 0 and 0 <= r["val_f1"] <= 1 and 0 <= r["test_f1"] <= 1
    assert ours["local_mode"] and ours["precision"] in ("bf16", "fp32") and hf["precision"] == "fp32"
    assert res["cache"][0]["identical"] and res["levers"]["shipped"][0]["samples_per_s"] > 0
    out = capsys.readouterr().out
    assert "jobs.train ner, defaults, first run / HF's best" in out and "vs shipped" in out


def test_scaling_estimate_follows_ring_allreduce():
    params = 22_700_000
    two, eight = (scaling.ddp_estimate(0.0179, 32, params, n, 25e9 / 8) for n in (2, 8))
    assert two["allreduce_mb"] == pytest.approx(2 * 1 / 2 * 4 * params / 1e6)  # 2(N-1)/N x 4 B x params
    assert eight["allreduce_mb"] == pytest.approx(2 * 7 / 8 * 4 * params / 1e6)
    assert 0 < eight["efficiency"] < two["efficiency"] <= 1  # more GPUs, more traffic per step
    assert eight["efficiency_no_overlap"] <= eight["efficiency"]
    nvlink = scaling.ddp_estimate(0.0179, 32, params, 8, 450e9)
    assert nvlink["efficiency"] > eight["efficiency"] and nvlink["samples_per_s"] > 7 * 32 / 0.0179


def test_scaling_smoke_without_ray_prints_the_estimate(tmp_path, capsys):
    assert scaling.main(["--smoke", "--no-ray", "--out", str(tmp_path)]) == 0
    res = results(tmp_path, "scaling")
    assert res["params"] > 0 and not res["arms"] and len(res["estimate"]) > 4
    assert "Paper estimate" in capsys.readouterr().out


def test_memory_smoke_reports_peak_rss(tmp_path):
    assert memory.main(["--smoke", "--no-ray", "--workloads", "mlp", "ner", "--out", str(tmp_path)]) == 0
    res = results(tmp_path, "memory")
    assert set(res) == {"mlp", "ner"}
    assert all(r["peak_rss_mb"] > 50 and r["samples"] > 0 for r in res.values())


def test_python_m_bench_lists_the_suite():
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "overhead" in out.stdout and "memory" in out.stdout


def test_store_query_small_prints_every_figure(tmp_path):
    """The store bench at a tiny size: it runs its own checks (no row lost or duplicated under concurrent writers,
    `check` clean), and a run record's p50 never exceeds its p95."""
    args = ["--writers", "2", "--appends", "5", "--on", "local", "--runs", "60", "--records", "20"]
    args += ["--epochs", "3", "--workloads", "3", "--dir", str(tmp_path)]
    out = subprocess.run(
        [sys.executable, "-m", "bench.store_query", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {ln.split(" | ")[0]: [v.strip(" |") for v in ln.split(" | ")[1:]] for ln in out.stdout.splitlines()}
    assert rows["check: problems"][0] == "0"
    assert rows["[1] local disk: rows / lost / duplicated / append commits"][0] == "10 / 0 / 0 / 10"
    p50 = float(rows["one run record (Store.record_run), p50 ms"][0])
    p95 = float(rows["one run record (Store.record_run), p95 ms"][0])
    assert 0 < p50 <= p95


def test_packed_rows_give_the_unpacked_loss_and_logits(tmp_path):
    """The packing levers change the layout only: sentences side by side in a row, each attending to itself alone,
    with positions restarting, give the loss and the per-token logits of the same sentences padded one a row."""
    import torch

    from jobs.loop import seed_everything
    from tests.unit.test_ner import conll_files, make_cfg
    from workloads import ner

    cfg = make_cfg(conll_files(tmp_path))
    seed_everything(0)
    splits = ner.build_data(cfg)
    model = ner.build_model(cfg, splits).eval()
    features = splits.train
    batch = splits.collate_fn(features)
    [packed] = vs_hf_trainer.pack(features, length=64, rows=2, pad_id=0, seed=0)
    assert int(packed["sentences"].numel()) == len(features) and packed["input_ids"].shape == (2, 64)
    assert int(packed["real"].sum()) == int(batch["attention_mask"].sum())  # every sub-token once, no padding kept
    with torch.no_grad():
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out = model(**{k: packed[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")})
    assert float(out.loss) == pytest.approx(float(plain.loss), rel=1e-5)
    # the labelled sub-tokens' logits, in each layout's own order, match as a set of rows
    keep = lambda logits, labels: logits[labels != -100].sort(dim=0).values  # noqa: E731
    assert torch.allclose(keep(out.logits, packed["labels"]), keep(plain.logits, batch["labels"]), atol=1e-5)


def test_roofline_smoke_measures_the_peak_and_each_arms_share_of_it(tmp_path, capsys):
    """Tiny BERT: the matmul peaks, FLOP/s of the three arms over them, and the profile's top operators."""
    from bench import roofline

    assert roofline.main(["--smoke", "--threads", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "roofline.json").read_text())
    assert res["peak_gflop_per_s"]["bf16"] > 0 and res["peak_gflop_per_s"]["fp32"] > 0
    assert set(res["arms"]) == {"plain", "jobs", "hf"}
    for arm in res["arms"].values():
        assert arm["samples_per_s"] > 0 and 0 < arm["of_fp32_peak"] and arm["gflop_per_s"] > 0
    assert res["top_ops_jobs"] and abs(sum(op["share"] for op in res["top_ops_jobs"])) <= 1.0 + 1e-9
    assert "of bf16 peak" in capsys.readouterr().out


def test_sweep_vs_hf_smoke_runs_hfs_optuna_search_and_scores_its_best_trial(tmp_path, capsys):
    """Tiny BERT, 2 trials of HF's Optuna search in a subprocess (no Ray): wall and CPU time, the best trial's val F1
    and the test F1 of its retrain; jobs.sweep's arm is the sweep tests' (it starts Ray)."""
    from bench import sweep_vs_hf

    assert sweep_vs_hf.main(["--smoke", "--threads", "1", "--arms", "hf_optuna", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "sweep_vs_hf.json").read_text())["results"]["hf_optuna"]
    assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["trials"] == 2
    assert (
        0 <= r["best_val_f1"] <= 1 and 0 <= r["test_f1"] <= 1 and r["best"]["per_device_train_batch_size"] in (16, 32)
    )
    assert "Optuna + MedianPruner" in capsys.readouterr().out
