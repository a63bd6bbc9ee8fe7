"""A user's own files can never shadow slimtune.

slimtune's modules all live under the one import name ``slimtune``, and the spec's folder is
*appended* to ``sys.path`` for its ``module:function`` hooks. So a project folder holding its own
``search.py``, ``compress.py``, ``cluster.py`` and ``spaces.py`` (files that raise when imported) runs a
sweep with every trial ok, even though Ray puts the driver's folder first on its workers' path. What
could still shadow slimtune is refused before Ray starts, in one line: a ``slimtune.py`` in that
folder, and a hook module beside the spec that has the name of an installed module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimtune.search import load_results, prepare
from slimtune.spaces import SpecError, parse_spec

USERS_OWN = ("search", "compress", "cluster", "spaces")

MODEL = '''
import torch.nn as nn

def build(config):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, config["width"]), nn.ReLU(),
                         nn.Linear(config["width"], config["output_dim"]))
'''


def _project(folder: Path, trials: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in USERS_OWN:
        (folder / f"{name}.py").write_text(f'raise RuntimeError("the user\'s own {name}.py was imported")\n')
    (folder / "mymodels.py").write_text(MODEL)
    raw = {"name": "shadow", "task": {"dataset": "digits", "model": "mymodels:build", "epochs": 1},
           "space": {"lr": {"log_uniform": [1e-3, 1e-2]}, "width": {"choice": [8, 16]}},
           "compress": {"prune": {"method": "magnitude", "sparsity": 0.5}, "quantize": {"bits": 8}},
           "search": {"trials": trials, "concurrency": 2, "sampler": "random", "seed": 0}}
    (folder / "spec.yaml").write_text(yaml.safe_dump(raw))
    return folder / "spec.yaml"


def _sweep(cwd: Path, *args: str, script: bool = False) -> subprocess.CompletedProcess:
    """``python -m slimtune sweep ...`` (the current folder first on the driver's path too), or with
    ``script`` the installed ``slimtune`` command, as a user types it."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    cmd = [str(Path(sys.executable).parent / "slimtune")] if script else [sys.executable, "-m", "slimtune"]
    return subprocess.run([*cmd, "sweep", *args, "--quiet"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.slow
def test_a_sweep_from_a_folder_with_files_named_like_slimtunes_layers(tmp_path):
    spec = _project(tmp_path / "proj", trials=3)
    # `python -m` also puts the current folder first on the driver's own sys.path.
    done = _sweep(tmp_path / "proj", "spec.yaml", "--out", "run")
    assert done.returncode == 0, done.stderr[-4000:]
    df = load_results(tmp_path / "proj" / "run")
    assert len(df) == 3 and (df["status"] == "ok").all(), df[["status", "error"]]
    assert "was imported" not in done.stderr + done.stdout
    assert spec.exists()


def test_a_slimtune_py_where_the_sweep_runs_is_one_line_before_ray(tmp_path):
    _project(tmp_path / "proj")
    (tmp_path / "proj" / "slimtune.py").write_text("print('my experiment notes')\n")
    done = _sweep(tmp_path / "proj", "spec.yaml", "--out", "run", script=True)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("slimtune: ")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(tmp_path / "proj" / "slimtune.py") in lines[0] and "rename it" in lines[0], lines[0]
    assert not (tmp_path / "proj" / "run").exists()


def test_a_hook_named_like_an_installed_module_is_refused_by_name(tmp_path):
    (tmp_path / "yaml.py").write_text(MODEL)  # PyYAML is installed: `yaml:build` would import it, not this
    spec = parse_spec({"name": "t", "task": {"dataset": "digits", "model": "yaml:build", "epochs": 1},
                       "space": {"width": 8}, "search": {"trials": 1}})
    with pytest.raises(SpecError) as info:
        prepare(spec, tmp_path / "run", base_dir=tmp_path)
    msg = str(info.value)
    assert msg.startswith("task.model: the module 'yaml' beside the spec must not share its name"), msg
    assert "rename yaml.py" in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()


def test_a_hook_beside_the_spec_does_not_shadow_what_is_installed(tmp_path):
    """Appended, not prepended: after a sweep's folder is made importable, a file there named like
    an installed module does not replace it in the process."""
    import json

    from slimtune.search.task.data import importable

    (tmp_path / "json.py").write_text("raise RuntimeError('shadowed')\n")
    importable(tmp_path)
    try:
        import importlib.util

        assert importlib.util.find_spec("json").origin == json.__file__
        assert sys.path[-1] == str(tmp_path)
    finally:
        sys.path.remove(str(tmp_path))


def test_submit_refuses_a_working_dir_with_a_slimtune_py_before_any_cluster(tmp_path):
    """Ray puts a job's working_dir first on the path of its driver and workers."""
    from slimtune import cluster

    spec = _project(tmp_path / "proj")
    (tmp_path / "proj" / "slimtune.py").write_text("")
    with pytest.raises(SpecError) as info:
        cluster.submit(str(spec), address="http://127.0.0.1:1")  # nothing listens there: never reached
    assert str(info.value).startswith(str(tmp_path / "proj" / "slimtune.py")), info.value
