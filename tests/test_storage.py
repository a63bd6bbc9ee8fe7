"""The storage seam over a local folder and a real S3 API (moto_server on loopback), the lease,
the bounded checks before Ray starts, and load_results from a URI."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from slimtune.search import load_results
from slimtune.search.lease import Lease, pid_alive, process_start_time
from slimtune.search.results.table import sweep_meta, write_results
from slimtune.search.storage import Storage
from slimtune.spaces import SpecError

BUCKET = "slimtune-test"
PLANTED = "planted-secret-4f1c"  # the session's AWS secret: must never be stored
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    assert exe, "moto_server must be installed (pip install 'moto[server]', the test extra)"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **(extra_env or {})})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "moto_server exited at start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("moto_server did not listen within 60 s")


def names(store: Storage, rel: str = "") -> list[str]:
    """What the storage holds directly under ``rel``, sorted, as its filesystem lists it."""
    return sorted(i.base_name for i in store.fs.get_file_info(pafs.FileSelector(store.join(rel), allow_not_found=True)))


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 API on loopback, with the standard AWS variables pointing at it (this module only)."""
    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": PLANTED, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    proc = start_moto(port)
    try:
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield env["AWS_ENDPOINT_URL"]
    finally:
        stop(proc)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        store = Storage.open(tmp_path / "sweep").check()
        store.makedirs()
        return store
    request.getfixturevalue("s3_endpoint")
    return Storage.open(f"s3://{BUCKET}/{request.node.name}/sweep").check()


# --- one contract over every backend ------------------------------------------------------


def test_write_read_list_size(store):
    store.makedirs()
    store.makedirs("artifacts")
    assert not store.exists("results.parquet")
    store.write_atomic("results.parquet", b"first")
    store.write_atomic("results.parquet", b"second version")
    store.write_atomic("artifacts/t1.slim", b"\x00" * 123)
    assert store.read_bytes("results.parquet") == b"second version"
    assert store.exists("results.parquet") and store.is_file("results.parquet")
    assert store.size("results.parquet") == len(b"second version")
    assert store.size("artifacts/t1.slim") == 123
    assert names(store) == ["artifacts", "results.parquet"]
    assert names(store, "artifacts") == ["t1.slim"]
    assert store.child("artifacts").read_bytes("t1.slim") == b"\x00" * 123
    with pytest.raises(FileNotFoundError):
        store.size("missing")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("missing")
    store.delete("results.parquet")
    store.delete("results.parquet")  # absent: no error
    assert not store.exists("results.parquet")
    assert Storage.open(store.uri).read_bytes("artifacts/t1.slim") == b"\x00" * 123  # uri reopens it
    if store.local_path is not None:
        assert store.uri == str(store.local_path) and store.local_path.is_absolute()
        assert not [p for p in store.local_path.rglob("*.tmp")], "a temporary file was left behind"
    else:
        assert store.uri.startswith(f"s3://{BUCKET}/") and store.local_path is None


