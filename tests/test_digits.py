"""The embedded digits: the file, the arrays load_digits makes of it, and the stratified split."""
import gzip
import hashlib

import numpy as np
import pytest

from minicnn.data import digits as digits_mod
from minicnn.data import load_digits, train_test_split

# per-class counts of the UCI test set (scikit-learn's load_digits documents the same)
CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
FILE_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"


def test_file_is_the_uci_digits_file():
    with open(digits_mod.DIGITS_PATH, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == FILE_SHA256


def test_all_images_shape_dtype_range():
    X, y = load_digits()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    # 17 levels: every value is a count 0..16 divided by 16, exactly representable in float32
    levels = np.unique(X * 16)
    np.testing.assert_array_equal(levels, np.arange(17, dtype=np.float32))
    np.testing.assert_array_equal(np.bincount(y), CLASS_COUNTS)


def test_values_match_the_csv_rows():
    X, y = load_digits()
    with gzip.open(digits_mod.DIGITS_PATH, "rt") as f:
        first = [int(v) for v in f.readline().split(",")]
        second = [int(v) for v in f.readline().split(",")]
    np.testing.assert_array_equal(X[0, 0] * 16, np.array(first[:64], dtype=np.float32).reshape(8, 8))
    np.testing.assert_array_equal(X[1, 0] * 16, np.array(second[:64], dtype=np.float32).reshape(8, 8))
    assert (y[0], y[1]) == (first[64], second[64]) == (0, 1)
    # row-major 8x8: the first image's top row is the first eight values of the line
    np.testing.assert_array_equal(X[0, 0, 0] * 16, [0, 0, 5, 13, 9, 1, 0, 0])


def test_same_data_as_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    ref = datasets.load_digits()
    X, y = load_digits()
    np.testing.assert_array_equal(X.reshape(1797, 64) * 16, ref.data.astype(np.float32))
    np.testing.assert_array_equal(y, ref.target)


def test_returned_arrays_are_fresh_copies():
    X, y = load_digits()
    X[:] = 7
    y[:] = 3
    X2, y2 = load_digits()
    assert X2.max() == 1.0 and np.bincount(y2).tolist() == CLASS_COUNTS


def test_split_is_stratified_disjoint_and_complete():
    X, y = load_digits()
    X_tr, y_tr, X_te, y_te = load_digits("both")
    assert len(X_tr) + len(X_te) == 1797 == len(y_tr) + len(y_te)
    expected_test = [int(round(c * 0.2)) for c in CLASS_COUNTS]
    np.testing.assert_array_equal(np.bincount(y_te, minlength=10), expected_test)
    np.testing.assert_array_equal(np.bincount(y_tr, minlength=10), np.array(CLASS_COUNTS) - expected_test)
    # every image lands on exactly one side: match rows back to the full set
    flat = X.reshape(1797, -1)
    # compare multisets of (image, label): the set holds a few duplicate images
    all_rows = sorted(r.tobytes() + bytes([c]) for r, c in zip(flat, y))
    split_rows = sorted([r.tobytes() + bytes([c]) for r, c in zip(X_tr.reshape(len(X_tr), -1), y_tr)]
                        + [r.tobytes() + bytes([c]) for r, c in zip(X_te.reshape(len(X_te), -1), y_te)])
    assert all_rows == split_rows


def test_split_keeps_file_order_and_matches_single_sides():
    X, y = load_digits()
    idx = np.arange(len(y))
    i_tr, _, i_te, _ = train_test_split(idx, y, test_size=0.2, seed=0)
    assert np.all(np.diff(i_tr) > 0) and np.all(np.diff(i_te) > 0)
    X_tr, y_tr = load_digits("train")
    X_te, y_te = load_digits("test")
    np.testing.assert_array_equal(X_tr, X[i_tr])
    np.testing.assert_array_equal(y_te, y[i_te])
    np.testing.assert_array_equal(X_te, X[i_te])
    np.testing.assert_array_equal(y_tr, y[i_tr])


def test_split_deterministic_in_seed():
    a = load_digits("test", seed=3)[1]
    b = load_digits("test", seed=3)[1]
    X0 = load_digits("test", seed=0)[0]
    X3 = load_digits("test", seed=3)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(X0, X3)
    assert len(load_digits("test", test_size=0.5)[0]) == sum(int(round(c * 0.5)) for c in CLASS_COUNTS)


def test_split_small_classes_and_counts():
    X = np.arange(10)
    y = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 2])
    X_tr, y_tr, X_te, y_te = train_test_split(X, y, test_size=0.2, seed=1)
    # class 0 (2 samples) keeps one on each side; class 2 (1 sample) stays in training
    assert np.bincount(y_te, minlength=3).tolist() == [1, 1, 0]
    assert sorted(np.concatenate([X_tr, X_te]).tolist()) == list(range(10))
    X_tr, _, X_te, _ = train_test_split(X, y, test_size=4, seed=0, stratify=False)
    assert len(X_te) == 4 and len(X_tr) == 6


@pytest.mark.parametrize("kwargs, match", [
    ({"test_size": 0.0}, "fraction must lie in"),
    ({"test_size": 1.5}, "fraction must lie in"),
    ({"test_size": 10}, r"count must lie in \[1, 9\]"),
])
def test_split_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_test_split(np.zeros((10, 2)), np.zeros(10, dtype=int), **kwargs)


def test_split_length_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"X has 10 samples \(shape \(10, 2\)\) but y has 9"):
        train_test_split(np.zeros((10, 2)), np.zeros(9))


def test_bad_split_name():
    with pytest.raises(ValueError, match="split must be"):
        load_digits("validation")
