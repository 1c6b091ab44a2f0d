"""Datasets: Fashion-MNIST (embedded default), CIFAR-10/100 (torchvision's layout), ImageNet-100 (local folder).

Small datasets are held whole as uint8 tensors ``[N, C, H, W]`` so that batches are index slices
and augmentation runs batched on the training device. ImageNet-100 is a list of JPEG files read by
DataLoader workers (``ImageFiles``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import socket
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
# "small": fixed-size images, pad-crop augmentation; "large": crops of whole images (ImageFiles)
DATASET_KINDS = {"fashion_mnist": "small", "cifar10": "small", "cifar100": "small", "imagenet100": "large"}
IMAGENET_CANVAS = 320  # longer side of the stored copy of each ImageNet image (ImageFiles)


class TensorImages:
    """Images held as one uint8 tensor; a batch is an index slice. ``batches`` yields
    ``(x, None)``: every image fills its tensor (no per-image size)."""

    def __init__(self, x: torch.Tensor):
        assert x.dtype == torch.uint8 and x.dim() == 4, (x.dtype, x.shape)
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device) -> "TensorImages":
        return TensorImages(self.x.to(device))

    def batches(self, index_batches: Iterable[torch.Tensor],
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        x = self.x if self.x.device == device else self.x.to(device)
        for idx in index_batches:
            yield x[idx.to(x.device)], None


def fit_in_canvas(w: int, h: int, canvas: int) -> tuple[int, int]:
    """Size (w, h) of an image shrunk, aspect kept, so that its longer side is at most ``canvas``
    (never enlarged). Python's ``round``, at least 1 px."""
    s = min(1.0, canvas / max(w, h))
    return max(1, min(canvas, round(w * s))), max(1, min(canvas, round(h * s)))


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, files: list[str], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            w, h = fit_in_canvas(*im.size, self.size)
            if (w, h) != im.size:
                im = im.resize((w, h), Image.BILINEAR)  # PIL antialiases when it shrinks
            out = torch.zeros(3, self.size, self.size, dtype=torch.uint8)
            out[:, :h, :w] = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
            return out, torch.tensor([h, w])


