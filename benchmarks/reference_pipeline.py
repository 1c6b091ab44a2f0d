"""A reference-style input pipeline and LPS training step, as the released LPS/ORCA code has them.

Used by ``benchmarks/throughput.py`` as the baseline (a) that this project's pipeline (b) is
compared against. Nothing here is used for training.

Input pipeline (per image, in DataLoader worker processes):

- a ``torch.utils.data.Dataset`` over uint8 HWC arrays (CIFAR) or JPEG files (ImageNet) that
  returns PIL images through per-image ``torchvision.transforms``;
- every row yields three views: weak, weak, strong (``ThreeViews``);
- CIFAR weak = RandomCrop(32, padding 4) + RandomHorizontalFlip; strong = RandomHorizontalFlip +
  RandomCrop(32, padding 4, reflect) + ``RandAugmentMC(2, 10)`` (FixMatch RandAugment with a
  16-px Cutout); then ToTensor + Normalize (REFERENCE.md "Augmentations");
- ImageNet weak = RandomResizedCrop(224, scale 0.5-1) + flip; strong adds RandomCrop(224,
  padding 28, reflect) and ``RandAugmentMC`` with a 112-px Cutout; test = Resize(256) + CenterCrop(224);
- batches served by a ``DataLoader`` with worker processes. The released code uses two loaders
  (labeled and unlabeled, ``shuffle=True, drop_last=True``); here one loader with a batch sampler
  yields the same rows (labeled first, then unlabeled), which is the same per-image work.

``RandAugmentMC`` follows kekmodel/FixMatch-pytorch ``dataset/randaugment.py`` (the PyTorch
FixMatch port the OpenSSL code bases build on), written here with ``PIL.ImageOps`` and
``PIL.ImageEnhance``: 2 ops drawn with replacement from the 14-op ``fixmatch_augment_pool``,
magnitude ``np.random.randint(1, m)`` (1..9 for m = 10: NumPy's upper bound is exclusive), each
op applied with probability 0.5, geometric ops with PIL's default black fill, then an always-on
``CutoutAbs`` filled with (127, 127, 127) (PIL's inclusive rectangle: 17 x 17 px). This
project's batched version, ``lps.data.augment.randaugment_fixmatch``, draws the same parameters.

Training step (``reference_training_step``): the batch is copied to the device, three separate
fp32 forward passes (one per view, so BatchNorm normalises each view with its own statistics),
no autocast, no channels_last, and a plain SGD step (``foreach=False``: the per-parameter loop).
The loss is this project's ``LPS.training_step``, so (a) and (b) compute the same loss.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

import torchvision.transforms as T  # noqa: E402

from lps.methods.base import Batch, Method  # noqa: E402

__all__ = [
    "FIXMATCH_AUGMENT_POOL",
    "JpegFileDataset",
    "PARAMETER_MAX",
    "RandAugmentMC",
    "ThreeViews",
    "ArrayImageDataset",
    "cifar_transforms",
    "cutout_abs",
    "imagenet_transforms",
    "make_reference_optimizer",
    "reference_loader",
    "reference_training_step",
]

PARAMETER_MAX = 10


# ----------------------------------------------------------------------------- FixMatch RandAugment (PIL)


def _float_parameter(v: int, max_v: float) -> float:
    return float(v) * max_v / PARAMETER_MAX


def _int_parameter(v: int, max_v: float) -> int:
    return int(v * max_v / PARAMETER_MAX)


def _random_sign(value: float) -> float:
    """Negate with probability 0.5 (Python's ``random``, as the reference)."""
    return -value if random.random() < 0.5 else value


def _enhance(enhancer: type) -> Callable:
    def op(img: Image.Image, v: int, max_v: float, bias: float) -> Image.Image:
        return enhancer(img).enhance(_float_parameter(v, max_v) + bias)

    return op


def _autocontrast(img: Image.Image, v: int, max_v, bias) -> Image.Image:
    return ImageOps.autocontrast(img)


def _equalize(img: Image.Image, v: int, max_v, bias) -> Image.Image:
    return ImageOps.equalize(img)


def _identity(img: Image.Image, v: int, max_v, bias) -> Image.Image:
    return img


def _posterize(img: Image.Image, v: int, max_v: float, bias: float) -> Image.Image:
    return ImageOps.posterize(img, _int_parameter(v, max_v) + bias)


def _solarize(img: Image.Image, v: int, max_v: float, bias: float) -> Image.Image:
    return ImageOps.solarize(img, 256 - (_int_parameter(v, max_v) + bias))


def _rotate(img: Image.Image, v: int, max_v: float, bias: float) -> Image.Image:
    return img.rotate(_random_sign(_int_parameter(v, max_v) + bias))  # degrees, counter-clockwise


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    # (a, b, c, d, e, f): the output pixel (x, y) samples the input at (a x + b y + c, d x + e y + f)
    return img.transform(img.size, Image.AFFINE, coeffs)


def _shear_x(img: Image.Image, v: int, max_v: float, bias: float) -> Image.Image:
    s = _random_sign(_float_parameter(v, max_v) + bias)
    return _affine(img, (1, s, 0, 0, 1, 0))


def _shear_y(img: Image.Image, v: int, max_v: float, bias: float) -> Image.Image:
    s = _random_sign(_float_parameter(v, max_v) + bias)
    return _affine(img, (1, 0, 0, s, 1, 0))


def _translate_x(img: Image.Image, v: int, max_v: float, bias: float) -> Image.Image:
    shift = int(_random_sign(_float_parameter(v, max_v) + bias) * img.size[0])  # fraction of the width
    return _affine(img, (1, 0, shift, 0, 1, 0))


def _translate_y(img: Image.Image, v: int, max_v: float, bias: float) -> Image.Image:
    shift = int(_random_sign(_float_parameter(v, max_v) + bias) * img.size[1])
    return _affine(img, (1, 0, 0, 0, 1, shift))


#: FixMatch Table 12 / ``fixmatch_augment_pool``: (name, op, max_v, bias)
FIXMATCH_AUGMENT_POOL: tuple[tuple[str, Callable, float | None, float | None], ...] = (
    ("AutoContrast", _autocontrast, None, None),
    ("Brightness", _enhance(ImageEnhance.Brightness), 0.9, 0.05),
    ("Color", _enhance(ImageEnhance.Color), 0.9, 0.05),
    ("Contrast", _enhance(ImageEnhance.Contrast), 0.9, 0.05),
    ("Equalize", _equalize, None, None),
    ("Identity", _identity, None, None),
    ("Posterize", _posterize, 4, 4),
    ("Rotate", _rotate, 30, 0),
    ("Sharpness", _enhance(ImageEnhance.Sharpness), 0.9, 0.05),
    ("ShearX", _shear_x, 0.3, 0),
    ("ShearY", _shear_y, 0.3, 0),
    ("Solarize", _solarize, 256, 0),
    ("TranslateX", _translate_x, 0.3, 0),
    ("TranslateY", _translate_y, 0.3, 0),
)


def cutout_abs(img: Image.Image, size: int, fill: tuple[int, int, int] = (127, 127, 127)) -> Image.Image:
    """Paint a grey ``size``-px square at a uniformly random centre (FixMatch ``CutoutAbs``).

    Left/top edge ``int(max(0, c - size/2))``, right/bottom ``int(min(W, left + size))``; PIL's
    ``rectangle`` includes its end pixel.
    """
    w, h = img.size
    x0 = int(max(0, np.random.uniform(0, w) - size / 2.0))
    y0 = int(max(0, np.random.uniform(0, h) - size / 2.0))
    x1, y1 = int(min(w, x0 + size)), int(min(h, y0 + size))
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), fill=fill if img.mode == "RGB" else fill[0])
    return img


