"""The workload contract (workloads.Workload) and the resolver: shipped names, dotted modules, .py files."""

from __future__ import annotations

import pickle
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import workloads
from jobs import config as config_lib
from jobs.errors import ConfigError
from workloads import common

ROOT = Path(__file__).resolve().parents[2]
TINY = """
from dataclasses import dataclass, field
import torch
from torch.utils.data import TensorDataset
from workloads import Section, common
from workloads.data import Splits

class Data(Section):
    n: int = 64

class Model(Section):
    hidden: int = 8

class Train(common.Train):
    epochs: int = 2
    batch_size: int = 16

class Config(Section):  # was `@dataclass class Config:` (docs/workloads.md): field() defaults stay
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)

METRIC, MODE = "val_loss", "min"

def build_data(cfg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.data.n, 4, generator=g)
    y = (x.sum(1) > 0).long()
    ds = TensorDataset(x, y)
    return Splits(train=ds, val=ds, test=None, labels=["neg", "pos"])

def build_model(cfg, splits):
    return torch.nn.Sequential(torch.nn.Linear(4, cfg.model.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.model.hidden, 2))

def train_step(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)

@torch.no_grad()
def evaluate(model, loader, splits):
    losses = [torch.nn.functional.cross_entropy(model(x), y).item() for x, y in loader]
    return {"loss": sum(losses) / len(losses)}
"""


