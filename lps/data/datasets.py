"""Datasets: Fashion-MNIST (embedded default), CIFAR-10/100 (torchvision), ImageNet-100 (local folder).

Small datasets are held whole as uint8 tensors ``[N, C, H, W]`` so that batches are index slices
and augmentation runs batched on the training device. ImageNet-100 is a list of JPEG files read by
DataLoader workers (``ImageFiles``).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from lps.errors import LPSError
from lps.registry import Registry

DATASETS: Registry[Callable[..., "ImageData"]] = Registry("dataset")

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
CIFAR_MEAN = (0.5071, 0.4867, 0.4408)  # CIFAR-100 statistics, used for both CIFARs (REFERENCE.md)
CIFAR_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TensorImages:
    """Images held as one uint8 tensor; a batch is an index slice."""

    def __init__(self, x: torch.Tensor):
        assert x.dtype == torch.uint8 and x.dim() == 4, (x.dtype, x.shape)
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device) -> "TensorImages":
        return TensorImages(self.x.to(device))

    def batches(self, index_batches: Iterable[torch.Tensor], device: torch.device) -> Iterator[torch.Tensor]:
        x = self.x if self.x.device == device else self.x.to(device)
        for idx in index_batches:
            yield x[idx.to(x.device)]


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[str], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = self.size / min(w, h)  # Resize(size) on the short side, then CenterCrop(size)
            im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


class ImageFiles:
    """JPEG files decoded by DataLoader workers into uint8 ``[B, 3, size, size]`` batches.

    Each image is resized to ``size`` on its short side and centre-cropped; the per-view random
    resized crops to the training resolution then run batched on the device (``lps.data.augment``).
    """

    def __init__(self, files: list[str], size: int = 256, num_workers: int = 8):
        self.files, self.size, self.num_workers = files, size, num_workers

    def __len__(self) -> int:
        return len(self.files)

    def to(self, device: torch.device) -> "ImageFiles":
        return self

    def batches(self, index_batches: Iterable[torch.Tensor], device: torch.device) -> Iterator[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.files, self.size),
            batch_sampler=[idx.tolist() for idx in index_batches],
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        for x in loader:
            yield x.to(device, non_blocking=True)


@dataclass
class ImageData:
    name: str
    train: TensorImages | ImageFiles
    train_y: np.ndarray  # int64 [N]
    test: TensorImages | ImageFiles
    test_y: np.ndarray
    num_classes: int
    channels: int
    image_size: int  # training resolution
    mean: tuple
    std: tuple
    kind: str  # "small": fixed-size images, pad-crop augmentation; "large": random-resized crops
    class_names: list[str]


def resolve_data_dir(data_dir: str = "") -> Path:
    return Path(data_dir or os.environ.get("LPS_DATA_DIR") or "data")


def _read_idx_gz(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise LPSError(f"cannot read {path}: {e}") from None
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise LPSError(f"{path} is not an IDX file of unsigned bytes")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise LPSError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(data_dir: str = "", **_) -> ImageData:
    """Fashion-MNIST from IDX ``.gz`` files: ``$LPS_DATA_DIR`` (or ``data.data_dir``) and its
    ``fashion_mnist/`` sub-folder, then Debian's ``dataset-fashion-mnist``, then a torchvision download."""
    root = resolve_data_dir(data_dir)
    candidates = [root, root / "fashion_mnist", root / "FashionMNIST" / "raw", Path(FASHION_MNIST_DEBIAN_DIR)]
    for d in candidates:
        if all((d / f).exists() for f in FASHION_MNIST_FILES.values()):
            arrays = {k: _read_idx_gz(d / f) for k, f in FASHION_MNIST_FILES.items()}
            break
    else:
        download_error = ""
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
            d = root / "FashionMNIST" / "raw"
            arrays = {k: _read_idx_gz(d / f) for k, f in FASHION_MNIST_FILES.items()}
        except Exception as e:  # noqa: BLE001  (any download failure is reported below)
            download_error = f"{type(e).__name__}: {e}"
        else:
            download_error = None
        if download_error is not None:
            searched = "\n".join(f"  - {p}" for p in candidates)
            raise LPSError(
                "Fashion-MNIST not found. Searched for "
                f"{', '.join(FASHION_MNIST_FILES.values())} in:\n{searched}\n"
                f"  - torchvision download into {root / 'FashionMNIST'} failed ({download_error})\n"
                "Fix: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four files in "
                "$LPS_DATA_DIR, or allow the download."
            )
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"]
    return ImageData(
        name="fashion_mnist",
        train=TensorImages(torch.from_numpy(arrays["train_x"].copy()).unsqueeze(1)),
        train_y=arrays["train_y"].astype(np.int64),
        test=TensorImages(torch.from_numpy(arrays["test_x"].copy()).unsqueeze(1)),
        test_y=arrays["test_y"].astype(np.int64),
        num_classes=10, channels=1, image_size=28, mean=(0.2860,), std=(0.3530,), kind="small",
        class_names=names,
    )


