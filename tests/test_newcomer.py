"""A newcomer's first hour (issue 10, section 4): each thing a first try-out tripped on.

Two tests run a real (tiny) sweep in a subprocess, as a user would from a shell: Ctrl-C,
and a `module:function` model next to the spec (imported without PYTHONPATH; Ray's worker
output without colour; export/predict once that module is gone). The rest need no Ray.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from slimtune.cli import main
from slimtune.search import load_data, load_results, prepare
from slimtune.search.driver.progress import Reporter
from slimtune.search.results.table import SWEEP, write_results
from slimtune.spaces import IntRange, SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_COLOR_PREFIX")}
    env["PYTHONPATH"] = str(ROOT)  # slimtune itself; never the spec's folder
    return env


def _cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimtune", *args], cwd=cwd, env=_env(), capture_output=True,
                          check=False, text=True, timeout=timeout)


def _spec(folder: Path, name: str = "t", **sections) -> Path:
    raw = {"name": name, "task": {"dataset": "digits", "model": "mlp", "epochs": 1},
           "space": {"lr": {"log_uniform": [1e-3, 1e-2]}, "width": 16, "depth": 1},
           "search": {"trials": 2, "concurrency": 1, "sampler": "random", "seed": 0}}
    raw.update(sections)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _one_error_line(err: str) -> str:
    """slimtune's own one line (a user's hook may print lines of its own)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("slimtune: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- Ctrl-C -----------------------------------------------------------------------------------

def test_ctrl_c_during_a_sweep_says_so_exits_130_and_prints_the_resume_command(tmp_path):
    spec = _spec(tmp_path / "proj", "ctrl-c", task={"dataset": "digits", "model": "mlp", "epochs": 3},
                 search={"trials": 8, "concurrency": 1, "sampler": "random", "seed": 0})
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "slimtune", "sweep", str(spec), "--out", str(out), "--quiet"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 240
        for line in proc.stdout:  # plain progress: one line per finished trial
            seen.append(line)
            if "] trial " in line or time.monotonic() > deadline:
                break
        assert any("] trial " in ln for ln in seen), seen
        proc.send_signal(signal.SIGINT)
        try:
            rest, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, err = proc.communicate()
            pytest.fail(f"the driver did not exit within 180 s of SIGINT; its stderr ends: {err[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    last = [ln for ln in err.splitlines() if ln.startswith("slimtune:")]
    assert last and "interrupted" in last[-1] and f"slimtune resume {out}" in last[-1], err[-2000:]
    assert "trials finished" not in "".join(seen) + rest  # no "1/1 trials finished" as if it had ended
    assert len(load_results(out)) >= 1  # what finished is kept for `resume`


# --- a module:function model next to the spec ---------------------------------------------------

HOOKS = '''
import sys
import torch.nn as nn


def build(config):
    print("hook-model-built", file=sys.stderr, flush=True)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, config["width"]), nn.ReLU(),
                         nn.Linear(config["width"], config["output_dim"]))


def wrong_input(config):  # builds, but expects 10 features where digits has 8x8
    return nn.Sequential(nn.Flatten(), nn.Linear(10, config["output_dim"]))
'''


@pytest.fixture(scope="module")
def hook_sweep(tmp_path_factory):
    """A sweep of a model in ``proj/mynets.py`` beside the spec, run from another folder with
    PYTHONPATH holding only slimtune: (folder, completed process)."""
    base = tmp_path_factory.mktemp("hooks")
    (base / "proj").mkdir()
    (base / "proj" / "mynets.py").write_text(HOOKS)
    spec = _spec(base / "proj", "hooks", task={"dataset": "digits", "model": "mynets:build", "epochs": 1},
                 space={"lr": {"log_uniform": [1e-3, 1e-2]}, "width": {"choice": [8, 16]}},
                 compress={"quantize": {"bits": {"choice": [32, 8]}}},
                 search={"trials": 2, "concurrency": 1, "sampler": "random", "seed": 0, "ladder": 1})
    (base / "elsewhere").mkdir()
    done = _cli("sweep", str(spec), "--out", str(base / "run"), "--quiet", cwd=base / "elsewhere", timeout=600)
    return base, done


def test_a_model_beside_the_spec_imports_without_pythonpath(hook_sweep):
    base, done = hook_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    df = load_results(base / "run")
    assert (df["status"] == "ok").sum() >= 2, df[["status", "error"]]


def test_ray_worker_output_reaches_redirected_stderr_without_colour(hook_sweep):
    _, done = hook_sweep
    worker = [ln for ln in done.stderr.splitlines() if "pid=" in ln and "hook-model-built" in ln]
    assert worker, done.stderr[-3000:]  # the worker's line arrived, with Ray's prefix
    assert "\x1b" not in done.stderr and "\x1b" not in done.stdout


def test_the_final_line_counts_trained_trials_and_says_what_the_other_rows_are(hook_sweep):
    base, done = hook_sweep
    df = load_results(base / "run")
    rungs = int(df["parent"].notna().sum())
    assert rungs >= 1  # ladder: 1, so rows outnumber trainings
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("trained trials")][-1]
    assert line.startswith("trained trials 2/2 finished (2 ok, 0 failed); "), line
    assert f"{len(df)} rows ({rungs} ladder rungs)" in line, line


def test_export_and_predict_with_a_model_that_cannot_be_imported_are_one_line(hook_sweep, tmp_path):
    base, _ = hook_sweep
    run = base / "run"
    number = str(int(load_results(run).query("status == 'ok'")["trial_number"].iloc[0]))
    ok = _cli("export", str(run), "--trial", number, "--out", str(tmp_path / "m.slim"), "--trust-code", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]  # the spec's folder is importable for export too
    csv = tmp_path / "x.csv"
    pd.DataFrame(np.zeros((2, 64))).to_csv(csv, index=False)
    assert _cli("predict", str(tmp_path / "m.slim"), str(csv), "--trust-code", cwd=tmp_path).returncode == 0
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(f"c{i}" for i in range(64)) + "\n")
    empty = _cli("predict", str(tmp_path / "m.slim"), str(header_only), "--trust-code", cwd=tmp_path)
    assert empty.returncode == 2 and "at least one row" in _one_error_line(empty.stderr)
    moved = base / "proj" / "mynets.py"
    moved.rename(base / "mynets.py.away")
    try:
        for args in (["export", str(run), "--trial", number, "--out", str(tmp_path / "m.onnx"), "--trust-code"],
                     ["predict", str(tmp_path / "m.slim"), str(csv), "--trust-code"]):
            bad = _cli(*args, cwd=tmp_path)
            assert bad.returncode == 2, (args, bad.stderr[-2000:])
            assert "must be importable" in _one_error_line(bad.stderr), bad.stderr
    finally:
        (base / "mynets.py.away").rename(moved)


