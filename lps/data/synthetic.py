"""Synthetic data sets in the real on-disk formats of the paper's datasets (nothing downloaded): small
ones for the tests, full-sized ones for ``lps plan --calibrate`` (throughput does not depend on pixels).

- CIFAR-10 / CIFAR-100: torchvision's "python version" layout (``cifar-10-batches-py/data_batch_1..5``,
  ``test_batch``, ``batches.meta``; ``cifar-100-python/train``, ``test``, ``meta``), pickled dicts with
  a uint8 ``data`` array [N, 3072] and label lists, as in the published archives.
- ImageNet: a train folder with one sub-folder per WNID of the paper's ImageNet-100 list, each with a
  few small JPEGs of varying size (``n01558993/n01558993_0.JPEG``), beside a ``val/`` folder.

Each class gets its own mean colour plus noise, so the images are not all alike.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from lps.data.datasets import CIFAR_LAYOUTS, imagenet100_wnids


def _class_images(rng: np.random.Generator, labels: np.ndarray, num_classes: int, h: int, w: int) -> np.ndarray:
    colours = np.random.default_rng(1234).integers(30, 226, size=(num_classes, 3))
    noise = rng.normal(0, 25, size=(len(labels), h, w, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)  # [N, H, W, 3]


def write_cifar(root: Path, name: str, train_per_class: int = 4, test_per_class: int = 2, seed: int = 0) -> Path:
    """Write a synthetic ``name`` (cifar10 | cifar100) under ``root``; returns the layout's folder."""
    lay = CIFAR_LAYOUTS[name]
    rng = np.random.default_rng(seed)
    d = Path(root) / lay.folder
    d.mkdir(parents=True, exist_ok=True)

    def split(files: tuple, per_class: int) -> None:
        y = rng.permutation(np.repeat(np.arange(lay.num_classes), per_class))
        x = _class_images(rng, y, lay.num_classes, 32, 32).transpose(0, 3, 1, 2).reshape(len(y), 3072)
        for part, idx in zip(files, np.array_split(np.arange(len(y)), len(files))):
            batch = {"batch_label": f"synthetic {part}", "data": np.ascontiguousarray(x[idx]),
                     lay.label_key: y[idx].tolist(), "filenames": [f"img_{i}.png" for i in idx]}
            if name == "cifar100":
                batch["coarse_labels"] = (y[idx] // 5).tolist()
            with open(d / part, "wb") as fh:
                pickle.dump(batch, fh, protocol=2)

    split(lay.train, train_per_class)
    split(lay.test, test_per_class)
    meta = {lay.names_key: [f"class_{k}" for k in range(lay.num_classes)]}
    with open(d / lay.meta, "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return d


def write_imagenet(root: Path, train_per_class: int = 2, val_per_class: int = 1, seed: int = 0,
                   size: tuple[int, int] = (24, 48)) -> Path:
    """Write ``root/train/<wnid>/*.JPEG`` (and ``root/val``) for the 100 WNIDs, each image's height and
    width drawn from ``size`` (low, high); returns the train folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = imagenet100_wnids()
    for part, per_class in (("train", train_per_class), ("val", val_per_class)):
        for k, w in enumerate(wnids):
            d = Path(root) / part / w
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, wd = int(rng.integers(*size)), int(rng.integers(*size))  # not square, not 224
                img = _class_images(rng, np.array([k]), len(wnids), h, wd)[0]
                Image.fromarray(img).save(d / f"{w}_{i}.JPEG", quality=90)
    return Path(root) / "train"
