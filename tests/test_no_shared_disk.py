"""Sweeps on a Ray cluster of two nodes that share no disk, as two machines would.

The head is ``slimtune cluster up`` (a ``ray start --head --block`` child process, token auth on).
The worker node is ``ray start --block`` in its own mount namespace (``unshare -m``, as root) with
a tmpfs over ``/tmp``, ``/dev/shm`` and the per-user state (``~/.slimtune``, ``~/ray_results``,
``~/.ray``; the Ray token is put back, as one would copy it to a second machine). The head's Ray
temp folder, ``$SLIMTUNE_HOME`` and every storage folder of these tests live under ``/tmp``, so
nothing the worker writes reaches the head except through Ray or the object store (a real S3 API,
``moto_server`` on loopback). The interpreter, the venv and the project stay visible, as
installed software would be, wherever they live: those under a hidden folder (a clone under ``/tmp``)
are bound back at the same paths over the worker's tmpfs. Credentials reach each node through its own environment, never
through a job's ``runtime_env``.

Where mount namespaces are not permitted these tests fail (the worker does not start); they never
skip. The pytest process never calls ``ray.init``: the cluster is child processes, driven through
the CLI and the Jobs API.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
import requests
import yaml

from slimtune import cluster
from slimtune.cli import main
from slimtune.cluster import _local, _state
from slimtune.search import load_results
from slimtune.search.storage import Storage
from slimtune.spaces import SpecError
from tests.test_cluster import _nodes, _spec, _status, _submit, _wait
from tests.test_storage import free_port, start_moto, stop

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "slimtune-nodes"
PLANTED = "planted-secret-XYZ-7d21"  # the nodes' AWS secret: must show up nowhere
#: Hidden from the worker node (each gets a fresh tmpfs there); created as empty mount points.
HIDDEN = ("/tmp", "/dev/shm", "~/.slimtune", "~/ray_results", "~/.ray")

WORKER_SH = r'''
set -e
token=$(cat "$ST_TOKEN_FILE")          # read before /tmp is hidden: "copied to the second machine"
unset ST_TOKEN_FILE
# Installed software under a hidden folder: opened now, bound back at the same path over the tmpfs
# (through the open folder: its path leads into the tmpfs by then).
keep=() fds=()
while IFS= read -r k; do [ -n "$k" ] || continue; exec {fd}<"$k"; keep+=("$k"); fds+=("$fd"); done <<< "$ST_KEEP"
unset ST_KEEP
for d in "$@"; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
for i in "${!keep[@]}"; do
    mkdir -p "${keep[$i]}"
    mount --no-canonicalize --bind "/proc/self/fd/${fds[$i]}" "${keep[$i]}"
    fd=${fds[$i]}; exec {fd}<&-
done
(umask 077; printf %s "$token" > "$HOME/.ray/auth_token")
exec "$ST_RAY" start --block --address="$ST_GCS" --num-cpus=1 --node-ip-address=127.0.0.1 \
    --temp-dir=/tmp/ray-worker --dashboard-agent-listen-port="$ST_AGENT_PORT" --disable-usage-stats \
    --object-store-memory=$((100 * 1024 * 1024))
'''


def installed_software(hidden: list[str]) -> list[str]:
    """What the worker node must still see under the ``hidden`` folders: the interpreter, the venv,
    the project and the folders its packages import from (realpaths, none inside another)."""
    import slimtune

    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(ROOT), *site.getsitepackages(),
             *slimtune.__path__}
    for layer in ("spaces", "compress", "search", "cluster"):
        found.update(importlib.import_module(f"slimtune.{layer}").__path__)
    tops = [os.path.realpath(d) for d in hidden]
    under = sorted(p for p in map(os.path.realpath, found)
                   if os.path.isdir(p) and any(p.startswith(top.rstrip("/") + "/") for top in tops))
    keep: list[str] = []
    for p in under:  # sorted: a folder comes before what it holds
        if not any(p.startswith(k + "/") for k in keep):
            keep.append(p)
    return keep


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


# --- the cluster plumbing, without a cluster ------------------------------------------------------


class _FakeJobs:
    """Stands in for JobSubmissionClient: records what `submit` would send to the cluster."""

    def __init__(self):
        self.calls: list[dict] = []

    def submit_job(self, **kwargs):
        self.calls.append(kwargs)
        return kwargs["submission_id"]


@pytest.fixture
def s3_env(monkeypatch):
    """moto_server on loopback; the AWS variables (with the planted secret) in this process only."""
    port = free_port()
    proc = start_moto(port)
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY",
                 "AWS_SECRET_ACCESS_KEY": PLANTED, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    try:
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield
    finally:
        stop(proc)


def test_storage_uri_from_cluster_up_to_submit_to_results(s3_env, tmp_path, monkeypatch, capsys):
    """`cluster up --storage URI` records it, `submit` defaults to it (or takes --storage), the job's
    --out is <storage>/<sweep id>, `results <id>` reads it; no credentials in anything sent."""
    home = tmp_path / "home"
    monkeypatch.setenv("SLIMTUNE_HOME", str(home))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = _spec(tmp_path / "work", "t-plumbing", trials=2)
    # A bad storage is refused before anything starts or is recorded.
    for storage, msg in [("s3://no-such-bucket/x", "storage: bucket 'no-such-bucket' must exist"),
                         ("s3://AKIAKEY:PLANTEDSECRET@b/x", "storage: a storage URI must not carry credentials"),
                         ("hdfs://nn/x", "storage: storage scheme must be one of")]:
        for argv in (["cluster", "up", "--storage", storage],
                     ["cluster", "up", str(ROOT / "cluster" / "local.yaml"), "--storage", storage]):
            capsys.readouterr()
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert msg in err and len(err.splitlines()) == 1 and "PLANTEDSECRET" not in err, err
    assert not home.exists(), "a refused `cluster up` wrote state"
    # A launcher cluster (`ray up` stubbed): the storage is recorded with it.
    monkeypatch.setattr(_local.subprocess, "call", lambda *a, **k: 0)
    assert main(["cluster", "up", str(ROOT / "cluster" / "local.yaml"), "--storage", f"s3://{BUCKET}/sweeps/"]) == 0
    assert cluster.recorded()["storage"] == f"s3://{BUCKET}/sweeps"
    assert f"s3://{BUCKET}/sweeps" in capsys.readouterr().out

    jobs = _FakeJobs()
    monkeypatch.setattr(cluster._jobs, "client", lambda *a, **k: jobs)
    recorded = _submit(capsys, spec)  # no --storage: the cluster's
    given = _submit(capsys, spec, "--storage", f"s3://{BUCKET}/team")
    folder = _submit(capsys, spec, "--storage", str(tmp_path / "shared"))
    outs = [f"s3://{BUCKET}/sweeps/{recorded}", f"s3://{BUCKET}/team/{given}", str(tmp_path / "shared" / folder)]
    for sweep_id, out, call in zip((recorded, given, folder), outs, jobs.calls):
        assert call["submission_id"] == sweep_id and call["metadata"]["slimtune_out"] == out
        assert call["entrypoint"] == f"slimtune sweep spec.yaml --out {out}"
        assert set(call["runtime_env"]) == {"working_dir", "excludes"}, "only the code travels with a job"
        assert cluster.resolve_results_path(sweep_id) == out  # what `slimtune results <id>` reads
    assert PLANTED not in repr(jobs.calls) and "AKIAPLANTEDKEY" not in repr(jobs.calls)
    n = len(jobs.calls)
    capsys.readouterr()
    assert main(["submit", str(spec), "--storage", "s3://no-such-bucket/x"]) == 2
    assert "storage: bucket 'no-such-bucket' must exist" in capsys.readouterr().err
    assert len(jobs.calls) == n  # nothing submitted
    for f in home.rglob("*"):
        assert not f.is_file() or PLANTED.encode() not in f.read_bytes(), f


def test_the_worker_keeps_the_installed_software_wherever_it_lives(tmp_path):
    """A clone under a hidden folder (say /tmp): its project, venv and packages are bound back, once each."""
    top = str(ROOT.resolve().parent)
    keep = installed_software([top, str(tmp_path)])
    assert str(ROOT.resolve()) in keep, keep
    assert all(k.startswith(top + "/") for k in keep if not k.startswith(str(tmp_path))), keep
    assert not [(a, b) for a in keep for b in keep if b.startswith(a + "/")], f"one folder inside another: {keep}"
    assert installed_software([str(tmp_path)]) == [], "nothing of the installation is in a fresh folder"


class TwoNodes:
    """The head record of ``cluster up``, the worker node process, and the test's folders under /tmp."""

    def __init__(self, base: Path, head: dict, endpoint: str):
        self.base, self.head, self.endpoint = base, head, endpoint
        self.worker: dict | None = None
        self.namespaces: set[str] = set()
        self.local_storage = base / "storage"  # only the head sees it

    def start_worker(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "RAY_ADDRESS", "SLIMTUNE_HOME")}
        env.update({"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
                    "ST_TOKEN_FILE": self.head["token"]["path"], "ST_RAY": _local.ray_executable(),
                    "ST_GCS": self.head["gcs_address"], "ST_AGENT_PORT": str(_local.free_port())})
        hidden = [os.path.expanduser(d) for d in HIDDEN]
        env["ST_KEEP"] = "\n".join(installed_software(hidden))
        log = self.base / "logs" / f"worker-{secrets.token_hex(2)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "bash", "-c", WORKER_SH,
                                     "worker", *hidden], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        node = {"pid": proc.pid, "start_time": _state.start_time(proc.pid), "log": str(log)}
        self.worker = node
        # Fails (never skips) where mount namespaces are not permitted: the log's tail says why.
        _local._wait_ready(node, "worker node in its own mount namespace", 180)
        ns = _mnt_ns(proc.pid)
        assert ns and ns != _mnt_ns(os.getpid()), "the worker node must run in its own mount namespace"
        self.namespaces.add(ns)
        deadline = time.monotonic() + 60
        while sum(n["state"] == "ALIVE" for n in _nodes(self.head).values()) < 2:
            assert time.monotonic() < deadline, "the worker node never joined the cluster"
            time.sleep(0.5)
        proc.returncode = 0  # detached like `cluster up`'s nodes; ended by pid in stop_worker
        return node

    def ensure_worker(self) -> None:
        if self.worker is None or not _state.alive(self.worker):
            self.start_worker()

    def worker_id(self) -> str:
        return next(k for k, n in _nodes(self.head).items() if not n["is_head_node"] and n["state"] == "ALIVE")

    def stop_worker(self) -> None:
        if self.worker:
            _state.terminate([self.worker])
        # Whatever the node left behind runs in a namespace this fixture created: end those by pid.
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and _mnt_ns(int(proc.name)) in self.namespaces:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def two_nodes():
    """A head (``cluster up --storage s3://…``) and a worker node that sees none of the head's files."""
    base = Path(tempfile.mkdtemp(prefix="st2n-", dir="/tmp"))
    made = [Path(os.path.expanduser(d)) for d in HIDDEN if not os.path.exists(os.path.expanduser(d))]
    port = free_port()
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": PLANTED, "AWS_DEFAULT_REGION": "us-east-1"}
    moto = start_moto(port)
    nodes = None
    with pytest.MonkeyPatch.context() as mp:
        for k, v in aws.items():  # the nodes' own environment: inherited by `ray start`, never a runtime_env
            mp.setenv(k, v)
        mp.setenv("SLIMTUNE_HOME", str(base / "home"))
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(base / "home" / "token"))
        for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            mp.delenv(var, raising=False)
        try:
            pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                              allow_bucket_creation=True).create_dir(BUCKET)
            t0 = time.monotonic()
            rc = main(["cluster", "up", "--num-cpus", "1", "--port", "0", "--dashboard-port", "0",
                       "--object-store-memory", str(100 * 2**20), "--storage", f"s3://{BUCKET}/sweeps"])
            assert rc == 0, "cluster up failed"
            head = cluster.recorded()
            assert head["temp_dir"].startswith("/tmp/") and head["storage"] == f"s3://{BUCKET}/sweeps"
            nodes = TwoNodes(base, head, aws["AWS_ENDPOINT_URL"])
            nodes.start_worker()
            print(f"two nodes up: {time.monotonic() - t0:.1f}s")
            yield nodes
        finally:
            if nodes:
                nodes.stop_worker()
            record = cluster.recorded()
            main(["cluster", "down"])
            stop(moto)
            if record:
                shutil.rmtree(record["temp_dir"], ignore_errors=True)
            shutil.rmtree(base, ignore_errors=True)
            for d in made:  # mount points the worker needed, empty here: leave $HOME as it was
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()


