"""State a method keeps across steps: the running mean of the last ``t`` batch vectors
(:class:`HistoryMean`) and distribution alignment on it (ReMixMatch / SsCL's fairness
adjustment), training-index -> memory-slot bookkeeping for per-sample state
(:class:`IndexSlots`), and the sigmoid ramp-up of the NCD code bases. Everything lives in
buffers, so a checkpoint resumes it exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["distribution_alignment", "HistoryMean", "IndexSlots", "sigmoid_rampup"]


def distribution_alignment(probs: Tensor, running_mean: Tensor, target: Tensor | None = None,
                           eps: float = 1e-6) -> Tensor:
    """Distribution alignment (ReMixMatch, Berthelot et al. 2020, Sec. 3.2):
    ``p~ = Normalize(p * target / running_mean)``, row-wise.

    ``running_mean`` is the average prediction over recent batches and ``target`` the desired
    marginal (uniform when None), so a class the model over-predicts is scaled down.

    Args:
        probs: ``[N, C]`` probabilities.
        running_mean: ``[C]`` running average of the predictions (clamped at ``eps``).
        target: optional ``[C]`` target marginal; uniform when None.

    Returns:
        ``[N, C]`` rows summing to one.
    """
    if probs.dim() != 2 or running_mean.shape != probs.shape[1:]:
        raise ValueError(f"probs [N, C] and running_mean [C] do not match: {tuple(probs.shape)}, "
                         f"{tuple(running_mean.shape)}")
    if target is None:
        target = torch.full_like(running_mean, 1.0 / running_mean.numel())
    scaled = probs * (target / running_mean.clamp_min(eps)).to(probs.dtype)
    return scaled / scaled.sum(1, keepdim=True).clamp_min(eps)


class HistoryMean(nn.Module):
    """Mean of the last ``length`` vectors pushed (a ring buffer in buffers, so it checkpoints and
    resumes exactly). ReMixMatch and SsCL keep the last 128 batch-mean distributions this way.
    Before anything is pushed the mean is ``init`` (uniform by default)."""

    def __init__(self, length: int, dim: int, init: float | None = None):
        super().__init__()
        if length < 1 or dim < 1:
            raise ValueError(f"HistoryMean needs length >= 1 and dim >= 1, got {length}, {dim}")
        self.register_buffer("history", torch.zeros(length, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # vectors pushed so far
        self.init = 1.0 / dim if init is None else init

    @torch.no_grad()
    def push(self, v: Tensor) -> None:
        slot = int(self.count) % self.history.shape[0]
        self.history[slot] = v.detach().to(self.history.dtype)
        self.count += 1

    def mean(self) -> Tensor:
        n = min(int(self.count), self.history.shape[0])
        if n == 0:
            return torch.full_like(self.history[0], self.init)
        return self.history[:n].mean(0)


class IndexSlots(nn.Module):
    """Training-set index -> memory slot, for per-sample state (DTC's temporal ensembling).

    The trainer passes training-set indices (``Batch.idx``) that need not be contiguous (a
    subsampled dataset keeps its original indices), but there are at most ``capacity =
    n_labeled + n_unlabeled`` distinct ones. A new index gets the next free slot; the table lives
    in buffers, so a checkpoint restores the same index -> slot map.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.register_buffer("keys", torch.full((capacity,), -1, dtype=torch.long))  # slot -> index
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self._lookup: dict[int, int] | None = None

    def _load_from_state_dict(self, *args, **kwargs):
        self._lookup = None  # rebuilt from the loaded buffers on next use
        super()._load_from_state_dict(*args, **kwargs)

    def _table(self) -> dict[int, int]:
        if self._lookup is None:
            n = int(self.count)
            self._lookup = {int(k): s for s, k in enumerate(self.keys[:n].tolist())}
        return self._lookup

    @torch.no_grad()
    def slots(self, idx: Tensor) -> Tensor:
        """``[B]`` slots of the training indices ``idx``, assigning new slots on first sight."""
        table = self._table()
        out = []
        for i in idx.tolist():
            s = table.get(i)
            if s is None:
                s = int(self.count)
                if s >= self.keys.shape[0]:
                    raise RuntimeError(f"more distinct training indices than the capacity {self.keys.shape[0]} "
                                       "(n_labeled + n_unlabeled)")
                self.keys[s] = i
                self.count += 1
                table[i] = s
            out.append(s)
        return torch.tensor(out, dtype=torch.long, device=self.keys.device)


def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - current/length)^2)`` clipped to ``[0, 1]`` (Laine & Aila 2017; the ramp of
    the DTC and AutoNovel code bases, ``utils/ramps.py``); 1 when ``length == 0``."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * phase * phase))
