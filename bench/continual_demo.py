"""Continual NER demo: round 1 on CoNLL-2003 news, round 2 on WNUT-16 tweets, without and with replay.

    python -m bench.continual_demo [--train-sentences 3000] [--eval-sentences 1000] [--epochs 2] [--out DIR]

Three real jobs, each a subprocess with its own local Ray (or the cluster in ``RAY_ADDRESS``), into one store:
  round 1   python -m jobs.train     --config configs/ner.yaml        (CoNLL-2003, capped: see the flags)
  round 2a  python -m jobs.continual --config configs/ner_wnut.yaml --from best               (all WNUT train tweets)
  round 2b  python -m jobs.continual --config configs/ner_wnut.yaml --from <round 1> continual.replay_fraction=0.2
then prints the table from the store: per round its data, the WNUT test F1, the CoNLL test F1, gain and
forgetting. Round 1 is capped (MiniLM on 2 shared CPU cores runs ~20-70 sentences/s), so its F1 sits
below a full run's ~0.85; the CoNLL test set is capped too (the same sentences for every round). The
demo passes (exit 0) when round 2 improves the WNUT test F1 over round 1 (gain > 0) in both variants.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], log: Path) -> None:
    t0 = time.perf_counter()
    print("$ python -m " + " ".join(args), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    with open(log, "w") as f:
        code = subprocess.run(
            [sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
        ).returncode
    print(f"  exit {code} after {time.perf_counter() - t0:.0f} s (log: {log})", flush=True)
    if code != 0:
        print(log.read_text()[-3000:])
        sys.exit(code)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-sentences", type=int, default=3000, help="round 1: CoNLL-2003 training sentences (cap)")
    p.add_argument("--eval-sentences", type=int, default=1000, help="CoNLL-2003 val and test sentences (cap)")
    p.add_argument("--epochs", type=int, default=2, help="round 1 epochs (round 2: configs/ner_wnut.yaml)")
    p.add_argument("--replay", type=float, default=0.2, help="round 2b's continual.replay_fraction")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "continual"), help="store, checkpoints and logs")
    p.add_argument("overrides", nargs="*", help="key=value for every job, e.g. scaling.cpus_per_worker=2")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / f"store-{time.strftime('%Y%m%d-%H%M%S')}"
    common = ["--store", str(store)]
    overrides = [f"run.storage_path={out / 'runs'}", *args.overrides]

    from jobs.store import Store

    run(
        [
            "jobs.train",
            "--config",
            "configs/ner.yaml",
            *common,
            f"data.max_train_samples={args.train_sentences}",
            f"data.max_eval_samples={args.eval_sentences}",
            f"train.epochs={args.epochs}",
            *overrides,
        ],
        out / "round1.log",
    )
    round1 = Store(store).df("runs").iloc[0]["run_id"]
    run(
        ["jobs.continual", "--config", "configs/ner_wnut.yaml", "--from", "best", *common, *overrides],
        out / "round2.log",
    )
    run(
        [
            "jobs.continual",
            "--config",
            "configs/ner_wnut.yaml",
            "--from",
            round1,
            *common,
            f"continual.replay_fraction={args.replay}",
            *overrides,
        ],
        out / "round2_replay.log",
    )

    runs = Store(store).df("runs").sort_values("finished_at")
    first, children = runs.iloc[0], runs.iloc[1:]
    wnut_zero_shot = children["parent_new_test_f1"].iloc[0]
    print(f"\nstore: {store}   (python -m jobs.store --store {store} lineage {round1})")
    print(
        f"round 1: CoNLL-2003 train capped at {args.train_sentences} sentences, {args.epochs} epochs; "
        f"CoNLL val/test capped at {args.eval_sentences}; round 2: all 1,723 WNUT train tweets, 3 epochs\n"
    )
    header = f"{'round':<6} {'data':<34} {'WNUT test F1':>12} {'CoNLL test F1':>13} {'gain':>7} {'forgetting':>10} {'wall s':>7}"
    print(header + "\n" + "-" * len(header))
    print(
        f"{1:<6} {'CoNLL-2003 news':<34} {wnut_zero_shot:>12.4f} {first['test_f1']:>13.4f} {'':>7} {'':>10} {first['wall_s']:>7.0f}"
    )
    for _, r in children.iterrows():
        data = "WNUT-16 tweets" + (
            f" + {r['continual.replay_fraction']:.0%} replay ({int(r['replay_samples'])} sent.)"
            if r["continual.replay_fraction"]
            else ""
        )
        print(
            f"{int(r['round']):<6} {data:<34} {r['test_f1']:>12.4f} {r['old_test_f1']:>13.4f} {r['gain']:>+7.4f} "
            f"{r['forgetting']:>+10.4f} {r['wall_s']:>7.0f}"
        )
    ok = bool((children["gain"] > 0).all())
    print(f"\nround 2 improves the WNUT test F1 over round 1 (gain > 0) in both variants: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
