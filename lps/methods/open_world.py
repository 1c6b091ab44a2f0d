"""The two open-world evaluation recipes of the baselines that have no public OpenSSL adaptation
(``shared/REFERENCE.md``, "Table-1 baselines ..."; LPS paper Sec. 5.1 "Baselines"):

- closed-set SSL methods (FixMatch, DS3L, SSC, SsCL) classify the seen classes only; a sample
  whose seen-class confidence is below ``reject_threshold`` is *rejected* as novel, and the
  rejected samples are clustered by k-means into the novel ids ``n_seen .. K-1``
  (:class:`SeenClassifierMethod`, its hyperparameters :class:`RejectionParams`);
- novel class discovery methods (DTC, RankStats) treat every class as a cluster; clusters are
  matched to the seen classes by the Hungarian algorithm on the labeled training images, and
  the remaining clusters get the novel ids (:class:`ClusterMethod`), so the standard metrics of
  :mod:`lps.evaluation` apply to the mapped ids.

No method is registered here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lps.clustering import hungarian_cluster_to_class, reject_and_cluster
from lps.methods.base import Method, check_range

__all__ = ["RejectionParams", "SeenClassifierMethod", "ClusterMethod", "labeled_cluster_mapping"]


@dataclass
class RejectionParams:
    """The evaluation hyperparameters of every closed-set method (subclass it for the method's own)."""

    reject_threshold: float = 0.95  # evaluation: below it a sample is novel; = FixMatch's tau (LPS paper Sec. 5.1:
    #                                 "samples without pseudo-labels" are novel)
    kmeans_n_init: int = 10  # k-means restarts for the rejected samples; scikit-learn's classic default

    def validate(self) -> None:
        check_range(self, "reject_threshold", lo=0, hi=1)
        check_range(self, "kmeans_n_init", lo=1)


class SeenClassifierMethod(Method):
    """Shared evaluation of the closed-set methods (FixMatch, DS3L, SSC, SsCL): seen-class softmax
    with rejection, rejected samples clustered into the novel classes."""

    def seen_probs(self, logits: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits.float()[:, : self.ctx.n_seen], dim=1)

    def predict(self, logits, feats):  # hp: a RejectionParams
        return reject_and_cluster(self.seen_probs(logits, feats), feats, self.hp.reject_threshold,
                                  self.ctx.num_classes - self.ctx.n_seen, self.hp.kmeans_n_init, seed=self.ctx.seed)


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