def _probe_job(nodes: TwoNodes, tmp_path: Path, code: str) -> dict:
    """Run ``code`` as a Ray job (its driver on the head) and return the JSON it prints last."""
    (tmp_path / "probe.py").write_text(code)
    jobs = cluster._jobs.client(nodes.head["dashboard"])
    job = jobs.submit_job(entrypoint="python probe.py", runtime_env={"working_dir": str(tmp_path)})
    deadline = time.monotonic() + 120
    while str(jobs.get_job_status(job)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, "the probe job did not finish"
        time.sleep(0.5)
    logs = jobs.get_job_logs(job)
    assert str(jobs.get_job_status(job)) == "SUCCEEDED", logs[-3000:]
    return json.loads(logs.strip().splitlines()[-1])


PROBE = '''
import json, os
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()

@ray.remote(num_cpus=0)
def look(paths, drops):
    for drop in drops:  # written on this node only: the head must not see them
        os.makedirs(os.path.dirname(drop), exist_ok=True)
        with open(drop, "w") as f:
            f.write("from the worker")
    return {"node": ray.get_runtime_context().get_node_id(), "exists": {p: os.path.exists(p) for p in paths},
            "token": os.path.isfile(os.path.expanduser("~/.ray/auth_token"))}

paths, drops = {PATHS}, {DROPS}
out = {}
for n in ray.nodes():
    if n["Alive"]:
        head = "node:__internal_head__" in n["Resources"]
        pin = NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        out["head" if head else "worker"] = ray.get(
            look.options(scheduling_strategy=pin).remote(paths, [] if head else drops))
print(json.dumps(out))
'''


@pytest.mark.slow
def test_the_worker_node_sees_none_of_the_heads_files(two_nodes, tmp_path):
    marker = two_nodes.base / "written-by-the-test"
    marker.write_text("only the head's disk has this")
    token = two_nodes.head["token"]["path"]
    visible = [sys.executable, str(ROOT / "search" / "__init__.py"), str(Path(sys.executable).parent / "ray"),
               *site.getsitepackages()]
    hidden = [str(marker), token, two_nodes.head["temp_dir"], os.path.expanduser(f"~/.ray/{marker.name}")]
    Path(os.path.expanduser("~/.ray")).mkdir(exist_ok=True)
    Path(os.path.expanduser(f"~/.ray/{marker.name}")).write_text("x")  # removed below
    drops = [f"/tmp/st-from-worker-{secrets.token_hex(3)}",
             os.path.expanduser(f"~/.slimtune/st-from-worker-{secrets.token_hex(3)}")]
    try:
        seen = _probe_job(two_nodes, tmp_path, PROBE.replace("{PATHS}", repr(visible + hidden))
                          .replace("{DROPS}", repr(drops)))
    finally:
        Path(os.path.expanduser(f"~/.ray/{marker.name}")).unlink(missing_ok=True)
    assert set(seen) == {"head", "worker"} and seen["head"]["node"] != seen["worker"]["node"]
    assert seen["worker"]["node"][:8] == two_nodes.worker_id()
    assert all(seen["head"]["exists"].values()), seen["head"]  # the head sees everything
    for p in visible:
        assert seen["worker"]["exists"][p], f"installed software must stay visible on the worker: {p}"
    for p in hidden:
        assert not seen["worker"]["exists"][p], f"the worker node must not see the head's {p}"
    assert seen["worker"]["token"], "the worker's token was put back in its own ~/.ray"
    for drop in drops:  # and nothing the worker writes to its /tmp or ~/.slimtune reaches the head
        assert not Path(drop).exists(), drop


# --- sweeps -----------------------------------------------------------------------------------


def _builders(spec: Path) -> dict:
    """The spec's model hook, without its nap, to rebuild artifacts here."""
    loader = importlib.util.spec_from_file_location(f"tinynet_{secrets.token_hex(3)}", spec.parent / "tinynet.py")
    mod = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mod)
    return {"tinynet:build": lambda config: mod.build({**config, "nap": 0})}


