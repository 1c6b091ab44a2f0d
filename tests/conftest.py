import os

import numpy as np
import pytest

import lps  # noqa: F401  (installs the torchvision shim before anything imports torchvision)

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def have_fashion_mnist() -> bool:
    from lps.data.datasets import FASHION_MNIST_FILES, resolve_data_dir

    dirs = [resolve_data_dir(""), resolve_data_dir("") / "fashion_mnist", os.path.dirname(FMNIST)]
    return any(all(os.path.exists(os.path.join(d, f)) for f in FASHION_MNIST_FILES.values()) for d in dirs)


needs_fmnist = pytest.mark.skipif(not have_fashion_mnist(),
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def tiny_overrides(tmp_path, **extra) -> list[str]:
    """A run that takes a few seconds on CPU: 30 images per class, width 4, 2 epochs."""
    base = {
        "output_dir": str(tmp_path / "runs"),
        "data.max_train_per_class": 30, "data.max_test_per_class": 10,
        "model.width": 4, "optim.epochs": 2, "optim.batch_size": 64,
        "pretrain.epochs": 1, "pretrain.batch_size": 64, "train.progress": "none", "train.threads": 1,
        "model.init": "scratch",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