class RandAugmentMC:
    """FixMatch RandAugment on one PIL image: ``n`` ops drawn with replacement from the pool, each
    applied with probability 0.5 at magnitude ``np.random.randint(1, m)``, then ``cutout_abs``."""

    def __init__(self, n: int = 2, m: int = 10, cutout: int = 16):
        if n < 1 or not 1 <= m <= PARAMETER_MAX:
            raise ValueError(f"RandAugmentMC needs n >= 1 and 1 <= m <= {PARAMETER_MAX}, got n={n}, m={m}")
        self.n, self.m, self.cutout = n, m, cutout

    def __call__(self, img: Image.Image) -> Image.Image:
        for _name, op, max_v, bias in random.choices(FIXMATCH_AUGMENT_POOL, k=self.n):
            v = np.random.randint(1, self.m)
            if random.random() < 0.5:
                img = op(img, v=v, max_v=max_v, bias=bias)
        return cutout_abs(img, self.cutout)


# ----------------------------------------------------------------------------- transforms and datasets


class ThreeViews:
    """Two weak views and one strong view of the same image (LPS's ``TransformThree``)."""

    def __init__(self, weak: Callable, strong: Callable):
        self.weak, self.strong = weak, strong

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.weak(img), self.weak(img), self.strong(img)


def cifar_transforms(mean: Sequence[float], std: Sequence[float], size: int = 32) -> dict[str, Callable]:
    """The CIFAR ``train`` (three views) and ``test`` transforms of the released code."""
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    weak = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), *finish])
    strong = T.Compose([
        T.RandomHorizontalFlip(),
        T.RandomCrop(size, padding=4, padding_mode="reflect"),
        RandAugmentMC(n=2, m=10, cutout=int(0.5 * size)),
        *finish,
    ])
    return {"train": ThreeViews(weak, strong), "test": T.Compose(finish)}


