"""Ray clusters on this machine, 127.0.0.1 only, token auth on: one node, or cluster.yaml rehearsed.

Each cluster lives in its own folder (``--dir``, ``$PERENNIAL_CLUSTER_DIR``, else one in /tmp per kind and user).
``down`` ends its supervisor, child subreaper of every Ray process of the cluster: never ``ray stop``, which would
end every Ray cluster of the user.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from jobs.batch import JOB_SLOT
from jobs.errors import ClusterError, ConfigError, cli_main
from jobs.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MAX_LOCAL_NODES = 3  # worker nodes at most, all types together: a 2-core laptop holds the head plus three
OBJECT_STORE_BYTES = 128 * 1024**2  # per node; Ray's default (30% of RAM per node) is far too much here
STATE = "cluster.json"
LOCAL_JOB_SLOTS = 2  # job drivers at once on the head: they share this machine's cores and memory
LOCAL_HEAD_TYPE = "ray.head.default"  # fake_multi_node.node_provider.FAKE_HEAD_NODE_TYPE
# nothing to sync or set up on a local node
EMPTY_LISTS = (
    "cluster_synced_files rsync_exclude rsync_filter initialization_commands setup_commands head_setup_commands "
    "worker_setup_commands head_start_ray_commands worker_start_ray_commands"
).split()


def local_config(cluster: dict, *, gcs_address: str, idle_timeout_minutes: float | None = None) -> dict:
    """The fake-multinode autoscaler config for a parsed cluster.yaml: its worker types (at most ``MAX_LOCAL_NODES``
    nodes) with 1 CPU and a custom resource named after the type each, no GPUs, a 0-CPU head."""
    types = cluster.get("available_node_types") or {}
    head = cluster.get("head_node_type")
    if head not in types:
        raise ConfigError(
            f"cluster config: head_node_type {head!r} is not in available_node_types — name one of {sorted(types)}"
        )
    # the fake provider tags its head "ray.head.default" whatever its name: another makes phantom head nodes
    node_types = {LOCAL_HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "min_workers": 0, "max_workers": 0}}
    for name, spec in types.items():
        if name == head:
            continue
        cloud = dict(spec.get("resources") or {})
        # custom resources of the cloud type stay (a worker-type marker such as gpu_4x: 1); CPU, GPU, memory go
        custom = {k: v for k, v in cloud.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        node_types[name] = {
            "min_workers": min(int(spec.get("min_workers", 0)), MAX_LOCAL_NODES),
            "max_workers": min(int(spec.get("max_workers", MAX_LOCAL_NODES)), MAX_LOCAL_NODES),
            "resources": {"CPU": 1, **custom, name: 1, "object_store_memory": OBJECT_STORE_BYTES},
            "node_config": {},
        }
    idle = cluster.get("idle_timeout_minutes", 5) if idle_timeout_minutes is None else idle_timeout_minutes
    return {
        "cluster_name": f"{cluster.get('cluster_name', 'perennial')}-local",
        "max_workers": min(int(cluster.get("max_workers", MAX_LOCAL_NODES)), MAX_LOCAL_NODES),
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle,
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
        "file_mounts_sync_continuously": False,
        **{key: [] for key in EMPTY_LISTS},
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


class HeadFailed(ClusterError):
    """Another process took one of the head's ports first, or the head exited while it started (its raylet has a
    fixed 30 s to register, which a busy machine misses): fresh ports, a fresh head may do."""


CLIENT_KEYS = "RAY_ADDRESS RAY_API_SERVER_ADDRESS RAY_AUTH_MODE RAY_AUTH_TOKEN_PATH PERENNIAL_CLUSTER_CONFIG".split()


class LocalCluster:
    """A local cluster, described by ``<dir>/cluster.json`` while it runs."""

    def __init__(self, folder: Path, state: dict):
        self.dir, self.state = Path(folder), state
        self.address = state["address"]  # GCS, for ray.init / jobs.train
        self.dashboard = state["dashboard"]  # job API, for jobs.submit / ray job
        self.supervisor_pid = state["supervisor_pid"]
        self.rehearsal = state["config"] is not None

    @property
    def token_path(self) -> Path:
        return self.dir / "auth_token"

    def env(self) -> dict[str, str]:
        env = {
            "RAY_ADDRESS": self.address,
            "RAY_API_SERVER_ADDRESS": self.dashboard,
            # else a client swaps 127.0.0.1 in the address for the machine's outward IP, where nothing listens
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
        if self.state["token_auth"]:
            env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        if self.rehearsal:  # jobs.train reads the node types from it (check_fits)
            env["PERENNIAL_CLUSTER_CONFIG"] = str(self.dir / "home" / "ray_bootstrap_config.yaml")
        return env

    @classmethod
    def attach(cls, folder: str | os.PathLike) -> LocalCluster | None:
        path = Path(folder) / STATE
        cluster = cls(Path(folder), json.loads(path.read_text())) if path.exists() else None
        return cluster if cluster is not None and cluster.alive() else None

    def alive(self) -> bool:
        import psutil

        with contextlib.suppress(ChildProcessError):  # reap it if this process started it: else it stays a zombie
            if os.waitpid(self.supervisor_pid, os.WNOHANG)[0] == self.supervisor_pid:
                return False
        try:  # the command line too: after a reboot the PID may be another program's
            return "_supervise" in psutil.Process(self.supervisor_pid).cmdline()
        except psutil.Error:
            return False

    @classmethod
    def start(
        cls,
        folder: str | os.PathLike,
        cluster_cfg: dict | None = None,
        *,
        num_cpus: int | None = None,
        idle_timeout_minutes: float | None = None,
        token_auth: bool = True,
        env: dict[str, str] | None = None,
        timeout_s: float = 180.0,
    ) -> LocalCluster:
        """Start a cluster in ``folder`` (with a parsed cluster.yaml: the rehearsal) and wait until it takes jobs;
        ``env``: what its processes start from (default this process's)."""
        folder = Path(folder)
        if (running := cls.attach(folder)) is not None:
            raise ClusterError(
                f"a local cluster already runs from {folder} (dashboard {running.dashboard}) — stop it with "
                f"'python -m jobs.cluster_local down --dir {folder}' first"
            )
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        if token_auth:  # owner-only from its first byte; the form `ray get-auth-token --generate` writes
            with os.fdopen(os.open(folder / "auth_token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(secrets.token_hex(32))
        for attempt in (1, 2, 3):
            ports = {name: free_port() for name in ("gcs", "dashboard", "client", "agent")}
            config = None
            if cluster_cfg is not None:
                gcs = f"127.0.0.1:{ports['gcs']}"
                config = local_config(cluster_cfg, gcs_address=gcs, idle_timeout_minutes=idle_timeout_minutes)
            state = {"ports": ports, "config": config, "token_auth": token_auth}
            try:
                return cls._launch(folder, state, num_cpus, process_env(folder, env, token_auth, config), timeout_s)
            except HeadFailed:
                if attempt == 3:
                    raise

    @classmethod
    def _launch(cls, folder: Path, state: dict, num_cpus: int | None, env: dict, timeout_s: float) -> LocalCluster:
        ports, config = state["ports"], state["config"]
        if config is not None:  # where `ray up` puts it on a cloud head: jobs.train reads the node types there
            (folder / "home").mkdir(exist_ok=True)
            (folder / "home" / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [sys.executable, "-m", "jobs.cluster_local", "_supervise", "--", *head_command(folder, state, num_cpus)]
        with open(folder / "head.log", "w") as log:  # a session of its own: Ctrl-C in the caller's shell leaves it up
            supervisor = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        state |= {
            "supervisor_pid": supervisor.pid,
            "address": f"127.0.0.1:{ports['gcs']}",
            "dashboard": f"http://127.0.0.1:{ports['dashboard']}",
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
        """Until the head, its dashboard and its job agent answer (a job sent before the agent is refused)."""
        log = self.dir / "head.log"
        agent = f"http://127.0.0.1:{self.state['ports']['agent']}/"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "already occupied" in text or "Failed to start the dashboard" in text:
                raise HeadFailed(f"a port of the Ray head was taken: {text[-1500:]}")
            if supervisor.poll() is not None:
                raise HeadFailed(f"the local cluster's head exited: {text[-1500:]}")
            if "Ray runtime started" in text and answers(f"{self.dashboard}/api/version") and answers(agent):
                return
            time.sleep(0.5)
        raise ClusterError(f"the local cluster did not start in {timeout_s:.0f} s: see {log}")

    def stop(self, timeout_s: float = 30.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.alive():
            os.kill(self.supervisor_pid, signal.SIGKILL)
        (self.dir / STATE).unlink(missing_ok=True)


def head_command(folder: Path, state: dict, num_cpus: int | None) -> list[str]:
    ports, ray_bin = state["ports"], Path(sys.executable).parent / "ray"
    cmd = [str(ray_bin if ray_bin.exists() else "ray"), "start", "--head", "--block", "--disable-usage-stats"]
    cmd += [f"--port={ports['gcs']}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"]
    cmd += [f"--dashboard-port={ports['dashboard']}", f"--ray-client-server-port={ports['client']}"]
    cmd += [f"--dashboard-agent-listen-port={ports['agent']}", f"--temp-dir={folder / 'ray'}"]
    cmd += [f"--resources={json.dumps({JOB_SLOT: LOCAL_JOB_SLOTS})}"]  # drivers that may run at once (jobs/batch.py)
    if state["config"] is None:
        return cmd + ([f"--num-cpus={num_cpus}"] if num_cpus is not None else [])
    return cmd + [
        "--num-cpus=0",  # ray start does not apply the yaml's head resources
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--autoscaling-config={folder / 'home' / 'ray_bootstrap_config.yaml'}",
    ]


def process_env(folder: Path, base: dict[str, str] | None, token_auth: bool, config: dict | None) -> dict[str, str]:
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in CLIENT_KEYS}
    env |= {
        # Ray's default temp dir is <it>/ray: "auto" finds this cluster, not the last one started on the machine
        "RAY_TMPDIR": str(folder),
        # local-only mode: the head and every node the autoscaler adds bind to 127.0.0.1 (see jobs.train.loopback_only)
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        # jobs run the first `python` on the cluster's PATH: this environment's (the venv's), as `ray` is
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    }
    if token_auth:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(folder / "auth_token")}
    if config is not None:  # a cloud head's HOME holds ray_bootstrap_config.yaml; so does the rehearsal's
        env |= {"HOME": str(folder / "home"), "RAY_FAKE_CLUSTER": "1"}
    return env


def answers(url: str) -> bool:
    """Whether a web server answers at ``url`` (an error status counts)."""
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return True
    except ConnectionError:  # before HTTPException: RemoteDisconnected is both
        return False
    except http.client.HTTPException:  # not HTTP: another program bound the port before the head did
        raise HeadFailed(f"{url} answers, but not as Ray's server") from None
    except OSError:
        return False
    return True


def supervise(cmd: list[str]) -> int:
    """Run ``cmd`` as child subreaper (the nodes Ray orphans stay descendants); on SIGTERM end every descendant."""
    import psutil

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    head = subprocess.Popen(cmd)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    me = psutil.Process()
    while not stopping.is_set() and head.poll() is None:
        time.sleep(0.5)
        for child in me.children():  # reap adopted orphans that exit (else they stay zombies)
            if child.pid != head.pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, os.WNOHANG)
    procs = me.children(recursive=True)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive + me.children(recursive=True):  # and any started meanwhile
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["_supervise"]:
        return supervise(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    p = argparse.ArgumentParser(prog="python -m jobs.cluster_local", description=__doc__.split("\n\n")[0])
    actions = "up: start it; env: the export line for a shell; down: stop it; config: the rehearsal's autoscaler config"
    p.add_argument("action", choices=("up", "down", "env", "config"), help=actions)
    p.add_argument("--rehearsal", action="store_true", help="cluster.yaml's node types autoscaled (make cluster-local)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the one node (default: this machine's)")
    p.add_argument("--cluster-yaml", default=str(ROOT / "cluster.yaml"), help="the cloud cluster config to rehearse")
    p.add_argument("--idle-timeout-minutes", type=float, help="override cluster.yaml's idle_timeout_minutes")
    p.add_argument("--dir", help="the cluster's own folder (default $PERENNIAL_CLUSTER_DIR, else one in /tmp per kind)")
    args = p.parse_args(argv)
    if args.rehearsal and args.num_cpus is not None:
        p.error("--num-cpus is for the one-node cluster: the rehearsal's nodes have 1 CPU each")
    kind = "rehearsal" if args.rehearsal else "ray"
    default = f"{os.environ.get('TMPDIR', '/tmp')}/perennial-{kind}-{os.getuid()}"
    folder = Path(args.dir or os.environ.get("PERENNIAL_CLUSTER_DIR") or default)
    idle = args.idle_timeout_minutes
    if args.action == "config":
        local = local_config(
            read_cluster_yaml(args.cluster_yaml), gcs_address="127.0.0.1:PORT", idle_timeout_minutes=idle
        )
        print(yaml.safe_dump(local, sort_keys=False), end="")
    elif args.action == "up":
        cfg = read_cluster_yaml(args.cluster_yaml) if args.rehearsal else None
        cluster = LocalCluster.start(folder, cfg, num_cpus=args.num_cpus, idle_timeout_minutes=idle)
        print_up(cluster, " --rehearsal" * args.rehearsal + (f" --dir {folder}" if args.dir else ""))
    elif (cluster := LocalCluster.attach(folder)) is None:
        if args.action == "env":
            start = "make cluster-local" if args.rehearsal else "make cluster-up"
            raise ClusterError(f"no local cluster runs from {folder} — start one with '{start}'")
        print(f"no local cluster runs from {folder}")
    elif args.action == "env":
        print("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in cluster.env().items()))
    else:
        cluster.stop()
        print(f"local cluster stopped ({folder})")
    return 0


def print_up(cluster: LocalCluster, flags: str) -> None:
    where = f"at {cluster.address}, dashboard {cluster.dashboard} (127.0.0.1 only, token auth on)"
    if not cluster.rehearsal:
        print(f"local cluster up: one node {where}")
    else:
        config = cluster.state["config"]
        print(f"local cluster up: head (0 CPU) {where}")
        for name, spec in config["available_node_types"].items():
            if spec.get("max_workers"):
                custom = {k: v for k, v in spec["resources"].items() if k != "object_store_memory"}
                print(f"  {name}: {spec['min_workers']}..{spec['max_workers']} nodes of {custom}")
        print(f"  idle nodes go after {config['idle_timeout_minutes']} min")
    python = os.path.relpath(sys.executable)  # as the user's shell names it: .venv/bin/python
    python = sys.executable if python.startswith("..") else python
    print(f"point a shell at it:  eval $({python} -m jobs.cluster_local env{flags})")
    print(f"stop it:              {python} -m jobs.cluster_local down{flags}")


if __name__ == "__main__":
    cli_main(main)
