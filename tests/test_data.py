"""Tests for `search.load_data`: built-in datasets, CSV / npz files and module:function hooks,
their reproducible splits, and one-line SpecErrors for bad user data."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from slimtune.search import load_data
from slimtune.spaces import Fixed, SpecError, Task

N_DIGITS = 1797


def task(dataset: str, **kw) -> Task:
    return Task(dataset=str(dataset), model="mlp", epochs=Fixed(1), **kw)


def write_csv(path: Path, header: list[str], columns: list) -> Path:
    """Write columns (numbers or strings) as a CSV with numpy; '' is an empty cell."""
    rows = np.column_stack([np.asarray(c, dtype=object) for c in columns])
    np.savetxt(path, rows, fmt="%s", delimiter=",", header=",".join(header), comments="")
    return path


def split_sizes(d) -> tuple[int, int, int]:
    return len(d.x_train), len(d.x_val), len(d.x_test)


def assert_one_line_error(info, field: str, *texts: str) -> None:
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert info.value.field == field, msg
    assert msg.startswith(f"{field}: "), msg
    for t in texts:
        assert t in msg, msg


# ---------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits0():
    return load_data(task("digits"), seed=0)


def test_digits_shapes_and_split_sizes(digits0):
    d = digits0
    assert d.kind == "classification"
    assert d.n_outputs == 10
    assert d.input_shape == [8, 8]
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert sum(split_sizes(d)) == N_DIGITS
    assert len(d.x_test) == round(N_DIGITS * 0.2)
    assert len(d.x_val) == round((N_DIGITS - len(d.x_test)) * 0.2)
    assert len(d.y_train) == len(d.x_train) and len(d.y_val) == len(d.x_val) and len(d.y_test) == len(d.x_test)
    assert set(np.unique(d.y_train)) == set(range(10))


def test_digits_split_is_a_partition_of_the_dataset(digits0):
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = (raw.images / 16.0).astype(np.float32)

    def rows(xs, ys):
        return Counter((a.tobytes(), int(b)) for a, b in zip(xs, ys))

    d = digits0
    union = rows(d.x_train, d.y_train) + rows(d.x_val, d.y_val) + rows(d.x_test, d.y_test)
    assert union == rows(x, raw.target)  # every (image, label) exactly as often as in the dataset
    test_rows = set(rows(d.x_test, d.y_test))
    unique_rows = {r for r, n in rows(x, raw.target).items() if n == 1}
    seen = set(rows(d.x_train, d.y_train)) | set(rows(d.x_val, d.y_val))
    assert not (test_rows & unique_rows & seen)  # no unique test row also appears in train/val


def test_digits_deterministic_for_a_seed(digits0):
    again = load_data(task("digits"), seed=0)
    other = load_data(task("digits"), seed=1)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(digits0, name), getattr(again, name))
    assert split_sizes(other) == split_sizes(digits0)
    assert not np.array_equal(digits0.x_test, other.x_test)
    assert not np.array_equal(digits0.y_train, other.y_train)


def test_split_fractions_are_used():
    d = load_data(task("digits", validation_split=0.5, test_split=0.1), seed=0)
    assert len(d.x_test) == round(N_DIGITS * 0.1)
    assert len(d.x_val) == round((N_DIGITS - len(d.x_test)) * 0.5)
    assert sum(split_sizes(d)) == N_DIGITS


# ---------------------------------------------------------------------------------------
# mnist1d


def test_mnist1d_published_split_keeps_global_rng_and_uses_cache(tmp_path, monkeypatch):
    import mnist1d.data

    monkeypatch.setenv("SLIMTUNE_CACHE", str(tmp_path))
    np.random.seed(1234)
    random.seed(1234)
    np_before, py_before = np.random.get_state(), random.getstate()

    d = load_data(task("mnist1d"), seed=0)

    np_after = np.random.get_state()
    assert np_after[0] == np_before[0]
    np.testing.assert_array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]
    assert random.getstate() == py_before
    assert len(d.x_test) == 1000 and len(d.y_test) == 1000
    assert len(d.x_train) + len(d.x_val) == 4000
    assert d.input_shape == [40]
    assert d.n_outputs == 10 and d.kind == "classification"
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    assert not list(tmp_path.glob("*.tmp*"))

    def no_generation(*args, **kwargs):
        raise AssertionError("the second load must read the cache, not regenerate")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    again = load_data(task("mnist1d"), seed=0)
    other_seed = load_data(task("mnist1d"), seed=5)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(d, name), getattr(again, name))
    np.testing.assert_array_equal(d.x_test, other_seed.x_test)  # the published test split ignores the seed
    assert not np.array_equal(d.x_val, other_seed.x_val)


# ---------------------------------------------------------------------------------------
# CSV

LABELS = np.array(["cat", "dog", "eel"])


def classification_csv(tmp_path: Path, n: int = 40) -> Path:
    cls = np.arange(n) % 3
    ids = np.arange(n)
    return write_csv(tmp_path / "pets.csv", ["kind_code", "row_id", "label"],
                     [cls, ids, LABELS[cls]])


def test_csv_string_labels_infer_classification(tmp_path):
    d = load_data(task(classification_csv(tmp_path)), seed=0)
    assert d.kind == "classification"
    assert d.n_outputs == 3
    assert d.input_shape == [2]
    assert split_sizes(d) == (26, 6, 8)
    assert d.y_train.dtype == np.int64
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        # labels stay with their rows: codes sorted like the label strings (cat=0, dog=1, eel=2)
        for c in range(3):
            assert np.unique(x[y == c, 0]).size == 1
        order = [x[y == c, 0][0] for c in range(3) if (y == c).any()]
        assert order == sorted(order)
    # user data is standardised with training statistics
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)


def test_csv_split_rows_are_disjoint(tmp_path):
    d = load_data(task(classification_csv(tmp_path)), seed=3)
    ids = [set(a[:, 1].tolist()) for a in (d.x_train, d.x_val, d.x_test)]
    assert sum(map(len, ids)) == 40
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_csv_float_target_infers_regression(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2))
    y = 2.0 * x[:, 0] - x[:, 1] + 0.01 * rng.normal(size=50)
    path = write_csv(tmp_path / "reg.csv", ["a", "b", "y"], [x[:, 0], x[:, 1], y])
    d = load_data(task(path), seed=0)
    assert d.kind == "regression"
    assert d.n_outputs == 1
    assert d.y_train.dtype == np.float32 and d.y_train.ndim == 1
    assert d.input_shape == [2]
    assert abs(float(d.y_train.mean())) < 1e-4  # targets standardised with training statistics


def test_csv_target_column_and_default_last_column(tmp_path):
    rng = np.random.default_rng(2)
    n = 45
    score = rng.normal(size=n)
    f = rng.normal(size=n)
    cls = np.arange(n) % 3
    path = write_csv(tmp_path / "mixed.csv", ["score", "f", "cls"], [score, f, cls])
    default = load_data(task(path), seed=0)
    assert default.kind == "classification" and default.n_outputs == 3
    assert default.input_shape == [2]
    picked = load_data(task(path, target="score"), seed=0)
    assert picked.kind == "regression" and picked.n_outputs == 1
    assert picked.input_shape == [2]
    forced = load_data(task(path, kind="regression"), seed=0)  # an explicit kind wins over inference
    assert forced.kind == "regression"


def test_csv_text_feature_column(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["size", "colour", "label"],
                     [np.arange(20), ["red"] * 20, np.arange(20) % 2])
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.dataset", "'colour'", "'red'")


def test_csv_missing_label(tmp_path):
    labels = LABELS[np.arange(20) % 3].astype(object)
    labels[2] = ""
    path = write_csv(tmp_path / "m.csv", ["a", "label"], [np.arange(20), labels])
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.target", "line 4", "'label'")


def test_csv_missing_feature_value(tmp_path):
    a = np.arange(20).astype(object)
    a[5] = ""
    path = write_csv(tmp_path / "f.csv", ["a", "label"], [a, np.arange(20) % 2])
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.dataset", "'a'", "missing")


def test_csv_too_few_rows(tmp_path):
    path = write_csv(tmp_path / "few.csv", ["a", "label"], [np.arange(5), np.arange(5) % 2])
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.dataset", "5 in all", "at least")


def test_csv_unknown_target_suggests_closest(tmp_path):
    path = classification_csv(tmp_path)
    with pytest.raises(SpecError) as info:
        load_data(task(path, target="lable"), seed=0)
    assert_one_line_error(info, "task.target", "'lable'", "did you mean 'label'")


def test_csv_single_column(tmp_path):
    path = tmp_path / "one.csv"
    np.savetxt(path, np.arange(20), fmt="%d", header="label", comments="")
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.dataset", "['label']")


def test_csv_one_class(tmp_path):
    path = write_csv(tmp_path / "c.csv", ["a", "label"], [np.arange(20), ["cat"] * 20])
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.target", "2 classes", "['cat']")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.dataset", str(path))


def test_relative_path_resolves_against_base_dir(tmp_path):
    classification_csv(tmp_path)
    d = load_data(task("pets.csv"), seed=0, base_dir=tmp_path)
    assert d.n_outputs == 3


def test_csv_boolean_feature_column(tmp_path):
    path = write_csv(tmp_path / "b.csv", ["a", "flag", "label"],
                     [np.arange(20), np.where(np.arange(20) % 2 == 0, "True", "False"), np.arange(20) % 2])
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.dataset", "'flag'")


# ---------------------------------------------------------------------------------------
# npz


def test_npz_with_x_and_y(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(30, 4)), y=np.arange(30) % 2)
    d = load_data(task(path), seed=0)
    assert d.kind == "classification" and d.n_outputs == 2
    assert d.input_shape == [4]
    assert sum(split_sizes(d)) == 30
    assert d.x_train.dtype == np.float32


def test_npz_missing_keys(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, a=np.zeros((10, 2)), b=np.zeros(10))
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.dataset", "['a', 'b']", "x and y")


def test_npz_mismatched_rows(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 2)), y=np.zeros(9))
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.dataset", "x(10, 2) y(9,)")


def test_npz_non_finite_features(tmp_path):
    x = np.ones((20, 2))
    x[3, 1] = np.inf
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.arange(20) % 2)
    with pytest.raises(SpecError) as info:
        load_data(task(path), seed=0)
    assert_one_line_error(info, "task.dataset", "finite")


def test_npz_nan_target_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.normal(size=30)
    y[4] = np.nan
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(30, 2)), y=y)
    with pytest.raises(SpecError):
        load_data(task(path), seed=0)


# ---------------------------------------------------------------------------------------
# module:function hooks


def test_hook_returns_x_and_y():
    d = load_data(task("tests.user_data:blobs"), seed=0)
    assert d.kind == "classification" and d.n_outputs == 3
    assert d.input_shape == [4]
    assert sum(split_sizes(d)) == 60


def test_hook_returning_a_string():
    with pytest.raises(SpecError) as info:
        load_data(task("tests.user_data:bad"), seed=0)
    assert_one_line_error(info, "task.dataset", "tests.user_data:bad", "str")


@pytest.mark.parametrize("hook", ["tests.user_data:nope", "no_such_module_slimtune:data"])
def test_hook_not_importable(hook):
    with pytest.raises(SpecError) as info:
        load_data(task(hook), seed=0)
    assert_one_line_error(info, "task.dataset", hook, "importable")
