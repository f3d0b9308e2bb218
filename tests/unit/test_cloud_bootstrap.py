"""cluster.yaml resolves end to end through Ray's own AWS bootstrap, offline, against moto on 127.0.0.1.

The account steps of docs/cloud.md (cloud/aws/setup_account.py) run first, as a user runs them; then
``bootstrap_aws`` (what `ray up` calls) fills in subnets, security group and key pair, and Ray's AWS node
provider launches a worker the way the head's autoscaler does. moto does not enforce IAM, so the policy
files' contents are asserted directly: PassRole on the worker role only, S3 on the bucket only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import S3Server

from jobs.cluster_check import check_file, placeholders

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "cloud" / "aws"
REGION = "us-west-2"
BUCKET = "perennial-ci-bucket"
ACCOUNT = "123456789012"  # moto's account id


def setup_account_module():
    spec = importlib.util.spec_from_file_location("setup_account", AWS / "setup_account.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def moto_env():
    server = S3Server(services="all")
    env = server.env | {"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}
    yield env
    server.stop()


@pytest.fixture
def aws(moto_env, monkeypatch, tmp_path):
    """This process pointed at moto, with HOME in tmp_path (Ray writes its SSH key under ~/.ssh)."""
    for key, value in moto_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    from ray.autoscaler._private.aws import utils

    utils.resource_cache.cache_clear()  # boto3 resources cached per region: none may outlive this fixture
    utils.client_cache.cache_clear()
    yield moto_env
    utils.resource_cache.cache_clear()
    utils.client_cache.cache_clear()


def run_setup_account(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(AWS / "setup_account.py"), *args],
        env=dict(os.environ) | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ray_bootstrap_resolves_cluster_yaml_and_launches_a_worker_with_the_worker_profile(aws, tmp_path):
    import boto3

    ami = boto3.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    cluster_yaml = tmp_path / "cluster.yaml"
    cluster_yaml.write_text((ROOT / "cluster.yaml").read_text())
    res = run_setup_account(aws, "--bucket", BUCKET, "--region", REGION, "--ami", ami, "--write", str(cluster_yaml))
    assert res.returncode == 0, res.stderr
    assert placeholders(cluster_yaml.read_text()) == []
    again = run_setup_account(aws, "--bucket", BUCKET, "--region", REGION, "--ami", ami)  # idempotent
    assert again.returncode == 0, again.stderr

    iam = boto3.client("iam")
    profile_arn = {
        name: iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"]
        for name in ("perennial-head", "perennial-worker")
    }
    role_of = {
        name: [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]]
        for name in profile_arn
    }
    assert role_of == {"perennial-head": ["perennial-head"], "perennial-worker": ["perennial-worker"]}
    for role, file_name in (("perennial-head", "head-policy.json"), ("perennial-worker", "worker-policy.json")):
        document = iam.get_role_policy(RoleName=role, PolicyName=role)["PolicyDocument"]
        document = json.loads(document) if isinstance(document, str) else document
        assert document == setup_account_module().policy(file_name, ACCOUNT, BUCKET)
    boto3.client("s3").head_bucket(Bucket=BUCKET)

    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME, TAG_RAY_USER_NODE_TYPE

    config = bootstrap_aws(check_file(cluster_yaml))  # what `ray up` runs after the offline checks
    assert config["head_node"] == {}  # Ray made no ray-autoscaler-v1 role of its own: the head's profile is ours
    assert "ray-autoscaler-v1" not in [r["RoleName"] for r in iam.list_roles()["Roles"]]
    key = Path(config["auth"]["ssh_private_key"])
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600
    types = config["available_node_types"]
    for name, node_type in types.items():
        node_config = node_type["node_config"]
        assert node_config["ImageId"] == ami and node_config["KeyName"] and node_config["SecurityGroupIds"]
        assert node_config["SubnetIds"], f"{name}: no subnet chosen"
        want = profile_arn["perennial-head" if name == config["head_node_type"] else "perennial-worker"]
        assert node_config["IamInstanceProfile"] == {"Arn": want}

    # The head's autoscaler launching a gpu_4x worker: RunInstances with the worker profile, the pinned AMI.
    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    tags = {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: "gpu_4x", TAG_RAY_NODE_NAME: "ray-perennial-worker"}
    provider.create_node(types["gpu_4x"]["node_config"], tags, 1)
    (node_id,) = provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "gpu_4x"})
    instance = boto3.client("ec2").describe_instances(InstanceIds=[node_id])["Reservations"][0]["Instances"][0]
    assert instance["IamInstanceProfile"]["Arn"] == profile_arn["perennial-worker"]
    assert (instance["ImageId"], instance["InstanceType"]) == (ami, "g5.12xlarge")
    provider.terminate_node(node_id)


def test_setup_account_refuses_a_bucket_path_in_one_line(aws):
    res = run_setup_account(aws, "--bucket", "s3://bucket/runs", "--ami", "ami-12345678")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--bucket takes a bucket name" in res.stderr


# ----------------------------------------------------------------------------- policy contents (moto grants all)
def statements(file_name: str) -> list[dict]:
    document = setup_account_module().policy(file_name, ACCOUNT, BUCKET)
    assert document["Version"] == "2012-10-17"
    return document["Statement"]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


BUCKET_ARNS = {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}


def test_head_policy_passes_only_the_worker_role():
    passrole = [s for s in statements("head-policy.json") if "iam:PassRole" in as_list(s["Action"])]
    assert len(passrole) == 1 and passrole[0]["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/perennial-worker"
    for s in statements("head-policy.json"):
        iam_actions = [a for a in as_list(s["Action"]) if a.startswith("iam:")]
        assert set(iam_actions) <= {"iam:PassRole", "iam:CreateServiceLinkedRole"}, iam_actions
        if "iam:CreateServiceLinkedRole" in iam_actions:  # spot's own service role, nothing else
            assert s["Condition"] == {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}}
        assert not any(a in ("*", "iam:*", "s3:*") for a in as_list(s["Action"]))


def test_head_policy_can_launch_and_end_workers_but_reads_no_ssm():
    actions = {a for s in statements("head-policy.json") for a in as_list(s["Action"])}
    assert {"ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances", "ec2:Describe*"} <= actions
    assert not any(a.startswith("ssm:") for a in actions)  # the AMI is pinned in cluster.yaml, not resolved at launch
    assert "resolve:ssm:" not in (ROOT / "cluster.yaml").read_text()


@pytest.mark.parametrize("file_name", ["head-policy.json", "worker-policy.json"])
def test_s3_access_is_scoped_to_the_bucket(file_name):
    s3 = [s for s in statements(file_name) if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    assert s3, "no S3 access: Train checkpoints and the store live on S3"
    for s in s3:
        assert all(a.startswith("s3:") and "*" not in a for a in as_list(s["Action"]))
        assert set(as_list(s["Resource"])) <= BUCKET_ARNS, s["Resource"]
    assert {r for s in s3 for r in as_list(s["Resource"])} == BUCKET_ARNS


def test_worker_policy_grants_s3_only():
    actions = {a for s in statements("worker-policy.json") for a in as_list(s["Action"])}
    assert actions and all(a.startswith("s3:") for a in actions)
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions
