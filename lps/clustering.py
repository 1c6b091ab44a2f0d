"""Clustering and cluster-to-class matching used by the methods' open-world evaluation.

- k-means (scikit-learn, seeded, optionally on L2-normalised features): :func:`kmeans_predict`;
- semi-supervised k-means of GCD (labeled samples keep their class as a fixed assignment):
  :func:`semi_supervised_kmeans`;
- rejection then clustering (closed-set methods: a seen-class prediction below a confidence
  threshold is novel, the novel samples are clustered): :func:`reject_and_cluster`;
- Hungarian matching, once: :func:`max_assignment` (the assignment maximising the matched count)
  and its leftover-ids variant :func:`map_with_leftovers` (matched clusters take their class id,
  the others the unused ids in ascending order), on which :func:`hungarian_cluster_to_class`,
  OpenNCD's group matching and :func:`lps.evaluation.cluster_accuracy` are built.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "max_assignment",
    "map_with_leftovers",
    "hungarian_cluster_to_class",
    "map_clusters_to_seen",
    "fit_kmeans",
    "kmeans_predict",
    "reject_and_cluster",
    "semi_supervised_kmeans",
]


# --------------------------------------------------------------------------------------------
# Hungarian matching
# --------------------------------------------------------------------------------------------


def max_assignment(counts) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of the one-to-one assignment of rows to columns of a (possibly rectangular)
    count matrix that maximises the matched count (``scipy.optimize.linear_sum_assignment``); rows
    ascending, ``min(shape)`` pairs."""
    return linear_sum_assignment(np.asarray(counts), maximize=True)


def map_with_leftovers(counts) -> np.ndarray:
    """Cluster -> class id from a ``[n_clusters, n_classes]`` count matrix (``n_classes <=
    n_clusters``): a matched cluster (:func:`max_assignment`) takes its class id; the unmatched
    clusters take, in ascending cluster order, the ids of ``0 .. n_clusters - 1`` that no matched
    cluster took, in ascending order. Returns an int64 permutation of ``0 .. n_clusters - 1``."""
    counts = np.asarray(counts)
    n_clusters, n_classes = counts.shape
    if n_classes > n_clusters:
        raise ValueError(f"cannot match {n_classes} classes to {n_clusters} clusters")
    rows, cols = max_assignment(counts)
    mapping = np.full(n_clusters, -1, dtype=np.int64)
    mapping[rows] = cols
    used = set(cols.tolist())
    mapping[mapping < 0] = [c for c in range(n_clusters) if c not in used]
    return mapping


def hungarian_cluster_to_class(cluster_ids, labels, n_clusters: int) -> np.ndarray:
    """Map cluster ids to class ids: clusters matched to the labeled classes take their class id.

    Builds the ``[n_clusters, n_labeled_classes]`` contingency matrix of the labeled samples'
    clusters against their labels (``n_labeled_classes = max(label) + 1``) and solves the
    one-to-one assignment maximising the matched count (:func:`map_with_leftovers`).
    A matched cluster maps to its class; the unmatched clusters map, in ascending cluster order,
    to the unused ids in ascending order (the novel ids ``n_seen ..``, after any seen id no
    cluster matched). With ``n_clusters == K`` the result is a permutation of ``0 .. K-1``.

    Args:
        cluster_ids: ``[M]`` cluster ids (``0 .. n_clusters-1``) of the labeled samples.
        labels: ``[M]`` their class labels (seen classes, ``< n_clusters``).
        n_clusters: total number of clusters ``K``.

    Returns:
        ``[n_clusters]`` int64 array: ``mapping[cluster] = class id``.
    """
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if cluster_ids.shape != labels.shape:
        raise ValueError(f"cluster_ids and labels must have the same length, got {cluster_ids.size} and {labels.size}")
    if labels.size:
        if labels.min() < 0 or labels.max() >= n_clusters or cluster_ids.min() < 0 or cluster_ids.max() >= n_clusters:
            raise ValueError(f"cluster ids and labels must lie in [0, {n_clusters})")
        n_classes = int(labels.max()) + 1
        counts = np.bincount(cluster_ids * n_classes + labels, minlength=n_clusters * n_classes)
        return map_with_leftovers(counts.reshape(n_clusters, n_classes))
    return np.arange(n_clusters, dtype=np.int64)  # nothing labeled: every id is a leftover


