"""Every bad input a user can give: exit 2, one line on stderr naming the problem and the fix, no traceback,
nothing written to the store or the checkpoint folder — and all of it decided before Ray starts.

Each case is a process that runs ``python -m jobs.<verb>`` as ``__main__`` with the case's argv and environment
and exits with its status: forked from a server that imported torch, Ray and pyarrow once (``tests/forked_cli.py``;
a new interpreter spends ~2.5 s on those imports, so the table took 100-170 s of a CI run instead of 20-25 s). One case
per verb also runs as a plain subprocess, which would show a warning printed while a library imports.
A case that wrongly got past the checks would try to start or reach Ray: ``RAY_ADDRESS`` points at a closed port,
so it fails fast with exit 1 instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import forked_cli
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TEST_PYTHONPATH, S3Server

from jobs.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300  # per case; a healthy one takes 2-6 s, far more only on a saturated machine
CONCURRENCY = max(2, min(4, (os.cpu_count() or 2) + 1))  # the children mostly import: a little oversubscription helps
# The first case of each verb, run as a plain `python -m` subprocess (the rest are forked from a preloaded server).
PLAIN_SUBPROCESS = {
    "yaml-syntax",
    "history-missing-run",
    "evaluate-missing-run",
    "continual-from-missing-run",
    "sweep-unknown-distribution",
    "cluster-yaml-unknown-key",
}


@dataclass
class Case:
    id: str
    argv: list[str]  # after `python -m`; {d} = the folder of bad files; --store/run.storage_path are added
    needle: str  # the key fact the one-line message must contain
    env: dict[str, str] = field(default_factory=dict)
    drop_env: tuple[str, ...] = ()
    store: str = ""  # --store value (default: a fresh folder per case that must stay absent)


def train(*args: str, config: str = "configs/mlp.yaml") -> list[str]:
    return ["jobs.train", "--config", config, *args]


# Every S3 case talks to 127.0.0.1 only: {s3} is a moto server started for this table, {closed} a port where
# nothing listens. (A case without an endpoint would send pyarrow to real AWS for the bucket's region.)
NO_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
NO_AWS_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_ENDPOINT_URL": "{s3}",
    "AWS_REGION": "us-east-1",
}
MOTO_ENV = NO_AWS_ENV | {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
NO_SERVER_ENV = MOTO_ENV | {"AWS_ENDPOINT_URL": "http://127.0.0.1:{closed}"}
SENTIMENT = "configs/sentiment.yaml"
NER = "configs/ner.yaml"

CASES = [
    # ---- config files and overrides
    Case("yaml-syntax", train(config="{d}/bad_syntax.yaml"), "is not valid YAML"),
    Case("yaml-not-mapping", train(config="{d}/list.yaml"), "must be a YAML mapping"),
    Case("config-missing", train(config="{d}/nope.yaml"), "not found"),
    Case("unknown-top-key", train(config="{d}/unknown_key.yaml"), "unknown config key 'bogus'"),
    Case("unknown-nested-key", train("train.lrr=0.1"), "unknown config key 'train.lrr'"),
    Case("wrong-type-int", train("train.epochs=ten"), "'train.epochs' must be an integer"),
    Case("wrong-type-float", train("train.lr=fast"), "'train.lr' must be a number"),
    Case("wrong-type-bool", train("scaling.use_gpu=maybe"), "'scaling.use_gpu' must be true or false"),
    Case("section-not-mapping", train("train=3"), "'train' must be a section"),
    Case("value-not-section", train("train.lr.x=1"), "is a value, not a section"),
    Case("override-not-key-value", train("train.lr"), "is not key=value"),
    Case("unknown-workload", train("workload=nope"), "unknown workload 'nope'"),
    Case("no-workload", train(config="{d}/no_workload.yaml"), "no workload given"),
    Case("zero-workers", train("scaling.num_workers=0"), "scaling.num_workers must be >= 1"),
    Case("zero-epochs", train("train.epochs=0"), "train.epochs must be >= 1"),
    Case("bad-on-nan", train("train.on_nan=explode"), "train.on_nan must be fail or skip_batch"),
    Case("bad-precision", train("train.precision=fp8"), "train.precision must be auto, fp32, bf16 or fp16"),
    Case("bad-local-mode", train("scaling.local_mode=sometimes"), "scaling.local_mode must be auto, always or never"),
    Case(
        "local-mode-many-workers",
        train("scaling.local_mode=always", "scaling.num_workers=2"),
        "scaling.local_mode=always runs one worker in this process",
    ),
    Case("bad-mode", train("sweep.mode=up"), "sweep.mode must be max or min"),
    # ---- image data (mlp / cnn)
    Case("data-path-missing", train("data.source={d}/nope.npz"), "not found"),
    Case("npz-empty-file", train("data.source={d}/empty.npz"), "is not a readable .npz"),
    Case("npz-count-mismatch", train("data.source={d}/mismatch.npz"), "x_train has 10 images but y_train has 9 labels"),
    Case("npz-no-labels", train("data.source={d}/no_labels.npz"), "needs arrays x_train and y_train"),
    Case("npz-negative-labels", train("data.source={d}/negative.npz"), "non-negative"),
    Case("npz-pickled-object", train("data.source={d}/objects.npz"), "is not a readable .npz"),
    Case("idx-bad-magic", train("data.source={d}/idx/train", config="configs/cnn.yaml"), "bad magic number"),
    Case("idx-truncated", train("data.source={d}/idx_short/train"), "is truncated"),
    Case("image-parquet-no-label", train("data.source={d}/no_label.parquet"), "missing column(s) ['label']"),
    Case("image-source-unknown", train("data.source=mnist_v9"), "not a known source"),
    Case(
        "s3-no-credentials",
        train("data.source=s3://perennial-bad-inputs/x.npz"),
        "'s3://perennial-bad-inputs/x.npz': no AWS credentials found",
        env=NO_AWS_ENV,
        drop_env=NO_AWS,
    ),
    Case(
        "s3-no-server",
        train("data.source=s3://perennial-bad-inputs/x.npz"),
        "cannot connect to the S3 endpoint http://127.0.0.1:",
        env=NO_SERVER_ENV,
        drop_env=NO_AWS,
    ),
    Case(
        "s3-no-bucket",
        train("data.source=s3://perennial-no-such-bucket/x.npz"),
        "bucket 'perennial-no-such-bucket' does not exist",
        env=MOTO_ENV,
        drop_env=NO_AWS,
    ),
    Case(
        "s3-no-such-key",
        train("data.source=s3://perennial-bad-inputs/nope.npz"),
        "data file 's3://perennial-bad-inputs/nope.npz' not found",
        env=MOTO_ENV,
        drop_env=NO_AWS,
    ),
    # ---- CoNLL (ner)
    Case(
        "conll-column-count",
        train("data.train={d}/ner_columns.txt", config=NER),
        "ner_columns.txt:4: 3 columns, but line 1 has 2",
    ),
    Case(
        "conll-unknown-label",
        train("data.train={d}/ner_ok.txt", "data.labels=[O,B-PER,I-PER]", config=NER),
        "ner_ok.txt:1: unknown label 'B-ORG'",
    ),
    Case("conll-undecodable", train("data.train={d}/ner_latin1.txt", config=NER), "ner_latin1.txt:2: not UTF-8"),
    Case("conll-not-iob", train("data.train={d}/ner_tags.txt", config=NER), "tag 'ORG' is not IOB-style"),
    Case("conll-empty", train("data.train={d}/empty.txt", config=NER), "no sentences"),
    Case("conll-missing", train("data.train={d}/nope.txt", config=NER), "not found"),
    Case(
        "ner-model-missing",
        train("data.train={d}/ner_ok.txt", "model.name_or_path={d}/no_model", config=NER),
        "has no config.json",
    ),
    # ---- labelled text (sentiment / rnn)
    Case("csv-no-text-column", train("data.train={d}/no_text.csv", config=SENTIMENT), "no column 'text'"),
    Case(
        "csv-undecodable",
        train("data.train={d}/latin1.csv", config=SENTIMENT),
        "latin1.csv:2: byte 0xe9 is not valid utf-8",
    ),
    Case(
        "csv-unknown-label",
        train("data.train={d}/labels.csv", "data.labels=[negative,positive]", config=SENTIMENT),
        "labels.csv:4: unknown label 'meh'",
    ),
    Case(
        "csv-ragged-row",
        train("data.train={d}/ragged.csv", config=SENTIMENT),
        "ragged.csv:3: 3 fields but the header has 2",
    ),
    Case("csv-empty", train("data.train={d}/empty.csv", config=SENTIMENT), "the file is empty"),
    Case("csv-one-class", train("data.train={d}/one_class.csv", config=SENTIMENT), "a classifier needs at least 2"),
    Case("jsonl-bad-line", train("data.train={d}/bad.jsonl", config=SENTIMENT), "bad.jsonl:2: not valid JSON"),
    Case("text-unsupported-type", train("data.train={d}/notes.txt", config=SENTIMENT), "unsupported file type '.txt'"),
    Case("text-parquet-no-column", train("data.train={d}/reviews.parquet", config=SENTIMENT), "no column 'text'"),
    Case(
        "text-bad-encoding-name",
        train("data.train={d}/labels.csv", "data.encoding=klingon", config=SENTIMENT),
        "not a known text encoding",
    ),
    Case(
        "rnn-bad-cell",
        train("model.cell=transformer", config="configs/rnn.yaml"),
        "model.cell must be gru, lstm or rnn",
    ),
    # ---- the store
    Case("store-is-a-file", train(), "is a file, not a directory", store="{d}/a_file"),
    Case("store-under-a-file", train(), "is a file, not a directory", store="{d}/a_file/store"),
    Case(
        "store-s3-no-credentials",
        train(),
        "store 's3://perennial-bad-inputs/store': no AWS credentials found",
        store="s3://perennial-bad-inputs/store",
        env=NO_AWS_ENV,
        drop_env=NO_AWS,
    ),
    Case(
        "store-s3-no-server",
        train(),
        "cannot reach store 's3://perennial-bad-inputs/store': cannot connect to the S3 endpoint",
        store="s3://perennial-bad-inputs/store",
        env=NO_SERVER_ENV,
        drop_env=NO_AWS,
    ),
    Case(
        "store-s3-no-bucket",
        train(),
        "bucket 'perennial-no-such-bucket' does not exist",
        store="s3://perennial-no-such-bucket/store",
        env=MOTO_ENV,
        drop_env=NO_AWS,
    ),
    # ---- other verbs: runs that do not exist, bad search spaces, cluster.yaml
    Case("history-missing-run", ["jobs.store", "history", "mlp-nope"], "no epochs for run 'mlp-nope'"),
    Case("evaluate-missing-run", ["jobs.evaluate", "--run", "mlp-nope"], "unknown run 'mlp-nope'"),
    # ---- one pre-flight for every verb (jobs/preflight.py): an out-of-range value, an unusable store
    *[
        Case(f"{verb}-zero-epochs", [*argv, "train.epochs=0"], "train.epochs must be >= 1")
        for verb, argv in (
            ("sweep", ["jobs.sweep", "--config", "configs/mlp.yaml"]),
            ("continual", ["jobs.continual", "--config", "configs/mlp.yaml", "--from", "best"]),
            ("submit", ["jobs.submit", "submit", "configs/mlp.yaml"]),
        )
    ],
    *[
        Case(f"{verb}-store-is-a-file", argv, "is a file, not a directory", store="{d}/a_file")
        for verb, argv in (
            ("sweep", ["jobs.sweep", "--config", "configs/mlp.yaml"]),
            ("continual", ["jobs.continual", "--config", "configs/mlp.yaml", "--from", "best"]),
            ("evaluate", ["jobs.evaluate", "--run", "mlp-nope"]),
            ("submit", ["jobs.submit", "submit", "configs/mlp.yaml"]),
        )
    ],
    Case(
        "continual-from-missing-run",
        ["jobs.continual", "--config", "configs/mlp.yaml", "--from", "mlp-nope", "data.source=digits"],
        "no run 'mlp-nope'",
    ),
    Case(
        "sweep-unknown-distribution",
        ["jobs.sweep", "--config", "configs/mlp.yaml", "sweep.search_space={train.lr: {normal: [0, 1]}}"],
        "unknown distribution 'normal'",
    ),
    Case(
        "sweep-unknown-key",
        ["jobs.sweep", "--config", "configs/mlp.yaml", "sweep.search_space={train.lrr: {choice: [0.1, 0.2]}}"],
        "'train.lrr' is not in workload",
    ),
    Case(
        "sweep-bounds-swapped",
        ["jobs.sweep", "--config", "configs/mlp.yaml", "sweep.search_space={train.lr: {loguniform: [0.1, 0.001]}}"],
        "lower bound 0.1 > upper bound 0.001",
    ),
    Case(
        "sweep-resume-missing",
        ["jobs.sweep", "--resume", "mlp-sweep-nope", "run.storage_path={runs}"],
        "no sweep 'mlp-sweep-nope'",
    ),
    Case(
        "train-resume-changes-the-model",
        ["jobs.train", "--resume", "mlp-nope", "run.storage_path={runs}", "train.lr=0.1"],
        "give only run.storage_path=... (where it ran), scaling.* other than scaling.strategy, and --store",
    ),
    Case(
        "sweep-resume-rescales",
        ["jobs.sweep", "--resume", "mlp-sweep-nope", "run.storage_path={runs}", "scaling.num_workers=2"],
        "give only run.storage_path=... (where it ran) and --store",
    ),
    Case("cluster-yaml-unknown-key", ["jobs.cluster_check", "{d}/cluster_bad.yaml"], "bogus_key"),
    Case("cluster-yaml-not-yaml", ["jobs.cluster_check", "{d}/bad_syntax.yaml"], "bad_syntax.yaml"),
]


# ----------------------------------------------------------------------------- the bad files
def make_bad_files(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "bad_syntax.yaml").write_text("workload: mlp\ntrain: [1,\n")
    (d / "list.yaml").write_text("- workload\n- mlp\n")
    (d / "unknown_key.yaml").write_text("workload: mlp\nbogus: 1\n")
    (d / "no_workload.yaml").write_text("train:\n  lr: 0.1\n")
    x = np.random.default_rng(0).random((10, 8, 8), dtype=np.float32)
    np.savez(d / "mismatch.npz", x_train=x, y_train=np.zeros(9, np.int64))
    np.savez(d / "no_labels.npz", x_train=x)
    np.savez(d / "negative.npz", x_train=x, y_train=np.arange(10) - 1)
    np.savez(d / "objects.npz", x_train=np.array([{"a": 1}] * 10, dtype=object), y_train=np.zeros(10, np.int64))
    (d / "empty.npz").write_bytes(b"")
    (d / "idx").mkdir(exist_ok=True)
    (d / "idx" / "train-images-idx3-ubyte").write_bytes(b"GIF89a not an idx file")
    (d / "idx" / "train-labels-idx1-ubyte").write_bytes(b"GIF89a not an idx file")
    (d / "idx_short").mkdir(exist_ok=True)
    (d / "idx_short" / "train-images-idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (8).to_bytes(4, "big") * 2 + bytes(100)
    )
    (d / "idx_short" / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(10))
    pq.write_table(pa.table({"image": [[0.5] * 64] * 4}), d / "no_label.parquet")
    sentences = "".join(f"Peter B-PER\nvisits O\nBerlin B-LOC\n{i} O\n\n" for i in range(20))
    (d / "ner_ok.txt").write_text("EU B-ORG\nrejects O\n\n" + sentences)
    (d / "ner_columns.txt").write_text("EU B-ORG\nrejects O\n\nPeter NNP B-PER\n")
    (d / "ner_latin1.txt").write_bytes("EU B-ORG\nZürich B-LOC\n".encode("latin-1"))
    (d / "ner_tags.txt").write_text("EU ORG\nrejects O\n")
    (d / "empty.txt").write_text("")
    (d / "no_text.csv").write_text("tweet,label\nhi,positive\nbye,negative\n")
    (d / "latin1.csv").write_bytes("text,label\nné,positive\nx,negative\n".encode("latin-1"))
    (d / "labels.csv").write_text("text,label\ngood,positive\nbad,negative\nso so,meh\n")
    (d / "ragged.csv").write_text("text,label\nfine,positive\nhello, world,positive\n")
    (d / "empty.csv").write_text("")
    (d / "one_class.csv").write_text("text,label\n" + "".join(f"t{i},positive\n" for i in range(20)))
    (d / "bad.jsonl").write_text('{"text": "a", "label": "positive"}\n{"text": "b", label: negative}\n')
    (d / "notes.txt").write_text("just some text\n")
    pq.write_table(pa.table({"review": ["a", "b"], "label": ["positive", "negative"]}), d / "reviews.parquet")
    (d / "a_file").write_text("I am not a directory\n")
    (d / "cluster_bad.yaml").write_text((ROOT / "cluster.yaml").read_text() + "\nbogus_key: 1\n")


# ----------------------------------------------------------------------------- running the table
def case_env(case: Case, fill=lambda s: s) -> dict[str, str]:
    keep = ("PERENNIAL_NET_GUARD_LOG",)
    env = {
        k: v for k, v in os.environ.items() if k not in case.drop_env and (not k.startswith("PERENNIAL_") or k in keep)
    }
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")} if case.drop_env else env
    env |= {
        "PYTHONPATH": TEST_PYTHONPATH,
        "RAY_ADDRESS": f"127.0.0.1:{free_port()}",  # tripwire: never a real cluster
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return env | {k: fill(v) for k, v in case.env.items()}


def run_case(case: Case, d: Path, s3_endpoint: str) -> dict:
    store, runs = d / "stores" / case.id, d / "runs" / case.id

    def fill(s: str) -> str:  # not format(): argv holds YAML braces
        return (
            s.replace("{d}", str(d))
            .replace("{runs}", str(runs))
            .replace("{s3}", s3_endpoint)
            .replace("{closed}", str(free_port()))
        )

    argv = [fill(a) for a in case.argv]
    if argv[0] in ("jobs.train", "jobs.continual", "jobs.sweep", "jobs.evaluate", "jobs.store", "jobs.submit"):
        argv[1:1] = ["--store", fill(case.store) if case.store else str(store)]
    if argv[0] in ("jobs.train", "jobs.continual", "jobs.sweep") and "--resume" not in argv:
        argv.append(f"run.storage_path={runs}")
    t0 = time.perf_counter()
    if case.id not in PLAIN_SUBPROCESS:
        proc = forked_cli.run(argv, case_env(case, fill), ROOT, TIMEOUT_S)  # a timeout is reported by its own test
        return {"proc": proc, "wall_s": time.perf_counter() - t0, "store": store, "runs": runs}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", *argv],
            cwd=ROOT,
            env=case_env(case, fill),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:  # reported by the case's own test, not as an error of every test
        proc = subprocess.CompletedProcess(
            e.cmd, -9, _text(e.stdout), _text(e.stderr) + f"\n(timed out after {TIMEOUT_S} s)"
        )
    return {"proc": proc, "wall_s": time.perf_counter() - t0, "store": store, "runs": runs}


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


@pytest.fixture(scope="module")
def results(request, tmp_path_factory) -> dict[str, dict]:
    """Runs the selected cases concurrently, once; each test then checks its own."""
    d = tmp_path_factory.mktemp("bad_inputs")
    make_bad_files(d)
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_bad_input_exits_2_with_one_line" and hasattr(item, "callspec")
    ]
    s3 = S3Server()  # the S3 cases' server: moto on 127.0.0.1, one bucket
    s3.make_bucket("perennial-bad-inputs")
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            futures = {c.id: pool.submit(run_case, c, d, s3.endpoint) for c in selected}
            out = {cid: f.result() for cid, f in futures.items()}  # run_case turns a timeout into a result
    finally:
        s3.stop()
    walls = sorted(r["wall_s"] for r in out.values())
    if walls:
        print(
            f"\n{len(out)} bad-input subprocesses, {CONCURRENCY} at a time: {time.perf_counter() - t0:.1f} s wall, "
            f"each {walls[0]:.1f}-{walls[-1]:.1f} s (median {walls[len(walls) // 2]:.1f} s)"
        )
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line(case: Case, results):
    r = results[case.id]
    proc = r["proc"]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}, want 2:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}:\n{proc.stderr[-3000:]}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert case.needle in line, f"{case.needle!r} not in: {line}"
    assert " — " in line or " must be " in line, (
        f"the message names no fix ('problem — fix', or 'X must be ...'): {line}"
    )
    assert len(line) < 400, f"too long for one readable line ({len(line)} chars): {line}"
    assert not r["store"].exists(), f"the store was written: {sorted(p.name for p in r['store'].rglob('*'))}"
    assert not r["runs"].exists(), "the checkpoint folder was created"


def test_table_is_big_enough():
    assert len(CASES) == 75 and len({c.id for c in CASES}) == len(CASES)  # RELIABILITY.md states the count
    assert PLAIN_SUBPROCESS <= {c.id for c in CASES}