def _run(nodes: TwoNodes, capsys, spec: Path, *extra: str) -> tuple[str, str]:
    """Submit, wait for the end; (sweep id, final status text)."""
    nodes.ensure_worker()
    sweep_id = _submit(capsys, spec, *extra)
    t0 = time.monotonic()
    st = _wait(capsys, sweep_id, timeout=300)
    _, text = _status(capsys, sweep_id)
    with capsys.disabled():
        print(f"\n{sweep_id}: {st} after {time.monotonic() - t0:.1f}s")
    return sweep_id, text


def _check_sweep(sweep_id: str, text: str, spec: Path, budget: int, nodes: TwoNodes) -> pd.DataFrame:
    """SUCCEEDED; every trial ok; both nodes ran some; every artifact stored whole and loadable."""
    import torch

    from slimtune import compress

    assert text.splitlines()[0] == f"{sweep_id}: SUCCEEDED", text
    out = cluster.resolve_results_path(sweep_id)  # what `slimtune results <id>` reads, from the client
    df = load_results(out)
    assert len(df) == budget and (df["status"] == "ok").all(), df[["status", "error"]].to_string()
    used = {str(n).split("/")[-1] for n in df["node"]}
    assert len(used) == 2, f"both nodes must run trials: {sorted(used)}"
    known = _nodes(nodes.head)
    assert {known[u]["is_head_node"] for u in used} == {True, False}, used
    store = Storage.open(out)
    builders = _builders(spec)
    x = torch.zeros(2, 64)
    for _, row in df.iterrows():
        on = "the head" if known[row["node"].split("/")[-1]]["is_head_node"] else "the worker"
        where = f"trial {row['trial_number']} (ran on {on})"
        assert store.is_file(row["artifact"]), f"{where}: its artifact is not in {out}"
        assert store.size(row["artifact"]) == row["size_bytes"], where
        model = compress.load(store.read_bytes(row["artifact"]), builders=builders)
        assert model(x).shape == (2, 10)
    return df


