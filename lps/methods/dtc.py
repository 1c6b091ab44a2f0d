"""DTC: deep transfer clustering (Han, Vedaldi & Zisserman, "Learning to Discover Novel Visual
Categories via Deep Transfer Clustering", ICCV 2019), the Table-1 NCD baseline, in its
temporal-ensembling variant DTC-TE (released code ``k-han/DTC``, ``cifar10_DTC.py``,
``TE_train``), adapted to the open world as the LPS paper describes (Sec. 5.1: every class is
a cluster; seen accuracy after Hungarian matching of clusters to seen classes).

- embedding: the K-way cosine head output ``z`` (DTC's embedding is the last linear layer, of
  width = number of clusters);
- soft assignment to K learnable centres ``mu`` (a method parameter ``[K, K]``) by a Student-t
  kernel, ``q_ik ∝ (1 + |z_i - mu_k|^2 / a)^(-(a+1)/2)`` (DEC / DTC Eq. (1), ``feat2prob``);
- sharpened target ``p_ik = (q_ik^2 / f_k) / sum_k' (q_ik'^2 / f_k')``, ``f_k = sum_i q_ik``
  over the unlabeled set (``target_distribution``); loss ``KL(p || q)`` on the unlabeled rows;
- temporal ensembling of the assignment: ``Z_i <- b Z_i + (1 - b) q_i`` once per epoch and
  ``q~_i = Z_i / (1 - b^n_i)`` (bias correction; ``n_i`` = epochs in which the sample was seen);
  consistency ``w(t) * MSE(q_i, q~_i)`` with ``w(t) = w_te * sigmoid_rampup(epoch, r * E)``;
- targets ``p`` are recomputed from the latest per-sample assignments every
  ``update_interval`` epochs (released: after epochs 0, 5, 10, ...); before the first update a
  row without a stored target uses the target computed on its batch (DEC on the batch).

Reductions as released: ``F.kl_div`` and ``F.mse_loss`` with the default ``mean`` over all
elements. The per-sample memories (latest assignment, ensemble, target) live in buffers, indexed
through :class:`lps.methods.tracking.IndexSlots`, so a checkpoint resumes exactly.

Open-world adaptation: DTC first trains the network on the labeled classes (supervised stage)
and initialises the centres by k-means of the embeddings of the unlabeled set. In one joint run
the supervised stage becomes a cross-entropy of the labeled rows on the cluster assignment
(``-log q_{i, y_i}``, cluster ``c`` = seen class ``c``, weight ``w_labeled``), and centre ``k``
starts at ``center_scale * e_k``, the head's own class direction (for a cosine-head embedding the
nearest centre is then the head's argmax). Evaluation: ``argmax q`` are cluster ids; the
clusters are matched to the seen classes on the labeled training images (Hungarian), the rest
get the novel ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lps.methods.base import METHODS, Batch, check_range
from lps.methods.open_world import ClusterMethod
from lps.methods.tracking import IndexSlots, sigmoid_rampup


@dataclass
class DTCParams:
    alpha: float = 1.0  # Student-t degrees of freedom a; DTC Eq. (1) / released feat2prob (alpha=1)
    ensemble_momentum: float = 0.6  # b of the temporal ensemble; released TE_train (alpha = 0.6)
    w_te: float = 10.0  # maximum consistency weight; released scripts (--rampup_coefficient 10)
    rampup_fraction: float = 0.05  # ramp length / run length; released: rampup_length 5 of 100 epochs
    update_interval: int = 5  # epochs between target updates; released scripts (--update_interval 5)
    w_labeled: float = 1.0  # weight of the labeled cross-entropy on q; project adaptation of DTC's
    #                         supervised first stage (weight 1 as a plain supervised loss)
    center_scale: float = 10.0  # initial centre k = center_scale * e_k; the cosine head scale (REFERENCE.md)

    def validate(self) -> None:
        check_range(self, "alpha", lo=0, lo_open=True)
        check_range(self, "ensemble_momentum", lo=0, hi=1, hi_open=True)
        check_range(self, "w_te", lo=0)
        check_range(self, "rampup_fraction", lo=0)
        check_range(self, "update_interval", lo=1)
        check_range(self, "w_labeled", lo=0)
        check_range(self, "center_scale", lo=0, lo_open=True)


def student_t_assignment(z: torch.Tensor, centers: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``q_ik = (1 + |z_i - mu_k|^2 / alpha)^(-(alpha+1)/2)``, normalised over ``k`` (DTC
    ``feat2prob``). ``z [N, D]``, ``centers [K, D]`` -> ``[N, K]``. Computed in log space."""
    d2 = (z.unsqueeze(1) - centers.unsqueeze(0)).pow(2).sum(2)  # [N, K]
    logits = -(alpha + 1.0) / 2.0 * torch.log1p(d2 / alpha)
    return F.softmax(logits, dim=1)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC / DTC sharpened target: ``p_ik ∝ q_ik^2 / f_k``, ``f_k = sum_i q_ik``, rows normalised.
    ``[N, K] -> [N, K]`` (released ``target_distribution``)."""
    weight = q.pow(2) / q.sum(0, keepdim=True).clamp_min(1e-12)
    return weight / weight.sum(1, keepdim=True).clamp_min(1e-12)


@METHODS.register("dtc")
class DTC(ClusterMethod):
    Params = DTCParams
    views = ("weak",)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        k = ctx.num_classes
        self.centers = nn.Parameter(params.center_scale * torch.eye(k))
        capacity = ctx.n_labeled + ctx.n_unlabeled
        self.slots = IndexSlots(capacity)
        self.register_buffer("q_latest", torch.zeros(capacity, k))  # last assignment of each sample
        self.register_buffer("seen_in_epoch", torch.zeros(capacity, dtype=torch.bool))
        self.register_buffer("ensemble", torch.zeros(capacity, k))  # Z
        self.register_buffer("n_ensembled", torch.zeros(capacity, dtype=torch.long))  # n_i
        self.register_buffer("targets", torch.zeros(capacity, k))  # p
        self.register_buffer("has_target", torch.zeros(capacity, dtype=torch.bool))
        self.register_buffer("is_unlabeled", torch.zeros(capacity, dtype=torch.bool))
        self.register_buffer("epochs_folded", torch.zeros((), dtype=torch.long))  # epochs folded into Z

    def cluster_ids(self, logits, feats):
        return self.assign(logits.float()).argmax(1).cpu()

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        return student_t_assignment(z, self.centers.float(), self.hp.alpha)

    @torch.no_grad()
    def on_epoch_start(self, epoch, model, unlabeled_probs):
        super().on_epoch_start(epoch, model, unlabeled_probs)
        # fold every finished epoch that is not folded yet (once, also after a resume)
        while int(self.epochs_folded) < epoch:
            done = int(self.epochs_folded)  # the epoch whose assignments are in q_latest
            b = self.hp.ensemble_momentum
            rows = self.seen_in_epoch
            self.ensemble[rows] = b * self.ensemble[rows] + (1 - b) * self.q_latest[rows]
            self.n_ensembled[rows] += 1
            self.seen_in_epoch.zero_()
            if done % self.hp.update_interval == 0:
                known = self.is_unlabeled & (self.n_ensembled > 0)
                if known.any():
                    self.targets[known] = target_distribution(self.q_latest[known])
                    self.has_target |= known
            self.epochs_folded += 1

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb = self.hp, batch.n_lb
        (z,), _ = self.forward_views(model, batch.views)
        q = self.assign(z.float())  # [B, K]
        slots = self.slots.slots(batch.idx)
        q_u, s_u = q[n_lb:], slots[n_lb:]

        # sharpened target: stored per sample, else computed on this batch
        with torch.no_grad():
            p = target_distribution(q_u.detach())
            stored = self.has_target[s_u]
            p[stored] = self.targets[s_u[stored]]
        # KL(p || q), mean over all elements as released F.kl_div(q.log(), p) (reduction "mean")
        loss_kl = (torch.xlogy(p, p) - p * q_u.clamp_min(1e-12).log()).mean() if len(q_u) else q.sum() * 0

        # temporal-ensembling consistency on rows with an ensemble
        ens = self.n_ensembled[s_u] > 0
        if ens.any():
            b = hp.ensemble_momentum
            q_tilde = self.ensemble[s_u[ens]] / (1 - b ** self.n_ensembled[s_u[ens]].float()).unsqueeze(1)
            loss_te = F.mse_loss(q_u[ens], q_tilde)
        else:
            loss_te = q.sum() * 0
        w = hp.w_te * sigmoid_rampup(self.epoch, hp.rampup_fraction * self.ctx.epochs)

        loss_lb = F.nll_loss(q[:n_lb].clamp_min(1e-12).log(), batch.y_lb) if n_lb else q.sum() * 0
        loss = loss_kl + w * loss_te + hp.w_labeled * loss_lb

        with torch.no_grad():
            self.q_latest[s_u] = q_u.detach().float()
            self.seen_in_epoch[s_u] = True
            self.is_unlabeled[s_u] = True
        return {
            "loss": loss,
            "loss_kl": loss_kl.detach(),
            "loss_te": loss_te.detach(),
            "loss_labeled": loss_lb.detach(),
            "te_weight": torch.tensor(w),
        }
