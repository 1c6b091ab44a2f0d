"""The interface every OpenSSL method implements, and the batch it receives.

A method is one file in ``lps/methods/`` holding a ``Params`` dataclass (defaults = published
values, each with a comment naming its source) and a ``Method`` subclass registered with
``@METHODS.register("name")``. The trainer owns the model, optimiser, precision, checkpointing,
evaluation and logging; a method only turns a batch into losses. Method state that must survive
a restart (ORCA's uncertainty, NACH's margin, ...) lives in buffers: the trainer checkpoints
``method.state_dict()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn

from lps.errors import LPSError
from lps.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


@dataclass
class Batch:
    """One training batch. Rows ``[:n_lb]`` are labeled, the rest unlabeled (``x_lb``/``x_ulb``
    in USB's vocabulary). ``views[i]`` is the i-th augmented view of every row, as declared by the
    method's ``views``; ``uint8`` holds the raw images for methods that augment themselves."""

    views: list[torch.Tensor]  # each float [B, C, H, W], normalised
    y_lb: torch.Tensor  # long [n_lb]
    n_lb: int
    idx: torch.Tensor  # long [B], training-set indices (labeled rows first)
    generator: torch.Generator  # the step's random stream on the training device

    @property
    def n_ulb(self) -> int:
        return self.views[0].shape[0] - self.n_lb


@dataclass
class MethodContext:
    num_classes: int
    n_seen: int
    n_labeled: int
    n_unlabeled: int
    epochs: int
    steps_per_epoch: int
    feat_dim: int
    device: torch.device
    seed: int = 0  # the run's training seed (for evaluation-time randomness such as k-means)


class Method(nn.Module):
    """Base class. Subclasses set ``Params`` and ``views`` and implement ``training_step``."""

    Params: ClassVar[type]
    #: augmentations applied to each row, in order ("weak", "strong", "simclr")
    views: ClassVar[tuple[str, ...]] = ("weak", "weak", "strong")
    #: False for methods that only evaluate the initial model (e.g. SimCLR + k-means)
    trains: ClassVar[bool] = True
    #: the optimiser and schedule the method was published with, per dataset kind ("small": CIFAR
    #: and Fashion-MNIST, "large": ImageNet): ``optim.*`` keys that every config of this method
    #: starts from unless a config file, an experiment set or the command line sets them
    #: (:func:`lps.config.apply_published_optim`). Default: the LPS paper's protocol (Sec. 4.1), i.e.
    #: the lps defaults on CIFAR and weight decay 1e-4 over 90 epochs on ImageNet.
    published_optim: ClassVar[dict[str, dict]] = {"large": {"weight_decay": 1e-4, "epochs": 90}}
    #: True while the trainer runs the evaluation whose numbers go into result.parquet (methods
    #: whose published evaluation is heavier than the per-epoch monitoring, e.g. GCD's k-means)
    final_evaluation: bool = False
    registry_name: ClassVar[str]

    def __init__(self, params, ctx: MethodContext):
        super().__init__()
        self.hp = params
        self.ctx = ctx
        self.epoch = 0

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Return a dict of scalar tensors; ``"loss"`` is what is minimised, every other entry is
        logged (detached) as a loss term."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, model: nn.Module, unlabeled_probs: torch.Tensor | None) -> None:
        """Called before each epoch. ``unlabeled_probs`` are the softmax outputs on the unlabeled
        training images from the last evaluation (None before the first)."""
        self.epoch = epoch

    # ------------------------------------------------------------------ evaluation
    def before_evaluation(self, labeled: "Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]") -> None:
        """Called before ``predict`` at each evaluation. ``labeled()`` returns (logits, feats, labels) of
        the labeled training images with the test transform, computed on first call (methods that map
        clusters to seen classes, or run semi-supervised k-means, use it). Default: nothing."""

    def predict(self, logits: torch.Tensor, feats: torch.Tensor) -> np.ndarray:
        """Class/cluster ids for evaluation. Default: argmax over the K-way head."""
        return logits.argmax(1).cpu().numpy()

    # ------------------------------------------------------------------ helpers
    #: set by the trainer from ``train.fuse_views``
    fuse_views: bool = False

    def forward_views(self, model: nn.Module, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Logits and features of every view. By default one forward pass per view, so BatchNorm
        normalises each view with its own batch statistics, as the released code does. With
        ``train.fuse_views=true`` the views go through the network as one concatenated batch (fewer,
        larger kernels; BatchNorm statistics are then shared across the views)."""
        if self.fuse_views and len(views) > 1:
            z, f = model(torch.cat(views))
            sizes = [v.shape[0] for v in views]
            return list(z.split(sizes)), list(f.split(sizes))
        logits, feats = [], []
        for v in views:
            z, f = model(v)
            logits.append(z)
            feats.append(f)
        return logits, feats


def check_range(obj: Any, name: str, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise an LPSError naming ``method.<name>`` when a hyperparameter is out of range (for a method's
    ``Params.validate``)."""
    v = getattr(obj, name)
    bad = (lo is not None and (v <= lo if lo_open else v < lo)) or \
          (hi is not None and (v >= hi if hi_open else v > hi))
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        raise LPSError(f"hyperparameter 'method.{name}' must be in {rng}, got {v}")
