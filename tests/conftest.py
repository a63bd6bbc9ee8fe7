"""One Ray instance for the whole test session; tiny data; few epochs.

Tests marked ``ml`` assert an ML outcome. They add the ``seed_offset`` fixture to their
seeds, so CI can run them again at other seeds (``SLIMTUNE_TEST_SEED_OFFSET``, default 0)
and other torch thread counts (``SLIMTUNE_TEST_THREADS``, default: torch's own choice).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _env_int(name: str, minimum: int) -> int | None:
    """The integer in env ``name`` (None if unset); a bad value stops pytest with one line."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise pytest.UsageError(f"{name} must be an integer >= {minimum}, but got {name}={raw!r}")
    return value


_SEED_OFFSET = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SEED_OFFSET] = _env_int("SLIMTUNE_TEST_SEED_OFFSET", 0) or 0
    threads = _env_int("SLIMTUNE_TEST_THREADS", 1)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def pytest_report_header(config: pytest.Config) -> str:
    import torch

    return f"slimtune: seed offset {config.stash[_SEED_OFFSET]}, torch threads {torch.get_num_threads()}"


@pytest.fixture(scope="session")
def seed_offset(pytestconfig: pytest.Config) -> int:
    """Added to the seeds of ``ml`` tests (env SLIMTUNE_TEST_SEED_OFFSET, default 0)."""
    return pytestconfig.stash[_SEED_OFFSET]


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    # MNIST-1D and other caches go to a per-session folder, never the user's home.
    os.environ.setdefault("SLIMTUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
