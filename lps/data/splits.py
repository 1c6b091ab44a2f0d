"""The open-world split: a pure function of (labels, seen_class_ratio, label_ratio, split_seed)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lps.errors import LPSError


@dataclass(frozen=True)
class OpenWorldSplit:
    labeled_idx: np.ndarray  # int64, indices into the training set, ascending
    unlabeled_idx: np.ndarray  # int64, ascending
    n_seen: int  # seen classes are 0 .. n_seen-1
    num_classes: int

    def save(self, path: str | Path) -> None:
        from lps.utils import atomic_write

        atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), labeled_idx=self.labeled_idx,
                                                   unlabeled_idx=self.unlabeled_idx,
                                                   n_seen=self.n_seen, num_classes=self.num_classes))


def num_seen_classes(num_classes: int, seen_class_ratio: float) -> int:
    """``round(K * ratio)`` with halves rounded up (K=10 -> 5, K=100 -> 50)."""
    n = int(math.floor(num_classes * seen_class_ratio + 0.5))
    if not 1 <= n < num_classes:
        raise LPSError(f"seen_class_ratio={seen_class_ratio} gives {n} seen of {num_classes} classes; "
                       "need at least one seen and one novel class")
    return n


def subsample_per_class(targets: np.ndarray, max_per_class: int, seed: int) -> np.ndarray:
    """Indices (ascending) keeping at most ``max_per_class`` images of each class, chosen by ``seed``."""
    if max_per_class <= 0:
        return np.arange(len(targets), dtype=np.int64)
    rng = np.random.RandomState(seed)
    keep = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        keep.append(np.sort(rng.permutation(idx)[:max_per_class]))
    return np.sort(np.concatenate(keep)).astype(np.int64)


def open_world_split(targets: np.ndarray, num_classes: int, seen_class_ratio: float, label_ratio: float,
                     split_seed: int, max_per_class: int = 0) -> OpenWorldSplit:
    """Split training images into labeled (seen classes only) and unlabeled (seen + novel).

    As the released ORCA/LPS code: walking the training set in order, an image of a seen class is
    labeled iff a seeded uniform draw is below ``label_ratio`` (one draw per seen-class image, so
    per-class counts are approximate). Everything else is unlabeled. ``max_per_class`` first
    subsamples the training set (seeded by ``split_seed``) for CPU-sized runs.
    """
    if not (0.0 < label_ratio <= 1.0):
        raise LPSError(f"label_ratio must be in (0, 1], got {label_ratio}")
    targets = np.asarray(targets)
    n_seen = num_seen_classes(num_classes, seen_class_ratio)
    pool = subsample_per_class(targets, max_per_class, split_seed)
    y = targets[pool]
    seen = y < n_seen
    rng = np.random.RandomState(split_seed)
    draws = rng.rand(int(seen.sum()))
    labeled = np.zeros(len(pool), dtype=bool)
    labeled[np.flatnonzero(seen)] = draws < label_ratio
    if not labeled.any():
        raise LPSError(f"label_ratio={label_ratio} leaves no labeled image; raise it or use more data")
    return OpenWorldSplit(pool[labeled], pool[~labeled], n_seen, num_classes)
