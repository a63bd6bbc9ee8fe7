"""Start and stop Ray clusters: local ``ray start --block`` nodes, or Ray's cluster launcher.

Each local node is one ``ray start --block`` child process, detached from the CLI (its own
session) so that ``cluster up`` returns; ``cluster down`` terminates exactly the recorded
processes, and each takes its own Ray processes down. Nothing here kills by name, and every
node gets its own free ports, so other Ray clusters on the same machine are left alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimtune.cluster import _auth, _state
from slimtune.cluster._jobs import storage_uri
from slimtune.spaces import RunError, SpecError

READY = "Ray runtime started"


def ray_executable() -> str:
    """The ``ray`` CLI of this Python environment (the one slimtune is installed in)."""
    here = Path(sys.executable).with_name("ray")
    found = str(here) if here.is_file() else shutil.which("ray")
    if not found:
        raise SpecError("ray", "the `ray` command must be installed", None, "pip install 'ray[default]'")
    return found


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free, else a port the OS picks (0 or None: always the OS's pick)."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise AssertionError("the OS gave no free port")


def _env(token: dict[str, Any]) -> dict[str, str]:
    env = _auth.node_env(token)
    # Job drivers run `slimtune sweep` on the head: find this environment's console scripts first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    rec = {"pid": proc.pid, "start_time": _state.start_time(proc.pid), "log": str(log)}
    # Detached on purpose (it outlives the CLI): tell Popen not to track or warn about it;
    # a zombie left in a long-lived caller is reaped by _state.start_time.
    proc.returncode = 0
    return rec


def _wait_ready(node: dict[str, Any], what: str, timeout: float) -> None:
    log = Path(node["log"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.is_file() else ""
        if READY in text:
            return
        if not _state.alive(node):
            break
        time.sleep(0.3)
    tail = " | ".join(ln.strip() for ln in text.strip().splitlines()[-5:])
    _state.terminate([node], timeout=10)
    raise RunError(what, f"did not start (`ray start` exited or did not report ready): {tail or log}",
                   f"see {log}")


def refuse_if_running() -> None:
    """One recorded cluster at a time: a launcher cluster, or local nodes that still run."""
    head = _state.read_head()
    if head and (head.get("kind") == "launcher" or
                 any(_state.alive(p) for p in [head["head"], *head.get("workers", [])])):
        raise SpecError("cluster", "must not already be running here", head.get("config") or head.get("dashboard"),
                        "run `slimtune cluster down` first")


@dataclass(frozen=True)
class LocalCluster:
    """The options of a cluster of ``ray start`` nodes on this machine (``slimtune cluster up``).

    ``port``/``dashboard_port``: None means Ray's usual 6379/8265 when free, 0 any free port.
    """

    workers: int = 0
    num_cpus: int | None = None
    num_gpus: int | None = None
    port: int | None = None
    dashboard_port: int | None = None
    dashboard_host: str = "127.0.0.1"
    node_ip: str = "127.0.0.1"
    object_store_memory: int | None = None
    storage: str | None = None
    timeout: float = 180.0


def start_local(options: LocalCluster) -> dict[str, Any]:
    """Start a head node (and ``options.workers`` worker nodes) on this machine; record and return the cluster."""
    workers, num_cpus, num_gpus, node_ip = options.workers, options.num_cpus, options.num_gpus, options.node_ip
    port, dashboard_port, dashboard_host = options.port, options.dashboard_port, options.dashboard_host
    object_store_memory, storage, timeout = options.object_store_memory, options.storage, options.timeout
    if storage:  # before anything starts; never a local folder named `s3:`, never credentials recorded
        storage = storage_uri(storage, check_local=True)
    refuse_if_running()
    token = _auth.ensure_token()
    env = _env(token)
    ray = ray_executable()
    home = _state.home()
    gcs_port = free_port(6379 if port is None else port)
    dash_port = free_port(8265 if dashboard_port is None else dashboard_port)
    # Short on purpose: Ray's socket paths under it must stay below the OS limit (~107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    # Every node gets its own agent port (the default 52365 would collide between nodes on one
    # machine) and its own temp dir (nodes sharing one unpack the same job package over each other).
    common = ["--block", f"--node-ip-address={node_ip}", "--disable-usage-stats"]
    if object_store_memory:
        common.append(f"--object-store-memory={int(object_store_memory)}")

    def resources(n_cpu, n_gpu):
        return ([f"--num-cpus={n_cpu}"] if n_cpu is not None else []) + \
               ([f"--num-gpus={n_gpu}"] if n_gpu is not None else [])

    stamp = time.strftime("%Y%m%d-%H%M%S")
    head_node = _spawn([ray, "start", "--head", f"--port={gcs_port}", f"--dashboard-host={dashboard_host}",
                        f"--dashboard-port={dash_port}", f"--ray-client-server-port={free_port()}",
                        f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp_dir}/head", *common,
                        *resources(num_cpus, num_gpus)],
                       home / "logs" / f"head-{stamp}.log", env)
    gcs = f"{node_ip}:{gcs_port}"
    shown_host = "127.0.0.1" if dashboard_host in ("0.0.0.0", "::", "localhost") else dashboard_host
    record: dict[str, Any] = {
        "kind": "local", "head": head_node, "workers": [], "gcs_address": gcs,
        "dashboard": f"http://{shown_host}:{dash_port}", "dashboard_host": dashboard_host,
        "temp_dir": temp_dir, "token": token,
        "storage": storage or str(home / "storage"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _state.write_head(record)  # recorded at once: an interrupted `cluster up` leaves `cluster down` work to do
    try:
        _wait_ready(head_node, "cluster.head", timeout)
        for i in range(workers):
            args = [ray, "start", f"--address={gcs}", f"--dashboard-agent-listen-port={free_port()}",
                    f"--temp-dir={temp_dir}/worker{i + 1}", *common, *resources(num_cpus, num_gpus)]
            node = _spawn(args, home / "logs" / f"worker{i + 1}-{stamp}.log", env)
            record["workers"].append(node)
            _state.write_head(record)
            _wait_ready(node, f"cluster.worker{i + 1}", timeout)
        _wait_dashboard(record, timeout)
    except (SpecError, RunError):  # all or nothing: a cluster that did not come up is taken down again
        stop_local(record)
        _state.clear_head()
        raise
    return record


def _wait_dashboard(record: dict[str, Any], timeout: float) -> None:
    """Until the Jobs API answers (the dashboard starts a little after the head reports ready)."""
    import requests

    url = record["dashboard"] + "/api/version"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, headers=_auth.headers(record["token"]), timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RunError("cluster dashboard", f"did not answer at {url}", f"see {record['head']['log']}")
        time.sleep(0.5)


def stop_local(record: dict[str, Any]) -> int:
    """Terminate the recorded worker nodes, then the head; the number of processes that were running."""
    return _state.terminate(record.get("workers", [])) + _state.terminate([record["head"]])


def launcher_up(config: str, storage: str | None = None) -> dict[str, Any]:
    """``ray up -y CONFIG`` (Ray's cluster launcher), with the token on hand for its file_mounts.

    ``storage`` (recorded; ``submit`` defaults to it): an ``s3://`` / ``gs://`` URI the nodes reach
    with their own credentials, or a folder mounted at the same path on every node.
    """
    path = Path(config).expanduser().resolve()
    if not path.is_file():
        raise SpecError("config", "must be a cluster launcher YAML file", config,
                        "see cluster/aws.yaml, cluster/gcp.yaml, cluster/local.yaml")
    storage = storage_uri(storage) if storage else None
    refuse_if_running()
    token = _auth.ensure_token()
    rc = subprocess.call([ray_executable(), "up", "-y", str(path)], env=_auth.node_env(token))
    if rc != 0:
        raise RunError(f"ray up {path}", f"exited with {rc}", "see its output above")
    record = {"kind": "launcher", "config": str(path), "token": token,
              # `ray dashboard CONFIG` forwards the head's dashboard to this port on loopback.
              "dashboard": "http://127.0.0.1:8265", "storage": storage,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _state.write_head(record)
    return record


def launcher_down(record: dict[str, Any]) -> int:
    return subprocess.call([ray_executable(), "down", "-y", record["config"]],
                           env=_auth.node_env(record.get("token") or {}))
