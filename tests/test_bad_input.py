"""Bad specs and data files: exit code 2, one line naming the field, no Ray, nothing written."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

import slimtune.search.driver.drive as drive_module
from slimtune.cli import main

GOOD = {
    "name": "bad-input",
    "task": {"dataset": "digits", "model": "mlp", "epochs": 1},
    "objectives": {"accuracy": "max", "size_bytes": "min"},
    "space": {"lr": {"log_uniform": [1e-3, 1e-2]}, "batch_size": 32, "depth": 1, "width": 16},
    "compress": {"prune": {"method": "magnitude", "sparsity": 0.5}, "quantize": {"bits": 8}},
    "search": {"trials": 1, "concurrency": 1},
}


def _set(spec: dict, dotted: str, value) -> dict:
    s = copy.deepcopy(spec)
    *path, last = dotted.split(".")
    node = s
    for k in path:
        node = node.setdefault(k, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return s


_DELETE = object()


def _csv(text: str):
    return ("data.csv", text)


# (case id, spec edits {dotted: value} | raw YAML text, extra files {name: text|array}, expected field)
CASES = [
    ("malformed-yaml", "name: x\ntask: [unclosed\n", {}, "spec"),
    ("not-a-mapping", "- just\n- a list\n", {}, "spec"),
    ("unknown-top-key", {"objectvies": {"accuracy": "max"}}, {}, "objectvies"),
    ("unknown-task-key", {"task.epoch": 3}, {}, "task.epoch"),
    ("unknown-space-key", {"space.widht": 8}, {}, "space.widht"),
    ("bad-name", {"name": "../escape"}, {}, "name"),
    ("wrong-type-epochs", {"task.epochs": "ten"}, {}, "task.epochs"),
    ("empty-choice", {"space.width": {"choice": []}}, {}, "space.width"),
    ("low-gt-high", {"space.lr": {"uniform": [0.1, 0.01]}}, {}, "space.lr"),
    ("log-touching-zero", {"space.lr": {"log_uniform": [0.0, 0.1]}}, {}, "space.lr"),
    ("sparsity-one", {"compress.prune.sparsity": 1.0}, {}, "compress.prune.sparsity"),
    ("sparsity-negative", {"compress.prune.sparsity": {"uniform": [-0.1, 0.5]}}, {}, "compress.prune.sparsity"),
    ("bits-one", {"compress.quantize.bits": 1}, {}, "compress.quantize.bits"),
    ("bits-64", {"compress.quantize.bits": {"choice": [8, 64]}}, {}, "compress.quantize.bits"),
    ("unknown-objective", {"objectives.f1": "max"}, {}, "objectives.f1"),
    ("bad-direction", {"objectives.accuracy": "up"}, {}, "objectives.accuracy"),
    ("constraint-unknown-metric", {"constraints": {"flops": {"max": 10}}}, {}, "constraints.flops"),
    ("constraint-min-gt-max", {"constraints": {"size_bytes": {"min": 10, "max": 1}}}, {}, "constraints.size_bytes"),
    ("trials-zero", {"search.trials": 0}, {}, "search.trials"),
    ("unknown-sampler", {"search.sampler": "bayes"}, {}, "search.sampler"),
    ("negative-cpu", {"resources.cpu": -1}, {}, "resources.cpu"),
    ("r2-on-classification", {"objectives": {"r2": "max"}}, {}, "objectives.r2"),
    ("missing-dataset-file", {"task.dataset": "nowhere.csv"}, {}, "task.dataset"),
    ("csv-text-feature", {"task.dataset": "data.csv"},
     dict([_csv("a,colour,label\n" + "".join(f"{i},red,{i % 2}\n" for i in range(40)))]), "task.dataset"),
    ("csv-missing-label", {"task.dataset": "data.csv"},
     dict([_csv("a,b,label\n" + "".join(f"{i},{i},{'' if i == 5 else i % 2}\n" for i in range(40)))]),
     "task.target"),
    ("csv-too-few-rows", {"task.dataset": "data.csv"}, dict([_csv("a,b,label\n1,2,0\n3,4,1\n5,6,0\n")]),
     "task.dataset"),
    ("csv-unknown-target", {"task.dataset": "data.csv", "task.target": "lable"},
     dict([_csv("a,b,label\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(40)))]), "task.target"),
    ("npz-missing-y", {"task.dataset": "data.npz"}, {"data.npz": {"x": np.zeros((30, 3))}}, "task.dataset"),
    ("data-hook-not-importable", {"task.dataset": "no_such_module:load"}, {}, "task.dataset"),
    ("data-hook-wrong-type", {"task.dataset": "tests.user_data:bad"}, {}, "task.dataset"),
    ("model-hook-not-importable", {"task.model": "no_such_module:build"}, {}, "task.model"),
    ("model-hook-wrong-type", {"task.model": "tests.user_hooks:not_a_model"}, {}, "task.model"),
]


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("Ray must not start on bad input")

    monkeypatch.setattr(drive_module, "init_ray", refuse)


@pytest.mark.parametrize("case,edit,files,field", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_the_field_and_touches_nothing(tmp_path, capsys, no_ray, case, edit, files, field):
    for name, content in files.items():
        if isinstance(content, dict):
            np.savez(tmp_path / name, **content)
        else:
            (tmp_path / name).write_text(content)
    spec_path = tmp_path / "spec.yaml"
    if isinstance(edit, str):
        spec_path.write_text(edit)
    else:
        s = GOOD
        for k, v in edit.items():
            s = _set(s, k, v)
        spec_path.write_text(yaml.safe_dump(s))
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["sweep", str(spec_path), "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("slimtune:")]
    assert len(err) == 1, err
    assert err[0].startswith(f"slimtune: error: {field}:"), err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert not out.exists()


def test_an_output_folder_holding_another_sweep_is_left_untouched(tmp_path, capsys, no_ray):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text('{"name": "other"}')
    (out / "results.parquet").write_bytes(b"precious")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(GOOD))
    assert main(["sweep", str(spec_path), "--out", str(out)]) == 2
    assert "slimtune: error: --out:" in capsys.readouterr().err
    assert (out / "results.parquet").read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["results.parquet", "sweep.json"]


def test_results_of_a_folder_that_is_no_sweep(tmp_path, capsys):
    assert main(["results", str(tmp_path)]) == 2
    assert "slimtune: error: path:" in capsys.readouterr().err


def test_resume_of_a_folder_that_is_no_sweep(tmp_path, capsys, no_ray):
    assert main(["resume", str(tmp_path)]) == 2
    assert "slimtune: error: path:" in capsys.readouterr().err
