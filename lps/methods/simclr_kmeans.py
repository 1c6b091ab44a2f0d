"""SimCLR + k-means: the SimCLR row of Table 1. No training; the pretrained backbone's features
of the images being evaluated are clustered by k-means into K = seen + novel clusters.

Evaluation as for the NCD baselines DTC and RankStats (LPS paper Sec. 5.1: seen accuracy after
Hungarian matching of clusters to seen classes): the labeled training images are assigned to the
nearest k-means centre, the clusters are matched one-to-one to the seen classes on them
(:func:`lps.clustering.hungarian_cluster_to_class`), and the other clusters take the
novel ids. Raw k-means ids are arbitrary, so plain seen accuracy on them measures nothing (at demo
scale 18.7 % raw against 45.1 % mapped); the paper's 58.3 % seen on CIFAR-10 implies a mapping.
The mapping is a permutation of the ids, so novel and all accuracy (Hungarian matched) do not
change. ``map_clusters=false`` returns the raw ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lps.clustering import fit_kmeans, map_clusters_to_seen
from lps.methods.base import METHODS, Method, check_range


@dataclass
class SimCLRKMeansParams:
    n_init: int = 10  # k-means restarts; scikit-learn's classic default
    normalize: bool = True  # L2-normalise features before k-means (cosine geometry of SimCLR)
    map_clusters: bool = True  # match clusters to seen classes on the labeled images (as DTC/RankStats)

    def validate(self) -> None:
        check_range(self, "n_init", lo=1)


@METHODS.register("simclr_kmeans")
class SimCLRKMeans(Method):
    Params = SimCLRKMeansParams
    views = ("weak",)
    trains = False

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self._labeled: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def training_step(self, model, batch):  # never called: trains = False
        raise RuntimeError("simclr_kmeans does not train")

    def before_evaluation(self, labeled):
        self._labeled = labeled

    def predict(self, logits, feats):
        hp, k = self.hp, self.ctx.num_classes
        if len(feats) == 0:
            return np.zeros(0, dtype=np.int64)
        km = fit_kmeans(feats, k, hp.n_init, self.ctx.seed, hp.normalize)
        ids = km.labels_.astype(np.int64)
        if not hp.map_clusters or self._labeled is None:
            return ids
        _, l_feats, l_y = self._labeled()
        if len(l_y) == 0:
            return ids
        lf = F.normalize(l_feats.float(), dim=1) if hp.normalize else l_feats.float()
        l_ids = km.predict(lf.numpy()).astype(np.int64)
        return map_clusters_to_seen(ids, l_ids, torch.as_tensor(l_y).numpy().astype(np.int64), k)