@pytest.fixture(autouse=True)
def _own_import_path(monkeypatch):
    """Resolving a workload puts its folder on sys.path and PYTHONPATH: keep that inside each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


@pytest.mark.parametrize("name", sorted(workloads.WORKLOADS))
def test_every_shipped_workload_meets_the_contract(name):
    wl = workloads.module(name)
    assert isinstance(wl, workloads.Workload)  # the Protocol's required members
    assert workloads.check(wl, name) is wl  # no missing hook, no near-miss of one
    train = typing.get_type_hints(wl.Config)["train"]
    assert issubclass(train, common.Train)
    # only the knobs it changes: every field redeclared in the workload differs from the common default
    for field, base in common.Train.model_fields.items():
        if field in train.__dict__.get("__annotations__", {}):
            assert train.model_fields[field].default != base.default, f"{name}.Train repeats the default of {field}"
            assert train.model_fields[field].metadata == base.metadata  # and keeps its bounds (epochs >= 1)
    hooks = {n for n in vars(wl) if n in workloads.HOOKS}
    assert set(workloads.REQUIRED) <= hooks


def test_only_ner_and_sft_clip_gradients_and_only_cnn_stops_early():
    clip = {n for n in workloads.WORKLOADS if workloads.module(n).Config().train.max_grad_norm > 0}
    stop = {n for n in workloads.WORKLOADS if workloads.module(n).Config().train.patience > 0}
    assert clip == {"ner", "sft"} and stop == {"cnn"}


def test_a_misspelt_optional_hook_is_an_error_not_ignored(tmp_path):
    path = tmp_path / "misspelt.py"
    path.write_text(TINY + "\ndef build_sheduler(cfg, optimizer, n):\n    return None\n")
    with pytest.raises(ConfigError, match=r"'build_sheduler', which is not a hook — did you mean 'build_scheduler'"):
        workloads.resolve(str(path))


def test_a_missing_hook_names_the_hook_and_the_contract_doc(tmp_path):
    path = tmp_path / "no_step.py"
    path.write_text(TINY.replace("def train_step(", "def step("))
    with pytest.raises(ConfigError, match=r"workload 'no_step' has no 'train_step' .*docs/workloads\.md"):
        workloads.resolve(str(path))
    assert (ROOT / "docs" / "workloads.md").is_file()


def test_every_hook_is_documented_one_per_line():
    doc = (ROOT / "docs" / "workloads.md").read_text()
    for hook in workloads.HOOKS:
        assert f"`{hook}" in doc, hook


def test_a_file_workload_gets_typed_overrides_and_its_stem_as_name(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "my_tiny.py").write_text(TINY)
    (folder / "my_tiny.yaml").write_text("workload: my_tiny.py\ntrain:\n  lr: 0.01\n")
    cfg = config_lib.load_config(folder / "my_tiny.yaml", ["model.hidden=4"])  # relative to the config's folder
    assert cfg.workload == "my_tiny" and cfg.workload_dir == str(folder) and cfg.model.hidden == 4
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 2 and cfg.train.on_nan == "fail"  # own + common defaults
    assert config_lib.metric_and_mode(cfg) == ("val_loss", "min")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.hiden' — valid keys in model: hidden"):
        config_lib.load_config(folder / "my_tiny.yaml", ["model.hiden=4"])
    with pytest.raises(ConfigError, match=r"config key 'model.hidden' must be an integer"):
        config_lib.load_config(folder / "my_tiny.yaml", ["model.hidden=big"])
    with pytest.raises(ConfigError, match=r"train.epochs must be >= 1"):  # the bound of common.Train holds
        config_lib.load_config(folder / "my_tiny.yaml", ["train.epochs=0"])
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg and "workload_dir" not in config_lib.flatten(cfg)
    # a Ray worker started elsewhere unpickles the checked config: the workload's folder goes on its path first
    (tmp_path / "cfg.pkl").write_bytes(pickle.dumps(cfg))
    code = "import pickle, sys; c = pickle.load(open(sys.argv[1], 'rb')); print(c.workload, c.model.hidden, c.train.lr)"
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cfg.pkl")], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.stdout.split() == ["my_tiny", "4", "0.01"], res.stderr[-2000:]


def test_a_dotted_module_resolves_and_a_missing_one_is_one_line(tmp_path, monkeypatch):
    pkg = tmp_path / "byo_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tiny_wl.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    name, module = workloads.resolve("byo_pkg.tiny_wl")
    assert name == "byo_pkg.tiny_wl" and workloads.module_root(module) == str(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown workload 'byo_pkg.nope' — use one of \['cnn'"):
        workloads.resolve("byo_pkg.nope")
    with pytest.raises(ConfigError, match=r"workload file 'nope.py' not found"):
        workloads.resolve("nope.py")


@pytest.mark.parametrize(
    "module_text, needle",
    [
        (None, "workload file"),  # no such file
        ("x = 1\n", "has no 'Config'"),  # a module without the hooks
        (TINY.replace('"min"', '"lowest"'), "MODE must be 'max' or 'min'"),
        (TINY.replace("class Config(Section):", "@dataclass\nclass Config:"), "Config is a @dataclass — make it"),
        (TINY.replace("class Data(Section):", "@dataclass\nclass Data:"), "`class Data(Section):`"),
    ],
)
def test_bad_workload_modules_exit_2_with_one_line_and_write_nothing(tmp_path, module_text, needle):
    if module_text is not None:
        (tmp_path / "bad_wl.py").write_text(module_text)
    (tmp_path / "bad.yaml").write_text("workload: bad_wl.py\n")
    store = tmp_path / "store"
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--config", str(tmp_path / "bad.yaml"), "--store", str(store)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not store.exists()


def test_jobs_new_copies_each_shipped_workload_into_a_module_that_meets_the_contract(tmp_path):
    from jobs import new

    for source in sorted(workloads.WORKLOADS):
        name = f"my_{source}"
        assert new.main([name, "--from", source, "--dir", str(tmp_path)]) == 0
        cfg = config_lib.load_config(tmp_path / "configs" / f"{name}.yaml", smoke_test=True)
        assert cfg.workload == name and cfg.workload_dir == str(tmp_path)
        shipped = config_lib.load_config(ROOT / "configs" / f"{source}.yaml", smoke_test=True)
        mine, theirs = config_lib.to_dict(cfg), config_lib.to_dict(shipped)
        for d in (mine, theirs):
            d.pop("workload"), d.pop("workload_dir")
        assert mine == theirs  # the same config, under its own name
    with pytest.raises(ConfigError, match="exists — pass --force"):
        new.main(["my_mlp", "--dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="already an importable module"):
        new.main(["json", "--dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="is not a module name"):
        new.main(["My-Thing", "--dir", str(tmp_path)])


def test_submit_uploads_an_external_workloads_folder_with_the_repo_code_as_py_modules(tmp_path):
    from ray._private.runtime_env.packaging import _zip_files  # what Ray runs to package a working_dir

    from jobs import submit

    folder = tmp_path / "proj"
    (folder / "configs").mkdir(parents=True)
    (folder / "my_upload.py").write_text(TINY)
    (folder / "configs" / "my_upload.yaml").write_text("workload: ../my_upload.py\n")
    (folder / ".env").write_text("SECRET=1")
    cfg = config_lib.load_config(folder / "configs" / "my_upload.yaml")
    config, upload = submit.upload_plan(str(folder / "configs" / "my_upload.yaml"), cfg)
    assert config == "configs/my_upload.yaml" and upload["working_dir"] == str(folder)
    assert upload["py_modules"] == [str(ROOT / "jobs"), str(ROOT / "workloads")]
    _zip_files(str(folder), upload["excludes"], str(tmp_path / "wd.zip"), include_gitignore=True)
    from zipfile import ZipFile

    names = sorted(n for n in ZipFile(tmp_path / "wd.zip").namelist() if not n.endswith("/"))
    assert names == ["configs/my_upload.yaml", "my_upload.py"]  # the module travels, credentials files do not
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("workload: proj/my_upload.py\n")
    with pytest.raises(ConfigError, match="outside the folder of workload 'my_upload'.*put the config next to"):
        submit.upload_plan(str(elsewhere), config_lib.load_config(elsewhere))
    shipped = config_lib.load_config(ROOT / "configs" / "mlp.yaml")
    config, upload = submit.upload_plan(str(ROOT / "configs" / "mlp.yaml"), shipped)
    assert config == "configs/mlp.yaml" and upload["working_dir"] == str(ROOT) and "py_modules" not in upload