def test_a_model_that_builds_but_cannot_run_a_batch_is_one_line_at_validation(tmp_path):
    (tmp_path / "mynets.py").write_text(HOOKS)
    spec = parse_spec(yaml.safe_load(_spec(tmp_path, task={"dataset": "digits", "model": "mynets:wrong_input",
                                                              "epochs": 1}).read_text()))
    with pytest.raises(SpecError) as info:
        prepare(spec, tmp_path / "run", base_dir=tmp_path)
    msg = str(info.value)
    assert msg.startswith("task.model: must run on a batch of shape [2, 8, 8] (input_shape [8, 8])"), msg
    assert "\n" not in msg and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, shape", [("digits", [8, 8]), ("mnist1d", [40])])
def test_a_builtin_dataset_gives_a_model_hook_one_row_shape_as_input_shape(name, shape):
    data = load_data(parse_spec({"name": "t", "task": {"dataset": name}}).task, 0)
    assert data.input_shape == shape == list(data.x_train.shape[1:])


# --- other CLI error paths ----------------------------------------------------------------------

def test_a_csv_with_only_a_header_row_is_one_line_not_index_error(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n")
    spec = parse_spec({"name": "t", "task": {"dataset": "d.csv"}, "space": {"lr": {"uniform": [0.001, 0.01]}}})
    with pytest.raises(SpecError, match="header row only"):
        prepare(spec, tmp_path / "run", base_dir=tmp_path)


def test_output_cut_short_by_the_reader_is_not_a_broken_pipe_error(tmp_path):
    # `slimtune status ID | head -3`: the reader leaves before slimtune writes.
    proc = subprocess.Popen([sys.executable, "-m", "slimtune", "completion", "bash"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    assert proc.returncode == 0


def test_a_dashboard_that_does_not_answer_is_a_runtime_failure_exit_1(capsys, monkeypatch, tmp_path):
    from slimtune.cluster._local import free_port

    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "home"))
    assert main(["list", "--address", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "did not answer" in _one_error_line(capsys.readouterr().err)


def test_a_runtime_failure_is_one_line_exit_1_and_its_traceback_is_on_request(tmp_path, capsys, monkeypatch):
    folder = _sweep_folder(tmp_path / "sweep", ROWS)
    (tmp_path / "file").write_text("")
    argv = ["report", str(folder), "--out", str(tmp_path / "file" / "report.html")]  # under a file: OSError
    assert main(argv) == 1
    assert "Error" in _one_error_line(capsys.readouterr().err)
    monkeypatch.setenv("SLIMTUNE_DEBUG", "1")
    with pytest.raises(OSError):
        main(argv)


# --- results and progress -----------------------------------------------------------------------

def _sweep_folder(tmp_path: Path, rows: list[dict]) -> Path:
    """A sweep folder as the driver writes its table (``write_results``), without artifacts."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / SWEEP).write_text('{"name": "t", "objectives": {"accuracy": "max", "size_bytes": "min"}, '
                                  '"params": ["lr", "epochs", "bits"], "trials": 3, '
                                  '"created": "2026-01-01T00:00:00+0000"}')
    write_results(tmp_path, rows, ["lr", "epochs", "bits"])
    return tmp_path


ROWS = [
    {"trial_id": "a", "trial_number": 0, "status": "ok", "lr": 0.001, "epochs": 5, "bits": 8, "accuracy": 0.9,
     "size_bytes": 43250, "dense_bytes": 173000, "params": 4810, "feasible": True},
    {"trial_id": "a-r0", "trial_number": 3, "status": "ok", "lr": 0.001, "epochs": 5, "bits": 4, "accuracy": 0.8,
     "size_bytes": 21000, "dense_bytes": 173000, "params": 4810, "feasible": True, "parent": 0},
    {"trial_id": "b", "trial_number": 1, "status": "stopped", "lr": 0.01, "epochs": 5, "bits": 8,
     "error": "stopped early at epoch 2 (val_accuracy=0.5): smaller trials were better"},
    {"trial_id": "c", "trial_number": 2, "status": "failed", "lr": 0.02, "epochs": 5, "bits": 8,
     "error": "ValueError: boom"},
]


def test_whole_number_columns_stay_integers_when_some_rows_have_none(tmp_path, capsys):
    df = load_results(_sweep_folder(tmp_path, ROWS))
    for col in ("trial_number", "size_bytes", "dense_bytes", "params", "parent", "epochs", "bits"):
        assert str(df[col].dtype) == "Int64", (col, df[col].dtype)
    assert main(["results", str(tmp_path), "--all-columns"]) == 0
    table = capsys.readouterr().out
    assert "43250" in table and "e+0" not in table, table
    parent = table.splitlines()[0].split().index("parent")
    assert [ln.split()[parent] for ln in table.splitlines()[1:] if ln.split()[0] == "a-r0"] == ["0"], table


def test_progress_names_each_status_once_and_counts_trained_trials():
    import io

    out = io.StringIO()
    r = Reporter({"accuracy": "max", "size_bytes": "min"}, budget=3, stream=out)
    for i, row in enumerate(ROWS):
        r.trial_ended(row, ROWS[: i + 1], running=0)
    lines = out.getvalue().splitlines()
    assert lines[2].endswith("] trial 1 stopped early at epoch 2 (val_accuracy=0.5): smaller trials were better")
    assert lines[3].endswith("] trial 2 failed: ValueError: boom")
    assert "FAILED" not in out.getvalue()
    assert lines[3].startswith("[3/3 trained,")  # 3 trainings of a budget of 3; the rung is not one


# --- the spec ---------------------------------------------------------------------------------

def test_a_spec_in_which_nothing_is_searched_is_refused_before_anything_is_written(tmp_path):
    spec = parse_spec({"name": "t", "task": {"dataset": "digits"}})  # no space: 20 identical trials
    with pytest.raises(SpecError) as info:
        prepare(spec, tmp_path / "run")
    assert str(info.value).startswith("space: must search at least one parameter"), info.value
    assert not (tmp_path / "run").exists()
    one = parse_spec({"name": "t", "task": {"dataset": "digits"}, "search": {"trials": 1}})
    prepare(one, tmp_path / "one")  # a single fixed configuration is a valid run


def test_a_spec_without_space_trains_the_space_defaults_fixed():
    from slimtune.spaces import Fixed
    from slimtune.spaces._spec import SPACE_DEFAULTS

    spec = parse_spec({"name": "t", "task": {"dataset": "digits"}})
    assert dict(spec.space) == {key: Fixed(value) for key, value in SPACE_DEFAULTS.items()}
    assert spec.sample(None) == {**SPACE_DEFAULTS, "epochs": 10, "prune_method": "none", "bits": 32}


@pytest.mark.parametrize("compress, shown", [
    ({"prune": {"method": "magnitude", "sparsity": {"uniform": [0.2, 1.0]}}}, "{uniform: [0.2, 1.0]}"),
    ({"quantize": {"bits": {"choice": [32, 8, 6, 4, 1]}}}, "{choice: [32, 8, 6, 4, 1]}"),
])
def test_errors_echo_what_the_user_wrote(compress, shown):
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "t", "task": {"dataset": "digits"}, "compress": compress})
    assert f"but got {shown}" in str(info.value), info.value
    assert "Uniform(" not in str(info.value) and "Choice(" not in str(info.value)


def test_bits_int_range_means_that_many_bits():
    spec = parse_spec({"name": "t", "task": {"dataset": "digits"}, "compress": {"quantize": {"bits": {"int": [4, 8]}}}})
    assert spec.quantize.bits == IntRange(4, 8)
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {spec.sample(study.ask())["bits"] for _ in range(40)}
    assert drawn == {4, 5, 6, 7, 8}


def test_default_objectives_follow_the_task_kind_found_in_the_data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "price": x @ [1.0, 2.0, -1.0]}).to_csv(
        tmp_path / "house.csv", index=False)
    spec = parse_spec({"name": "t", "task": {"dataset": "house.csv"}, "space": {"lr": {"uniform": [0.001, 0.01]}}})
    data, _ = prepare(spec, tmp_path / "run", base_dir=tmp_path)  # no error about objectives.accuracy
    assert data.kind == "regression"
    assert spec.for_kind("regression").metric_names == ["r2", "size_bytes"]
    written = parse_spec({"name": "t", "task": {"dataset": "house.csv"}, "objectives": {"r2": "max"}})
    assert written.for_kind("regression").metric_names == ["r2"]  # what the user wrote stays


def test_run_times_are_stated_where_they_are_measured_only():
    assert not re.search(r"minute|second", (ROOT / "examples/digits.yaml").read_text())
    doc = (ROOT / "benchmarks/compression.py").read_text()
    assert len(re.findall(r"(?:about|under) \d+ minutes?", doc)) <= 1  # and if stated, only there
