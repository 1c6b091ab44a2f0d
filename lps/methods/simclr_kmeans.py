"""SimCLR + k-means: the SimCLR row of Table 1. No training; the pretrained backbone's features
of the unlabeled images are clustered by k-means into K = seen + novel clusters, and the clusters
are evaluated like any prediction (seen accuracy is then the plain accuracy of cluster ids, so the
"all" accuracy with Hungarian matching is its meaningful number)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lps.config import check_range
from lps.methods.base import METHODS, Method


@dataclass
class SimCLRKMeansParams:
    n_init: int = 10  # k-means restarts; scikit-learn's classic default
    normalize: bool = True  # L2-normalise features before k-means (cosine geometry of SimCLR)

    def validate(self) -> None:
        check_range(self, "n_init", lo=1)


def kmeans_predict(feats: torch.Tensor, k: int, n_init: int, seed: int, normalize: bool = True) -> np.ndarray:
    """k-means cluster ids of ``feats`` (scikit-learn), seeded."""
    from sklearn.cluster import KMeans

    x = F.normalize(feats.float(), dim=1) if normalize else feats.float()
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, len(x))
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed % (2**31)).fit_predict(x.numpy()).astype(np.int64)


@METHODS.register("simclr_kmeans")
class SimCLRKMeans(Method):
    Params = SimCLRKMeansParams
    views = ("weak",)
    trains = False

    def training_step(self, model, batch):  # never called: trains = False
        raise RuntimeError("simclr_kmeans does not train")

    def predict(self, logits, feats):
        return kmeans_predict(feats, self.ctx.num_classes, self.hp.n_init, self.ctx.seed, self.hp.normalize)
