#!/usr/bin/env python
"""Side-by-side throughput of (a) a reference-style LPS pipeline and (b) this project's, in one
process on one device, on synthetic uint8 data (never real data).

(a) ``benchmarks/reference_pipeline.py``: DataLoader workers running per-image PIL transforms
    (weak, weak, FixMatch RandAugment strong), batches copied to the device, three separate fp32
    forward passes, plain SGD; torch's default backend settings.
(b) this project (``lps/trainer.py``): uint8 images on the device, index-slice batches, batched
    per-sample augmentation (``lps.data.augment.Augmenter``), the trainer's step (bf16 autocast,
    channels_last (every device) and fused SGD on CUDA; ``--compile``, ``--fuse-views`` as ``train.compile`` and
    ``train.fuse_views``; ``--deterministic`` as ``train.deterministic``, default on as in the
    trainer). Both call ``lps.methods.lps.LPS.training_step``, so they compute the same loss.

Sections (``--sections``):

- ``cifar``: CIFAR-100 shape (N x 3 x 32 x 32, 100 classes, CIFAR ResNet-18 of ``--width``):
  augmentation alone, the full training step, the evaluation forward; FLOP/s of the step.
- ``imagenet``: ImageNet-100 shape (ResNet-50). (b) crops 224 from 256 x 256 uint8 images on
  the device (the form of a pre-resized cache); (a) decodes synthetic JPEGs with PIL per image.
- ``datapath``: where ImageNet-100's 256 x 256 uint8 batches come from: PIL decode in DataLoader
  workers (the current ``lps.data.datasets.ImageFiles``), ``torchvision.io.decode_jpeg`` batched
  on the CPU and (CUDA only) on the GPU, and a uint8 memmap cache.

Rates are rows per second (a row = one training image with its three views), the median over
``--repeats`` windows of ``--steps`` iterations after warm-up (DataLoader start-up excluded),
with a device synchronisation before each clock reading on CUDA. FLOPs of one training step
(3 forwards + backward; the frozen layers get no backward) are counted with
``torch.utils.flop_counter.FlopCounterMode``. The peak is a datasheet dense-bf16 figure on CUDA
and a measured fp32 matmul rate on the CPU.

Example (about five minutes on a shared 2-core CPU; see benchmarks/README.md for GPU commands)::

    python benchmarks/throughput.py --device cpu --cifar-batch 64 --steps 3 --repeats 3 --warmup 2 \
        --workers 2 --width 32 --imagenet-batch 8 --imagenet-eval-batch 8 --eval-batch 256 \
        --threads 1 --jpeg-files 32
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import reference_pipeline as ref  # noqa: E402
from lps.config import Config  # noqa: E402
from lps.data.augment import Augmenter  # noqa: E402
from lps.data.datasets import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, ImageFiles,  # noqa: E402
                               TensorImages, _FileDataset)
from lps.methods.base import Batch, MethodContext  # noqa: E402
from lps.methods.lps import LPS, LPSParams  # noqa: E402
from lps.models import OpenWorldModel, apply_freeze, build_backbone  # noqa: E402
from lps.runtime import autocast, setup_runtime  # noqa: E402
from lps.batching import batch_sizes, epoch_index_batches  # noqa: E402
from lps.models import embed  # noqa: E402
from lps.optim import make_optimizer, optimization_step  # noqa: E402
from lps.utils import git_commit, library_versions  # noqa: E402

NUM_CLASSES, N_SEEN = 100, 50  # CIFAR-100 and ImageNet-100, half the classes seen
LABELED_FRACTION = 0.25  # seen_class_ratio 0.5 x label_ratio 0.5: a quarter of the images is labeled

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets; the first
# entry whose key occurs in torch.cuda.get_device_name() wins ("NVIDIA H100 80GB HBM3" = H100 SXM).
BF16_DENSE_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


# ----------------------------------------------------------------------------- measurement helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Rate:
    """Rows per second: median and range over the repeats."""

    median: float
    low: float
    high: float
    samples: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{_num(self.median)} [{_num(self.low)}-{_num(self.high)}]"


def measure(fn: Callable[[], object], rows_per_call: int, warmup: int, steps: int, repeats: int,
            device: torch.device) -> Rate:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` windows of ``steps`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        rates.append(rows_per_call * steps / (time.perf_counter() - t0))
    return Rate(statistics.median(rates), min(rates), max(rates), rates)


def _num(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@contextlib.contextmanager
def backend_settings(kind: str, device: torch.device, deterministic: bool):
    """(a) runs with torch's defaults (no deterministic kernels, no cudnn autotuning, fp32
    matmuls without TF32); (b) with the trainer's ``setup_runtime``. Restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if kind == "reference":
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.benchmark = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = True
        else:
            torch.use_deterministic_algorithms(False)
            setup_runtime(device, 0, deterministic)
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved[2:]


