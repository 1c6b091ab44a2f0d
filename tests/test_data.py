import gzip

import numpy as np
import pytest
import torch

from lps.data.datasets import imagenet100_wnids, load_fashion_mnist
from lps.data.splits import num_seen_classes, open_world_split, subsample_per_class
from lps.errors import LPSError

from conftest import needs_fmnist


def reference_split(targets, labeled_classes, label_ratio, seed):
    """The released ORCA/LPS loop, verbatim in spirit: one draw per seen-class image, in order."""
    rs = np.random.RandomState(seed)
    lab, unl = [], []
    for i, t in enumerate(targets):
        if t in labeled_classes and rs.rand() < label_ratio:
            lab.append(i)
        else:
            unl.append(i)
    return np.array(lab), np.array(unl)


def test_split_matches_released_loop(rng):
    y = rng.integers(0, 10, size=2000)
    s = open_world_split(y, 10, 0.5, 0.5, split_seed=0)
    lab, unl = reference_split(y, set(range(5)), 0.5, 0)
    np.testing.assert_array_equal(s.labeled_idx, lab)
    np.testing.assert_array_equal(s.unlabeled_idx, unl)
    assert s.n_seen == 5
    assert (y[s.labeled_idx] < 5).all()
    assert set(y[s.unlabeled_idx]) == set(range(10))


def test_split_is_pure_and_seeded(rng):
    y = rng.integers(0, 10, size=500)
    a = open_world_split(y, 10, 0.5, 0.1, 1)
    b = open_world_split(y, 10, 0.5, 0.1, 1)
    c = open_world_split(y, 10, 0.5, 0.1, 2)
    np.testing.assert_array_equal(a.labeled_idx, b.labeled_idx)
    assert not np.array_equal(a.labeled_idx, c.labeled_idx)


def test_label_ratio_one_labels_all_seen(rng):
    y = rng.integers(0, 4, size=100)
    s = open_world_split(y, 4, 0.5, 1.0, 0)
    assert set(s.labeled_idx) == set(np.flatnonzero(y < 2))


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_bad_label_ratio(ratio):
    with pytest.raises(LPSError, match="label_ratio"):
        open_world_split(np.arange(10) % 2, 2, 0.5, ratio, 0)


def test_seen_class_count():
    assert num_seen_classes(10, 0.5) == 5 and num_seen_classes(100, 0.5) == 50
    assert num_seen_classes(100, 0.25) == 25
    with pytest.raises(LPSError):
        num_seen_classes(10, 0.01)


def test_subsample_per_class(rng):
    y = rng.integers(0, 3, size=300)
    idx = subsample_per_class(y, 20, 0)
    assert len(idx) == 60 and np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx]).tolist() == [20, 20, 20]
    np.testing.assert_array_equal(subsample_per_class(y, 0, 0), np.arange(300))


def test_split_with_subsample_indexes_full_set(rng):
    y = rng.integers(0, 10, size=1000)
    s = open_world_split(y, 10, 0.5, 0.5, 0, max_per_class=10)
    assert len(s.labeled_idx) + len(s.unlabeled_idx) == 100
    assert np.intersect1d(s.labeled_idx, s.unlabeled_idx).size == 0


def _write_idx(path, arr):
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_from_data_dir(tmp_path, rng):
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (10, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    d = load_fashion_mnist(str(tmp_path))
    assert d.train.x.shape == (20, 1, 28, 28) and d.train.x.dtype == torch.uint8
    assert d.train_y.tolist() == (np.arange(20) % 10).tolist()


def test_truncated_idx_file(tmp_path):
    _write_idx(tmp_path / "x.gz", np.zeros((4, 2, 2)))
    raw = gzip.open(tmp_path / "x.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(raw[:-3])
    from lps.data.datasets import _read_idx_gz

    with pytest.raises(LPSError, match="truncated"):
        _read_idx_gz(tmp_path / "train-images-idx3-ubyte.gz")


def test_missing_data_lists_search_paths(tmp_path, monkeypatch):
    import lps.data.datasets as ds

    monkeypatch.setattr(ds, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "no-debian"))
    # make the torchvision download fail without touching the network
    import torchvision.datasets

    class Fail:
        def __init__(self, *a, **k):
            raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Fail)
    with pytest.raises(LPSError) as e:
        ds.load_fashion_mnist(str(tmp_path / "empty"))
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and "no-debian" in msg and "dataset-fashion-mnist" in msg
    assert "no network" in msg


@needs_fmnist
def test_real_fashion_mnist():
    d = load_fashion_mnist()
    assert d.train.x.shape == (60000, 1, 28, 28) and d.test.x.shape == (10000, 1, 28, 28)
    assert np.bincount(d.train_y).tolist() == [6000] * 10


def test_imagenet100_class_list():
    w = imagenet100_wnids()
    assert len(w) == 100 and w == sorted(w) and len(set(w)) == 100 and all(x.startswith("n") for x in w)
