"""Config: YAML + typed defaults + key=value overrides, and the one-line errors users see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs import config as config_lib
from jobs.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_over_defaults_then_overrides(tmp_path):
    p = write(tmp_path, "workload: mlp\ntrain:\n  lr: 0.01\n  epochs: 3\n")
    cfg = load_config(p, ["train.epochs=5", "scaling.num_workers=2", "model.dropout=0"])
    assert cfg.workload == "mlp"
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 5  # override beats file
    assert cfg.scaling.num_workers == 2 and cfg.train.batch_size == 128  # untouched default
    assert isinstance(cfg.model.dropout, float) and cfg.model.dropout == 0.0  # int widened to float


def test_smoke_test_applies_before_user_overrides(tmp_path):
    p = write(tmp_path, "workload: mlp\n")
    cfg = load_config(p, ["train.epochs=3"], smoke_test=True)
    assert cfg.train.epochs == 3  # user wins
    assert cfg.data.max_train_samples == 2000  # from SMOKE_TEST


def test_round_trip_through_dict(tmp_path):
    cfg = load_config(write(tmp_path, "workload: mlp\n"), ["train.lr=0.003"])
    again = config_lib.from_dict(config_lib.to_dict(cfg))
    assert again == cfg
    flat = config_lib.flatten(cfg)
    assert flat["train.lr"] == 0.003 and "sweep.num_samples" not in flat and "scaling.num_workers" in flat


def test_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads `1e-4` as a string; a float key still takes it, from the file and from an override."""
    cfg = load_config(write(tmp_path, "workload: mlp\ntrain:\n  weight_decay: 1e-4\n"), ["train.lr=3e5"])
    assert cfg.train.weight_decay == 1e-4 and cfg.train.lr == 3e5