class ImageFiles:
    """JPEG files decoded by DataLoader workers into uint8 ``[B, 3, size, size]`` canvases.

    Each whole image, aspect kept, is shrunk to fit the canvas (longer side ``size``, default 320;
    smaller images keep their size) and stored at its top-left corner; ``batches`` yields
    ``(x, sizes)`` with ``sizes`` [B, 2] = each image's (height, width). The views are then drawn
    batched on the device from the whole image, as the released code draws them from the decoded
    file (``lps.data.augment.Augmenter``, kind "large": RandomResizedCrop of the full image,
    Resize(256) + CenterCrop(224) for the test view). The stored copy is what the crops resample
    from: at 320 px a typical (4:3) ImageNet image keeps 320 x 240 of its ~500 x 375 pixels.
    """

    def __init__(self, files: list[str], size: int = 320, num_workers: int = 8):
        self.files, self.size, self.num_workers = files, size, num_workers

    def __len__(self) -> int:
        return len(self.files)

    def to(self, device: torch.device) -> "ImageFiles":
        return self

    def batches(self, index_batches: Iterable[torch.Tensor],
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.files, self.size),
            batch_sampler=[idx.tolist() for idx in index_batches],
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        for x, sizes in loader:
            yield x.to(device, non_blocking=True), sizes.to(device)


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

            with _download_timeout():
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
        num_classes=10, channels=1, image_size=28, mean=(0.2860,), std=(0.3530,),
        kind=DATASET_KINDS["fashion_mnist"], class_names=names,
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR "python version" batches: dicts, lists, strings and numpy arrays only.
    Any other global (a planted payload) is refused instead of being imported and called."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_file(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            d = _ArrayUnpickler(fh, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise LPSError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict):
        raise LPSError(f"{path} is not a CIFAR batch (a pickled dict), found {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


@dataclass(frozen=True)
class _CifarLayout:
    tv_class: str  # torchvision dataset class (its url, archive name and md5 are used for the download)
    folder: str  # the folder inside the archive, as torchvision lays it out
    train: tuple
    test: tuple
    label_key: str
    meta: str
    names_key: str
    num_classes: int


CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout("CIFAR10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                            ("test_batch",), "labels", "batches.meta", "label_names", 10),
    "cifar100": _CifarLayout("CIFAR100", "cifar-100-python", ("train",), ("test",), "fine_labels", "meta",
                             "fine_label_names", 100),
}


@contextlib.contextmanager
def _download_timeout():
    """Downloads give up after $LPS_DOWNLOAD_TIMEOUT seconds without data (default 60), so a machine
    whose firewall drops packets gets the error message instead of a hang."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(float(os.environ.get("LPS_DOWNLOAD_TIMEOUT", "60")))
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def cifar_folder(name: str, data_dir: str = "") -> Path | None:
    """Where the torchvision-layout CIFAR folder of ``name`` is, or None: ``<root>/<folder>`` or
    ``<root>/<name>/<folder>`` with root = ``data.data_dir``, else $LPS_DATA_DIR, else ./data."""
    lay = CIFAR_LAYOUTS[name]
    root = resolve_data_dir(data_dir)
    for d in (root / lay.folder, root / name / lay.folder):
        if all((d / f).is_file() for f in (*lay.train, *lay.test, lay.meta)):
            return d
    return None


def _load_cifar(name: str, data_dir: str) -> ImageData:
    """CIFAR-10/100 from torchvision's on-disk layout (``cifar-10-batches-py``, ``cifar-100-python``),
    read directly (no md5 check, so a re-packed or subset copy loads too); downloaded through
    torchvision into the data folder when missing."""
    lay = CIFAR_LAYOUTS[name]
    root = resolve_data_dir(data_dir)
    d = cifar_folder(name, data_dir)
    if d is None:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(tvd, lay.tv_class)
        try:
            with _download_timeout():
                download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        except Exception as e:  # noqa: BLE001  (any download failure is reported below)
            files = ", ".join((*lay.train, *lay.test, lay.meta))
            raise LPSError(
                f"{name} not found and not downloadable ({type(e).__name__}: {str(e)[:200]}).\n"
                f"  expected the folder {lay.folder}/ with {files}\n"
                f"  in {root.absolute()} or {(root / name).absolute()}\n"
                f"Fix: on a machine with internet, download {cls.url} , unpack it there "
                f"(tar xzf {cls.filename} -C {root.absolute()}), or point data.data_dir / $LPS_DATA_DIR "
                "(workflow: --config data_dir=DIR) at the folder that holds it."
            ) from None
        d = cifar_folder(name, data_dir)
        if d is None:
            raise LPSError(f"{name}: the download into {root} did not produce {lay.folder}/")

    def read(files: tuple) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            b = _read_cifar_file(d / f)
            x, y = b.get("data"), b.get(lay.label_key)
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 \
                    or y is None or len(y) != len(x):
                raise LPSError(f"{d / f} is not a {name} batch: expected 'data' uint8 [N, 3072] and "
                               f"'{lay.label_key}' of length N")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(y, dtype=np.int64))
        y = np.concatenate(ys)
        if y.size and (y.min() < 0 or y.max() >= lay.num_classes):
            raise LPSError(f"{d}: labels outside 0..{lay.num_classes - 1}")
        return np.concatenate(xs), y

    tr_x, tr_y = read(lay.train)
    te_x, te_y = read(lay.test)
    names = [str(n) for n in _read_cifar_file(d / lay.meta).get(lay.names_key, [])]
    if len(names) != lay.num_classes:
        raise LPSError(f"{d / lay.meta}: expected {lay.num_classes} names in '{lay.names_key}'")
    missing = sorted(set(range(lay.num_classes)) - set(tr_y.tolist()))
    if missing:
        raise LPSError(f"{d}: no training image of class(es) {missing[:5]}")
    return ImageData(
        name=name, train=TensorImages(torch.from_numpy(np.ascontiguousarray(tr_x))), train_y=tr_y,
        test=TensorImages(torch.from_numpy(np.ascontiguousarray(te_x))), test_y=te_y,
        num_classes=lay.num_classes, channels=3, image_size=32, mean=CIFAR_MEAN, std=CIFAR_STD,
        kind=DATASET_KINDS[name], class_names=names,
    )


@DATASETS.register("cifar10")
def load_cifar10(data_dir: str = "", **_) -> ImageData:
    return _load_cifar("cifar10", data_dir)


@DATASETS.register("cifar100")
def load_cifar100(data_dir: str = "", **_) -> ImageData:
    return _load_cifar("cifar100", data_dir)


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
    where = ("Fix: set data.imagenet_dir (workflow: --config imagenet_dir=DIR) to the ImageNet-1k train folder "
             "(ILSVRC2012_img_train, one sub-folder of JPEGs per WNID, e.g. n01558993/*.JPEG); the 100 WNIDs "
             "used are in lps/data/imagenet100_wnids.txt.")
    if not imagenet_dir:
        raise LPSError(f"imagenet100 needs data.imagenet_dir, the ImageNet train folder.\n{where}")
    root = Path(imagenet_dir)
    if not root.is_dir():
        raise LPSError(f"data.imagenet_dir={root} is not a folder.\n{where}")
    wnids = imagenet100_wnids()
    missing = [w for w in wnids if not (root / w).is_dir()]
    if missing:
        raise LPSError(f"data.imagenet_dir={root}: {len(missing)} of the 100 class folders are missing "
                       f"(first: {missing[:3]}).\n{where}")

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
    empty = sorted(set(wnids) - {wnids[y] for y in set(tr_y.tolist())})
    if empty:
        raise LPSError(f"data.imagenet_dir={root}: {len(empty)} class folders hold no .JPEG/.jpg/.png file "
                       f"(first: {empty[:3]})")
    val = root.parent / "val"
    te_files, te_y = scan(val) if val.is_dir() else ([], np.zeros(0, dtype=np.int64))
    return ImageData(
        name="imagenet100", train=ImageFiles(tr_files, IMAGENET_CANVAS, num_workers), train_y=tr_y,
        test=ImageFiles(te_files, IMAGENET_CANVAS, num_workers), test_y=te_y, num_classes=100, channels=3,
        image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, kind=DATASET_KINDS["imagenet100"],
        class_names=wnids,
    )


def load_dataset(cfg) -> ImageData:
    """Load the dataset named by a ``DataConfig``."""
    loader = DATASETS.get(cfg.dataset)
    return loader(data_dir=cfg.data_dir, imagenet_dir=cfg.imagenet_dir, num_workers=cfg.num_workers)
