"""RankStats (AutoNovel; Han et al., "Automatically Discovering and Learning New Visual Categories
with Ranking Statistics", ICLR 2020), the Table-1 NCD baseline, adapted to the open world as the
LPS paper describes (Sec. 5.1: every class is a cluster; seen accuracy after Hungarian matching of
clusters to seen classes). Follows the released code (``k-han/AutoNovel``, ``auto_novel.py``).

Two weak views ``x, x_bar`` per row; a single K-way head over seen + novel classes (the released
incremental-learning variant's ``head1`` spans all classes; its second, novel-only head is not
needed when one head covers every cluster):

- cross-entropy of view 1 on the labeled rows (K-way);
- ranking statistics: two unlabeled samples are a positive pair iff the index sets of the
  ``topk`` largest dimensions of their (detached) backbone features coincide
  (:func:`ranking_pair_labels`), else a negative pair; all ordered pairs, self-pairs included,
  as released ``PairEnum``;
- pairwise BCE on the pair probability ``P_ab = <softmax(z_a), softmax(z_bar_b)>``:
  ``-log(P + eps)`` for positive pairs, ``-log(1 - P + eps)`` for negative ones, averaged over
  all pairs (:func:`lps.losses.pairwise_bce_with_labels`; :func:`lps.losses.pairwise_bce_loss` is its
  positive-pairs-only special case up to the eps handling: that one clamps ``P`` to ``[eps, 1]``);
- consistency ``MSE(softmax(z), softmax(z_bar))`` over all rows, weight
  ``w(t) = w_consistency * sigmoid_rampup(epoch, r * E)``.

Total: ``CE + BCE + w(t) * MSE``. Evaluation: head argmax are cluster ids, matched to the seen
classes on the labeled training images (Hungarian), the remaining clusters get the novel ids.
The RotNet self-supervised first stage of AutoNovel is the project's SimCLR initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lps import losses
from lps.methods.base import METHODS, Batch, check_range
from lps.methods.open_world import ClusterMethod
from lps.methods.tracking import sigmoid_rampup


@dataclass
class RankStatsParams:
    topk: int = 5  # k of the ranking statistics; released auto_novel.py (--topk 5)
    w_consistency: float = 5.0  # maximum consistency weight; released CIFAR-10 script (--rampup_coefficient 5.0)
    rampup_fraction: float = 0.25  # ramp length / run length; released CIFAR-10 script (rampup_length 50 of 200)
    bce_eps: float = 1e-7  # clamp inside the BCE log; released utils/util.py BCE.eps

    def validate(self) -> None:
        check_range(self, "topk", lo=1)
        check_range(self, "w_consistency", lo=0)
        check_range(self, "rampup_fraction", lo=0)
        check_range(self, "bce_eps", lo=0, lo_open=True, hi=1, hi_open=True)


def ranking_pair_labels(feats: torch.Tensor, topk: int) -> torch.Tensor:
    """``[N, N]`` bool: ``True`` iff the sets of the ``topk`` largest dimensions of rows ``a`` and
    ``b`` are equal (ranking statistics, AutoNovel Sec. 3.2). Ties are broken by the lower index
    (stable sort). ``topk`` larger than the feature width uses every dimension."""
    if feats.dim() != 2:
        raise ValueError(f"feats must be [N, D], got {tuple(feats.shape)}")
    k = min(topk, feats.shape[1])
    idx = torch.sort(feats.detach(), dim=1, descending=True, stable=True).indices[:, :k]
    idx = torch.sort(idx, dim=1).values  # the set, in a canonical order
    return (idx.unsqueeze(1) == idx.unsqueeze(0)).all(2)


@METHODS.register("rankstats")
class RankStats(ClusterMethod):
    Params = RankStatsParams
    views = ("weak", "weak")

    def cluster_ids(self, logits, feats):
        return logits.argmax(1).cpu()

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb = self.hp, batch.n_lb
        (z, z_bar), (f, _) = self.forward_views(model, batch.views)
        z, z_bar = z.float(), z_bar.float()
        p, p_bar = F.softmax(z, dim=1), F.softmax(z_bar, dim=1)

        loss_ce = F.cross_entropy(z[:n_lb], batch.y_lb) if n_lb else z.sum() * 0
        same = ranking_pair_labels(f[n_lb:].float(), hp.topk)
        loss_bce = losses.pairwise_bce_with_labels(p[n_lb:], p_bar[n_lb:], same, hp.bce_eps)
        loss_mse = F.mse_loss(p, p_bar)
        w = hp.w_consistency * sigmoid_rampup(self.epoch, hp.rampup_fraction * self.ctx.epochs)
        loss = loss_ce + loss_bce + w * loss_mse
        n_pairs = max(same.numel(), 1)
        return {
            "loss": loss,
            "loss_ce": loss_ce.detach(),
            "loss_bce": loss_bce.detach(),
            "loss_consistency": loss_mse.detach(),
            "positive_pair_rate": same.float().sum() / n_pairs,
            "consistency_weight": torch.tensor(w),
        }