def test_local_writes_are_readable_like_other_files(tmp_path):
    store = Storage.open(tmp_path)
    old = os.umask(0o022)
    try:
        store.write_atomic("a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_plain_path_and_file_uri_are_the_same_folder(tmp_path):
    a, b = Storage.open(tmp_path), Storage.open(f"file://{tmp_path}")
    assert a == b and a.local_path == tmp_path
    assert Storage.open(f"s3://{BUCKET}/x/").uri == f"s3://{BUCKET}/x"


# --- one-line errors before anything runs ------------------------------------------------


@pytest.mark.parametrize("uri", ["hdfs://nn/sweeps", "http://example.com/x", "abfs://c/x"])
def test_unsupported_scheme(uri):
    with pytest.raises(SpecError, match=r"^out: storage scheme must be one of file://, s3://, gs://") as err:
        Storage.open(uri)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("uri", ["s3://AKIAPLANTED:PLANTEDSECRET@bkt/x",
                                 "s3://bkt/x?access_key=AKIAPLANTED&secret_key=PLANTEDSECRET",
                                 "gs://bkt/x?access_token=PLANTEDSECRET"])
def test_credentials_in_uri_are_refused_and_not_echoed(uri):
    with pytest.raises(SpecError, match="must not carry credentials") as err:
        Storage.open(uri, field="storage")
    msg = str(err.value)
    assert msg.startswith("storage: ") and "PLANTEDSECRET" not in msg and "AKIAPLANTED" not in msg


def test_unknown_uri_option_names_the_closest():
    with pytest.raises(SpecError, match="unknown s3:// option 'regoin' .did you mean 'region'"):
        Storage.open("s3://bkt/x?regoin=eu-west-1")


def test_missing_bucket(s3_endpoint):
    with pytest.raises(SpecError, match=r"^out: bucket 'no-such-bucket' must exist, but got 's3://no-such-bucket/x'"):
        Storage.open("s3://no-such-bucket/x").check()


def test_refused_credentials(s3_endpoint):
    port = free_port()
    proc = start_moto(port, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # this server checks credentials
    try:
        st = Storage.open(f"s3://{BUCKET}/x?endpoint_override=127.0.0.1:{port}&scheme=http")
        with pytest.raises(SpecError, match="out: the storage must accept the credentials") as err:
            st.check()
        assert "\n" not in str(err.value)
    finally:
        stop(proc)


@pytest.mark.slow
def test_unreachable_storage_fails_in_bounded_time(tmp_path):
    """Nothing listens on the port: one line per store, well before any default retry gives up."""
    port = free_port()
    code = (
        "from search.storage import Storage\n"
        "from spaces import SpecError\n"
        f"for uri in ['s3://{BUCKET}/x', 'gs://{BUCKET}/x?endpoint_override=127.0.0.1:{port}&scheme=http']:\n"
        "    try:\n"
        "        Storage.open(uri).check()\n"
        "    except SpecError as e:\n"
        "        print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(lines) == 2, out.stdout + out.stderr[-2000:]
    assert lines[0].startswith(f"out: storage must be reachable, but got 's3://{BUCKET}/x'")
    assert lines[1].startswith("out: ") and f"gs://{BUCKET}/x" in lines[1]


# --- the lease --------------------------------------------------------------------------


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_pid_alive():
    me = os.getpid()
    assert pid_alive(me) and pid_alive(me, process_start_time(me))
    assert not pid_alive(dead_pid())
    assert not pid_alive(-1) and not pid_alive(0)
    if process_start_time(me) != "?":
        assert not pid_alive(me, "1"), "a reused pid (other start time) must not count as alive"


def test_lease_fresh_is_respected_and_released(store):
    with Lease(store) as first:
        rec = first.holder()
        assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["heartbeat"] > 0
        with pytest.raises(SpecError, match="out: must not be in use by another sweep driver"):
            Lease(store).__enter__()
        first.heartbeat()
    assert not store.exists(".lock")
    with Lease(store):  # free again
        pass


def test_lease_of_a_dead_driver_is_taken_over(store):
    store.write_atomic(".lock", json.dumps({"owner": "old", "host": socket.gethostname(), "pid": dead_pid(),
                                            "heartbeat": time.time(), "ttl": None}).encode())
    with Lease(store) as lease:
        assert lease.holder()["owner"] == lease.owner


def test_lease_heartbeat_ttl_on_object_store(s3_endpoint):
    store = Storage.open(f"s3://{BUCKET}/lease-ttl")
    other_host = {"owner": "remote", "host": "another-machine", "pid": 1, "ttl": 60.0}
    store.write_atomic(".lock", json.dumps({**other_host, "heartbeat": time.time()}).encode())
    with pytest.raises(SpecError, match="must not be in use"):  # fresh, on another host: respected
        Lease(store).__enter__()
    store.write_atomic(".lock", json.dumps({**other_host, "heartbeat": time.time() - 61}).encode())
    with Lease(store, renew=False) as mine:  # stale heartbeat: taken over
        assert mine.ttl == 60.0
        stolen = {**other_host, "owner": "thief", "heartbeat": time.time()}
        store.write_atomic(".lock", json.dumps(stolen).encode())
        with pytest.raises(RuntimeError, match="taken over by pid 1 on another-machine"):
            mine.heartbeat()
    assert json.loads(store.read_bytes(".lock"))["owner"] == "thief"  # not ours: left in place


def test_local_lease_never_expires_by_time(tmp_path):
    store = Storage.open(tmp_path)
    store.write_atomic(".lock", json.dumps({"owner": "live", "host": socket.gethostname(), "pid": os.getpid(),
                                            "heartbeat": 0, "ttl": None}).encode())
    with pytest.raises(SpecError, match="must not be in use"):
        Lease(store).__enter__()


# --- results read from a URI ------------------------------------------------------------


def tiny_sweep(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = [{"trial_id": f"t{i}", "trial_number": i, "status": "ok", "lr": 0.01 * (i + 1), "seed": i,
             "accuracy": 0.5 + 0.1 * i, "size_bytes": 1000 - 100 * i, "feasible": True} for i in range(3)]
    write_results(folder, rows, ["lr"])
    meta = {"name": "tiny", "params": ["lr"], "objectives": {"accuracy": "max", "size_bytes": "min"},
            "constraints": {}}
    (folder / "sweep.json").write_text(json.dumps(meta))


def test_load_results_and_cli_results_from_s3(s3_endpoint, tmp_path, capsys):
    local = tmp_path / "run1"
    tiny_sweep(local)
    remote = Storage.open(f"s3://{BUCKET}/sweeps/run1")
    for name in ("results.parquet", "sweep.json"):
        remote.write_atomic(name, (local / name).read_bytes())
    a, b = load_results(local), load_results(remote.uri)
    pd.testing.assert_frame_equal(a, b)
    assert b.attrs == a.attrs and b.attrs["objectives"] == {"accuracy": "max", "size_bytes": "min"}
    assert sweep_meta(remote.uri)["name"] == "tiny"
    from slimtune.cli import main

    capsys.readouterr()
    assert main(["results", remote.uri, "--pareto", "--format", "csv"]) == 0
    assert pd.read_csv(io.StringIO(capsys.readouterr().out))["trial_id"].tolist() == ["t2"]
    # plot and report read the URI; by default they write beside the sweep, there
    assert main(["plot", remote.uri]) == 0 and main(["report", remote.uri]) == 0
    assert capsys.readouterr().out.split() == [remote.uri_of("pareto.png"), remote.uri_of("report.html")]
    assert remote.read_bytes("pareto.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny" in remote.read_bytes("report.html").decode()
    assert main(["plot", remote.uri, "--out", str(tmp_path / "p.png")]) == 0 and (tmp_path / "p.png").is_file()
    with pytest.raises(SpecError, match=r"^path: must be a sweep folder \(holding sweep.json\)"):
        load_results(f"s3://{BUCKET}/sweeps/none")
    with pytest.raises(SpecError, match=r"^path: bucket 'absent-bucket' must exist"):
        load_results("s3://absent-bucket/sweeps/run1")


def test_process_check_is_light_for_cluster():
    """cluster uses search.lease's one process check; `cluster down` must still not load Ray or torch."""
    code = ("import os, sys, slimtune.cluster._state as s; assert s.alive({'pid': os.getpid()}); "
            "print(','.join(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""


def test_lease_renews_itself_while_held(s3_endpoint):
    store = Storage.open(f"s3://{BUCKET}/lease-renew")
    with Lease(store, ttl=3.0) as mine:
        first = mine.holder()["heartbeat"]
        deadline = time.monotonic() + 60
        while mine.holder()["heartbeat"] < first + 3.0:  # held past its first ttl: only renewals keep it fresh
            assert time.monotonic() < deadline, "the lease was not renewed past its ttl"
            time.sleep(0.1)
        with pytest.raises(SpecError, match="must not be in use"):
            Lease(store, ttl=3.0).__enter__()
        assert mine.lost is None
    assert not store.exists(".lock")


def test_storage_pickles_without_credentials(s3_endpoint):
    import pickle

    store = Storage.open(f"s3://{BUCKET}/pickled")
    store.write_atomic("a", b"1")
    blob = pickle.dumps(store)
    assert PLANTED.encode() not in blob and PLANTED not in store.uri
    assert pickle.loads(blob).read_bytes("a") == b"1"  # as a Ray worker would: credentials from its env


@pytest.mark.parametrize(("argv", "expect"), [
    (["sweep", str(ROOT / "examples" / "digits.yaml"), "--out", "hdfs://nn/run"],
     "out: storage scheme must be one of"),
    (["sweep", str(ROOT / "examples" / "digits.yaml"), "--out", "s3://KEY:PLANTEDSECRET@b/run"],
     "out: a storage URI must not carry credentials"),
    (["resume", "s3://KEY:PLANTEDSECRET@b/run"], "path: a storage URI must not carry credentials"),
    (["sweep", str(ROOT / "examples" / "digits.yaml"), "--out", "s3://b/run?secret_key=PLANTEDSECRET"],
     "out: a storage URI must not carry credentials"),
])
def test_sweep_to_a_bad_uri_is_refused_before_anything_is_written(argv, expect, tmp_path, monkeypatch, capsys):
    """An unsupported scheme or credentials in the URI: exit 2, one line, no secret echoed, and
    no local folder named `s3:` (sweeps to s3:// itself: tests/test_object_storage.py)."""
    from slimtune.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1 and "PLANTEDSECRET" not in err
    assert list(tmp_path.iterdir()) == []


def test_warm_start_reads_an_earlier_sweep_from_s3(s3_endpoint, tmp_path):
    import optuna

    from slimtune.search.searcher.observe import warm_start
    from slimtune.spaces import parse_spec

    local = tmp_path / "earlier"
    tiny_sweep(local)
    remote = Storage.open(f"s3://{BUCKET}/sweeps/earlier")
    for name in ("results.parquet", "sweep.json"):
        remote.write_atomic(name, (local / name).read_bytes())
    spec = parse_spec({"name": "later", "task": {"dataset": "digits", "model": "mlp", "epochs": 1},
                       "space": {"lr": {"log_uniform": [1e-3, 3e-2]}, "batch_size": 64, "depth": 1, "width": 16},
                       "search": {"trials": 2, "sampler": "random", "seed": 0}})
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert warm_start(study, spec, remote.uri) == (1, 0)  # the earlier front: t2 alone
    [queued] = study.trials
    assert queued.user_attrs["warm_start_from"] == remote.uri
    assert study.ask().suggest_float("lr", 1e-3, 3e-2, log=True) == pytest.approx(0.03)


def test_local_lease_has_exactly_one_winner_under_a_race(tmp_path):
    import threading

    store = Storage.open(tmp_path)
    barrier, won, refused = threading.Barrier(8), [], []

    def take() -> None:
        lease = Lease(store)
        barrier.wait()
        try:
            won.append(lease.__enter__())
        except SpecError:
            refused.append(lease)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert won[0].holder()["owner"] == won[0].owner
    won[0].__exit__(None, None, None)
    assert names(store) == []  # no lock, no temporary file left


def test_cluster_storage_uri_with_credentials_is_refused_without_echoing_them(tmp_path, monkeypatch, capsys):
    """`cluster up` and `submit` take a URI, never one carrying credentials: one line, nothing started or written."""
    from slimtune.cli import main
    from slimtune.cluster._jobs import _storage

    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["cluster", "up", "--storage", "s3://AKIAPLANTED:PLANTEDSECRET@b/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "storage: a storage URI must not carry credentials" in err and "PLANTEDSECRET" not in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SpecError, match="storage: a storage URI must not carry credentials") as exc:
        _storage("s3://b/x?secret_key=PLANTEDSECRET", None)
    assert "PLANTEDSECRET" not in str(exc.value)


def test_cluster_process_records_use_the_one_check():
    """cluster/_state records {pid, start_time}, sees the process alive, terminates it and sees it gone."""
    from slimtune.cluster import _state

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    rec = {"pid": child.pid, "start_time": _state.start_time(child.pid)}
    assert rec["start_time"] is not None and _state.alive(rec)
    assert not _state.alive({**rec, "start_time": "1"}) or rec["start_time"] == "?"  # a reused pid
    assert _state.terminate([rec], timeout=20) == 1
    assert not _state.alive(rec)  # gone, and reaped by the check (it was our child)
    assert child.poll() is not None
