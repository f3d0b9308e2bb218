"""Security defaults: files are loaded as data, never as code; the job upload carries no secrets.

Each "malicious" file below would create a marker file if anything unpickled it; the tests assert the
load is refused with a clear error AND the marker never appears.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import loop
from jobs.config import ConfigError
from workloads.data import DataError, load_images

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: the marker file is the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoint_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "epoch_0001"
    ckpt.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "optimizer": Payload(marker)}, ckpt / loop.STATE)
    with pytest.raises(ConfigError) as e:
        loop.load_state(ckpt)
    message = str(e.value)
    assert "refused" in message and "state.pt" in message and "\n" not in message
    assert "weights_only=False" not in message  # torch's own advice would be the exploit
    assert not marker.exists(), "unpickling ran code"


def test_checkpoints_this_project_writes_load_with_weights_only(tmp_path):
    """The other side of weights_only: our own state (model, AdamW, schedulers, GradScaler) must still load."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    linear = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / 10)
    scaler = torch.amp.GradScaler("cpu")
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": one_cycle.state_dict(),
        "linear": linear.state_dict(),
        "best_model": {},
        "scaler": scaler.state_dict(),
    }
    torch.save(state, tmp_path / loop.STATE)
    loaded = loop.load_state(tmp_path)
    assert torch.equal(loaded["model"]["0.weight"], model.state_dict()["0.weight"])
    opt.load_state_dict(loaded["optimizer"])
    one_cycle.load_state_dict(loaded["scheduler"])
    assert loaded["optimizer"]["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]


def test_exported_model_is_safetensors_not_pickle(tmp_path):
    """The default export (mlp, cnn) is safetensors + JSON; a pickle in its place is refused, not run."""
    from workloads import mlp

    marker = tmp_path / "pwned"
    export = tmp_path / "export"
    export.mkdir()
    torch.save({"0.weight": Payload(marker)}, export / "model.safetensors")  # a pickle under the trusted name
    cfg = _mlp_cfg()
    splits = _tiny_splits()
    with pytest.raises(Exception) as e:  # safetensors' own header error: the file is not parsed as a pickle
        loop.load_export(mlp, cfg, splits, export)
    assert "safetensor" in f"{type(e.value).__name__} {e.value}".lower()
    assert not marker.exists(), "unpickling ran code"


def test_hugging_face_export_with_pickled_weights_does_not_run_code(tmp_path):
    """Text exports are HF directories; one whose weights are a pickle (pytorch_model.bin) must not run it."""
    transformers = pytest.importorskip("transformers")
    from workloads import sentiment

    marker = tmp_path / "pwned"
    export = tmp_path / "export"
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        num_labels=2,
    )
    config.save_pretrained(export)
    torch.save({"bert.embeddings.word_embeddings.weight": Payload(marker)}, export / "pytorch_model.bin")
    cfg = _cfg("sentiment")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # torch's weights_only refusal
        sentiment.load_export(cfg, None, export)
    assert not marker.exists(), "transformers unpickled the export's weights"


def test_npz_with_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "images.npz"
    np.savez(path, x_train=np.array([Payload(marker)] * 4, dtype=object), y_train=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="is not a readable .npz"):
        load_images(str(path))
    assert not marker.exists(), "np.load unpickled user data"


# ----------------------------------------------------------------------------- the job upload
SECRETS = [
    ".env",
    ".env.local",
    ".envrc",
    ".aws/credentials",
    ".aws/config",
    ".netrc",
    "deploy.pem",
    "id_rsa.key",
    "credentials.json",
]
BULK = [
    "store/runs/workload=mlp/x.parquet",
    "runs/mlp-abc/epoch_0001/state.pt",
    ".venv/bin/python",
    ".git/config",
    "ray_results/exp/x.json",
    "bench/out/x.csv",
    "jobs/__pycache__/x.pyc",
]
CODE = ["jobs/train.py", "workloads/mlp.py", "configs/mlp.yaml", "pyproject.toml"]


def upload_names(root: Path, tmp_path: Path) -> list[str]:
    """What Ray's job client would upload from ``root`` as the working_dir (its own packaging code)."""
    from jobs.ray_compat import create_package as packer

    create_package = packer()

    from jobs import submit

    target = tmp_path / "package.zip"
    create_package(str(root), target, include_gitignore=True, excludes=submit.EXCLUDES)
    with zipfile.ZipFile(target) as z:
        return z.namelist()


def test_job_upload_leaves_out_secrets_store_and_runs(tmp_path):
    repo = tmp_path / "repo"
    (repo).mkdir()
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    for rel in SECRETS + BULK + CODE:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("AWS_SECRET_ACCESS_KEY=do-not-upload\n" if rel in SECRETS else "x\n")
    names = set(upload_names(repo, tmp_path))
    leaked = [rel for rel in SECRETS + BULK if rel in names]
    assert not leaked, f"uploaded with the job: {leaked}"
    assert set(CODE) <= names, f"the code itself must travel: missing {set(CODE) - names}"


def test_real_repo_upload_is_code_only(tmp_path):
    names = upload_names(ROOT, tmp_path)
    bad = [
        n
        for n in names
        if n.split("/")[0] in (".venv", ".git", "store", "runs", "ray_results")
        or Path(n).name in (".env", ".netrc")
        or n.startswith(".aws/")
        or n.endswith((".pem", ".key", ".pt", ".parquet"))
    ]
    assert not bad, f"the working_dir upload of this repo would carry: {bad[:10]}"
    assert "jobs/train.py" in names


# ----------------------------------------------------------------------------- helpers
def _cfg(workload: str):
    from jobs.config import from_dict

    return from_dict({"workload": workload})


def _mlp_cfg():
    return _cfg("mlp")


def _tiny_splits():
    from workloads.data import Splits

    return Splits(train=None, val=None, test=None, labels=[str(i) for i in range(10)], info={"in_features": 64})


def test_payload_really_runs_when_unpickled(tmp_path):
    """Guard for the tests above: the payload does create the marker under plain pickle (so 'absent' means refused)."""
    import pickle

    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    buf = io.BytesIO()
    torch.save({"x": Payload(tmp_path / "pwned2")}, buf)
    buf.seek(0)
    torch.load(buf, weights_only=False)  # the unsafe call the project never makes
    assert (tmp_path / "pwned2").exists()
