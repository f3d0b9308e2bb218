"""Create what cluster.yaml needs in an AWS account before the first `ray up`, then pin it into cluster.yaml.

    python cloud/aws/setup_account.py --bucket BUCKET [--region us-west-2] [--ami ami-...] [--write cluster.yaml]

Idempotent (run it again after editing a policy file). With your laptop's AWS credentials it:
  1. creates the S3 bucket for stores and checkpoints, if missing;
  2. creates two roles, each with its policy file from this folder (ACCOUNT_ID and BUCKET filled in) and an
     instance profile of the same name:
       perennial-head    the autoscaler: EC2, iam:PassRole on perennial-worker only, S3 on the bucket
       perennial-worker  Train workers: S3 on the bucket only
  3. resolves the Deep Learning Base AMI once (SSM public parameter) unless --ami is given: every node,
     head and later workers alike, then boots the same image and NVIDIA driver;
  4. with --write, puts the account id and the AMI into cluster.yaml in place of YOUR-ACCOUNT-ID and
     ami-YOUR-PINNED-AMI (comments kept).
Exit codes: 0 done, 2 bad input or an AWS refusal (one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROLES = {"perennial-head": "head-policy.json", "perennial-worker": "worker-policy.json"}
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
ACCOUNT_PLACEHOLDER = "YOUR-ACCOUNT-ID"
AMI_PLACEHOLDER = "ami-YOUR-PINNED-AMI"


def policy(file_name: str, account_id: str, bucket: str) -> dict:
    """A policy file of this folder with its ACCOUNT_ID and BUCKET placeholders filled in."""
    text = (HERE / file_name).read_text().replace("ACCOUNT_ID", account_id).replace("BUCKET", bucket)
    return json.loads(text)


def bucket_name(value: str) -> str:
    name = value.removeprefix("s3://").rstrip("/")
    if not name or "/" in name:
        raise ValueError(f"--bucket takes a bucket name, got '{value}' — pass e.g. --bucket my-perennial-bucket")
    return name


def ensure_bucket(s3, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except s3.exceptions.ClientError as e:
        if e.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
    extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **extra)
    print(f"created bucket s3://{bucket}")


def ensure_role_and_profile(iam, role: str, document: dict) -> str:
    """The role (trust: EC2), its inline policy and an instance profile holding it; returns the profile ARN."""
    trust = (HERE / "trust-policy.json").read_text()
    try:
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust, Description="perennial Ray cluster")
        print(f"created role {role}")
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    iam.put_role_policy(RoleName=role, PolicyName=role, PolicyDocument=json.dumps(document))
    try:
        iam.create_instance_profile(InstanceProfileName=role)
        print(f"created instance profile {role}")
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    profile = iam.get_instance_profile(InstanceProfileName=role)["InstanceProfile"]
    if role not in [r["RoleName"] for r in profile["Roles"]]:
        iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
    return profile["Arn"]


def write_cluster_yaml(path: Path, account_id: str, ami: str) -> None:
    text = path.read_text()
    if ACCOUNT_PLACEHOLDER not in text and AMI_PLACEHOLDER not in text:
        print(f"{path}: no placeholders left (already pinned); not changed")
        return
    path.write_text(text.replace(ACCOUNT_PLACEHOLDER, account_id).replace(AMI_PLACEHOLDER, ami))
    print(f"{path}: account {account_id}, ImageId {ami} written")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", required=True, help="S3 bucket for stores and checkpoints (created if missing)")
    parser.add_argument("--region", default="us-west-2", help="region of cluster.yaml's provider")
    parser.add_argument("--ami", default="", help="pin this AMI instead of resolving the latest Deep Learning AMI")
    parser.add_argument("--write", type=Path, help="cluster YAML whose placeholders to fill in (cluster.yaml)")
    args = parser.parse_args(argv)

    import boto3
    import botocore.exceptions

    try:
        bucket = bucket_name(args.bucket)
        account_id = boto3.client("sts", region_name=args.region).get_caller_identity()["Account"]
        ensure_bucket(boto3.client("s3", region_name=args.region), bucket, args.region)
        iam = boto3.client("iam", region_name=args.region)
        arns = {role: ensure_role_and_profile(iam, role, policy(f, account_id, bucket)) for role, f in ROLES.items()}
        ami = (
            args.ami
            or (boto3.client("ssm", region_name=args.region).get_parameter(Name=DLAMI_PARAMETER)["Parameter"]["Value"])
        )
        if args.write:
            write_cluster_yaml(args.write, account_id, ami)
    except (ValueError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for role, arn in arns.items():
        print(f"{role}: {arn}")
    print(f"ImageId: {ami} ({args.region})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
