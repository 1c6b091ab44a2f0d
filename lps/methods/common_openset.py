"""Pieces shared by the Table-1 baselines that have no public OpenSSL adaptation (FixMatch, DS3L,
DTC, RankStats) and by the two further semi-supervised systems (SSC, SsCL). No method is
registered here.

Open-world evaluation, two recipes (``shared/REFERENCE.md``, "Table-1 baselines ..."; LPS paper
Sec. 5.1 "Baselines"):

- closed-set SSL methods (FixMatch, DS3L, SSC, SsCL) classify the seen classes only; a sample
  whose seen-class confidence is below a threshold is *rejected* as novel, and the rejected
  samples are clustered by k-means into the novel ids ``n_seen .. K-1``
  (:func:`reject_and_cluster`);
- novel class discovery methods (DTC, RankStats) treat every class as a cluster; clusters are
  matched to the seen classes by the Hungarian algorithm on the labeled training images, and
  the remaining clusters get the novel ids (:func:`hungarian_cluster_to_class`), so the
  standard metrics of :mod:`lps.evaluation` apply to the mapped ids.

The two recipes are the base classes :class:`SeenClassifierMethod` and :class:`ClusterMethod`.
Also here: distribution alignment (ReMixMatch / SsCL's fairness adjustment), the running mean of
the last ``t`` batch vectors (:class:`HistoryMean`), the prototype contrastive loss of SSC with
unconfident samples given unique labels, training-index -> memory-slot bookkeeping for per-sample
state (:class:`IndexSlots`), and the sigmoid ramp-up of the NCD code bases.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from lps.methods.base import Method
from lps.methods.simclr_kmeans import kmeans_predict

__all__ = [
    "SeenClassifierMethod",
    "ClusterMethod",
    "reject_and_cluster",
    "hungarian_cluster_to_class",
    "labeled_cluster_mapping",
    "distribution_alignment",
    "HistoryMean",
    "unique_unconfident_labels",
    "prototype_supcon_loss",
    "IndexSlots",
    "sigmoid_rampup",
]


# --------------------------------------------------------------------------------------------
# open-world evaluation
# --------------------------------------------------------------------------------------------


def reject_and_cluster(probs_seen: Tensor, feats: Tensor, threshold: float, n_novel: int,
                       n_init: int = 10, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """Seen-class prediction with rejection, rejected samples clustered into the novel ids.

    A sample with ``max(probs_seen) >= threshold`` keeps its seen-class argmax (``0 .. S-1``,
    ``S = probs_seen.shape[1]``); every other sample is rejected as novel, and the rejected
    samples' ``feats`` are clustered by k-means (scikit-learn, seeded; see
    :func:`lps.methods.simclr_kmeans.kmeans_predict`) into ``n_novel`` clusters, returned as
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


class SeenClassifierMethod(Method):
    """Shared evaluation of the closed-set methods (FixMatch, DS3L, SSC, SsCL): seen-class softmax
    with rejection, rejected samples clustered into the novel classes."""

    def seen_probs(self, logits: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits.float()[:, : self.ctx.n_seen], dim=1)

    def predict(self, logits, feats):  # needs hp.reject_threshold and hp.kmeans_n_init
        return reject_and_cluster(self.seen_probs(logits, feats), feats, self.hp.reject_threshold,
                                  self.ctx.num_classes - self.ctx.n_seen, self.hp.kmeans_n_init, seed=self.ctx.seed)


