"""A real two-node Ray cluster on this machine, driven through the CLI and the Jobs API only.

These tests never call ``ray.init`` in the pytest process: the cluster is ``ray start --block``
child processes (started by ``slimtune cluster up``) with their own ports, temp dirs and token,
so they work whether or not another test's in-process Ray is running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml

from slimtune import cluster
from slimtune.cli import main
from slimtune.search import load_results

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

TINYNET = '''
import math
import time

from torch import nn


def build(config):
    """A user model hook: it must travel with the job to the driver and to both nodes."""
    time.sleep(config["nap"])  # a trial as slow as real training: actors on both nodes get work
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(config["input_shape"]), int(config["width"])),
                         nn.ReLU(), nn.Linear(int(config["width"]), int(config["output_dim"])))
'''


def _spec(folder: Path, name: str, trials: int, nap: float = 3.0) -> Path:
    """A digits sweep whose trials take at least ``nap`` seconds, 1 CPU each, 2 at a time."""
    spec = {
        "name": name,
        "task": {"dataset": "digits", "model": "tinynet:build", "epochs": 2},
        "space": {"lr": {"log_uniform": [3e-3, 3e-2]}, "batch_size": 64, "depth": 1, "width": {"choice": [16, 32]},
                  "nap": nap},
        "search": {"trials": trials, "concurrency": 2, "sampler": "random", "seed": 0, "retries": 2},
        "resources": {"cpu": 1, "gpu": 0},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    (folder / "tinynet.py").write_text(TINYNET)  # user code travels in the job's working_dir
    return folder / "spec.yaml"


def _report(capsys, line: str) -> None:
    with capsys.disabled():  # a measurement, shown with -s
        print(line)


def _out(capsys) -> str:
    return capsys.readouterr().out


def _submit(capsys, spec: Path, *extra: str) -> str:
    assert main(["submit", str(spec), *extra]) == 0
    sweep_id = _out(capsys).splitlines()[0].strip()
    assert sweep_id.startswith(yaml.safe_load(spec.read_text())["name"] + "-")
    return sweep_id


def _status(capsys, sweep_id: str) -> tuple[str, str]:
    rc = main(["status", sweep_id])
    lines = _out(capsys).splitlines()
    assert rc in (0, 1) and lines[0].startswith(f"{sweep_id}: "), lines
    return lines[0].split(": ", 1)[1], "\n".join(lines)


def _wait(capsys, sweep_id: str, until=lambda st, text: st in TERMINAL, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st, text = _status(capsys, sweep_id)
        if until(st, text):
            return st
        assert st not in TERMINAL, f"sweep ended ({st}) before the awaited state:\n{text}"
        time.sleep(1.0)
    raise AssertionError(f"sweep {sweep_id} still {st} after {timeout}s:\n{text}")


def _wait_driver_gone(sweep_id: str, timeout: float = 60) -> None:
    """Until the sweep's driver process (it runs on the head, this machine) has exited."""
    record, jobs = cluster._jobs._find(sweep_id)
    driver = jobs.get_job_info(record["job_id"]).driver_info
    assert driver is not None, f"the cluster knows no driver of {sweep_id}"
    deadline = time.monotonic() + timeout
    while cluster._state.alive({"pid": int(driver.pid)}):
        assert time.monotonic() < deadline, f"the driver of {sweep_id} (pid {driver.pid}) still runs"
        time.sleep(0.2)


