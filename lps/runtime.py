"""Device, precision, threads and determinism, shared by training and pretraining."""

from __future__ import annotations

import contextlib
import os

import torch

from lps.errors import LPSError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LPSError(f"train.device={name!r} but CUDA is not available here (use train.device=cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise LPSError(f"train.device={name!r} is not a device (auto, cpu, cuda, cuda:N)") from None


def setup_runtime(device: torch.device, threads: int, deterministic: bool) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA ("auto" or "bf16"); plain fp32 otherwise."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cosine_factor(epoch: int, epochs: int) -> float:
    import math

    return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
