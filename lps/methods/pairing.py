"""Positive partners of ORCA / NACH / OpenNCD: a labeled anchor is paired with a random *other*
labeled sample of the same label (drawn from the batch generator, so runs are reproducible), an
unlabeled anchor with its nearest neighbour in the batch (cosine similarity of detached,
L2-normalised features, itself excluded); NACH's neighbour acceptance rule.

Shapes: ``N`` rows of a batch, rows ``[:n_lb]`` labeled; ``D`` feature width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_similarity_matrix", "labeled_partners", "nearest_neighbours", "pair_partners", "accept_neighbours"]


def cosine_similarity_matrix(feats: Tensor) -> Tensor:
    """``[N, N]`` cosine similarities of the detached rows of ``feats`` ``[N, D]`` (float32).

    The diagonal holds each row's similarity with itself (1, or 0 for an all-zero row)."""
    f = F.normalize(feats.detach().float(), dim=1)
    return f @ f.T


def labeled_partners(y_lb: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each labeled row ``i`` a uniformly random row ``j != i`` with ``y_lb[j] == y_lb[i]``.

    Rows whose label occurs once in the batch are paired with themselves (the released ORCA code
    does the same). The draw uses ``generator`` (``Batch.generator``), so a step is reproducible.

    Args:
        y_lb: ``[n_lb]`` integer labels.
        generator: random stream on ``y_lb.device``.

    Returns:
        ``[n_lb]`` long indices into the labeled rows.
    """
    n = y_lb.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=y_lb.device)
    same = y_lb.unsqueeze(0) == y_lb.unsqueeze(1)
    same.fill_diagonal_(False)  # [n, n]: candidates of row i
    scores = torch.rand(n, n, generator=generator, device=y_lb.device)
    choice = scores.masked_fill(~same, -1.0).argmax(1)  # uniform among the candidates
    self_idx = torch.arange(n, device=y_lb.device)
    return torch.where(same.any(1), choice, self_idx)


def nearest_neighbours(sim: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest neighbour of each row in ``rows`` among all ``N`` rows of ``sim``, itself excluded.

    Args:
        sim: ``[N, N]`` similarity matrix (:func:`cosine_similarity_matrix`).
        rows: ``[M]`` long row indices (the anchors).

    Returns:
        ``(idx [M], value [M])``: the neighbour's row index and the similarity to it. With
        ``N == 1`` there is no other row and the anchor is its own neighbour.
    """
    sub = sim[rows].clone()  # [M, N]
    if sim.shape[0] > 1:
        sub[torch.arange(rows.shape[0], device=sim.device), rows] = float("-inf")
    value, idx = sub.max(1)
    return idx, value


def pair_partners(feats: Tensor, y_lb: Tensor, generator: torch.Generator | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Positive partner of every row, as ORCA's released code builds them.

    Labeled rows (``[:n_lb]``, ``n_lb = len(y_lb)``): :func:`labeled_partners`. Unlabeled rows:
    :func:`nearest_neighbours` over the whole batch (labeled rows included) by cosine similarity
    of the detached features.

    Args:
        feats: ``[N, D]`` features of view 1 (backbone features for ORCA/NACH, projections for
            OpenNCD).
        y_lb: ``[n_lb]`` labels of the labeled rows.
        generator: random stream of the step.

    Returns:
        ``(partner [N], sim [N, N], nn_sim [N - n_lb])``: partner row indices, the similarity
        matrix, and each unlabeled row's similarity to its nearest neighbour.
    """
    n, n_lb = feats.shape[0], y_lb.shape[0]
    sim = cosine_similarity_matrix(feats)
    lab = labeled_partners(y_lb, generator)
    nn_idx, nn_sim = nearest_neighbours(sim, torch.arange(n_lb, n, device=feats.device))
    return torch.cat([lab, nn_idx]), sim, nn_sim


def accept_neighbours(sim: Tensor, neighbours: Tensor, nn_sim: Tensor, n_lb: int, k: int) -> Tensor:
    """NACH's neighbour acceptance rule (REFERENCE.md "NACH", as in the public re-implementations).

    An unlabeled anchor's nearest neighbour ``n`` (similarity ``s``) is accepted iff ``s`` is at
    least the ``k``-th largest similarity between ``n`` and the labeled rows of the batch,
    ``sim[:n_lb, n]``. As in the re-implementations this column includes ``n`` itself (value 1)
    when ``n`` is labeled, so with ``k = 2`` a labeled neighbour is compared with its nearest
    *other* labeled sample. With fewer than ``k`` labeled rows the smallest of them is used
    (``k`` is clipped to ``n_lb``); with no labeled row every neighbour is accepted. Rejected
    anchors are paired with themselves by the caller.

    Args:
        sim: ``[N, N]`` similarity matrix with its diagonal (:func:`cosine_similarity_matrix`).
        neighbours: ``[M]`` neighbour row indices of the unlabeled anchors.
        nn_sim: ``[M]`` anchor-neighbour similarities.
        n_lb: number of labeled rows (rows ``[:n_lb]`` of ``sim``).
        k: rank of the threshold (re-implementations: 2).

    Returns:
        ``[M]`` bool, True where the neighbour is accepted.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_lb == 0 or neighbours.numel() == 0:
        return torch.ones_like(nn_sim, dtype=torch.bool)
    kk = min(k, n_lb)
    threshold = sim[:n_lb][:, neighbours].topk(kk, dim=0).values[kk - 1]  # [M]
    return nn_sim >= threshold
