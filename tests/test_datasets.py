"""Binary image data sets for the VAE: scikit-learn's digits with a fixed split, and MNIST-style IDX files."""

import gzip

import numpy as np
import pytest

from boltzflow.data import DataSettings, load_dataset, read_idx, write_idx
from boltzflow.errors import BoltzflowError


def test_digits_fixed_split_binarised():
    d = load_dataset(DataSettings("digits"))
    assert d.train.shape == (1437, 64) and d.test.shape == (360, 64) and d.shape == (8, 8) and d.dim == 64
    assert set(np.unique(d.train)) == {0.0, 1.0} and d.train.dtype == np.float32
    again = load_dataset(DataSettings("digits"))
    np.testing.assert_array_equal(d.test, again.test)  # the split is fixed
    assert 0.2 < d.train.mean() < 0.6  # pixel / 16 > 0.5: a fair share of ink
    assert load_dataset(DataSettings("digits", n_train=100)).train.shape == (100, 64)
    assert load_dataset(DataSettings("digits", threshold=0.9)).train.mean() < d.train.mean()


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    a = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 7 % 251).astype(dtype)
    path = write_idx(tmp_path / f"a.idx{suffix}", a)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    b = read_idx(path)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_idx_header_is_the_format_of_mnist(tmp_path):
    """Magic 0x00000803 for uint8 images of 3 dimensions, then big-endian sizes, then the pixels."""
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_idx(tmp_path / "x", a).read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:16] == np.asarray([2, 3, 4], ">u4").tobytes()
    assert raw[16:] == a.tobytes()


def _mnist_dir(tmp_path, gz: bool, n_train=5, n_test=3):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 4, 6), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 4, 6), dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", train)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", test)
    return train, test


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_from_idx_files(tmp_path, gz, name):
    train, test = _mnist_dir(tmp_path, gz)
    d = load_dataset(DataSettings(name, path=str(tmp_path), threshold=0.4))
    assert d.shape == (4, 6) and d.train.shape == (5, 24) and d.test.shape == (3, 24)
    np.testing.assert_array_equal(d.train, (train.reshape(5, -1) / 255.0 > 0.4).astype(np.float32))
    np.testing.assert_array_equal(d.test, (test.reshape(3, -1) / 255.0 > 0.4).astype(np.float32))
    assert load_dataset(DataSettings(name, path=str(tmp_path), n_train=2)).train.shape == (2, 24)


def _one_line(match):
    return pytest.raises(BoltzflowError, match=match)


def test_missing_and_malformed_files_are_one_line_errors(tmp_path):
    with _one_line("IDX file .* not found"):
        read_idx(tmp_path / "nope")
    (tmp_path / "text").write_text("hello world")
    with _one_line("not an IDX file"):
        read_idx(tmp_path / "text")
    raw = write_idx(tmp_path / "a", np.zeros((4, 4, 4), np.uint8)).read_bytes()
    (tmp_path / "cut").write_bytes(raw[:-5])
    with _one_line("expected 80 for shape"):
        read_idx(tmp_path / "cut")
    (tmp_path / "short").write_bytes(raw[:9])
    with _one_line("header cut short"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-10])
    with _one_line("broken gzip"):
        read_idx(tmp_path / "bad.gz")
    with _one_line("no IDX file train-images-idx3-ubyte"):
        load_dataset(DataSettings("mnist", path=str(tmp_path)))
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3), np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 3), np.uint8))
    with _one_line(r"expected uint8 images \(n, h, w\)"):
        load_dataset(DataSettings("mnist", path=str(tmp_path)))


@pytest.mark.parametrize("kw, match", [
    (dict(dataset="cifar"), "unknown dataset 'cifar'"),
    (dict(dataset="mnist"), "needs path"),
    (dict(dataset="digits", path="x"), "takes no path"),
    (dict(threshold=1.5), "threshold must be in"),
    (dict(n_train=0), "n_train must be a positive integer"),
])
def test_bad_settings_are_one_line_errors(kw, match):
    with pytest.raises(BoltzflowError, match=match) as e:
        DataSettings(**kw)
    assert "\n" not in str(e.value)
