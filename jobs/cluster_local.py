"""The cloud cluster of cluster.yaml, rehearsed on one machine with Ray's fake multi-node autoscaler.

    python -m jobs.cluster_local up [--cluster-yaml cluster.yaml] [--idle-timeout-minutes 1] [--dir DIR]
    python -m jobs.cluster_local env        # the export line that points a shell at it
    python -m jobs.cluster_local down       # (make cluster-local / make cluster-local-down)
    python -m jobs.cluster_local config     # the generated autoscaler config, printed

The node types are *generated from* cluster.yaml's ``available_node_types`` (``local_config``): the
same names, min/max workers and idle timeout, a head with ``CPU: 0``; every worker node shrinks to
1 CPU, a GPU type becomes a CPU node, and each worker type carries a custom resource named after it
(``{"gpu_1x": 1}``) so that placement by node type is still exercised. The autoscaler launches and
removes real raylets on this machine as jobs ask for them (Ray's ``fake_multinode`` provider).

Everything listens on 127.0.0.1 and token auth is on, with a token generated into the cluster's own
folder (never ``~/.ray``). A small supervisor process owns the cluster: it is the child subreaper of
every Ray process the cluster starts (head, autoscaler, the nodes it adds, their agents), so ``down``
ends exactly those processes, orphans included, by the supervisor's PID — never with ``ray stop``,
which would end every Ray cluster of the user.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from jobs.errors import ClusterError, ConfigError, cli_main
from jobs.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / f"perennial-cluster-{os.getuid()}"
MAX_LOCAL_NODES = 3  # worker nodes at most, all types together: a 2-core laptop holds the head plus three
OBJECT_STORE_BYTES = 128 * 1024**2  # per node; Ray's default (30% of RAM per node) is far too much here
STATE = "cluster.json"
LOCAL_HEAD_TYPE = "ray.head.default"  # fake_multi_node.node_provider.FAKE_HEAD_NODE_TYPE


# ----------------------------------------------------------------------------- the generated config
def local_config(
    cluster: dict, *, gcs_address: str, idle_timeout_minutes: float | None = None, max_nodes: int = MAX_LOCAL_NODES
) -> dict:
    """The fake-multinode autoscaler config for a cloud cluster config (a parsed cluster.yaml).

    Keeps each worker type's name and min/max workers (capped at ``max_nodes``) and the idle timeout
    (``idle_timeout_minutes`` overrides it: tests shorten it); every worker node gets 1 CPU and a
    custom resource named after its type; GPUs are dropped (none here); the head gets ``CPU: 0``."""
    types = cluster.get("available_node_types") or {}
    head = cluster.get("head_node_type")
    if head not in types:
        raise ConfigError(
            f"cluster config: head_node_type {head!r} is not in available_node_types — name one of {sorted(types)}"
        )
    # The fake provider tags its head "ray.head.default" whatever the config calls it; any other name makes
    # the autoscaler add and remove phantom head nodes every round.
    node_types = {LOCAL_HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "min_workers": 0, "max_workers": 0}}
    for name, spec in types.items():
        if name == head:
            continue
        cloud = dict(spec.get("resources") or {})
        # custom resources of the cloud type stay (a worker-type marker such as gpu_4x: 1); CPU, GPU, memory go
        custom = {k: v for k, v in cloud.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        node_types[name] = {
            "min_workers": min(int(spec.get("min_workers", 0)), max_nodes),
            "max_workers": min(int(spec.get("max_workers", max_nodes)), max_nodes),
            "resources": {"CPU": 1, **custom, name: 1, "object_store_memory": OBJECT_STORE_BYTES},
            "node_config": {},
        }
    return {
        "cluster_name": f"{cluster.get('cluster_name', 'perennial')}-local",
        "max_workers": min(int(cluster.get("max_workers", max_nodes)), max_nodes),
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": (
            idle_timeout_minutes if idle_timeout_minutes is not None else cluster.get("idle_timeout_minutes", 5)
        ),
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,  # else the provider assumes port 6379, which another cluster may hold
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,  # nothing to SSH into: nodes are local processes
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": node_types,
        "head_node_type": LOCAL_HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def read_cluster_yaml(path: str | os.PathLike) -> dict:
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"cluster config '{path}' not found — pass --cluster-yaml PATH (default cluster.yaml)"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cluster config '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None


# ----------------------------------------------------------------------------- the running cluster
class LocalCluster:
    """A local autoscaling cluster, described by ``<dir>/cluster.json`` while it runs.

    ``LocalCluster.start(dir, config)`` starts one; ``LocalCluster.attach(dir)`` finds a running one;
    ``env()`` is what a client needs (addresses, token); ``stop()`` ends every process it started."""

    def __init__(self, folder: Path, state: dict):
        self.dir, self.state = Path(folder), state
        self.address = state["address"]  # GCS, for ray.init / jobs.train
        self.dashboard = state["dashboard"]  # job API, for jobs.submit / ray job
        self.supervisor_pid = state["supervisor_pid"]

    @property
    def token_path(self) -> Path:
        return self.dir / "home" / ".ray" / "auth_token"

    def env(self) -> dict[str, str]:
        """Variables that point a client (ray.init, jobs.train, jobs.submit, ray job) at this cluster."""
        return {
            "RAY_ADDRESS": self.address,
            "RAY_API_SERVER_ADDRESS": self.dashboard,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "PERENNIAL_CLUSTER_CONFIG": str(self.dir / "home" / "ray_bootstrap_config.yaml"),
            # else a client swaps 127.0.0.1 in the address for the machine's outward IP, where nothing listens
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }

    @classmethod
    def attach(cls, folder: str | os.PathLike = DEFAULT_DIR) -> LocalCluster | None:
        path = Path(folder) / STATE
        if not path.exists():
            return None
        cluster = cls(Path(folder), json.loads(path.read_text()))
        return cluster if cluster.alive() else None

    def alive(self) -> bool:
        try:  # reap it if this process started it: an exited child stays a zombie, which kill(pid, 0) still finds
            if os.waitpid(self.supervisor_pid, os.WNOHANG)[0] == self.supervisor_pid:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(self.supervisor_pid, 0)
            return True
        except ProcessLookupError:
            return False

    @classmethod
    def start(
        cls,
        folder: str | os.PathLike,
        cluster_cfg: dict,
        *,
        idle_timeout_minutes: float | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 180.0,
    ) -> LocalCluster:
        """Start the head (0 CPU) with the generated autoscaler config; wait until it takes jobs."""
        folder = Path(folder)
        if (running := cls.attach(folder)) is not None:
            raise ClusterError(
                f"a local cluster already runs from {folder} (dashboard {running.dashboard}) — stop it with "
                f"'python -m jobs.cluster_local down --dir {folder}' first"
            )
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "home" / ".ray").mkdir(parents=True)
        token = folder / "home" / ".ray" / "auth_token"
        token.write_text(secrets.token_hex(32))  # the form `ray get-auth-token --generate` writes
        token.chmod(0o600)
        port, dashboard_port = free_port(), free_port()
        config = local_config(cluster_cfg, gcs_address=f"127.0.0.1:{port}", idle_timeout_minutes=idle_timeout_minutes)
        # where `ray up` puts it on a cloud head: jobs.train reads the node types from there (check_fits)
        (folder / "home" / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        ray_bin = Path(sys.executable).parent / "ray"
        cmd = [
            str(ray_bin if ray_bin.exists() else "ray"),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--num-cpus=0",  # ray start does not apply the yaml's head resources
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={folder / 'ray'}",
            f"--autoscaling-config={folder / 'home' / 'ray_bootstrap_config.yaml'}",
        ]
        child_env = {
            **os.environ,
            **(env or {}),
            "HOME": str(folder / "home"),  # the token lives here; so do Ray's own ~/.ray files
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_FAKE_CLUSTER": "1",
            # local-only mode: the head and every node the autoscaler adds bind to 127.0.0.1 (see jobs.train.loopback_only)
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        child_env.pop("RAY_ADDRESS", None)
        log = open(folder / "head.log", "w")
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "jobs.cluster_local", "_supervise", "--", *cmd],
            env=child_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the caller's terminal group: Ctrl-C there leaves it up
        )
        log.close()
        state = {
            "supervisor_pid": supervisor.pid,
            "address": f"127.0.0.1:{port}",
            "dashboard": f"http://127.0.0.1:{dashboard_port}",
            "temp_dir": str(folder / "ray"),
            "config": config,
        }
        (folder / STATE).write_text(json.dumps(state, indent=1))
        cluster = cls(folder, state)
        try:
            cluster._wait_ready(supervisor, timeout_s)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _wait_ready(self, supervisor: subprocess.Popen, timeout_s: float) -> None:
        import http.client
        import urllib.error
        import urllib.request

        log = self.dir / "head.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if supervisor.poll() is not None:
                raise ClusterError(f"the local cluster's head exited: {log.read_text(errors='replace')[-1500:]}")
            if "Ray runtime started" in log.read_text(errors="replace"):
                try:
                    urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2)
                    return
                except urllib.error.HTTPError:  # 401 without the token: the server is up
                    return
                except http.client.HTTPException:  # not HTTP: another program bound the port before the head did
                    raise ClusterError(
                        f"port {self.dashboard.rsplit(':', 1)[1]} was taken by another program while the cluster "
                        f"started, so its dashboard is not there — run 'python -m jobs.cluster_local up' again "
                        f"(it picks new ports)"
                    ) from None
                except OSError:
                    pass
            time.sleep(0.5)
        raise ClusterError(f"the local cluster did not start in {timeout_s:.0f} s: see {log}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the supervisor, which ends every process of this cluster (and only those)."""
        try:
            os.kill(self.supervisor_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.alive():
            os.kill(self.supervisor_pid, signal.SIGKILL)
        (self.dir / STATE).unlink(missing_ok=True)

    # --- views of the running cluster, for tests, the bench and the CLI
    def nodes(self, alive: bool = True) -> list[dict]:
        """Nodes as ``{"node_id", "node_type", "state", "resources"}``, from the dashboard's state API
        (no ray.init here: the caller may hold another Ray session). The head has the head's type."""
        import urllib.request

        req = urllib.request.Request(
            f"{self.dashboard}/api/v0/nodes?detail=1&limit=1000",
            headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            rows = json.loads(resp.read())["data"]["result"]["result"]
        return [
            {
                "node_id": n["node_id"],
                "node_type": node_type_of(n["resources_total"], self.state["config"]),
                "state": n["state"],
                "resources": n["resources_total"],
            }
            for n in rows
            if n["state"] == "ALIVE" or not alive
        ]

    def worker_nodes(self) -> list[dict]:
        """Alive nodes other than the head."""
        return [n for n in self.nodes() if n["node_type"] != self.state["config"]["head_node_type"]]

    def process_count(self) -> int:
        """Processes the supervisor still holds (itself excluded)."""
        import psutil

        try:
            return len(psutil.Process(self.supervisor_pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return 0


def node_type_of(resources: dict, config: dict) -> str:
    """The node type of a node, from the custom resource that names its type (the head has none)."""
    # from the resources, not Ray's node labels: they are what a cloud node of the type has too
    for name in config["available_node_types"]:
        if name != config["head_node_type"] and resources.get(name):
            return name
    return config["head_node_type"]


# ----------------------------------------------------------------------------- the supervisor
def supervise(cmd: list[str]) -> int:
    """Run ``cmd`` (``ray start --head --block ...``) as child subreaper; on SIGTERM end every descendant.

    The autoscaler starts nodes from its own process with ``shutdown_at_exit=False``, and a node's
    agents outlive their raylet (parent 1) when it dies: as subreaper, this process inherits all such
    orphans, so its descendants are always exactly the cluster's processes."""
    import psutil

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    head = subprocess.Popen(cmd)
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    me = psutil.Process()
    while not stopping and head.poll() is None:
        time.sleep(0.5)
        for child in me.children():  # reap adopted orphans that exit (else they stay zombies)
            if child.pid != head.pid:
                try:
                    os.waitpid(child.pid, os.WNOHANG)
                except ChildProcessError:
                    pass
    procs = me.children(recursive=True)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    for p in me.children(recursive=True):  # anything started while we were ending the rest
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return 0


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str]) -> int:
    if argv[:1] == ["_supervise"]:
        return supervise(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    p = argparse.ArgumentParser(prog="python -m jobs.cluster_local", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("up", "down", "env", "config"))
    p.add_argument("--cluster-yaml", default=str(ROOT / "cluster.yaml"), help="the cloud cluster config to rehearse")
    p.add_argument("--dir", default=str(DEFAULT_DIR), help=f"the cluster's own folder (default {DEFAULT_DIR})")
    p.add_argument("--idle-timeout-minutes", type=float, help="override cluster.yaml's idle_timeout_minutes")
    args = p.parse_args(argv)
    if args.action == "config":
        cfg = local_config(
            read_cluster_yaml(args.cluster_yaml),
            gcs_address="127.0.0.1:PORT",
            idle_timeout_minutes=args.idle_timeout_minutes,
        )
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0
    if args.action == "up":
        cluster = LocalCluster.start(
            args.dir, read_cluster_yaml(args.cluster_yaml), idle_timeout_minutes=args.idle_timeout_minutes
        )
        types = cluster.state["config"]["available_node_types"]
        print(f"local cluster up: head (0 CPU) at {cluster.address}, dashboard {cluster.dashboard}")
        for name, spec in types.items():
            if spec.get("max_workers"):
                custom = {k: v for k, v in spec["resources"].items() if k != "object_store_memory"}
                print(f"  {name}: {spec['min_workers']}..{spec['max_workers']} nodes of {custom}")
        print(f"  idle nodes go after {cluster.state['config']['idle_timeout_minutes']} min")
        print(f"point a shell at it:  eval $(python -m jobs.cluster_local env --dir {args.dir})")
        print("stop it:             make cluster-local-down")
        return 0
    cluster = LocalCluster.attach(args.dir)
    if args.action == "env":
        if cluster is None:
            raise ClusterError(f"no local cluster runs from {args.dir} — start one with 'make cluster-local'")
        print("export " + " ".join(f"{k}={v}" for k, v in cluster.env().items()))
        return 0
    if cluster is None:
        print(f"no local cluster runs from {args.dir}")
        return 0
    cluster.stop()
    print(f"local cluster stopped ({args.dir})")
    return 0


if __name__ == "__main__":
    cli_main(main)