@pytest.mark.slow
def test_sweep_into_a_folder_only_the_head_sees(two_nodes, tmp_path, capsys):
    """Storage on the driver's machine only: worker artifacts reach it through Ray, nothing lost;
    distilling, the teachers (dense models) go there the same way and come back to the worker
    node through the driver's artifact actor."""
    # 8 s a trial: a worker actor starting slowly under load still gets trials
    spec = _spec(tmp_path / "work", "t-nodisk-local", trials=4, nap=8.0)
    raw = yaml.safe_load(spec.read_text())
    spec.write_text(yaml.safe_dump({**raw, "compress": {"distill": {"weight": 0.5}}}))
    sweep_id, text = _run(two_nodes, capsys, spec, "--storage", str(two_nodes.local_storage))
    assert cluster.resolve_results_path(sweep_id) == str(two_nodes.local_storage / sweep_id)
    df = _check_sweep(sweep_id, text, spec, 4, two_nodes)
    out = two_nodes.local_storage / sweep_id
    assert all((out / rel).is_file() for rel in df["dense_artifact"])  # stored by both nodes, on the head's disk
    known = _nodes(two_nodes.head)
    taught = df[df["teacher"].notna()]
    on_worker = [n for n in taught["node"] if not known[str(n).split("/")[-1]]["is_head_node"]]
    assert len(taught) >= 1 and on_worker, f"a trial with a teacher must run on the worker: {df[['teacher', 'node']]}"