@pytest.mark.parametrize(
    "yaml_text, overrides, needle",
    [
        ("workload: mlp\n", ["train.lrr=0.1"], "unknown config key 'train.lrr'"),
        ("workload: mlp\nbogus: 1\n", [], "unknown config key 'bogus'"),
        ("workload: mlp\n", ["train.epochs=ten"], "'train.epochs' must be an integer"),
        ("workload: mlp\n", ["train.lr=fast"], "'train.lr' must be a number"),
        ("workload: mlp\n", ["scaling.use_gpu=2"], "'scaling.use_gpu' must be true or false"),
        ("workload: mlp\n", ["train.epochs=0"], "train.epochs must be >= 1, got 0"),
        ("workload: mlp\n", ["train.precision=fp8"], "train.precision must be auto, fp32, bf16 or fp16"),
        ("workload: mlp\ntrain: 3\n", [], "'train' must be a section"),
        ("workload: nope\n", [], "unknown workload 'nope'"),
        ("train: {}\n", [], "no workload given"),
        ("workload: mlp\n", ["train.lr"], "is not key=value"),
        ("workload: mlp\ntrain: [1,\n", [], "is not valid YAML"),
        ("- a\n- b\n", [], "must be a YAML mapping"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, yaml_text, overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, yaml_text), overrides)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file 'nope.yaml' not found"):
        load_config("nope.yaml", [])


def test_every_shipped_config_loads():
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# python -m jobs."), f"{path.name}: first line must be the command that runs it"
        cfg = load_config(path, [])
        assert cfg.workload == path.stem or cfg.workload in path.stem


def test_cli_exit_code_2_one_line(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train",
            "--config",
            "configs/mlp.yaml",
            "train.epochs=x",
            "--store",
            str(tmp_path / "s"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "train.epochs" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "s").exists()


def test_relative_data_paths_become_absolute(tmp_path, monkeypatch):
    """Workers run in another directory than the driver: a path the driver checked must still resolve there."""
    (tmp_path / "d.npz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["workload=mlp", "data.source=d.npz"])
    assert cfg.data.source == str(tmp_path / "d.npz")
    assert load_config(None, ["workload=mlp", "data.source=digits"]).data.source == "digits"  # a name, not a path


@pytest.mark.parametrize(
    "value, expected",
    [("2", (2, 2)), ("[1,4]", (1, 4)), ("[2,2]", (2, 2))],
)
def test_num_workers_is_a_count_or_an_elastic_range(tmp_path, value, expected):
    cfg = load_config(write(tmp_path, "workload: mlp\n"), [f"scaling.num_workers={value}"])
    config_lib.check_values(cfg)
    assert config_lib.worker_range(cfg.scaling) == expected
    assert config_lib.is_elastic(cfg.scaling) == (expected[0] != expected[1])
    # survives the trip to a Train worker (a list in the config dict, a range again on the other side)
    assert config_lib.worker_range(config_lib.from_dict(config_lib.to_dict(cfg)).scaling) == expected


@pytest.mark.parametrize(
    "value, needle",
    [
        ("[3,1]", "needs 1 <= min <= max, got [3, 1]"),
        ("[0,2]", "needs 1 <= min <= max"),
        ("[1,2,3]", "must be [min, max], two integers"),
        ("[1,two]", "must be [min, max], two integers"),
        ("0", "scaling.num_workers must be >= 1"),
        ("many", "'scaling.num_workers' must be an integer"),
    ],
)
def test_bad_num_workers_is_one_clear_error(tmp_path, value, needle):
    with pytest.raises(ConfigError) as e:
        config_lib.check_values(load_config(write(tmp_path, "workload: mlp\n"), [f"scaling.num_workers={value}"]))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_elastic_runs_keep_the_global_batch_and_the_schedule(tmp_path):
    """[1, 4] workers: with 1, 2, 3 or 4 of them, each optimizer step sees (at least) the samples of 4
    workers' batches, and the steps per epoch (what the lr schedule counts) stay those of 4 workers."""
    from jobs.loop import elastic_batch_policy

    cfg = load_config(write(tmp_path, "workload: mlp\n"), ["scaling.num_workers=[1,4]", "train.grad_accum_steps=2"])
    n_batches_all = 4000  # batches of one epoch on one worker
    steps = {}
    for world in (1, 2, 3, 4):
        step_cfg, note = elastic_batch_policy(cfg, world)
        accum = step_cfg.train.grad_accum_steps
        assert world * accum * cfg.train.batch_size >= 4 * 2 * cfg.train.batch_size  # the global batch, at least
        assert f"{world} now" in note
        steps[world] = -(-(n_batches_all // world) // accum)
    assert steps[1] == steps[2] == steps[4] == 500 and abs(steps[3] - 500) / 500 < 0.34, steps
    assert cfg.train.grad_accum_steps == 2  # the run's own config (export, trackers) is left as given
    fixed = load_config(write(tmp_path, "workload: mlp\n"), ["scaling.num_workers=2"])
    assert elastic_batch_policy(fixed, 1) == (fixed, "")


def test_every_shipped_config_validates_against_its_workloads_schema():
    """`python -m jobs.config --schema --workload W` is what an editor checks configs/*.yaml with."""
    import yaml

    jsonschema = pytest.importorskip("jsonschema")  # without it, test_every_shipped_config_loads checks by the model

    schemas = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        schema = schemas.setdefault(raw["workload"], config_lib.schema(raw["workload"]))
        jsonschema.validate(raw, schema)  # raises on the first mismatch, naming the file's key
    bad = {"workload": "mlp", "train": {"lrr": 0.1, "epochs": 0}, "scaling": {"local_mode": "sometimes"}}
    found = sorted(e.json_path for e in jsonschema.Draft202012Validator(schemas["mlp"]).iter_errors(bad))
    assert found == ["$.scaling.local_mode", "$.train", "$.train.epochs"]  # the unknown key, a bound, a choice


def test_schema_cli_prints_a_workloads_json_schema():
    res = subprocess.run(
        [sys.executable, "-m", "jobs.config", "--schema", "--workload", "ner"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    import json

    schema = json.loads(res.stdout)
    assert schema["additionalProperties"] is False and {"data", "train", "scaling"} <= set(schema["properties"])
    assert "warmup_ratio" in schema["$defs"]["Train"]["properties"]  # ner's own train knob


def test_a_worker_gets_the_checked_config_without_parsing_it_again(tmp_path):
    """A Ray worker unpickles the driver's config object: a fresh process, the same values, no YAML or override."""
    import pickle

    cfg = load_config(write(tmp_path, "workload: mlp\n"), ["train.lr=0.003", "scaling.num_workers=[1,2]"])
    (tmp_path / "cfg.pkl").write_bytes(pickle.dumps(cfg))
    code = "import pickle, sys; c = pickle.load(open(sys.argv[1], 'rb')); print(type(c).__name__, c.train.lr, c.scaling.num_workers)"
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cfg.pkl")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.stdout.split() == ["MlpConfig", "0.003", "[1,", "2]"], res.stderr
