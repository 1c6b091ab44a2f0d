"""Pieces shared by the pairwise / prototype / clustering OpenSSL baselines (ORCA, NACH, OpenNCD,
GCD). Nothing here is registered as a method.

- positive partners of ORCA / NACH / OpenNCD: a labeled anchor is paired with a random *other*
  labeled sample of the same label (drawn from the batch generator, so runs are reproducible),
  an unlabeled anchor with its nearest neighbour in the batch (cosine similarity of detached,
  L2-normalised features, itself excluded);
- NACH's neighbour acceptance rule;
- OpenNCD's projector MLP and prototype / prototype-group probabilities;
- supervised contrastive loss (SupCon) of GCD;
- semi-supervised k-means of GCD (labeled samples keep their class as a fixed assignment);
- :func:`freeze_classifier_head` for the methods that have no classifier (OpenNCD, GCD).

Shapes: ``N`` rows of a batch, rows ``[:n_lb]`` labeled; ``D`` feature width; ``P`` prototypes;
``G`` prototype groups; ``K`` classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cosine_similarity_matrix",
    "labeled_partners",
    "nearest_neighbours",
    "pair_partners",
    "accept_neighbours",
    "freeze_classifier_head",
    "ProjectorMLP",
    "prototype_probabilities",
    "group_probabilities",
    "group_prior",
    "soft_cross_entropy",
    "supervised_contrastive_loss",
    "semi_supervised_kmeans",
]


# --------------------------------------------------------------------------------------------
# positive partners (ORCA / NACH / OpenNCD)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# methods without a classifier
# --------------------------------------------------------------------------------------------


def freeze_classifier_head(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on the model's cosine classifier (``model.head``).

    OpenNCD (prototypes) and GCD (k-means) do not use the K-way head, so it would receive no
    gradient; frozen, the optimiser skips it (no weight decay either) and every trainable
    parameter has a gradient."""
    head = getattr(model, "head", None)
    if head is not None:
        for p in head.parameters():
            p.requires_grad_(False)


# --------------------------------------------------------------------------------------------
# OpenNCD: projector, prototypes, groups
# --------------------------------------------------------------------------------------------


class ProjectorMLP(nn.Module):
    """OpenNCD's projector: ``Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out)``
    (released ``models/resnet.py``: 512 -> 512 -> BN -> ReLU -> 32), Kaiming-normal
    (fan_out, relu) weights and zero biases as released."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def prototype_probabilities(z: Tensor, prototypes: Tensor, tau: float) -> Tensor:
    """``p = softmax(normalize(z) @ normalize(prototypes).T / tau)``: ``[N, P]`` (OpenNCD)."""
    z = F.normalize(z.float(), dim=1)
    c = F.normalize(prototypes.float(), dim=1)
    return F.softmax(z @ c.T / tau, dim=1)


def group_probabilities(p: Tensor, proto_group: Tensor, n_groups: int) -> Tensor:
    """``q[:, g] = sum_{j: proto_group[j] == g} p[:, j]``: ``[N, G]`` (OpenNCD's
    ``p @ group_mask.T`` with ``group_mask[g, j] = 1`` iff prototype ``j`` is in group ``g``)."""
    membership = F.one_hot(proto_group.long(), n_groups).to(p.dtype)  # [P, G]
    return p @ membership


def group_prior(proto_group: Tensor, n_groups: int) -> Tensor:
    """OpenNCD's prototype prior ``[P]``: every non-empty group gets equal mass, split equally
    among its prototypes (released: ``normalize_L1(normalize_L1(group_mask, dim=1).sum(0))``)."""
    sizes = torch.bincount(proto_group.long(), minlength=n_groups).float()  # [G]
    per_proto = 1.0 / sizes[proto_group.long()]  # [P]
    return per_proto / per_proto.sum()


def soft_cross_entropy(target: Tensor, probs: Tensor, eps: float = 1e-8) -> Tensor:
    """``mean_i sum_g -target_ig * log(probs_ig + eps)`` (OpenNCD's group-level term; both
    arguments keep their gradient, as released). ``0`` connected to the graph for ``N == 0``."""
    if target.shape[0] == 0:
        return target.sum() * 0 + probs.sum() * 0
    return (-target * torch.log(probs + eps)).sum(1).mean()


# --------------------------------------------------------------------------------------------
# GCD: SupCon and semi-supervised k-means
# --------------------------------------------------------------------------------------------


def supervised_contrastive_loss(z_a: Tensor, z_b: Tensor, labels: Tensor, tau: float = 0.07,
                                base_tau: float | None = None) -> Tensor:
    """Supervised contrastive loss (SupCon, Khosla et al. 2020), as in GCD's released ``SupConLoss``.

    The ``2M`` rows ``cat(z_a, z_b)`` are L2-normalised; for anchor ``i`` the positives ``P(i)``
    are the other rows with the same label (the other view of the sample included) and ``A(i)``
    all rows but ``i``:

        ``l_i = -(tau / base_tau) * (1/|P(i)|) * sum_{p in P(i)} log( exp(s_ip/tau) / sum_{a in A(i)} exp(s_ia/tau) )``

    and the loss is ``mean_i l_i`` over the ``2M`` anchors (mean of log-ratios, unlike LPS's
    ``L_PC``). Every anchor has its other view as a positive.

    Args:
        z_a, z_b: ``[M, D]`` two views of the labeled rows.
        labels: ``[M]`` labels.
        tau: temperature (GCD: 0.07).
        base_tau: ``None`` = ``tau`` (GCD: base temperature 0.07 = tau, factor 1).

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when ``M == 0``.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"z_a and z_b must both be [M, D], got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    m = z_a.shape[0]
    if m == 0:
        return z_a.sum() * 0 + z_b.sum() * 0
    feats = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)  # [2M, D]
    sim = feats @ feats.T / tau
    eye = torch.eye(2 * m, dtype=torch.bool, device=sim.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    lab2 = torch.cat([labels, labels]).to(sim.device)
    positive = (lab2.unsqueeze(0) == lab2.unsqueeze(1)) & ~eye
    mean_log_prob_pos = (log_prob * positive).sum(1) / positive.sum(1)
    factor = tau / (tau if base_tau is None else base_tau)
    return -(factor * mean_log_prob_pos).mean()


def _sq_dist(x: Tensor, c: Tensor) -> Tensor:
    """``[N, K]`` squared Euclidean distances."""
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)).clamp_min(0)


