"""Sweeps written to object storage: a real S3 API (moto_server on loopback, the fixture of
test_storage), the slimtune CLI run as a subprocess (its own local Ray, whose workers get their
credentials from the standard AWS variables of their environment, as on any node).

A sweep to ``s3://`` writes nothing locally; results, plot, report, export, load_model and
``compress.load`` read it back from the URI; every artifact object's length is its row's
``size_bytes``; no stored object holds the session's secret. A driver SIGKILLed mid-sweep is
resumed from the URI with no finished trial lost or doubled and the budget met.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pyarrow.fs as pafs
import pytest
import yaml

from slimtune.cli import main
from slimtune.search import load_results
from slimtune.search.storage import Storage
from tests.test_resume import _wait_rows
from tests.test_storage import BUCKET, PLANTED, names, s3_endpoint  # noqa: F401 - the module's moto_server fixture

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("s3_endpoint")  # one moto_server for the module, AWS_* pointing at it


def spec(name: str, trials: int, epochs: int = 1, concurrency: int = 1) -> dict:
    return {
        "name": name,
        "task": {"dataset": "digits", "model": "mlp", "epochs": epochs},
        "space": {"lr": {"log_uniform": [3e-3, 3e-2]}, "batch_size": 64, "depth": 1,
                  "width": {"choice": [16, 32]}},
        "compress": {"prune": {"method": {"choice": ["none", "magnitude"]}, "sparsity": {"uniform": [0.3, 0.9]}},
                     "quantize": {"bits": {"choice": [32, 8]}}},
        "search": {"trials": trials, "concurrency": concurrency, "sampler": "tpe", "seed": 0},
    }


def write_spec(folder: Path, s: dict) -> Path:
    path = folder / f"{s['name']}.yaml"
    path.write_text(yaml.safe_dump(s))
    return path


def cli(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    """``slimtune ARGS`` in a fresh process (and a fresh local Ray), in folder ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "slimtune", *args], cwd=cwd, env=env, start_new_session=True,
                            **kw)


def objects(store: Storage) -> dict[str, bytes]:
    """Every object under the storage's root, by path relative to it."""
    infos = store.fs.get_file_info(pafs.FileSelector(store.root, recursive=True, allow_not_found=True))
    return {i.path[len(store.root) + 1:]: store.read_bytes(i.path[len(store.root) + 1:])
            for i in infos if i.type == pafs.FileType.File}


def assert_artifacts_match(store: Storage, df: pd.DataFrame) -> None:
    ok = df[df["status"] == "ok"]
    assert len(ok)
    for _, row in ok.iterrows():
        assert store.size(row["artifact"]) == int(row["size_bytes"]), row["trial_id"]


def study_of(store: Storage, name: str, tmp: Path) -> optuna.Study:
    db = tmp / f"{name}-{time.monotonic_ns()}.db"  # a fresh copy each time
    db.write_bytes(store.read_bytes("study.db"))
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


