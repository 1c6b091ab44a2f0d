"""The optimiser of a run (``optim.*``), its learning-rate schedule, and one optimisation step."""

from __future__ import annotations

import torch

from lps.config import OptimConfig
from lps.methods.base import Batch, Method
from lps.runtime import autocast, cosine_factor


def make_optimizer(params, optim: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam; fused kernels on CUDA."""
    fused = {"fused": True} if device.type == "cuda" else {}
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                               **fused)
    return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay, **fused)


def lr_factor(optim: OptimConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` relative to ``optim.lr`` (cosine, multistep or constant)."""
    if optim.schedule == "cosine":
        return cosine_factor(epoch, optim.epochs)
    if optim.schedule == "multistep":
        return optim.gamma ** sum(epoch >= m for m in optim.milestones)
    return 1.0


def optimization_step(method: Method, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                      device: torch.device, precision: str) -> dict[str, torch.Tensor]:
    """One optimiser step: the method's losses under autocast, backward, step. Returns the method's
    outputs; raises FloatingPointError when the loss is not finite."""
    with autocast(device, precision):
        out = method.training_step(model, batch)
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return out
