"""A KubeRay ``RayJob`` for one job or a batch, queued by Kueue, on cluster.yaml's node types (docs/kubernetes.md).

python -m jobs.submit render --k8s configs/mlp.yaml --store s3://bucket/store [--retries N] [--queue Q] > job.yaml
python -m jobs.submit render --k8s BATCH.yaml --store s3://bucket/store --retries 2 --out batch.yaml
"""

from __future__ import annotations

import json
import shlex
from importlib.metadata import version
from pathlib import Path

import yaml

from jobs import batch, preflight
from jobs.errors import ConfigError

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue's label names (tests check them against its source)
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
# Kueue refuses a RayJob that autoscales unless it is an elastic job (its ElasticJobsViaWorkloadSlices feature gate)
ELASTIC_ANNOTATION = "kueue.x-k8s.io/elastic-job"
HEAD_POD = {"cpu": "4", "memory": "16Gi"}  # cluster.yaml's head instance, an m6i.xlarge
GIB_PER_CPU = 2  # a worker pod's memory when its node type names none (c6i: 2 GiB per vCPU)
TTL_S = 3600  # the finished RayJob stays an hour, for its status and logs


def add_arguments(p) -> None:
    p.add_argument("--k8s", action="store_true", required=True, help="a KubeRay RayJob (the only target)")
    p.add_argument("spec", help="a config (one job) or a batch file")
    p.add_argument("--retries", type=int, default=0, help="the RayJob's backoffLimit, and the batch's --retries")
    p.add_argument("--queue", default="perennial", help=f"Kueue LocalQueue (label {QUEUE_LABEL})")
    p.add_argument("--priority", help=f"Kueue WorkloadPriorityClass (label {PRIORITY_LABEL})")
    image = f"rayproject/ray:{version('ray')}-py311"
    p.add_argument("--image", default=image, help="every pod's image (with the repo)")
    p.add_argument("--working-dir", help="runtime_env working_dir URI (s3://.../repo.zip), if the image lacks the repo")
    p.add_argument("--cluster-yaml", default="cluster.yaml", help="the node types of the job's Ray cluster")
    p.add_argument("--smoke-test", action="store_true", help="one job: the workload's tiny mode")
    p.add_argument("--out", help="write the manifest here instead of stdout")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="one job: config overrides")


def render(args) -> int:
    """``submit render``: print the RayJob manifest, or write it to ``--out``."""
    if not args.store or "://" not in args.store:
        raise ConfigError("render --k8s needs --store s3://bucket/prefix: pods share no disk")
    spec = yaml.safe_load(Path(args.spec).read_text()) if Path(args.spec).is_file() else None
    if isinstance(spec, dict) and spec.keys() & {"jobs", "grid"}:
        batch.read(args.spec)  # its entries are checked again where `batch` runs, before it submits any
        entrypoint = ["python", "-m", "jobs.submit", "batch", args.spec, "--follow", "--retries", str(args.retries)]
        name = f"batch-{Path(args.spec).stem}"
    else:
        cfg = preflight.load(args.spec, args.overrides, args.smoke_test)
        entrypoint = ["python", "-m", "jobs.train", "--config", args.spec, *["--smoke-test"] * args.smoke_test]
        entrypoint += args.overrides
        name = f"{cfg.workload}-train"
    try:
        cluster = yaml.safe_load(Path(args.cluster_yaml).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cluster config '{args.cluster_yaml}': {str(e).splitlines()[0]}") from None
    runtime_env = {"env_vars": {"PERENNIAL_STORE": args.store}}
    runtime_env |= {"working_dir": args.working_dir} if args.working_dir else {}
    labels = {QUEUE_LABEL: args.queue} | ({PRIORITY_LABEL: args.priority} if args.priority else {})
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": name.replace("_", "-").lower(),
            "labels": labels,
            "annotations": {ELASTIC_ANNOTATION: "true"},
        },
        "spec": {
            "entrypoint": shlex.join(entrypoint),
            "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=False),
            "shutdownAfterJobFinishes": True,  # Kueue frees the queue's quota only then, and requires it
            "ttlSecondsAfterFinished": TTL_S,
            "backoffLimit": args.retries,  # a new cluster, the entrypoint again, after the RayJob failed
            "rayClusterSpec": cluster_spec(cluster, args.image),
        },
    }
    manifest = yaml.safe_dump(job, sort_keys=False)
    if args.out:
        Path(args.out).write_text(manifest)
        print(f"wrote {args.out}: kubectl apply -f {args.out}")
    else:
        print(manifest, end="")
    return 0


def cluster_spec(cluster: dict, image: str) -> dict:
    """``rayClusterSpec``: a 0-CPU head with the job slots, a worker group per other node type, autoscaled."""
    types, head = cluster["available_node_types"], cluster["head_node_type"]
    slots = {k: v for k, v in types[head].get("resources", {}).items() if k == batch.JOB_SLOT}
    groups = []
    for name, node in types.items():
        if name == head:
            continue
        res = node.get("resources", {})
        custom = {k: v for k, v in res.items() if k not in ("CPU", "GPU", "memory")}
        pod = {"cpu": str(res.get("CPU", 1)), "memory": f"{GIB_PER_CPU * res.get('CPU', 1)}Gi"}
        pod |= {"nvidia.com/gpu": str(res["GPU"])} if res.get("GPU") else {}
        group = {"groupName": name.replace("_", "-"), "replicas": int(node.get("min_workers", 0))}  # a DNS label
        group |= {"minReplicas": int(node.get("min_workers", 0)), "maxReplicas": int(node.get("max_workers", 1))}
        group |= {"rayStartParams": {"resources": json.dumps(json.dumps(custom))} if custom else {}}
        groups.append(group | {"template": pod_template("ray-worker", image, pod)})
    head_params = {"num-cpus": "0", "dashboard-host": "0.0.0.0"}  # no training on the head, as in cluster.yaml
    head_params |= {"resources": json.dumps(json.dumps(slots))} if slots else {}
    return {
        "rayVersion": version("ray"),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"idleTimeoutSeconds": int(60 * cluster.get("idle_timeout_minutes", 5))},
        "headGroupSpec": {"rayStartParams": head_params, "template": pod_template("ray-head", image, HEAD_POD)},
        "workerGroupSpecs": groups,
    }


def pod_template(container: str, image: str, resources: dict) -> dict:
    """One container; requests = limits (Kueue admits by requests, Ray sizes itself by limits)."""
    limits = {"requests": resources, "limits": dict(resources)}
    return {"spec": {"containers": [{"name": container, "image": image, "resources": limits}]}}