def synthetic_images(n: int, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """uint8 [N, C, H, W]: smooth random colour fields plus pixel noise (compress like photos,
    unlike uniform noise)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, channels, height, width, dtype=torch.uint8)
    chunk = max(1, (1 << 22) // (channels * height * width))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        base = torch.rand(e - s, channels, max(2, height // 8), max(2, width // 8), generator=g) * 255
        img = F.interpolate(base, size=(height, width), mode="bilinear", align_corners=False)
        img += torch.randn(img.shape, generator=g) * 12
        out[s:e] = img.clamp_(0, 255).to(torch.uint8)
    return out


def write_jpegs(folder: Path, n: int, height: int, width: int, seed: int, quality: int = 90) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images = synthetic_images(n, 3, height, width, seed).permute(0, 2, 3, 1).numpy()
    files = []
    for i, a in enumerate(images):
        path = folder / f"img{i:05d}.JPEG"
        Image.fromarray(a).save(path, quality=quality)
        files.append(str(path))
    return files


def peak_flops(device: torch.device, override_tflops: float, matmul_n: int) -> tuple[float | None, str]:
    """Peak FLOP/s of the device and how it was obtained."""
    if override_tflops > 0:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s given by --peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in BF16_DENSE_PEAK_TFLOPS:
            if key in name:
                return tflops * 1e12, f"{name}: dense bf16 datasheet peak {tflops:g} TFLOP/s"
        return None, f"{name}: not in the dense-bf16 peak table (pass --peak-tflops)"
    n = matmul_n
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    rate = 2 * n**3 / statistics.median(times)
    return rate, (f"measured fp32 matmul {n}x{n} @ {n}x{n} with {torch.get_num_threads()} threads: "
                  f"{rate / 1e9:.1f} GFLOP/s (the CPU's achievable rate now, not a datasheet peak)")


# ----------------------------------------------------------------------------- one workload (CIFAR or ImageNet)


@dataclass
class Workload:
    name: str
    batch: int
    images: torch.Tensor  # uint8 [N, C, H, W] on the device: the project's data
    labels: np.ndarray  # int64 [N]
    ref_train: torch.utils.data.Dataset  # reference datasets (PIL per image)
    ref_test: torch.utils.data.Dataset
    augmenter: Augmenter
    arch: str
    width: int
    weight_decay: float
    eval_batch: int

    def __post_init__(self):
        n = len(self.labels)
        n_lab = max(1, int(round(LABELED_FRACTION * n)))
        self.labeled = torch.arange(n_lab)
        self.unlabeled = torch.arange(n_lab, n)
        self.b_lab, self.b_unl, self.steps_per_epoch = batch_sizes(n_lab, n - n_lab, self.batch)

    def index_batches(self, seed: int) -> Iterator[torch.Tensor]:
        """Endless index batches (labeled rows first), epoch after epoch, as the trainer draws them."""
        g = torch.Generator().manual_seed(seed)
        while True:
            yield from epoch_index_batches(self.labeled, self.unlabeled, self.b_lab, self.b_unl,
                                           self.steps_per_epoch, g)

    def make_model(self, device: torch.device) -> OpenWorldModel:
        torch.manual_seed(0)
        model = OpenWorldModel(build_backbone(self.arch, 3, self.width), NUM_CLASSES)
        apply_freeze(model, "layer4")  # the paper's default: conv1..layer3 frozen
        return model.to(device)

    def make_method(self, model: OpenWorldModel, device: torch.device, batch: int | None = None) -> LPS:
        b_lab, b_unl, steps = (self.b_lab, self.b_unl, self.steps_per_epoch) if batch is None else \
            batch_sizes(len(self.labeled), len(self.unlabeled), batch)
        ctx = MethodContext(num_classes=NUM_CLASSES, n_seen=N_SEEN, n_labeled=len(self.labeled),
                            n_unlabeled=len(self.unlabeled), epochs=200, steps_per_epoch=steps,
                            feat_dim=model.backbone.out_dim, device=device)
        return LPS(LPSParams(), ctx).to(device)

    def labels_of(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        return torch.as_tensor(self.labels[idx.numpy()], device=device)


def make_cifar(args, device: torch.device) -> Workload:
    n, size = args.cifar_images, 32
    images = synthetic_images(n, 3, size, size, args.seed)
    labels = _labels(n, args.seed)
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    tf = ref.cifar_transforms(CIFAR_MEAN, CIFAR_STD, size)
    return Workload(
        name="CIFAR-100", batch=args.cifar_batch, images=images.to(device), labels=labels,
        ref_train=ref.ArrayImageDataset(hwc, labels, tf["train"]),
        ref_test=ref.ArrayImageDataset(hwc, labels, tf["test"]),
        augmenter=Augmenter("small", size, CIFAR_MEAN, CIFAR_STD), arch="resnet18_cifar", width=args.width,
        weight_decay=5e-4, eval_batch=args.eval_batch,
    )


def make_imagenet(args, device: torch.device, jpeg_files: list[str]) -> Workload:
    n = args.imagenet_images_in_memory
    images = synthetic_images(n, 3, args.imagenet_resize, args.imagenet_resize, args.seed)
    labels = _labels(n, args.seed)
    tf = ref.imagenet_transforms(IMAGENET_MEAN, IMAGENET_STD, args.imagenet_crop, args.imagenet_resize)
    return Workload(
        name="ImageNet-100", batch=args.imagenet_batch, images=images.to(device), labels=labels,
        ref_train=ref.JpegFileDataset(jpeg_files, labels, tf["train"]),
        ref_test=ref.JpegFileDataset(jpeg_files, labels, tf["test"]),
        augmenter=Augmenter("large", args.imagenet_crop, IMAGENET_MEAN, IMAGENET_STD), arch="resnet50", width=64,
        weight_decay=1e-4, eval_batch=args.imagenet_eval_batch,
    )


def _labels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    n_lab = max(1, int(round(LABELED_FRACTION * n)))
    labels[:n_lab] = rng.integers(0, N_SEEN, n_lab)  # labeled rows are from seen classes
    return labels.astype(np.int64)


def count_step_flops(w: Workload, model: OpenWorldModel, device: torch.device) -> dict[str, float]:
    """FLOPs per row of one LPS training step (3 forwards, loss, backward) and of one forward.

    Counted with FlopCounterMode (matmuls and convolutions) on a copy of the model in fp32, at two
    small batch sizes and extended linearly to the benchmark batch (the convolutions are linear in
    the batch; the loss's batch x batch similarity matrices add < 0.1 %). The backward is what
    autograd runs: the frozen layers (conv1..layer3) get none.
    """
    b0 = max(2, min(4, w.batch // 2))
    counts = {}
    for b in (b0, 2 * b0):
        m = copy.deepcopy(model).float()
        method = w.make_method(m, device, batch=b)
        b_lab = max(1, b // 4)
        x = w.images[:b]
        g = torch.Generator(device=device).manual_seed(0)
        views = [w.augmenter.weak(x, g), w.augmenter.weak(x, g), w.augmenter.strong(x, g)]
        batch = Batch(views=views, y_lb=torch.zeros(b_lab, dtype=torch.long, device=device), n_lb=b_lab,
                      idx=torch.arange(b, device=device), generator=g)
        with FlopCounterMode(display=False) as fc:
            method.training_step(m, batch)["loss"].backward()
        step = fc.get_total_flops()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(views[0])
        counts[b] = (step, fc.get_total_flops())
        del m, method
    (s0, f0), (s1, f1) = counts[b0], counts[2 * b0]
    per_row_step = (s1 - s0) / b0
    per_row_fwd = (f1 - f0) / b0
    return {"step_per_row": per_row_step, "forward_per_row": per_row_fwd,
            "step_at_batch": s0 + per_row_step * (w.batch - b0)}


def run_workload(w: Workload, args, device: torch.device) -> dict:
    """Augmentation alone, training step and evaluation forward for (a) and (b)."""
    B, cuda = w.batch, device.type == "cuda"
    out: dict = {"name": w.name, "batch": B, "b_lab": w.b_lab, "eval_batch": w.eval_batch}
    ref_warmup = max(args.warmup, args.workers + 1)  # the workers' first batches arrive together

    # ---------------------------------------------------------------- augmentation alone
    with backend_settings("reference", device, args.deterministic):
        loader = ref.reference_loader(w.ref_train, (b.tolist() for b in w.index_batches(args.seed)), args.workers)
        it = iter(loader)
        out["aug_ref"] = measure(lambda: next(it), B, ref_warmup, args.steps, args.repeats, device)
        del it, loader
    print(f"  {w.name} augmentation (a): {out['aug_ref']} rows/s", flush=True)

    with backend_settings("project", device, args.deterministic):
        aug, idx_iter = w.augmenter, w.index_batches(args.seed)
        g = torch.Generator(device=device).manual_seed(args.seed)

        def project_views(x: torch.Tensor) -> list[torch.Tensor]:
            views = [aug.weak(x, g), aug.weak(x, g), aug.strong(x, g)]
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]  # the trainer's default
            return views

        def project_aug():
            idx = next(idx_iter)
            return project_views(w.images[idx.to(device)])

        out["aug_proj"] = measure(project_aug, B, args.warmup, args.steps, args.repeats, device)
    print(f"  {w.name} augmentation (b): {out['aug_proj']} rows/s", flush=True)

    # ---------------------------------------------------------------- training step
    base = w.make_model(device)
    with backend_settings("reference", device, args.deterministic):
        model = copy.deepcopy(base)
        method = w.make_method(model, device)
        opt = ref.make_reference_optimizer([p for p in model.parameters() if p.requires_grad],
                                           weight_decay=w.weight_decay)
        loader = ref.reference_loader(w.ref_train, (b.tolist() for b in w.index_batches(args.seed)), args.workers)
        it = iter(loader)
        g_ref = torch.Generator(device=device).manual_seed(args.seed)

        def reference_step():
            views, y = next(it)
            ref.reference_training_step(method, model, opt, views, y[:w.b_lab], w.b_lab, device, g_ref)

        out["step_ref"] = measure(reference_step, B, ref_warmup, args.steps, args.repeats, device)
        del it, loader
        out["eval_ref"] = _reference_eval(w, model, args, device)
        del model, method, opt
    print(f"  {w.name} training step (a): {out['step_ref']} rows/s; eval {out['eval_ref']}", flush=True)

    with backend_settings("project", device, args.deterministic):
        model = copy.deepcopy(base)
        model.to(memory_format=torch.channels_last)  # train.channels_last, on every device
        method = w.make_method(model, device)
        method.fuse_views = args.fuse_views
        cfg = Config()
        cfg.optim.weight_decay = w.weight_decay
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optim, device)
        forward_model = torch.compile(model) if args.compile else model
        idx_iter = w.index_batches(args.seed)
        g = torch.Generator(device=device).manual_seed(args.seed)

        def project_step():  # the body of the trainer's step loop
            idx = next(idx_iter)
            x = w.images[idx.to(device)]
            y_lb = w.labels_of(idx[:w.b_lab], device)
            batch = Batch(views=project_views(x), y_lb=y_lb, n_lb=w.b_lab, idx=idx.to(device), generator=g)
            step_out = optimization_step(method, forward_model, opt, batch, device, "auto")
            for v in step_out.values():  # the trainer sums every logged value on the host
                float(v.detach())

        out["step_proj"] = measure(project_step, B, args.warmup, args.steps, args.repeats, device)
        out["eval_proj"] = _project_eval(w, model, args, device)
        del model, method, opt, forward_model
    print(f"  {w.name} training step (b): {out['step_proj']} rows/s; eval {out['eval_proj']}", flush=True)

    with backend_settings("project", device, args.deterministic):
        out["flops"] = count_step_flops(w, base, device)
    return out


def _reference_eval(w: Workload, model: torch.nn.Module, args, device: torch.device) -> Rate:
    """Evaluation as the reference does it: test transform per image in workers, fp32 forward."""
    eb, n = w.eval_batch, len(w.labels)

    def batches():
        start = 0
        while True:
            yield [(start + i) % n for i in range(eb)]
            start = (start + eb) % n

    loader = ref.reference_loader(w.ref_test, batches(), args.workers)
    it = iter(loader)
    model.eval()

    @torch.no_grad()
    def step():
        x, _ = next(it)
        z, _ = model(x.to(device))
        z.cpu()

    rate = measure(step, eb, max(1, args.workers + 1), args.steps, args.repeats, device)
    model.train()
    del it, loader
    return rate


def _project_eval(w: Workload, model: torch.nn.Module, args, device: torch.device) -> Rate:
    """The trainer's ``embed`` (test transform on the device, autocast forward, outputs to host)."""
    eb = w.eval_batch
    n = eb * args.steps
    idx = np.arange(n) % len(w.labels)
    source = TensorImages(w.images)
    embed(model, source, idx[:eb], w.augmenter.test, device, eb, "auto", True)  # warm-up
    return measure(lambda: embed(model, source, idx, w.augmenter.test, device, eb, "auto", True), n, 0, 1,
                   args.repeats, device)


# ----------------------------------------------------------------------------- ImageNet data path


def run_datapath(args, device: torch.device, jpeg_files: list[str], tmp: Path) -> list[dict]:
    """256 x 256 uint8 batches for ImageNet-100: decode + resize vs a pre-resized uint8 cache."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    R, B, rows = args.imagenet_resize, args.datapath_batch, []
    nfiles = len(jpeg_files)

    # PIL decode + shrink into the canvas per image: what lps.data.datasets.ImageFiles' workers do
    ds = _FileDataset(jpeg_files, R)
    counter = iter(range(1 << 62))
    rate = measure(lambda: [ds[next(counter) % nfiles] for _ in range(B)], B, 1, args.steps, args.repeats,
                   torch.device("cpu"))
    rows.append({"path": "PIL decode + shrink to the canvas (ImageFiles worker), 1 process", "rate": rate,
                 "note": "per CPU process; scales with workers up to the free cores"})

    files = [jpeg_files[i % nfiles] for i in range(B * (args.warmup + args.workers + 1 + args.steps * args.repeats))]
    loader_batches = [torch.arange(s, s + B) for s in range(0, len(files), B)]
    it = ImageFiles(files, R, args.workers).batches(loader_batches, device)
    rate = measure(lambda: next(it), B, max(args.warmup, args.workers + 1), args.steps, args.repeats, device)
    del it
    rows.append({"path": f"ImageFiles DataLoader, {args.workers} workers -> {device.type}", "rate": rate,
                 "note": "the trainer's current ImageNet loader"})

    def decode_resize(dev: str) -> Callable[[], torch.Tensor]:
        def fn():
            datas = [read_file(jpeg_files[next(counter) % nfiles]) for _ in range(B)]
            imgs = decode_jpeg(datas, mode=ImageReadMode.RGB, device=dev)
            out = []
            for im in imgs:  # sizes differ in a real folder: resize one by one
                h, w = im.shape[-2:]
                s = R / min(h, w)
                im = TF.resize(im, [max(R, round(h * s)), max(R, round(w * s))], antialias=True)
                out.append(TF.center_crop(im, [R, R]))
            return torch.stack(out).to(device)
        return fn

    cpu_path = "torchvision decode_jpeg, CPU, batched list + resize, 1 process"
    gpu_path = "torchvision decode_jpeg, CUDA (nvjpeg), batched + resize on the GPU"
    try:
        read_file(jpeg_files[0])
    except RuntimeError as e:  # e.g. a CUDA build of torchvision next to a CPU-only torch
        why = f"not run: torchvision's image extension does not load here ({str(e).split('.')[0]})"
        rows.append({"path": cpu_path, "rate": None, "note": why})
        rows.append({"path": gpu_path, "rate": None, "note": why})
    else:
        rate = measure(decode_resize("cpu"), B, 1, args.steps, args.repeats, device)
        rows.append({"path": cpu_path, "rate": rate, "note": "per CPU process"})
        if device.type == "cuda":
            rate = measure(decode_resize(str(device)), B, 2, args.steps, args.repeats, device)
            rows.append({"path": gpu_path, "rate": rate, "note": "file reads on the host, one process"})
        else:
            rows.append({"path": gpu_path, "rate": None, "note": "not run: needs CUDA"})

    # pre-resized uint8 cache [N, 3, R, R] on disk, memory-mapped; random index batches
    m = args.cache_images
    cache = np.lib.format.open_memmap(tmp / "cache.npy", mode="w+", dtype=np.uint8, shape=(m, 3, R, R))
    chunk = 256
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        cache[s:e] = synthetic_images(e - s, 3, R, R, args.seed + s).numpy()
    cache.flush()
    del cache
    cache = np.load(tmp / "cache.npy", mmap_mode="r")
    rng = np.random.default_rng(args.seed)
    pin = device.type == "cuda"

    def from_cache():
        idx = np.sort(rng.choice(m, size=min(B, m), replace=False))
        x = torch.from_numpy(cache[idx])
        if pin:
            x = x.pin_memory()
        return x.to(device, non_blocking=pin)

    rate = measure(from_cache, min(B, m), 1, args.steps, args.repeats, device)
    rows.append({"path": f"uint8 memmap cache ({m} images, page cache warm) -> {device.type}", "rate": rate,
                 "note": "one process, no decode; a cold cache reads 196,608 B/image from disk"})
    return rows


# ----------------------------------------------------------------------------- report


def print_report(args, device: torch.device, results: list[dict], datapath: list[dict] | None,
                 peak: tuple[float | None, str]) -> None:
    peak_flops_s, peak_desc = peak
    if results:
        print("\n## Throughput: rows/s (a row = one training image with its 3 views; evaluation: images/s), "
              f"median [min-max] of {args.repeats} x {args.steps} iterations\n")
        print("| workload | batch | (a) reference-style | (b) this project | (b)/(a) |")
        print("|---|---:|---:|---:|---:|")
        for r in results:
            for key, label, batch in (("aug", "augmentation only (weak, weak, strong)", r["batch"]),
                                      ("step", "LPS training step (data + augmentation + fwd/bwd + SGD)", r["batch"]),
                                      ("eval", "evaluation forward (test transform)", r["eval_batch"])):
                a, b = r[f"{key}_ref"], r[f"{key}_proj"]
                print(f"| {r['name']} {label} | {batch} | {a} | {b} | {b.median / a.median:.2f}x |")

        print(f"\n## Training-step FLOPs and utilisation\n\npeak: {peak_desc}\n")
        print("| workload | GFLOP/row counted (3 fwd + bwd) | GFLOP/row naive (9 x fwd) | "
              "(a) TFLOP/s | (a) % of peak | (b) TFLOP/s | (b) % of peak |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in results:
            f = r["flops"]
            cells = []
            for key in ("step_ref", "step_proj"):
                achieved = f["step_per_row"] * r[key].median
                r[f"{key}_flops_s"] = achieved
                pct = f"{100 * achieved / peak_flops_s:.2f} %" if peak_flops_s else "n/a"
                cells += [f"{achieved / 1e12:.3g}", pct]
            print(f"| {r['name']} | {f['step_per_row'] / 1e9:.3f} | {9 * f['forward_per_row'] / 1e9:.3f} | "
                  + " | ".join(cells) + " |")
        print("\nCounted = FlopCounterMode over one step (matmuls and convolutions, fp32 copy of the model). "
              "The frozen layers (conv1..layer3) run no backward, so the count is below the naive 3 views x "
              "(fwd + 2 x fwd for bwd) = 9 x forward of full fine-tuning. Both pipelines run the same FLOPs per row.")

        print("\n## Extrapolated wall time (from the rates above; at the benchmark's batch sizes)\n")
        print("| run | (a) reference-style | (b) this project | formula |")
        print("|---|---:|---:|---|")
        for r in results:
            if r["name"] == "CIFAR-100":
                rows_total = args.run_epochs * args.run_steps * args.run_batch
                eval_total = args.run_epochs * args.cifar_eval_images
                label = (f"CIFAR-100 full LPS run ({args.run_epochs} epochs x {args.run_steps} steps x "
                         f"{args.run_batch} rows + {args.cifar_eval_images:,} eval images/epoch)")
            else:
                rows_total, eval_total = args.imagenet_epoch_images, args.imagenet_eval_images
                label = (f"ImageNet-100 one epoch ({args.imagenet_epoch_images:,} rows + "
                         f"{args.imagenet_eval_images:,} eval images)")
            t = {k: rows_total / r[f"step_{k}"].median + eval_total / r[f"eval_{k}"].median for k in ("ref", "proj")}
            r["extrapolated_s"] = t
            print(f"| {label} | {_duration(t['ref'])} | {_duration(t['proj'])} | "
                  "rows / step rate + eval images / eval rate |")
        notes = []
        for r in results:
            if r["name"] == "CIFAR-100" and r["batch"] != args.run_batch:
                notes.append(f"CIFAR rates measured at batch {r['batch']}, the run uses {args.run_batch}")
            if r["name"] == "ImageNet-100":
                notes.append("ImageNet (b) assumes 256x256 uint8 batches arrive as fast as the step consumes "
                             "them (see the data-path table)")
        if notes:
            print("\nNotes: " + "; ".join(notes) + ". Checkpointing and start-up are not included.")

    if datapath is not None:
        R = args.imagenet_resize
        print(f"\n## ImageNet-100 data path: {R}x{R} uint8 batches of {args.datapath_batch} from synthetic "
              f"{args.jpeg_size} JPEGs (quality 90) or a uint8 cache\n")
        print("| path | images/s | note |")
        print("|---|---:|---|")
        for row in datapath:
            print(f"| {row['path']} | {row['rate'] if row['rate'] else 'n/a'} | {row['note']} |")
        size = args.imagenet_epoch_images * 3 * R * R
        print(f"\nA {R}x{R} uint8 cache of {args.imagenet_epoch_images:,} images takes {size / 1e9:.1f} GB.")
        imnet = [r for r in results if r["name"] == "ImageNet-100"]
        if imnet:
            print(f"(b)'s ImageNet training step consumes {imnet[0]['step_proj']} rows/s; the data path has to "
                  "supply at least that.")


def _json_ready(obj):
    if isinstance(obj, Rate):
        return asdict(obj)
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--sections", default="cifar,imagenet,datapath",
                   help="comma-separated subset of cifar, imagenet, datapath")
    p.add_argument("--cifar-batch", type=int, default=512, help="rows per step (the paper: 512)")
    p.add_argument("--cifar-images", type=int, default=50000, help="synthetic CIFAR images held in memory")
    p.add_argument("--width", type=int, default=64, help="CIFAR ResNet-18 base width (64 = the paper's model)")
    p.add_argument("--imagenet-batch", type=int, default=512, help="rows per step (the paper: 512)")
    p.add_argument("--imagenet-images-in-memory", type=int, default=0,
                   help="synthetic 256x256 images on the device for (b) (0: 2 x the ImageNet batch)")
    p.add_argument("--imagenet-crop", type=int, default=224, help="training resolution")
    p.add_argument("--imagenet-resize", type=int, default=256, help="stored / resized resolution")
    p.add_argument("--jpeg-size", default="500x375", help="WxH of the synthetic JPEGs (a typical ImageNet photo)")
    p.add_argument("--jpeg-files", type=int, default=64, help="synthetic JPEG files (read cyclically)")
    p.add_argument("--datapath-batch", type=int, default=0, help="data-path batch (0: the ImageNet batch)")
    p.add_argument("--cache-images", type=int, default=0, help="images in the memmap cache (0: 4 x data-path batch)")
    p.add_argument("--eval-batch", type=int, default=1024, help="CIFAR evaluation batch (train.eval_batch_size)")
    p.add_argument("--imagenet-eval-batch", type=int, default=0, help="ImageNet evaluation batch (0: --eval-batch)")
    p.add_argument("--steps", type=int, default=10, help="timed iterations per repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (more for DataLoader start-up)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the reference pipeline")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads of the main process (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="(b) with torch.compile (train.compile)")
    p.add_argument("--fuse-views", action="store_true", help="(b) with one forward over the 3 views (train.fuse_views)")
    p.add_argument("--deterministic", type=_bool, default=True,
                   help="(b) with deterministic kernels (train.deterministic, default true as in the trainer)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="override the device's peak (TFLOP/s)")
    p.add_argument("--matmul-n", type=int, default=2048, help="CPU peak: size of the measured fp32 matmul")
    p.add_argument("--run-epochs", type=int, default=200)
    p.add_argument("--run-steps", type=int, default=97, help="CIFAR-100 steps per epoch (12,500 labeled / 128)")
    p.add_argument("--run-batch", type=int, default=512)
    p.add_argument("--cifar-eval-images", type=int, default=47500,
                   help="images evaluated per epoch: 37,500 unlabeled training images + 10,000 test images")
    p.add_argument("--imagenet-epoch-images", type=int, default=130000,
                   help="rows per ImageNet-100 epoch (<= 1,300 images per class x 100 classes)")
    p.add_argument("--imagenet-eval-images", type=int, default=102500,
                   help="images evaluated per epoch: 3/4 of the training images unlabeled + 5,000 validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = sorted(set(args.sections) - {"cifar", "imagenet", "datapath"})
    if bad or not args.sections:
        p.error(f"--sections: unknown {bad}; choose from cifar, imagenet, datapath")
    for name in ("cifar_batch", "imagenet_batch"):
        if getattr(args, name) < 4:
            p.error(f"--{name.replace('_', '-')} must be at least 4 (labeled and unlabeled rows in every batch)")
    for name in ("steps", "repeats", "eval_batch", "cifar_images", "jpeg_files"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    args.cifar_images = max(args.cifar_images, args.cifar_batch)  # at least one batch of distinct images
    try:
        args.jpeg_wh = tuple(int(v) for v in args.jpeg_size.lower().split("x"))
        assert len(args.jpeg_wh) == 2 and min(args.jpeg_wh) > 0
    except (ValueError, AssertionError):
        p.error(f"--jpeg-size must be WxH, e.g. 500x375, got {args.jpeg_size!r}")
    if args.imagenet_crop > args.imagenet_resize:
        p.error("--imagenet-crop must not exceed --imagenet-resize")
    args.imagenet_images_in_memory = args.imagenet_images_in_memory or 2 * args.imagenet_batch
    args.imagenet_eval_batch = args.imagenet_eval_batch or args.eval_batch
    args.datapath_batch = args.datapath_batch or args.imagenet_batch
    args.cache_images = args.cache_images or 4 * args.datapath_batch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here (use --device cpu)")
    return args


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.deterministic:  # as the trainer's setup_runtime, but before anything initialises cuBLAS
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print("command: " + shlex.join(sys.orig_argv if argv is None else ["benchmarks/throughput.py", *argv]))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    libs = library_versions()
    print(f"device: {device} {gpu} | host {platform.node()} | {os.cpu_count()} CPUs, {torch.get_num_threads()} "
          f"torch threads, {args.workers} reference workers | torch {libs.get('torch')} "
          f"torchvision {libs.get('torchvision')} | git {git_commit()}")
    sizes = []
    if "cifar" in args.sections:
        sizes.append(f"CIFAR batch {args.cifar_batch}, width {args.width}, eval batch {args.eval_batch}")
    if "imagenet" in args.sections:
        sizes.append(f"ImageNet batch {args.imagenet_batch}, {args.imagenet_crop} from {args.imagenet_resize}, "
                     f"eval batch {args.imagenet_eval_batch}")
    print(f"(b) options: compile={args.compile} fuse_views={args.fuse_views} deterministic={args.deterministic}; "
          + "; ".join(sizes))
    sys.stdout.flush()

    results, datapath = [], None
    with tempfile.TemporaryDirectory(prefix="lps-bench-") as tmpdir:
        tmp = Path(tmpdir)
        jpegs = []
        if "imagenet" in args.sections or "datapath" in args.sections:
            w_, h_ = args.jpeg_wh
            jpegs = write_jpegs(tmp / "jpeg", args.jpeg_files, h_, w_, args.seed)
        if "cifar" in args.sections:
            results.append(run_workload(make_cifar(args, device), args, device))
        if "imagenet" in args.sections:
            results.append(run_workload(make_imagenet(args, device, jpegs), args, device))
        if "datapath" in args.sections:
            datapath = run_datapath(args, device, jpegs, tmp)
    peak = peak_flops(device, args.peak_tflops, args.matmul_n) if results else (None, "")
    print_report(args, device, results, datapath, peak)
    summary = {"command": sys.orig_argv, "device": str(device), "gpu": gpu, "peak_flops": peak[0],
               "peak": peak[1], "results": results, "datapath": datapath}
    if args.json:
        Path(args.json).write_text(json.dumps(_json_ready(summary), indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
