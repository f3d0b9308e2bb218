"""Check a Ray cluster-launcher YAML offline: Ray's own validator, then this project's rules. Exit 0 valid, 2 invalid.

python -m jobs.cluster_check cluster.yaml [cluster-gcp.yaml ...]
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import yaml

from jobs.errors import UserError, cli_main

SSH_PORT = 22
PLACEHOLDERS = ("YOUR-ACCOUNT-ID", "ami-YOUR-PINNED-AMI", "YOUR-PROJECT-ID", "YOUR-PINNED-IMAGE")
FLOATING_IMAGES = ("resolve:ssm:", "/images/family/")  # resolved at each launch: head and workers may differ
PUBLIC_HOSTS = ("0.0.0.0", "::", "[::]")  # a dashboard bound here is reachable by anyone the firewall lets in


class ClusterConfigError(UserError):
    """The cluster YAML is invalid or breaks a project rule."""


def load(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ClusterConfigError(f"cluster config '{path}' not found — pass e.g. cluster.yaml")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ClusterConfigError(
            f"cluster config '{path}' is not valid YAML ({getattr(e, 'problem', e)}{line}) — fix the syntax there (compare with cluster.yaml)"
        ) from None
    if not isinstance(raw, dict):
        raise ClusterConfigError(
            f"cluster config '{path}' must be a YAML mapping of launcher keys (cluster_name, provider, ...) — start from cluster.yaml"
        )
    return raw


def check_config(raw: dict, name: str = "cluster config") -> dict:
    import jsonschema

    from jobs.ray_compat import autoscaler_validation

    prepare_config, validate_config = autoscaler_validation()
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # not "setting max workers for head node type to 0"

    try:
        config = prepare_config(copy.deepcopy(raw))
        validate_config(config)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "top level"
        raise ClusterConfigError(
            f"{name}: Ray rejects it at '{where}': {e.message.splitlines()[0]} — fix that key (Ray's schema: ray/autoscaler/ray-schema.json; a working example: cluster.yaml)"
        ) from None
    except (ValueError, KeyError, RuntimeError) as e:
        raise ClusterConfigError(
            f"{name}: Ray rejects it: {str(e).splitlines()[0]} — fix the file (a working example: cluster.yaml)"
        ) from None
    _check_rules(raw, config, name)
    return config


def check_file(path: str | Path) -> dict:
    return check_config(load(path), str(path))


def gpu_worker_types(config: dict) -> dict[str, int]:
    head = config["head_node_type"]
    return {
        name: int(t.get("resources", {}).get("GPU", 0))
        for name, t in config["available_node_types"].items()
        if name != head and t.get("resources", {}).get("GPU", 0) > 0
    }


def placeholders(text: str) -> list[str]:
    return [p for p in PLACEHOLDERS if p in text]


def _check_rules(raw: dict, config: dict, name: str) -> None:
    def fail(problem: str) -> None:
        raise ClusterConfigError(f"{name}: {problem}")

    types, head = config["available_node_types"], config["head_node_type"]
    gpus = gpu_worker_types(config)
    if len(gpus) < 2:
        fail(
            f"needs at least two GPU worker types with resources {{GPU: n}} (one for sweeps, one multi-GPU), has {sorted(gpus) or 'none'}"
        )
    for type_name, node_type in ((t, n) for t, n in types.items() if t != head):
        if node_type.get("min_workers", 0) != 0:
            fail(
                f"available_node_types.{type_name}.min_workers must be 0 (idle clusters cost the head only), got {node_type['min_workers']}"
            )
        if node_type.get("max_workers", 0) < 1:
            fail(f"available_node_types.{type_name}.max_workers must be >= 1, got {node_type.get('max_workers')}")
        if node_type.get("resources", {}).get(type_name) != 1:
            fail(
                f"available_node_types.{type_name}.resources needs its own custom resource {{{type_name}: 1}}, "
                f"so a run can ask for this node type (scaling.node_type={type_name})"
            )
    for type_name, node_type in types.items():
        node_config = node_type.get("node_config", {})
        images = [str(node_config.get("ImageId", ""))] + [
            str(d.get("initializeParams", {}).get("sourceImage", "")) for d in node_config.get("disks", [])
        ]
        if any(marker in image for image in images for marker in FLOATING_IMAGES):
            fail(
                f"available_node_types.{type_name} boots a floating image ({next(i for i in images if i)}): nodes "
                "launched later may get another image and driver — pin one (cloud/aws/setup_account.py, docs/cloud.md)"
            )
        profile = node_config.get("IamInstanceProfile")
        if config["provider"]["type"] == "aws" and type_name != head and not (profile or {}).get("Arn"):
            fail(
                f"available_node_types.{type_name}.node_config.IamInstanceProfile must name the worker profile by Arn "
                "(the head's role cannot pass its own profile) — see cloud/aws/setup_account.py"
            )
    for command in raw.get("setup_commands", []):
        if "pip install" in command and "-c constraints.txt" not in command:
            fail(f"setup_commands install without -c constraints.txt (versions would float): {command.strip()[:80]}")
    if "idle_timeout_minutes" not in raw or not raw["idle_timeout_minutes"] > 0:
        fail("set idle_timeout_minutes > 0, so idle workers are terminated")
    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        ports = (rule.get("FromPort"), rule.get("ToPort"))
        if ports != (SSH_PORT, SSH_PORT):
            fail(
                f"provider.security_group.IpPermissions opens ports {ports[0]}-{ports[1]}: only SSH (22) may be public; "
                "reach the dashboard with `ray dashboard cluster.yaml`"
            )
    for command in config.get("head_start_ray_commands", []):
        for host in PUBLIC_HOSTS:
            if f"--dashboard-host={host}" in command or f"--dashboard-host {host}" in command:
                fail(
                    f"head_start_ray_commands bind the dashboard to {host}: use --dashboard-host=127.0.0.1 and an SSH tunnel"
                )


def main(argv: list[str]) -> int:
    for path in argv or ["cluster.yaml"]:
        config = check_file(path)
        print(
            f"{path}: valid ({config['provider']['type']}, head '{config['head_node_type']}', "
            f"GPU worker types {gpu_worker_types(config)}, idle timeout {config['idle_timeout_minutes']} min)"
        )
        if left := placeholders(Path(path).read_text()):
            print(f"  before `ray up`, fill in {', '.join(left)} (docs/cloud.md)")
    return 0


if __name__ == "__main__":
    cli_main(main)