_S3_SWEEP: dict = {}


def _s3_sweep(two_nodes: TwoNodes, tmp_path_factory, capsys) -> tuple[str, str, Path]:
    """One S3 sweep for the tests that look at it (the recorded storage: no --storage)."""
    if not _S3_SWEEP:
        spec = _spec(tmp_path_factory.mktemp("s3-sweep"), "t-nodisk-s3", trials=4, nap=8.0)
        sweep_id, text = _run(two_nodes, capsys, spec)
        _S3_SWEEP.update(id=sweep_id, text=text, spec=spec)
    return _S3_SWEEP["id"], _S3_SWEEP["text"], _S3_SWEEP["spec"]


@pytest.mark.slow
def test_sweep_into_s3(two_nodes, tmp_path_factory, capsys):
    sweep_id, text, spec = _s3_sweep(two_nodes, tmp_path_factory, capsys)
    out = cluster.resolve_results_path(sweep_id)
    assert out == f"s3://{BUCKET}/sweeps/{sweep_id}"
    _check_sweep(sweep_id, text, spec, 4, two_nodes)
    assert not (two_nodes.local_storage / sweep_id).exists()


def _files(folder: Path):
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            yield p


class _Finder:
    """Collects every place the planted secret shows, so that one run names them all."""

    def __init__(self):
        self.found: list[str] = []

    def look(self, where: str, data: bytes | str) -> None:
        data = data.encode() if isinstance(data, str) else data
        lines = [ln[:240].decode(errors="replace") for ln in data.splitlines() if PLANTED.encode() in ln]
        if lines:
            self.found.append(f"{where}: {lines[0]}" + (f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else ""))

    def check(self) -> None:
        assert not self.found, "the planted secret shows in:\n" + "\n".join(self.found)