@pytest.mark.slow
def test_sweep_to_s3_writes_nothing_locally_and_reads_back_from_the_uri(tmp_path, capsys):
    from slimtune import compress

    uri = f"s3://{BUCKET}/sweeps/run1"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    spec_file = write_spec(tmp_path, spec("s3-run", 3))
    proc = cli("sweep", str(spec_file), "--out", uri, "--quiet", cwd=cwd, stdout=subprocess.PIPE,
               stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert f"rows in {uri}/results.parquet" in out
    assert list(cwd.iterdir()) == [], "nothing of the sweep is written to the local folder"

    store = Storage.open(uri)
    df = load_results(uri)
    assert len(df) == 3 and (df["status"] == "ok").all()
    assert_artifacts_match(store, df)
    stored = objects(store)
    assert {"sweep.json", "results.parquet", "study.db"} <= set(stored) and ".lock" not in stored
    assert sorted(k for k in stored if k.startswith("artifacts/")) == sorted(df["artifact"])
    assert not any(k.startswith("ray/") for k in stored)  # Ray Tune's own folder stays on the driver's disk
    for name, blob in stored.items():  # the session's AWS secret is never stored
        assert PLANTED.encode() not in blob, name
    assert PLANTED not in out

    # the study's snapshot holds every finished trial, with the same values as the rows
    study = study_of(store, "s3-run", tmp_path)
    done = {t.number: t for t in study.trials if t.state.is_finished()}
    assert sorted(done) == sorted(df["trial_number"])
    for _, row in df.iterrows():
        assert done[int(row["trial_number"])].values[0] == pytest.approx(row["accuracy"])

    # every reader takes the URI
    first = df.iloc[0]
    model = compress.load(store.read_bytes(first["artifact"]))
    from slimtune.search import load_model

    again = load_model(uri, int(first["trial_number"]))
    x = __import__("torch").randn(4, 64)
    assert (model(x) == again(x)).all()
    from slimtune.cluster._jobs import progress

    assert progress(uri).finished == 3  # `slimtune status <id>` of a sweep recorded at a URI
    capsys.readouterr()
    assert main(["results", uri, "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["plot", uri]) == 0 and main(["report", uri]) == 0
    assert store.read_bytes("pareto.png")[:8] == b"\x89PNG\r\n\x1a\n"
    report = store.read_bytes("report.html").decode()
    assert "could not open the study" not in report and "no study.db" not in report
    slim = tmp_path / "model.slim"
    assert main(["export", uri, "--trial", str(int(first["trial_number"])), "--out", str(slim)]) == 0
    assert slim.read_bytes() == store.read_bytes(first["artifact"])
    assert json.loads((tmp_path / "model.slim.json").read_text())["sweep"]["folder"] == uri
    onnx = tmp_path / "model.onnx"
    assert main(["export", uri, "--trial", str(int(first["trial_number"])), "--out", str(onnx)]) == 0
    from sklearn.datasets import load_digits

    pd.DataFrame(load_digits().data[:5]).to_csv(tmp_path / "x.csv", index=False, header=False)
    capsys.readouterr()
    assert main(["predict", str(slim), str(tmp_path / "x.csv")]) == 0
    assert main(["predict", str(onnx), str(tmp_path / "x.csv")]) == 0
    a, b = capsys.readouterr().out.split("prediction\n")[1:]
    assert a == b and len(a.split()) == 5
    # a second sweep into the same URI is refused: it already holds one
    assert main(["sweep", str(spec_file), "--out", uri]) == 2
    assert "must not already hold a sweep" in capsys.readouterr().err

    # extend: the study's snapshot is restored and goes on; the earlier rows are kept as they were
    proc = cli("extend", uri, "--trials", "1", "--quiet", cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
               text=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    more = load_results(uri)
    assert len(more) == 4 and sorted(more["trial_number"]) == [0, 1, 2, 3] and list(cwd.iterdir()) == []
    cols = ["trial_id", "trial_number", "status", "lr", "width", "accuracy", "size_bytes", "artifact"]
    pd.testing.assert_frame_equal(more[more["trial_id"].isin(df["trial_id"])].reset_index(drop=True)[cols], df[cols])
    assert_artifacts_match(store, more)
    assert len(study_of(store, "s3-run", tmp_path).trials) == 4


NAPNET = '''
import math
import time

from torch import nn


def build(config):
    time.sleep(config["nap"])
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(config["input_shape"]), int(config["width"])),
                         nn.ReLU(), nn.Linear(int(config["width"]), int(config["output_dim"])))
'''


def running(store: Storage, tmp: Path) -> set[int]:
    """Numbers of the trials running in the study's last snapshot."""
    try:
        study = study_of(store, "s3-kill", tmp)
    except Exception:  # no snapshot yet
        return set()
    return {t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING}


@pytest.mark.slow
def test_killed_driver_resumes_from_s3_without_loss(tmp_path, capsys):
    """SIGKILL the driver (and its local Ray) after 2 finished trials; `slimtune resume s3://…`
    restores the study's snapshot, keeps every finished trial once and meets the budget."""
    uri = f"s3://{BUCKET}/sweeps/killed"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    budget = 5
    slow = spec("s3-kill", budget, epochs=2)
    slow["task"]["model"] = "napnet:build"  # trials of >= 2 s: the kill lands mid-sweep on any machine
    slow["space"]["nap"] = 2.0
    (tmp_path / "napnet.py").write_text(NAPNET)
    proc = cli("sweep", str(write_spec(tmp_path, slow)), "--out", uri, "--quiet",
               cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = _wait_rows(uri, 2, proc, timeout=400)
        # one driver per sweep: a second is refused while the first holds the lease object
        assert main(["resume", uri]) == 2
        assert "must not be in use by another sweep driver" in capsys.readouterr().err
        store = Storage.open(uri)
        deadline = time.monotonic() + 120
        while not running(store, tmp_path) and time.monotonic() < deadline:  # kill it mid-trial
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    at_kill = running(store, tmp_path)  # in the last snapshot: the trials resume must rerun
    assert store.exists(".lock")  # left by the killed driver; resume takes it over (same host, pid gone)

    # an artifact uploaded by a trial that never reached the study (the driver died in between)
    store.write_atomic("artifacts/never-told_00000.slim", store.read_bytes(before["artifact"].iloc[0]))
    res = cli("resume", uri, "--quiet", cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = res.communicate(timeout=600)
    assert res.returncode == 0, out[-3000:]
    assert list(cwd.iterdir()) == []
    assert not store.exists(".lock")

    df = load_results(uri)
    study = study_of(store, "s3-kill", tmp_path)
    interrupted = set(study.user_attrs.get("interrupted", []))
    ended = [t for t in study.trials if t.state.is_finished() and t.number not in interrupted]
    assert len(df) == budget == len(ended), "budget met, each finished trial once"
    assert df["trial_id"].is_unique and df["trial_number"].is_unique
    assert sorted(df["trial_number"]) == sorted(t.number for t in ended)
    kept = df.set_index("trial_id")
    for _, row in before.iterrows():  # finished before the kill: kept, unchanged
        assert kept.loc[row["trial_id"], "accuracy"] == row["accuracy"]
        assert kept.loc[row["trial_id"], "size_bytes"] == row["size_bytes"]
    assert_artifacts_match(store, df)
    # an artifact stored by a trial that never reached the study is no row and counts nowhere
    stray = set(names(store, "artifacts")) - {a.split("/", 1)[1] for a in df["artifact"].dropna()}
    assert "never-told_00000.slim" in stray and not df["trial_id"].str.startswith("never-told").any()
    print(f"killed after {len(before)} ok rows; interrupted trials {sorted(interrupted)}; "
          f"artifacts no row references: {sorted(stray)}")
    assert interrupted == at_kill
    reruns = [t for t in study.trials if "rerun_of" in t.user_attrs]
    assert sorted(t.user_attrs["rerun_of"] for t in reruns) == sorted(interrupted)


def test_sweep_to_a_missing_bucket_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    spec_file = write_spec(tmp_path, spec("nobucket", 2))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    t0 = time.monotonic()
    assert main(["sweep", str(spec_file), "--out", "s3://absent-bucket/run"]) == 2
    assert time.monotonic() - t0 < 60
    err = capsys.readouterr().err.strip()
    assert err.endswith("create it first, or fix the bucket name") and len(err.splitlines()) == 1
    assert list(cwd.iterdir()) == []


def test_run_trial_stores_its_artifact_at_the_uri():
    """Without Ray: the trial function writes its artifact through the seam, and the row's
    size_bytes is the stored object's length."""
    from slimtune.search.task.data import load_data
    from slimtune.search.trial import TrialSetup, run_trial
    from slimtune.spaces import parse_spec

    s = parse_spec(spec("direct", 1))
    data = load_data(s.task, 0)
    uri = f"s3://{BUCKET}/direct"
    cfg = {"lr": 0.01, "batch_size": 64, "depth": 1, "width": 16, "epochs": 1, "seed": 3, "trial_number": 0,
           "bits": 8}
    final = run_trial(cfg, data, TrialSetup(out_dir=uri, model="mlp", kind=data.kind), report=lambda m: None)
    store = Storage.open(uri)
    assert final["artifact"] == "artifacts/local-0.slim"
    assert store.size(final["artifact"]) == final["size_bytes"]
    from slimtune import compress

    assert compress.count_params(compress.load(io.BytesIO(store.read_bytes(final["artifact"]))))[0] > 0


def test_a_trial_at_a_uri_stores_its_teacher_there_and_the_next_reads_it_back():
    """Without Ray: a distilling trial writes its dense model to the URI itself; a later trial
    reads it back from there (no node's disk involved) and distils from it."""
    from slimtune.search.task.data import load_data
    from slimtune.search.trial import TrialSetup, run_trial
    from slimtune.spaces import parse_spec

    data = load_data(parse_spec(spec("teach", 1)).task, 0)
    uri = f"s3://{BUCKET}/teach"
    setup = TrialSetup(out_dir=uri, model="mlp", kind=data.kind)
    cfg = {"lr": 0.01, "batch_size": 64, "depth": 1, "width": 16, "epochs": 1, "seed": 3, "bits": 4,
           "quant_mode": "qat", "qat_epochs": 1, "distill_weight": 0.5}
    first = run_trial({**cfg, "trial_number": 0, "teacher": None}, data, setup, report=lambda m: None)
    assert first["dense_artifact"] == "teachers/0.slim" and Storage.open(uri).is_file("teachers/0.slim")
    second = run_trial({**cfg, "trial_number": 1, "teacher": "teachers/0.slim"}, data, setup, report=lambda m: None)
    assert second["dense_artifact"] == "teachers/1.slim" and 0 <= second["accuracy"] <= 1
