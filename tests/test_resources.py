"""A trial that asks for more than any node has fails at once (exit 2, one line), never waits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slimtune.search.driver.checks import check_fits
from slimtune.spaces import SpecError, parse_spec
from tests.test_sweep import digits_spec

ROOT = Path(__file__).resolve().parents[1]


def _spec(cpu: float, gpu: float):
    return parse_spec(digits_spec(resources={"cpu": cpu, "gpu": gpu}))


@pytest.mark.parametrize("cpu,gpu,field", [(1, 0.5, "resources.gpu"), (1, 1, "resources.gpu"),
                                           (4, 0, "resources.cpu")])
def test_a_request_no_node_meets_names_the_field_and_the_largest_node(cpu, gpu, field):
    with pytest.raises(SpecError) as err:
        check_fits(_spec(cpu, gpu), [{"CPU": 2.0, "GPU": 0.0}], "this machine")
    text = str(err.value)
    assert text.startswith(f"{field}: must fit on one node") and "\n" not in text
    assert ("is 0" if field == "resources.gpu" else "is 2") in text


def test_requests_that_fit_pass_and_a_pair_no_single_node_holds_is_refused():
    nodes = [{"CPU": 8.0}, {"CPU": 2.0, "GPU": 1.0}]
    check_fits(_spec(8, 0), nodes, "the Ray cluster")
    check_fits(_spec(1, 0.25), nodes, "the Ray cluster")  # fractional GPUs share one
    with pytest.raises(SpecError, match="no node of the Ray cluster has 4 CPUs and 1 GPUs together"):
        check_fits(_spec(4, 1), nodes, "the Ray cluster")


def test_gpu_on_a_machine_without_one_exits_2_in_seconds_and_writes_nothing(tmp_path):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU: the request would fit")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(digits_spec(resources={"cpu": 1, "gpu": 1})))
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "slimtune", "sweep", str(spec), "--out", str(tmp_path / "run")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stderr[-2000:]
    assert time.monotonic() - start < 60
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("slimtune: error: resources.gpu: must fit on one node")
    assert not (tmp_path / "run").exists()


def test_on_a_running_cluster_the_live_nodes_decide(ray_session, tmp_path):
    import ray

    from slimtune.search import run_sweep

    most = max(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
    start = time.monotonic()
    with pytest.raises(SpecError, match=r"^resources\.cpu: must fit on one node \(the most on one node of the Ray"):
        run_sweep(parse_spec(digits_spec(resources={"cpu": most + 1, "gpu": 0})), tmp_path / "run")
    assert time.monotonic() - start < 60