@pytest.mark.slow
def test_a_planted_secret_is_in_no_file_of_the_sweep_nor_the_job(two_nodes, tmp_path_factory, tmp_path, capsys):
    """The nodes' AWS secret is in no stored object, report, export, CLI output, state record, job info or job log."""
    sweep_id, text, _ = _s3_sweep(two_nodes, tmp_path_factory, capsys)
    assert text.splitlines()[0] == f"{sweep_id}: SUCCEEDED", text
    secret = _Finder()
    out = cluster.resolve_results_path(sweep_id)
    store = Storage.open(out)
    objects = [o for o in store.fs.get_file_info(pafs.FileSelector(store.root, recursive=True))
               if o.type == pafs.FileType.File]
    assert objects, "the sweep stored nothing"
    for o in objects:
        with store.fs.open_input_stream(o.path) as f:
            secret.look(f"s3://{o.path}", f.read())
    # What a user makes from it, here.
    shown = tmp_path / "shown"
    shown.mkdir()
    capsys.readouterr()
    assert main(["results", sweep_id, "--format", "json"]) == 0
    assert main(["report", out, "--out", str(shown / "report.html")]) == 0
    assert main(["plot", out, "--out", str(shown / "pareto.png")]) == 0
    assert main(["export", out, "--trial", "0", "--out", str(shown / "model.slim")]) == 0
    printed = capsys.readouterr()
    secret.look("the CLI's output", printed.out + printed.err)
    for folder in (two_nodes.base, shown):  # SLIMTUNE_HOME (cluster and sweep records), a local storage
        for p in _files(folder):
            secret.look(str(p), p.read_bytes())
    # The job as the Jobs API and the dashboard's job pages show it.
    jobs = cluster._jobs.client(two_nodes.head["dashboard"])
    info = jobs.get_job_info(sweep_id)
    assert "env_vars" not in (info.runtime_env or {}), info.runtime_env
    secret.look("the job's info", f"{info.entrypoint} {info.runtime_env} {info.metadata} {info}")
    secret.look("the job's logs", jobs.get_job_logs(sweep_id))
    token = Path(two_nodes.head["token"]["path"]).read_text().strip()
    for path in ("/api/jobs/", f"/api/jobs/{sweep_id}"):
        r = requests.get(two_nodes.head["dashboard"] + path, headers={"Authorization": f"Bearer {token}"},
                         timeout=30)
        assert r.status_code == 200 and sweep_id in r.text, (path, r.status_code)
        secret.look(f"the dashboard's {path}", r.text)
    secret.check()


