"""How an epoch is cut into batches: the labeled / unlabeled composition of a batch and the index
batches of one epoch (REFERENCE.md: an epoch is one pass over the labeled set)."""

from __future__ import annotations

import math

import torch


def batch_sizes(n_lab: int, n_unlab: int, batch_size: int, large: bool = False) -> tuple[int, int, int]:
    """Labeled part of a batch (at least 1), the rest unlabeled, and the steps of an epoch (one pass
    over the labeled set with drop_last). As released: CIFAR (``large`` False)
    ``int(B * n_lab / n)``; ImageNet (``large``, the released ImageNet script)
    ``B - int(B * n_unlab / n)``, one more whenever ``B * n_lab / n`` is not an integer."""
    n = n_lab + n_unlab
    b_lab = batch_size - int(batch_size * n_unlab / n) if large else int(batch_size * n_lab / n)
    b_lab = max(1, b_lab)
    b_lab = min(b_lab, n_lab)
    b_unl = max(1, batch_size - b_lab)
    return b_lab, b_unl, max(1, n_lab // b_lab)


def epoch_index_batches(labeled: torch.Tensor, unlabeled: torch.Tensor, b_lab: int, b_unl: int,
                        steps: int, g: torch.Generator) -> list[torch.Tensor]:
    """Index batches for one epoch: labeled rows first, then unlabeled rows (the unlabeled set is
    cycled through fresh permutations)."""
    lab_perm = labeled[torch.randperm(len(labeled), generator=g)]
    need = steps * b_unl
    reps = math.ceil(need / len(unlabeled))
    unl_perm = torch.cat([unlabeled[torch.randperm(len(unlabeled), generator=g)] for _ in range(reps)])
    return [torch.cat([lab_perm[s * b_lab:(s + 1) * b_lab], unl_perm[s * b_unl:(s + 1) * b_unl]])
            for s in range(steps)]
