"""One Ray instance for the whole test session; tiny data; few epochs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


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