@pytest.mark.slow
def test_a_planted_secret_is_in_no_ray_log_nor_dashboard_view(two_nodes, tmp_path_factory, capsys):
    """Nor in the Ray logs of either node or the dashboard's actor list.

    Ray Tune copies AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN from the driver's
    environment into every trial actor's runtime_env ``env_vars`` (ray.tune.execution.class_cache,
    ENV_VARS_TO_PROPAGATE): each node's runtime_env_agent.log then logs them, and the dashboard's
    actor list shows them. The driver must not hand them to Tune that way.
    """
    sweep_id, text, _ = _s3_sweep(two_nodes, tmp_path_factory, capsys)
    assert text.splitlines()[0] == f"{sweep_id}: SUCCEEDED", text
    secret = _Finder()
    # The head's Ray folder (logs of the driver and every Ray process) and the worker node's own,
    # seen through its mount namespace.
    folders = [Path(two_nodes.head["temp_dir"])]
    if two_nodes.worker and _state.alive(two_nodes.worker):
        folders.append(Path(f"/proc/{two_nodes.worker['pid']}/root/tmp/ray-worker"))
    for folder in folders:
        for p in _files(folder):
            secret.look(str(p), p.read_bytes())
    token = Path(two_nodes.head["token"]["path"]).read_text().strip()
    for path in ("/api/v0/actors?detail=1&limit=10000", "/api/v0/tasks?detail=1&limit=10000"):
        r = requests.get(two_nodes.head["dashboard"] + path, headers={"Authorization": f"Bearer {token}"},
                         timeout=30)
        assert r.status_code == 200, (path, r.status_code)
        secret.look(f"the dashboard's {path}", r.text)
    secret.check()


@pytest.mark.slow
def test_worker_node_killed_mid_sweep_with_s3_storage(two_nodes, tmp_path, capsys):
    """The worker node dies while it runs trials: the budget is still met and no stored result is lost."""
    budget = 6
    two_nodes.ensure_worker()
    spec = _spec(tmp_path / "work", "t-nodisk-kill", trials=budget, nap=5.0)
    sweep_id = _submit(capsys, spec)
    out = cluster.resolve_results_path(sweep_id)
    assert out.startswith(f"s3://{BUCKET}/sweeps/")
    worker_id = two_nodes.worker_id()

    def worker_finished_one(st, text):
        try:
            df = load_results(out)
        except (SpecError, OSError):  # nothing stored yet
            return False
        return bool(df["node"].fillna("").str.endswith(worker_id).any())

    _wait(capsys, sweep_id, until=worker_finished_one, timeout=300)
    before = load_results(out)
    os.kill(two_nodes.worker["pid"], signal.SIGKILL)  # the machine goes away: its `ray start` first
    two_nodes.stop_worker()  # and every process it left in its namespace
    deadline = time.monotonic() + 90
    while _nodes(two_nodes.head)[worker_id]["state"] != "DEAD":
        assert time.monotonic() < deadline, "the cluster never saw the worker node die"
        time.sleep(1)
    st = _wait(capsys, sweep_id, timeout=300)
    _, text = _status(capsys, sweep_id)
    assert st == "SUCCEEDED", text
    df = load_results(out)
    assert len(df) == budget and (df["status"] == "ok").all(), df[["status", "error"]].to_string()
    after = df.set_index("trial_number")
    for _, row in before.iterrows():  # nothing stored before the kill changed or went missing
        assert after.loc[row["trial_number"], "trial_id"] == row["trial_id"]
        assert after.loc[row["trial_number"], "size_bytes"] == row["size_bytes"]
    store = Storage.open(out)
    from slimtune import compress

    builders = _builders(spec)
    for _, row in df.iterrows():
        assert store.size(row["artifact"]) == row["size_bytes"]
        compress.load(store.read_bytes(row["artifact"]), builders=builders)
    assert df["trial_id"].is_unique and df["trial_number"].is_unique