def hungarian_cluster_to_class(cluster_ids, labels, n_clusters: int) -> np.ndarray:
    """Map cluster ids to class ids: clusters matched to the labeled classes take their class id.

    Builds the ``[n_clusters, n_labeled_classes]`` contingency matrix of the labeled samples'
    clusters against their labels (``n_labeled_classes = max(label) + 1``) and solves the
    one-to-one assignment maximising the matched count (``scipy.optimize.linear_sum_assignment``).
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
    mapping = np.full(n_clusters, -1, dtype=np.int64)
    if labels.size:
        if labels.min() < 0 or labels.max() >= n_clusters or cluster_ids.min() < 0 or cluster_ids.max() >= n_clusters:
            raise ValueError(f"cluster ids and labels must lie in [0, {n_clusters})")
        n_classes = int(labels.max()) + 1
        counts = np.bincount(cluster_ids * n_classes + labels, minlength=n_clusters * n_classes)
        rows, cols = linear_sum_assignment(counts.reshape(n_clusters, n_classes), maximize=True)
        mapping[rows] = cols
    free = [c for c in range(n_clusters) if c not in set(mapping[mapping >= 0].tolist())]
    mapping[mapping < 0] = free
    return mapping


def labeled_cluster_mapping(labeled: Callable[[], tuple[Tensor, Tensor, Tensor]],
                            assign: Callable[[Tensor, Tensor], Tensor], n_clusters: int) -> np.ndarray:
    """The ``before_evaluation`` step of DTC and RankStats: cluster the labeled training images
    with ``assign(logits, feats) -> [M] cluster ids`` and match clusters to their labels with
    :func:`hungarian_cluster_to_class`."""
    logits, feats, labels = labeled()
    ids = assign(logits, feats) if len(labels) else torch.zeros(0, dtype=torch.long)
    return hungarian_cluster_to_class(torch.as_tensor(ids).cpu().numpy(), torch.as_tensor(labels).cpu().numpy(),
                                      n_clusters)


class ClusterMethod(Method):
    """Shared evaluation of the novel class discovery methods (DTC, RankStats): every class is a
    cluster; ``before_evaluation`` matches clusters to the seen classes on the labeled training
    images (Hungarian), ``predict`` returns the mapped ids. Without a mapping (``predict`` called
    before any ``before_evaluation``) cluster ids are returned unchanged."""

    cluster_to_class = None  # np.ndarray [K], set by before_evaluation; derived, not state

    def cluster_ids(self, logits: Tensor, feats: Tensor) -> Tensor:
        raise NotImplementedError

    def before_evaluation(self, labeled):
        self.cluster_to_class = labeled_cluster_mapping(labeled, self.cluster_ids, self.ctx.num_classes)

    def predict(self, logits, feats):
        ids = self.cluster_ids(logits, feats).cpu().numpy().astype(np.int64)
        return ids if self.cluster_to_class is None else self.cluster_to_class[ids]


# --------------------------------------------------------------------------------------------
# distribution alignment and running means
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# SSC: prototype contrastive loss with unconfident samples given unique labels
# --------------------------------------------------------------------------------------------


def unique_unconfident_labels(pseudo_labels: Tensor, confident: Tensor, offset: int) -> Tensor:
    """Labels for SSC's unified loss: a confident row keeps its pseudo-label, unconfident row ``i``
    gets the unique label ``offset + i`` (SSC, Sec. 3.1: ``y_u_down``, labels shifted past the
    ``K`` class labels), so its only positives are its own other views.

    Args:
        pseudo_labels: ``[N]`` integer pseudo-labels (``< offset``).
        confident: ``[N]`` bool.
        offset: the number of class labels (no class label may be ``>= offset``).

    Returns:
        ``[N]`` long labels.
    """
    if pseudo_labels.shape != confident.shape or pseudo_labels.dim() != 1:
        raise ValueError(f"pseudo_labels and confident must both be [N], got {tuple(pseudo_labels.shape)} "
                         f"and {tuple(confident.shape)}")
    unique = offset + torch.arange(pseudo_labels.shape[0], device=pseudo_labels.device)
    return torch.where(confident.bool(), pseudo_labels.long(), unique)


def prototype_supcon_loss(emb: Tensor, labels: Tensor, prototypes: Tensor, proto_labels: Tensor,
                          temperature: float) -> Tensor:
    """SSC's unified semi-supervised contrastive loss (Gauffre et al. 2024, Sec. 3.1): the
    supervised contrastive loss (SupCon, Khosla et al. 2020, ``L_out``) over the concatenation of
    sample embeddings and class prototypes.

    Rows ``Z = [normalize(emb); normalize(prototypes)]`` with labels ``[labels; proto_labels]``
    (labeled rows: true labels; confident unlabeled rows: pseudo-labels; unconfident rows: a
    unique label per sample shared by its views, see :func:`unique_unconfident_labels`). With
    ``s_ia = <z_i, z_a> / T``, ``A(i)`` every row but ``i`` and ``P(i)`` the rows of ``A(i)`` with
    the label of ``i``:

        ``l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) )``

    averaged over the anchors with ``|P(i)| >= 1`` (prototypes are anchors too, which is how they
    are trained; a row without positive only serves as a negative). A class prototype is a
    positive of every sample of its class, which recovers the cross-entropy of a cosine
    classifier (SSC Sec. 3.3).

    Args:
        emb: ``[N, D]`` embeddings (not necessarily normalised).
        labels: ``[N]`` integer labels.
        prototypes: ``[C, D]`` class prototypes.
        proto_labels: ``[C]`` their labels.
        temperature: ``T > 0``.

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when no row has a positive.
    """
    if emb.dim() != 2 or prototypes.dim() != 2 or emb.shape[1] != prototypes.shape[1]:
        raise ValueError(f"emb [N, D] and prototypes [C, D] must share D, got {tuple(emb.shape)}, "
                         f"{tuple(prototypes.shape)}")
    if labels.shape != emb.shape[:1] or proto_labels.shape != prototypes.shape[:1]:
        raise ValueError("labels must be [N] and proto_labels [C]")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(torch.cat([emb, prototypes.to(emb.dtype)]).float(), dim=1)
    y = torch.cat([labels.long(), proto_labels.long().to(labels.device)])
    n = z.shape[0]
    sim = (z @ z.T) / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positive = (y.unsqueeze(0) == y.unsqueeze(1)) & ~eye
    n_pos = positive.sum(1)
    anchors = n_pos > 0
    if not anchors.any():
        return emb.sum() * 0 + prototypes.sum() * 0
    per_anchor = -(log_prob.masked_fill(~positive, 0.0).sum(1)[anchors]) / n_pos[anchors]
    return per_anchor.mean().to(emb.dtype)


# --------------------------------------------------------------------------------------------
# per-sample memory and ramps
# --------------------------------------------------------------------------------------------


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