def _load_cifar(cls_name: str, name: str, num_classes: int, data_dir: str) -> ImageData:
    import torchvision.datasets as tvd

    root = resolve_data_dir(data_dir)
    cls = getattr(tvd, cls_name)
    try:
        tr = cls(str(root), train=True, download=True)
        te = cls(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001
        raise LPSError(
            f"{name} is not in {root} and could not be downloaded ({type(e).__name__}: {e}). "
            f"Fix: allow the download, or copy the torchvision {name} files into {root} "
            "(set data.data_dir or $LPS_DATA_DIR)."
        ) from None

    def to_t(a: np.ndarray) -> TensorImages:
        return TensorImages(torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous())

    return ImageData(
        name=name, train=to_t(tr.data), train_y=np.asarray(tr.targets, dtype=np.int64),
        test=to_t(te.data), test_y=np.asarray(te.targets, dtype=np.int64), num_classes=num_classes,
        channels=3, image_size=32, mean=CIFAR_MEAN, std=CIFAR_STD, kind="small", class_names=list(tr.classes),
    )


@DATASETS.register("cifar10")
def load_cifar10(data_dir: str = "", **_) -> ImageData:
    return _load_cifar("CIFAR10", "cifar10", 10, data_dir)


@DATASETS.register("cifar100")
def load_cifar100(data_dir: str = "", **_) -> ImageData:
    return _load_cifar("CIFAR100", "cifar100", 100, data_dir)


def imagenet100_wnids() -> list[str]:
    """The 100 WNIDs of ImageNet-100 as used by the paper, sorted; class index = position."""
    text = resources.files("lps.data").joinpath("imagenet100_wnids.txt").read_text()
    return sorted(line.strip() for line in text.splitlines() if line.strip())


@DATASETS.register("imagenet100")
def load_imagenet100(imagenet_dir: str = "", num_workers: int = 8, **_) -> ImageData:
    """ImageNet-100 from a local ImageNet train folder (one sub-folder per WNID).

    The paper evaluates on the unlabeled training images only; the held-out "test" split here is
    the ImageNet validation folder if it is laid out by WNID beside ``train/`` (``../val``), else
    empty.
    """
    if not imagenet_dir:
        raise LPSError("imagenet100 needs data.imagenet_dir: the ImageNet train folder (one sub-folder per WNID)")
    root = Path(imagenet_dir)
    wnids = imagenet100_wnids()
    missing = [w for w in wnids if not (root / w).is_dir()]
    if missing:
        raise LPSError(f"data.imagenet_dir={root}: {len(missing)} of the 100 class folders are missing "
                       f"(first: {missing[:3]})")

    def scan(base: Path) -> tuple[list[str], np.ndarray]:
        files, ys = [], []
        for y, w in enumerate(wnids):
            d = base / w
            if not d.is_dir():
                continue
            for f in sorted(os.listdir(d)):
                if f.lower().endswith((".jpeg", ".jpg", ".png")):
                    files.append(str(d / f))
                    ys.append(y)
        return files, np.asarray(ys, dtype=np.int64)

    tr_files, tr_y = scan(root)
    val = root.parent / "val"
    te_files, te_y = scan(val) if val.is_dir() else ([], np.zeros(0, dtype=np.int64))
    return ImageData(
        name="imagenet100", train=ImageFiles(tr_files, 256, num_workers), train_y=tr_y,
        test=ImageFiles(te_files, 256, num_workers), test_y=te_y, num_classes=100, channels=3,
        image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, kind="large", class_names=wnids,
    )


def load_dataset(cfg) -> ImageData:
    """Load the dataset named by a ``DataConfig``."""
    loader = DATASETS.get(cfg.dataset)
    return loader(data_dir=cfg.data_dir, imagenet_dir=cfg.imagenet_dir, num_workers=cfg.num_workers)