def _nodes(head: dict) -> dict[str, dict]:
    """node-id prefix (as in the results' ``node`` column) -> the node, from the dashboard's state API."""
    token = Path(head["token"]["path"]).read_text().strip()
    r = requests.get(head["dashboard"] + "/api/v0/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    return {n["node_id"][:8]: n for n in r.json()["data"]["result"]["result"]}


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """``slimtune cluster up --workers 1``: a head and one worker node, 1 CPU each, free ports."""
    home = tmp_path_factory.mktemp("slimtune-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMTUNE_HOME", str(home))
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(home / "token"))  # created by `cluster up`, never ~/.ray
        for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            mp.delenv(var, raising=False)
        t0 = time.monotonic()
        rc = main(["cluster", "up", "--workers", "1", "--num-cpus", "1", "--port", "0", "--dashboard-port", "0",
                   "--object-store-memory", str(100 * 2**20)])
        record = cluster.recorded()
        try:
            assert rc == 0, "cluster up failed"
            print(f"cluster up: {time.monotonic() - t0:.1f}s")
            yield record
        finally:
            record = cluster.recorded() or record
            main(["cluster", "down"])
            for node in [record["head"], *record["workers"]] if record else []:
                assert not cluster._state.alive(node), f"node process {node['pid']} outlived `cluster down`"
            if record:
                shutil.rmtree(record["temp_dir"], ignore_errors=True)


# --- launcher configs (no cluster) ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["local", "aws", "gcp"])
def test_launcher_configs_pass_rays_validator(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster" / f"{name}.yaml").read_text())
    config = prepare_config(raw)  # what `ray up` does before launching: defaults, then the schema
    validate_config(config)
    text = json.dumps(raw)
    assert "pip install torch==2.13.0" in text and "slimtune" in " ".join(raw["setup_commands"])
    for cmd in raw["head_start_ray_commands"][-1:] + raw["worker_start_ray_commands"][-1:]:
        assert "RAY_AUTH_MODE=token" in cmd
    assert "--dashboard-host=127.0.0.1" in raw["head_start_ray_commands"][-1]
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    if name != "local":  # cloud: CPU and GPU worker types, each autoscaling between min and max
        types = config["available_node_types"]
        assert {"cpu", "gpu"} <= set(types)
        assert types["gpu"]["resources"]["GPU"] == 1
        for t in ("cpu", "gpu"):
            assert 0 <= types[t]["min_workers"] < types[t]["max_workers"] <= config["max_workers"]
        assert "cu128" in " ".join(types["gpu"]["worker_setup_commands"])


def test_the_validator_is_not_vacuous():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    raw["available_node_types"]["gpu"]["min_worker"] = 1  # typo: an unknown key
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(raw))


def test_kuberay_manifest_structure():
    m = yaml.safe_load((ROOT / "cluster" / "kuberay.yaml").read_text())
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayCluster" and m["metadata"]["name"]
    spec = m["spec"]
    assert spec["rayVersion"].startswith("2.60") and spec["enableInTreeAutoscaling"] is True
    groups = spec["workerGroupSpecs"]
    assert {g["groupName"] for g in groups} == {"cpu", "gpu"}
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in groups]
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and "rayStartParams" in g
    gpu = next(g for g in groups if g["groupName"] == "gpu")["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    for pod in pods:
        (c,) = pod["containers"]
        assert c["image"].startswith("rayproject/ray:2.60.0-py311")
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        assert "pip install torch==2.13.0" in c["args"][0] and "$KUBERAY_GEN_RAY_START_CMD" in c["args"][0]
        assert c["volumeMounts"][0]["mountPath"] == "/mnt/slimtune"
    assert m["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"


# --- bad input (no cluster) -----------------------------------------------------------------------

def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from slimtune.cluster._local import free_port

    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = _spec(tmp_path / "s", "t-bad", 2)
    nowhere = f"http://127.0.0.1:{free_port()}"
    cases = [  # bad input exits 2; a dashboard that does not answer is a runtime failure, exit 1
        (["submit", str(tmp_path / "missing.yaml"), "--address", nowhere], "spec", 2),
        (["submit", str(spec)], "address", 2),  # no --address, no RAY_ADDRESS, no recorded cluster
        (["submit", str(spec), "--address", nowhere], "address", 1),
        (["submit", str(spec), "--address", nowhere, "--working-dir", str(tmp_path / "elsewhere")], "working_dir", 2),
        (["status", "no-such-sweep", "--address", nowhere], "address", 1),
        (["results", "no-such-sweep"], "path", 2),
        (["cluster", "up", "no-such-launcher.yaml"], "config", 2),
    ]
    for argv, field, code in cases:
        capsys.readouterr()
        assert main(argv) == code, argv
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("slimtune:")]
        assert len(err) == 1 and err[0].startswith(f"slimtune: error: {field}"), (argv, err)
    with pytest.raises(Exception, match="sweep folder or a sweep id"):
        cluster.resolve_results_path("no-such-sweep")
    assert cluster.resolve_results_path(str(tmp_path)) == str(tmp_path)  # a path passes through


# --- layering -------------------------------------------------------------------------------------

def test_cluster_is_light_and_only_the_cli_imports_it():
    import subprocess
    import sys

    code = ("import sys, slimtune.cluster, slimtune.cli; "
            "print(','.join(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == ""  # `slimtune cluster down` and `--help` never load Ray or torch
    for pkg in ("spaces", "compress", "search"):
        for f in (ROOT / pkg).rglob("*.py"):
            text = f.read_text()
            imports_cluster = r"^\s*(import|from) (slimtune\.)?cluster\b|from slimtune import cluster"
            assert not re.search(imports_cluster, text, re.M), f


# --- a real cluster -------------------------------------------------------------------------------

@pytest.mark.slow
def test_token_auth_is_on(head, capsys, monkeypatch):
    token_file = Path(head["token"]["path"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert requests.get(head["dashboard"] + "/api/jobs/", timeout=30).status_code == 401
    assert main(["list"]) == 0  # the recorded head and its token
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")  # Ray's first token source wins
    capsys.readouterr()
    assert main(["list"]) == 2
    assert "token" in capsys.readouterr().err
    assert head["dashboard"].startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_one_cluster_at_a_time_and_unknown_sweeps(head, capsys):
    for argv, field in [(["cluster", "up", "--port", "0", "--dashboard-port", "0"], "cluster"),
                        (["status", "no-such-sweep"], "sweep"), (["logs", "no-such-sweep"], "sweep"),
                        (["stop", "no-such-sweep"], "sweep")]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("slimtune:")]
        assert len(err) == 1 and err[0].startswith(f"slimtune: error: {field}"), (argv, err)
    assert cluster.recorded()["head"]["pid"] == head["head"]["pid"]  # the running cluster is untouched


@pytest.mark.slow
def test_submit_runs_trials_on_both_nodes(head, tmp_path, capsys):
    spec = _spec(tmp_path / "work", "t-twonodes", trials=4, nap=5.0)
    t0 = time.monotonic()
    sweep_id = _submit(capsys, spec, "--address", head["dashboard"])
    assert time.monotonic() - t0 < 60  # returns at once, while the sweep runs
    assert _wait(capsys, sweep_id) == "SUCCEEDED"
    _report(capsys, f"4-trial sweep on 2 nodes: {time.monotonic() - t0:.1f}s")
    st, text = _status(capsys, sweep_id)
    assert "trials 4/4 finished (4 ok, 0 failed)" in text and "front " in text

    out = cluster.resolve_results_path(sweep_id)  # what `slimtune results <id>` reads
    assert Path(out).parent == Path(head["storage"])
    df = pd.read_parquet(Path(out) / "results.parquet")
    assert len(df) == 4 and (df["status"] == "ok").all(), df["error"].tolist()
    nodes = _nodes(head)
    used = {n.split("/")[-1] for n in df["node"]}
    assert len(used) == 2 and used <= set(nodes), (used, list(nodes))
    assert {nodes[u]["is_head_node"] for u in used} == {True, False}
    assert load_results(out)["trial_id"].is_unique

    assert main(["list"]) == 0
    listing = _out(capsys)
    assert sweep_id in listing and "SUCCEEDED" in listing
    assert main(["logs", sweep_id]) == 0
    assert "trained trials 4/4 finished" in _out(capsys)


@pytest.mark.slow
def test_stop_ends_the_sweep_and_keeps_finished_trials(head, tmp_path, capsys):
    spec = _spec(tmp_path / "work", "t-stop", trials=12)
    sweep_id = _submit(capsys, spec)  # no --address: the head `cluster up` recorded
    _wait(capsys, sweep_id, until=lambda st, text: "trials 0/" not in text and "no results" not in text)
    assert main(["stop", sweep_id]) == 0
    assert f"{sweep_id}: STOPPED" in _out(capsys)
    st, text = _status(capsys, sweep_id)
    assert st == "STOPPED"
    df = load_results(cluster.resolve_results_path(sweep_id))
    done = df[df["status"] == "ok"]
    assert 1 <= len(done) < 12 and done["accuracy"].between(0, 1).all()
    _wait_driver_gone(sweep_id)  # the driver alone writes results: once it is gone, nothing more is written
    assert len(load_results(cluster.resolve_results_path(sweep_id))) == len(df)
    assert main(["list", "--format", "json"]) == 0
    rows = {r["id"]: r for r in json.loads(_out(capsys))}
    assert rows[sweep_id]["status"] == "STOPPED"


@pytest.mark.slow
def test_worker_node_dies_mid_sweep_and_the_sweep_finishes(head, tmp_path, capsys):
    """Kill the worker node while it runs trials: they are retried on the head, nothing finished is lost."""
    budget = 6
    spec = _spec(tmp_path / "work", "t-nodedeath", trials=budget, nap=5.0)
    sweep_id = _submit(capsys, spec)
    out = Path(cluster.resolve_results_path(sweep_id))
    nodes = _nodes(head)
    worker_id = next(k for k, n in nodes.items() if not n["is_head_node"] and n["state"] == "ALIVE")

    def worker_finished_one(st, text):
        if not (out / "results.parquet").is_file():
            return False
        df = pd.read_parquet(out / "results.parquet")
        return bool(df["node"].fillna("").str.endswith(worker_id).any())

    # The worker just finished a trial, so Tune hands it the next one: kill the node under it.
    _wait(capsys, sweep_id, until=worker_finished_one)
    before = pd.read_parquet(out / "results.parquet")
    follow: list[str] = []  # `logs --follow`, in a thread, into its own buffer
    tail = threading.Thread(target=cluster.logs, args=(sweep_id,), kwargs={"follow": True, "write": follow.append},
                            daemon=True)
    tail.start()
    worker = head["workers"][0]
    os.kill(worker["pid"], signal.SIGKILL)  # the node crashes: its `ray start --block` and its Ray processes
    t_kill = time.monotonic()
    deadline = time.monotonic() + 60
    while cluster._state.alive(worker):
        assert time.monotonic() < deadline, "the killed worker node's process is still there"
        time.sleep(0.1)
    deadline = time.monotonic() + 60
    while _nodes(head)[worker_id]["state"] != "DEAD":
        assert time.monotonic() < deadline, "the cluster never saw the worker node die"
        time.sleep(1)

    assert _wait(capsys, sweep_id) == "SUCCEEDED"
    _report(capsys, f"after the worker died: {time.monotonic() - t_kill:.1f}s to finish")
    tail.join(timeout=60)
    assert not tail.is_alive(), "`logs --follow` did not return when the sweep ended"
    assert f"trained trials {budget}/{budget} finished" in "".join(follow)

    df = load_results(out)
    assert len(df) == budget and (df["status"] == "ok").all(), df["error"].tolist()
    # No finished trial lost: every row written before the kill is still there, unchanged.
    after = df.set_index("trial_number")
    for _, row in before.iterrows():
        assert after.loc[row["trial_number"], "trial_id"] == row["trial_id"]
        assert after.loc[row["trial_number"], "accuracy"] == row["accuracy"]
    # Trials lost with the node were retried (Ray's FailureConfig, search.retries) and finished on the head.
    errors = list((out / "ray").glob("*/*/error.txt"))
    assert errors, "no trial was on the worker node when it died"
    for e in errors:  # Ray's own failure (the actor and its node went away), not an error the trial raised
        text = e.read_text()
        assert "actor" in text and ("died" in text or "unavailable" in text), text
    head_id = next(k for k, n in _nodes(head).items() if n["is_head_node"])
    retried = [json.loads((e.parent / "params.json").read_text())["trial_number"] for e in errors]
    assert set(after.loc[retried, "node"].str.split("/").str[-1]) == {head_id}
