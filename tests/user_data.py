"""User datasets for `task.dataset: module:function` hooks (used by tests/test_data.py)."""

from __future__ import annotations

from sklearn.datasets import make_blobs


def blobs():
    """Three Gaussian blobs: x (60, 4) float, y (60,) int in 0..2."""
    x, y = make_blobs(n_samples=60, centers=3, n_features=4, random_state=0)
    return x, y


def bad():
    """Not (x, y): the loader must refuse it."""
    return "not a dataset"
