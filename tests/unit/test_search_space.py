"""Sweep pieces that need no Ray cluster: search spaces (YAML -> Tune samplers, and the one-line exit-2
errors for bad ones, all raised before Ray starts) and the in-process trial runner (Ray Train's own
checkpoint storage, used without a cluster).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from jobs import config as config_lib
from jobs import sweep
from jobs.config import ConfigError, load_config


def cfg_with(tmp_path: Path, space_yaml: str, extra: str = ""):
    p = tmp_path / "c.yaml"
    p.write_text(f"workload: mlp\nsweep:\n  search_space:\n{space_yaml}{extra}")
    return load_config(p)


def test_each_distribution_becomes_its_tune_sampler(tmp_path):
    cfg = cfg_with(
        tmp_path,
        (
            "    train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
            "    model.dropout: {uniform: [0.0, 0.5]}\n"
            "    train.weight_decay: {quniform: [0.0, 0.1, 0.01]}\n"
            "    model.hidden2: {randint: [16, 64]}\n"
            "    model.hidden1: {choice: [64, 128]}\n"
            "    train.batch_size: {grid: [32, 64]}\n"
        ),
    )
    space = sweep.tune_space(cfg)
    lr = space["train.lr"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-4, 1e-2) and "LogUniform" in type(lr.sampler).__name__
    assert isinstance(space["model.dropout"], Float) and space["model.dropout"].upper == 0.5
    assert space["train.weight_decay"].sampler.q == 0.01
    assert isinstance(space["model.hidden2"], Integer) and (
        space["model.hidden2"].lower,
        space["model.hidden2"].upper,
    ) == (16, 64)
    assert isinstance(space["model.hidden1"], Categorical) and space["model.hidden1"].categories == [64, 128]
    assert space["train.batch_size"] == {"grid_search": [32, 64]}


def test_sampled_values_make_a_valid_trial_config(tmp_path):
    cfg = cfg_with(tmp_path, "    train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n    model.hidden2: {randint: [16, 64]}\n")
    space = sweep.tune_space(cfg)
    params = {k: v.sample() for k, v in space.items()}  # numpy scalars, as Tune hands them over
    trial = sweep.trial_config(config_lib.to_dict(cfg), params)
    assert 1e-4 <= trial.train.lr <= 1e-2 and isinstance(trial.model.hidden2, int) and 16 <= trial.model.hidden2 < 64
    assert trial.train.epochs == cfg.train.epochs  # everything else is the sweep's base config


def test_workload_default_space_when_config_has_none(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("workload: mlp\n")
    cfg = load_config(p)
    from workloads import mlp

    assert sweep.search_space(cfg) == mlp.SEARCH_SPACE
    assert set(sweep.tune_space(cfg)) == set(mlp.SEARCH_SPACE)


def test_search_grid_turns_choices_into_grid_axes(tmp_path):
    cfg = cfg_with(tmp_path, "    model.hidden1: {choice: [64, 128]}\n", "  search: grid\n")
    assert sweep.tune_space(cfg)["model.hidden1"] == {"grid_search": [64, 128]}


@pytest.mark.parametrize(
    "space_yaml, extra, needle",
    [
        ("    train.lr: {gaussian: [0.0, 1.0]}\n", "", "unknown distribution 'gaussian'"),
        ("    train.lr: {loguniform: [a, 1.0e-2]}\n", "", "bounds must be numbers"),
        ("    model.hidden1: {randint: [16.5, 64]}\n", "", "bounds must be integers"),
        ("    model.hidden1: {uniform: [16, 64]}\n", "", "uniform samples floats but model.hidden1 is int"),
        ("    model.hidden1: {choice: [64, wide]}\n", "", "choice value 'wide' does not fit model.hidden1"),
        ("    train.lrr: {loguniform: [1.0e-4, 1.0e-2]}\n", "", "'train.lrr' is not in workload 'mlp''s config"),
        ("    sweep.num_samples: {choice: [1, 2]}\n", "", "is not a hyperparameter of workload 'mlp'"),
        ("    train: {choice: [1, 2]}\n", "", "is not a hyperparameter of workload 'mlp'"),
        ("    train.lr: {loguniform: [1.0e-2, 1.0e-4]}\n", "", "lower bound 0.01 > upper bound 0.0001"),
        ("    train.lr: {loguniform: [0.0, 1.0e-2]}\n", "", "low must be > 0"),
        ("    train.lr: {uniform: [0.1]}\n", "", "uniform takes [low, high]"),
        ("    train.lr: 0.01\n", "", "must be one distribution"),
        ("    train.epochs: {randint: [2, 9]}\n", "", "train.epochs is every trial's budget"),
        ("    train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n", "  search: grid\n", "search=grid needs grid or choice"),
        ("    train.lr: {grid: [0.1, 0.01]}\n", "  search: optuna\n", "search=optuna samples; it has no grid"),
        ("    train.lr: {grid: [0.1, 0.01]}\n", "  search: bayes\n", "sweep.search must be random, grid or optuna"),
    ],
)
def test_bad_search_space_is_a_config_error(tmp_path, space_yaml, extra, needle):
    with pytest.raises(ConfigError, match=None) as err:
        sweep.tune_space(cfg_with(tmp_path, space_yaml, extra))
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("  scheduler: hyperband\n", "sweep.scheduler must be asha or fifo, got 'hyperband'"),
        ("  grace_period: 12\n", "ASHA needs 1 <= sweep.grace_period < train.epochs"),
    ],
)
def test_bad_scheduler_is_a_config_error(tmp_path, extra, needle):
    with pytest.raises(ConfigError) as err:  # a bad name fails as the config loads, a bad grace period here
        sweep.make_search(
            cfg_with(tmp_path, "    train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n", extra), "val_accuracy", "max"
        )
    assert needle in str(err.value)


def test_asha_rungs_are_epochs_before_the_last(tmp_path):
    cfg = cfg_with(tmp_path, "    train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n", "train:\n  epochs: 9\n")
    _, asha = sweep.make_search(cfg, "val_accuracy", "max")
    rungs = sorted(m for m, _ in asha._brackets[0]._rungs)
    assert rungs == [1, 3] and asha._time_attr == "epoch"  # no rung at epoch 9: it would only lose the export


def test_cli_bad_space_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("workload: mlp\nsweep:\n  search_space:\n    train.lr: {loguniform: [1.0e-2, 1.0e-4]}\n")
    store = tmp_path / "store"
    monkeypatch.setattr(
        "sys.argv", ["jobs.sweep", "--config", str(p), "--store", str(store), f"run.storage_path={tmp_path / 'runs'}"]
    )
    with pytest.raises(SystemExit) as exit_:
        config_lib.cli_main(sweep.main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lower bound" in err[0] and "swap them" in err[0]
    assert not store.exists() and not (tmp_path / "runs").exists()


def test_cli_resume_of_unknown_sweep_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["jobs.sweep", "--resume", "mlp-sweep-nope", f"run.storage_path={tmp_path}"])
    with pytest.raises(SystemExit) as exit_:
        config_lib.cli_main(sweep.main)
    assert exit_.value.code == 2 and "no sweep 'mlp-sweep-nope'" in capsys.readouterr().err


def test_every_workload_ships_a_valid_default_space(tmp_path):
    import workloads

    for name in workloads.WORKLOADS:
        wl = workloads.module(name)
        cfg = config_lib.from_dict({"workload": name})
        space = sweep.tune_space(cfg)
        assert space and set(space) == set(wl.SEARCH_SPACE), name


def test_trial_overrides_set_the_sweep_budget_but_the_command_line_wins(tmp_path):
    cfg = cfg_with(
        tmp_path,
        "    train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n",
        "  trial_overrides: {train.epochs: 6, data.max_train_samples: 12000}\n",
    )
    assert sweep.with_trial_overrides(cfg).train.epochs == 6
    assert sweep.with_trial_overrides(cfg, given=["train.epochs"]).train.epochs == cfg.train.epochs
    bad = cfg_with(tmp_path, "    train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n", "  trial_overrides: {train.epochz: 6}\n")
    with pytest.raises(ConfigError, match="sweep.trial_overrides: unknown config key 'train.epochz'"):
        sweep.with_trial_overrides(bad)
