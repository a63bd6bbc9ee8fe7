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
