"""The README's Python example runs as written (behaviour, not wording): in a fresh process, from a
folder holding only ``examples/digits.yaml``, it sweeps, reads the results back, picks the front and
loads a working model from the front's artifact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import torch
assert len(df) > 0 and len(front) > 0, (len(df), len(front))
x = torch.zeros(3, 8, 8)
assert model(x).shape == (3, 10)
print("front-door", len(df), len(front))
"""


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    (tmp_path / "examples").mkdir()
    shutil.copy2(ROOT / "examples" / "digits.yaml", tmp_path / "examples" / "digits.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    done = subprocess.run([sys.executable, "-c", blocks[0] + CHECK], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split()[-3] == "front-door", done.stdout[-2000:]


INDEX_CHECK = """
import json, os, torch
assert model(torch.zeros(2, 8, 8)).shape == (2, 10)
assert os.path.getsize("model.onnx") < int(front.iloc[0]["dense_bytes"])
assert json.load(open("firmware/model/slimtune.json"))["c"]["flash_bytes"] > 0
print("docs-quick-start", len(df))
"""


@pytest.mark.slow
def test_the_docs_python_quick_start_runs(tmp_path):
    """The docs' home page opens with a Python quick start (at most 20 lines): it sweeps, loads a
    model and writes both compressed exports, from an empty folder (relative paths)."""
    text = (ROOT / "docs" / "index.md").read_text()
    block = re.search(r"## A sweep from Python\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 20
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    done = subprocess.run([sys.executable, "-c", block + INDEX_CHECK], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split()[-2] == "docs-quick-start", done.stdout[-2000:]
