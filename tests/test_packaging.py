"""slimtune installs one import name, ``slimtune``, and lives beside packages that have its layers' names.

The layers' folders (``spaces/``, ``compress/``, ``search/``, ``cluster/``) stay at the repository's top
level but install as ``slimtune.spaces`` and so on. Two packages of the index that own such names,
Hugging Face's ``spaces`` and ``compress`` (``tests/fixtures/wheels``, as the index serves them), are
installed in a fresh venv beside a slimtune wheel built from this checkout: each imports and works,
and uninstalling slimtune leaves their files as they were. Offline: the venv borrows slimtune's
dependencies (torch, numpy, ...) from the running interpreter's site-packages through a ``.pth`` line.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "tests" / "fixtures" / "wheels"
SOURCES = ("pyproject.toml", "README.md", "slimtune", "spaces", "compress", "search", "cluster")

pytestmark = pytest.mark.slow


def _run(*cmd: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of this checkout's package sources (builds write build/ and egg-info there, not here)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    """A slimtune wheel built from the copy."""
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source,
         cwd=source)
    (found,) = dist.glob("slimtune-*.whl")
    return found


def test_the_wheel_installs_only_the_slimtune_import_name(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top = {n.split("/")[0] for n in names}
        dist_info = next(n for n in top if n.endswith(".dist-info"))
        assert top == {"slimtune", dist_info}, top
        assert z.read(f"{dist_info}/top_level.txt").decode().split() == ["slimtune"]
    for layer in ("spaces", "compress", "search", "cluster"):
        assert f"slimtune/{layer}/__init__.py" in names, layer
    assert "slimtune/cluster/aws.yaml" in names  # package data travels with its layer
    assert "slimtune/search/searcher/study_searcher.py" in names


def _hashes(site: Path, package: str) -> dict[str, str]:
    return {str(p.relative_to(site)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((site / package).rglob("*.py"))}


USE_BOTH = """
import spaces, compress
from slimtune.spaces import parse_spec
from slimtune import compress as slim_compress, load_spec

@spaces.GPU
def plus_one(x):
    return x + 1

assert plus_one(1) == 2, "Hugging Face's spaces.GPU works"
assert compress.__short_description__ == "Package short description.", "the index's compress is imported"
assert parse_spec({"name": "t", "task": {"dataset": "digits"}}).task.dataset == "digits"
model = slim_compress.build_model({"arch": "mlp", "input_shape": [8], "output_dim": 3, "depth": 1, "width": 4})
small = slim_compress.compress(model, slim_compress.AffineQuantize(bits=4))
blob = slim_compress.save(small, "m.slim")
import torch
x = torch.randn(5, 8)
assert torch.equal(slim_compress.load("m.slim")(x), slim_compress.load("m.slim")(x))
print("both", spaces.__file__, compress.__file__, slim_compress.__file__)
"""

USE_OTHERS = """
import importlib.util
import spaces, compress
assert spaces.GPU(lambda: 7)() == 7 and compress.__short_description__
assert importlib.util.find_spec("slimtune") is None
print("others")
"""


def test_slimtune_installs_beside_the_index_packages_named_like_its_layers(wheel, source, tmp_path):
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
                .stdout.strip())
    # slimtune's own dependencies come from the running interpreter's site-packages, appended after the
    # venv's own (so the venv's packages win, and no network is needed).
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = (py, "-m", "pip", "install", "-q", "--no-deps", "--no-index")
    _run(*pip, *sorted(WHEELS.glob("*.whl")), cwd=tmp_path)
    before = {pkg: _hashes(site, pkg) for pkg in ("spaces", "compress")}

    _run(*pip, wheel, cwd=tmp_path)
    assert {pkg: _hashes(site, pkg) for pkg in ("spaces", "compress")} == before  # nothing overwritten
    out = _run(py, "-c", USE_BOTH, cwd=tmp_path).stdout.split()
    assert out[0] == "both"
    assert out[1] == str(site / "spaces" / "__init__.py") and out[2] == str(site / "compress" / "__init__.py")
    assert out[3] == str(site / "slimtune" / "compress" / "__init__.py")

    _run(py, "-m", "pip", "uninstall", "-y", "-q", "slimtune", cwd=tmp_path)
    assert not (site / "slimtune").exists()
    assert {pkg: _hashes(site, pkg) for pkg in ("spaces", "compress")} == before  # nothing deleted
    assert _run(py, "-c", USE_OTHERS, cwd=tmp_path).stdout.strip() == "others"

    # An editable install (what a contributor has) resolves the same way: theirs top-level, ours under slimtune.
    # It builds offline with the running interpreter's setuptools (borrowed), not the venv's older own one.
    _run(py, "-m", "pip", "uninstall", "-y", "-q", "setuptools", cwd=tmp_path)
    _run(*pip, "--no-build-isolation", "-e", source, cwd=tmp_path)
    out = _run(py, "-c", USE_BOTH, cwd=tmp_path).stdout.split()
    assert out[1:3] == [str(site / "spaces" / "__init__.py"), str(site / "compress" / "__init__.py")], out
    assert out[3] == str(source / "compress" / "__init__.py"), out
    _run(py, "-m", "pip", "uninstall", "-y", "-q", "slimtune", cwd=tmp_path)
    assert {pkg: _hashes(site, pkg) for pkg in ("spaces", "compress")} == before