def map_clusters_to_seen(ids: np.ndarray, labeled_ids: np.ndarray, labeled_y: np.ndarray, k: int) -> np.ndarray:
    """``ids`` relabelled so that the clusters matched (Hungarian) to the seen classes on the labeled
    images carry those class ids; the others take the remaining ids."""
    if len(labeled_y) == 0:
        return ids
    return hungarian_cluster_to_class(labeled_ids, labeled_y, k)[ids]


# --------------------------------------------------------------------------------------------
# k-means and rejection
# --------------------------------------------------------------------------------------------


def fit_kmeans(feats: torch.Tensor, k: int, n_init: int, seed: int, normalize: bool):
    from sklearn.cluster import KMeans

    x = F.normalize(feats.float(), dim=1) if normalize else feats.float()
    return KMeans(n_clusters=min(k, len(x)), n_init=n_init, random_state=seed % (2**31)).fit(x.numpy())


def kmeans_predict(feats: torch.Tensor, k: int, n_init: int, seed: int, normalize: bool = True) -> np.ndarray:
    """k-means cluster ids of ``feats`` (scikit-learn), seeded."""
    if len(feats) == 0:
        return np.zeros(0, dtype=np.int64)
    return fit_kmeans(feats, k, n_init, seed, normalize).labels_.astype(np.int64)


def reject_and_cluster(probs_seen: Tensor, feats: Tensor, threshold: float, n_novel: int,
                       n_init: int = 10, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """Seen-class prediction with rejection, rejected samples clustered into the novel ids.

    A sample with ``max(probs_seen) >= threshold`` keeps its seen-class argmax (``0 .. S-1``,
    ``S = probs_seen.shape[1]``); every other sample is rejected as novel, and the rejected
    samples' ``feats`` are clustered by k-means (scikit-learn, seeded; see
    :func:`kmeans_predict`) into ``n_novel`` clusters, returned as
    ids ``S .. S + n_novel - 1``. Fewer rejected samples than ``n_novel`` give one cluster per
    sample; no rejected sample means no k-means at all.

    Args:
        probs_seen: ``[N, S]`` probabilities over the seen classes.
        feats: ``[N, D]`` features to cluster (L2-normalised first when ``normalize``).
        threshold: confidence needed to keep a seen-class prediction, in ``[0, 1]``.
        n_novel: number of novel classes ``K - S`` (>= 1).

    Returns:
        ``[N]`` int64 numpy array of class ids in ``0 .. S + n_novel - 1``.
    """
    if probs_seen.dim() != 2 or feats.dim() != 2 or probs_seen.shape[0] != feats.shape[0]:
        raise ValueError(f"probs_seen [N, S] and feats [N, D] must have the same N, got "
                         f"{tuple(probs_seen.shape)} and {tuple(feats.shape)}")
    if n_novel < 1:
        raise ValueError(f"n_novel must be >= 1, got {n_novel}")
    n_seen = probs_seen.shape[1]
    conf, pred = probs_seen.detach().float().max(1)
    pred = pred.cpu().numpy().astype(np.int64)
    rejected = (conf < threshold).cpu().numpy()
    if rejected.any():
        clusters = kmeans_predict(feats.detach().float().cpu()[torch.as_tensor(rejected)], n_novel, n_init, seed,
                                  normalize)
        pred[rejected] = n_seen + clusters
    return pred


# --------------------------------------------------------------------------------------------
# semi-supervised k-means (GCD)
# --------------------------------------------------------------------------------------------


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