def _d2_seeding(x: Tensor, existing: Tensor, n_new: int, rng: np.random.RandomState) -> Tensor:
    """k-means++ seeding: ``n_new`` rows of ``x`` drawn one at a time with probability
    proportional to the squared distance to the nearest centre so far (starting from
    ``existing``; the first draw is uniform if there is none). As GCD's ``kpp``."""
    out = []
    # running squared distance to the nearest centre so far (None: no centre yet)
    d2 = _sq_dist(x, existing).min(1).values if existing.shape[0] else None
    for _ in range(n_new):
        total = float(d2.sum()) if d2 is not None else 0.0
        if total > 0:
            p = d2.double().cpu().numpy()
            idx = int(rng.choice(len(x), p=p / p.sum()))
        else:  # no centre yet, or every point sits on a centre: uniform draw
            idx = int(rng.randint(len(x)))
        out.append(x[idx])
        new = _sq_dist(x, x[idx:idx + 1]).squeeze(1)
        d2 = new if d2 is None else torch.minimum(d2, new)
    return torch.stack(out) if out else x.new_zeros(0, x.shape[1])


def semi_supervised_kmeans(u_feats: Tensor, l_feats: Tensor, l_labels: Tensor, k: int, n_init: int = 10,
                           max_iter: int = 10, tol: float = 1e-4, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Semi-supervised k-means of GCD (``faster_mix_k_means_pytorch.K_Means.fit_mix``).

    Labeled samples keep their class as a fixed cluster assignment: class ``c`` is cluster ``c``
    (so seen-class clusters carry the seen-class ids). Per run, the labeled class means are the
    first centres and the remaining ``k - #classes`` centres are drawn by k-means++ seeding from
    the unlabeled features; Lloyd iterations then assign unlabeled samples to the nearest centre
    and recompute every centre from all its members (labeled included). An empty cluster keeps
    its centre. The run stops when the squared total centre shift drops below ``tol`` or after
    ``max_iter`` iterations; as released, each run keeps the assignment of its lowest-inertia
    iteration and the lowest-inertia run of ``n_init`` wins. Seeded through a
    ``numpy.random.RandomState(seed)`` shared by the runs (scikit-learn's convention).

    Args:
        u_feats: ``[Nu, D]`` unlabeled features.
        l_feats: ``[Nl, D]`` labeled features.
        l_labels: ``[Nl]`` integer labels in ``[0, k)``.
        k: number of clusters (GCD: all classes).
        n_init, max_iter, tol, seed: as above (GCD: 10, 10, 1e-4, unseeded).

    Returns:
        ``(u_assign [Nu] long, centers [k, D])`` on the device of ``u_feats``.
    """
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init} and {max_iter}")
    device = u_feats.device
    u = u_feats.float()
    lf = l_feats.float().to(device)
    ll = l_labels.long().to(device)
    classes = torch.unique(ll)
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= k):
        raise ValueError(f"labeled classes must be in [0, {k}), got {classes.tolist()}")
    if u.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=device), u.new_zeros(k, u.shape[1])
    class_means = torch.stack([lf[ll == c].mean(0) for c in classes]) if classes.numel() else u.new_zeros(0, u.shape[1])
    free = torch.tensor(sorted(set(range(k)) - set(classes.tolist())), dtype=torch.long, device=device)
    x = torch.cat([lf, u])
    rng = np.random.RandomState(seed % (2**32))
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(n_init):
        centers = u.new_zeros(k, u.shape[1])
        centers[classes] = class_means
        centers[free] = _d2_seeding(u, class_means, free.numel(), rng)
        run_best: tuple[float, Tensor, Tensor] | None = None
        for _ in range(max_iter):
            old = centers.clone()
            u_dist, u_assign = _sq_dist(u, centers).min(1)
            inertia = float(u_dist.sum() + ((lf - centers[ll]) ** 2).sum())
            assign = torch.cat([ll, u_assign])
            sums = torch.zeros_like(centers).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k)
            filled = counts > 0
            centers[filled] = sums[filled] / counts[filled].unsqueeze(1).to(sums.dtype)
            if run_best is None or inertia < run_best[0]:
                run_best = (inertia, u_assign.clone(), centers.clone())
            if float((centers - old).norm(dim=1).sum()) ** 2 < tol:
                break
        assert run_best is not None
        if best is None or run_best[0] < best[0]:
            best = run_best
    assert best is not None
    return best[1], best[2]