def imagenet_transforms(mean: Sequence[float], std: Sequence[float], size: int = 224,
                        resize: int = 256) -> dict[str, Callable]:
    """The ImageNet ``train`` (three views) and ``test`` transforms (REFERENCE.md)."""
    finish = [T.ToTensor(), T.Normalize(mean, std)]
    crop = [T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()]
    weak = T.Compose([*crop, *finish])
    strong = T.Compose([*crop, T.RandomCrop(size, padding=int(size * 0.125), padding_mode="reflect"),
                        RandAugmentMC(n=2, m=10, cutout=int(0.5 * size)), *finish])
    test = T.Compose([T.Resize(resize), T.CenterCrop(size), *finish])
    return {"train": ThreeViews(weak, strong), "test": test}


class ArrayImageDataset(torch.utils.data.Dataset):
    """uint8 images ``[N, H, W, C]`` (or ``[N, H, W]``) returned as PIL images through ``transform``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"expected uint8 images [N, H, W(, C)], got {images.dtype} {images.shape}")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class JpegFileDataset(torch.utils.data.Dataset):
    """JPEG files decoded with PIL, as ``torchvision.datasets.ImageFolder`` does; index ``i`` reads
    file ``i % len(files)`` (a few synthetic files stand in for a large folder)."""

    def __init__(self, files: Sequence[str], labels: np.ndarray, transform: Callable):
        self.files, self.labels, self.transform = list(files), labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        with open(self.files[i % len(self.files)], "rb") as fh:
            img = Image.open(fh).convert("RGB")
        return self.transform(img), int(self.labels[i])


class _ListBatchSampler:
    """Yields the given index batches (lists of ints) in order; may be infinite."""

    def __init__(self, batches: Iterable[Sequence[int]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            yield [int(i) for i in b]


def reference_loader(dataset: torch.utils.data.Dataset, index_batches: Iterable[Sequence[int]], workers: int,
                     pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader serving ``index_batches`` (labeled rows first) with ``workers`` processes."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=_ListBatchSampler(index_batches),
                                       num_workers=workers, pin_memory=pin_memory)


# ----------------------------------------------------------------------------- training step


def make_reference_optimizer(params: Iterable[torch.nn.Parameter], lr: float = 0.1, momentum: float = 0.9,
                             weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """Plain SGD with the per-parameter loop (neither fused nor foreach)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=False)


def reference_training_step(method: Method, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            views: Sequence[torch.Tensor], y_lb: torch.Tensor, n_lb: int, device: torch.device,
                            generator: torch.Generator) -> dict[str, float]:
    """One step as the released code does it: copy the batch to the device, one fp32 forward per
    view (``method.fuse_views`` must be False), backward, SGD step; returns the logged values.
    (``Batch.idx`` gets row numbers: the reference loader returns no dataset indices and LPS does
    not use them.)"""
    if method.fuse_views:
        raise ValueError("the reference step runs one forward pass per view: set method.fuse_views = False")
    views = [v.to(device) for v in views]
    batch = Batch(views=views, y_lb=y_lb.to(device), n_lb=n_lb,
                  idx=torch.arange(views[0].shape[0], device=device), generator=generator)
    out = method.training_step(model, batch)
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in out.items()}  # the reference logs each term with .item()
