"""SsCL: semi-supervised contrastive learning with similarity co-calibration (Zhang & Li,
"Semi-supervised Contrastive Learning with Similarity Co-calibration", arXiv 2105.07387;
``shared/papers/sscl_similarity_cocalibration.md``), adapted to the open world the same way as
FixMatch (``shared/REFERENCE.md``).

Two branches on one backbone, views weak (``DA_w``) and strong (``DA_s``):

- cross-entropy branch on **the first ``n_seen`` logits** of the K-way cosine head: ``L_sup``
  on the labeled rows (weak view) and the pseudo-label loss ``L_pl`` (Eq. (2)): the strong view
  against the *calibrated* pseudo-label ``argmax p_hat`` where ``max p_hat >= threshold``,
  summed over those rows and divided by all unlabeled rows;
- similarity co-calibration (Sec. 3.1): the similarity distribution of an unlabeled sample over
  the seen-class prototypes, ``p_s = softmax(sim_scale * cos(v', v_c))``, the running average
  ``p_s_bar`` of its batch means over the last ``history`` batches (a ring buffer,
  :class:`lps.methods.tracking.HistoryMean`, so it checkpoints and resumes exactly), and
  ``p_hat = Normalize(p_b * p_s / p_s_bar)`` (:func:`calibrated_pseudo_labels`). "Scaling p_b
  with p_s and re-normalising" is read as the per-sample product with ``p_s``, made fair with
  ReMixMatch's division by the running average (the paper cites ReMixMatch for it);
- contrastive branch (Sec. 3.2, Eq. (5)): L2-normalised projections (MoCo v2 two-layer MLP head)
  of the strong view are queries, of the weak view (detached) keys; a FIFO queue of past keys
  with their labels (``queue_size``) adds negatives and positives. Positives of query ``i``: its
  own key, plus up to ``n_positives`` keys (chosen at random) of labeled samples of class ``c``,
  where ``c`` is the label of a labeled query and the classifier's argmax ``argmax p_b`` for an
  unlabeled one (pseudo-label propagation from the CE branch; ``positive_threshold > 0`` keeps
  only confident ones). Negatives: every key of another label (unlabeled keys other than ``i``
  included). Loss per query (the circle-loss form of Eq. (5), Appendix A.1):
  ``log(1 + sum_n exp(gamma (s_n + m)) * sum_p exp(-gamma a_p s_p))``, with the self-paced
  weight ``a_p = clamp(cos(query, v_c), 0, 1)`` (detached) for the mined positives of unlabeled
  queries, and 1 for the own key and for a labeled query's positives, which share its true label
  (:func:`lps.losses.sscl_contrastive_loss`);
- class prototypes ``v_c``: class means of the labeled keys, refined with the prototype mixture
  (Eq. (4): ``lambda * x_c + (1 - lambda) * x_nearest``, ``lambda ~ Beta(1, 1)``, here mixed in
  the embedding space with an unlabeled key whose nearest prototype is ``c``), kept in a buffer
  as a running average (``prototype_momentum``) updated every step; calibration and the
  self-paced weights start once every seen class has a prototype.

Total: ``L_sup + lambda_pl * L_pl + lambda_ctr * L_ctr`` (Eq. (3)).

Adaptation notes: the paper's MoCo momentum key encoder is replaced by the detached online
encoder (the trainer owns the one model), and its offline per-``S``-epoch recomputation of the
prototypes by the online running average. Open-world evaluation as FixMatch: seen-class softmax
of the head below ``reject_threshold`` -> novel, rejected samples clustered by k-means into the
novel ids ``n_seen .. K-1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lps import losses
from lps.methods.base import METHODS, Batch, check_range
from lps.methods.open_world import RejectionParams, SeenClassifierMethod
from lps.methods.tracking import HistoryMean, distribution_alignment


@dataclass
class SsCLParams(RejectionParams):
    lambda_pl: float = 1.0  # weight of the pseudo-label loss; paper Table 8, CIFAR-10
    lambda_ctr: float = 1.0  # weight of the contrastive loss; paper Table 8, CIFAR-10
    threshold: float = 0.95  # pseudo-label confidence threshold tau; paper Table 8, CIFAR-10
    gamma: float = 5.0  # scale factor gamma = 1 / temperature of L_ctr; paper Table 8, CIFAR-10
    margin: float = -0.25  # margin m of L_ctr; paper Table 8 / Sec. 5.1
    queue_size: int = 4096  # number of queued keys K; paper Table 8, CIFAR-10 (0 = in-batch keys only)
    n_positives: int = 3  # mined class positives per query; paper Sec. 5.2 / Table 7 (best: 3)
    history: int = 128  # batches in the running average of p_s (t); paper Sec. 3.1
    sim_scale: float = 5.0  # scale of the similarity distribution softmax; project choice (= gamma)
    proj_dim: int = 64  # projection width; paper Sec. 4.1, CIFAR-10 (64-d; the ImageNet setting, Sec. 4.2, 128)
    prototype_momentum: float = 0.9  # running average of the prototypes; project choice (online stand-in
    #                                  for the paper's recomputation every S epochs)
    prototype_mixup: bool = True  # prototype mixture of Eq. (4) (alpha = 1: lambda ~ U(0, 1)); paper Sec. 3.1
    positive_threshold: float = 0.0  # confidence needed to mine class positives for an unlabeled query;
    #                                  0 = the paper (every unlabeled query, by the classifier's argmax)

    def validate(self) -> None:
        super().validate()
        for name in ("lambda_pl", "lambda_ctr", "queue_size", "n_positives"):
            check_range(self, name, lo=0)
        for name in ("threshold", "positive_threshold"):
            check_range(self, name, lo=0, hi=1)
        check_range(self, "gamma", lo=0, lo_open=True)
        check_range(self, "sim_scale", lo=0, lo_open=True)
        check_range(self, "margin", lo=-1, hi=1)
        check_range(self, "history", lo=1)
        check_range(self, "proj_dim", lo=1)
        check_range(self, "prototype_momentum", lo=0, hi=1, hi_open=True)


def calibrated_pseudo_labels(p_b: torch.Tensor, p_s: torch.Tensor, p_s_running: torch.Tensor) -> torch.Tensor:
    """SsCL's co-calibrated prediction ``p_hat = Normalize(p_b * p_s / p_s_running)`` (Sec. 3.1):
    the classifier's ``p_b [N, C]`` scaled by the sample's similarity distribution
    ``p_s [N, C]``, made fair by the running average ``p_s_running [C]``. Rows sum to one."""
    if p_b.shape != p_s.shape:
        raise ValueError(f"p_b and p_s must have the same shape, got {tuple(p_b.shape)} and {tuple(p_s.shape)}")
    return distribution_alignment(p_b * p_s, p_s_running)


def pick_random(candidates: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[Q, M]`` bool: up to ``k`` of the ``True`` entries of each row of ``candidates``, chosen
    uniformly at random with ``generator``."""
    if k <= 0 or candidates.numel() == 0:
        return torch.zeros_like(candidates)
    scores = torch.rand(candidates.shape, generator=generator, device=generator.device).to(candidates.device)
    scores = scores.masked_fill(~candidates, -1.0)
    top = scores.topk(min(k, candidates.shape[1]), dim=1)
    chosen = torch.zeros_like(candidates)
    chosen.scatter_(1, top.indices, top.values >= 0)
    return chosen


@METHODS.register("sscl")
class SsCL(SeenClassifierMethod):
    Params = SsCLParams
    views = ("weak", "strong")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        s, d = ctx.n_seen, params.proj_dim
        self.projector = nn.Sequential(nn.Linear(ctx.feat_dim, ctx.feat_dim), nn.ReLU(), nn.Linear(ctx.feat_dim, d))
        self.register_buffer("prototypes", torch.zeros(s, d))  # v_c, unit norm once ready
        self.register_buffer("prototype_ready", torch.zeros(s, dtype=torch.bool))
        self.register_buffer("queue_keys", torch.zeros(params.queue_size, d))
        self.register_buffer("queue_labels", torch.full((params.queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # keys pushed so far
        self.similarity_history = HistoryMean(params.history, s)  # p_s_bar

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(feats.float()).float(), dim=1)

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb, n_seen = self.hp, batch.n_lb, self.ctx.n_seen
        (z_w, z_s), (f_w, f_s) = self.forward_views(model, batch.views)
        z_w, z_s = z_w.float()[:, :n_seen], z_s.float()[:, :n_seen]
        query = self.project(f_s)  # [B, d]
        with torch.no_grad():
            keys = self.project(f_w)  # [B, d], the key encoder = the detached online encoder
        ready = bool(self.prototype_ready.all())
        protos = self.prototypes.clone()

        # ---- CE branch: supervised loss and co-calibrated pseudo-labels (Eq. (1), (2))
        loss_sup = F.cross_entropy(z_w[:n_lb], batch.y_lb) if n_lb else z_w.sum() * 0
        with torch.no_grad():
            p_b = F.softmax(z_w[n_lb:], dim=1)
            if ready and batch.n_ulb > 0:
                p_s = F.softmax(hp.sim_scale * keys[n_lb:] @ protos.T, dim=1)
                self.similarity_history.push(p_s.mean(0))
                p_hat = calibrated_pseudo_labels(p_b, p_s, self.similarity_history.mean())
            else:
                p_hat = p_b
            conf, pl = p_hat.max(1)
            mask = conf >= hp.threshold
        n_ulb = max(batch.n_ulb, 1)
        loss_pl = (F.cross_entropy(z_s[n_lb:], pl, reduction="none") * mask.float()).sum() / n_ulb

        # ---- contrastive branch with pseudo-label propagation (Eq. (5))
        with torch.no_grad():
            conf_b, pl_b = p_b.max(1)
            pl_b = torch.where(conf_b >= hp.positive_threshold, pl_b, torch.full_like(pl_b, -1))
            q_labels = torch.cat([batch.y_lb.long(), pl_b])  # [B], -1: no class positives
            n_queue = min(int(self.queue_count), hp.queue_size)
            all_keys = torch.cat([keys, self.queue_keys[:n_queue].clone()])  # [M, d]
            key_labels = torch.cat([batch.y_lb.long(), torch.full((batch.n_ulb,), -1, device=keys.device,
                                                                  dtype=torch.long), self.queue_labels[:n_queue]])
            b, m = query.shape[0], all_keys.shape[0]
            own = torch.zeros(b, m, dtype=torch.bool, device=keys.device)
            own[torch.arange(b), torch.arange(b)] = True
            same = (q_labels.unsqueeze(1) == key_labels.unsqueeze(0)) & (q_labels >= 0).unsqueeze(1) & ~own
            mined = pick_random(same, hp.n_positives, batch.generator)
            positive = own | mined
            negative = ~own & ~same
            alpha = torch.ones(b, m, device=keys.device)
            if ready:
                a = (query @ protos.T).clamp(0, 1)  # [B, S] similarity to each class prototype
                a_q = a.gather(1, q_labels.clamp_min(0).unsqueeze(1))  # [B, 1]
                unlabeled_query = torch.arange(b, device=keys.device) >= n_lb
                alpha = torch.where(mined & unlabeled_query.unsqueeze(1), a_q.expand(b, m), alpha)
        loss_ctr = losses.sscl_contrastive_loss(query @ all_keys.T, positive, negative, alpha, hp.gamma, hp.margin)

        loss = loss_sup + hp.lambda_pl * loss_pl + hp.lambda_ctr * loss_ctr
        self._update_state(keys, batch, protos, ready)
        return {
            "loss": loss,
            "loss_sup": loss_sup.detach(),
            "loss_pl": loss_pl.detach(),
            "loss_ctr": loss_ctr.detach(),
            "mask_rate_unlabeled": mask.float().sum() / n_ulb,
            "calibration_active": torch.tensor(float(ready)),
            "mined_positives_per_query": mined.float().sum() / max(b, 1),
        }

    @torch.no_grad()
    def _update_state(self, keys: torch.Tensor, batch: Batch, protos: torch.Tensor, ready: bool) -> None:
        hp, n_lb, n_seen = self.hp, batch.n_lb, self.ctx.n_seen
        # prototypes: class means of the labeled keys (+ one mixed sample per class, Eq. (4))
        onehot = F.one_hot(batch.y_lb.long(), n_seen).float()  # [n_lb, S]
        sums, counts = onehot.T @ keys[:n_lb], onehot.sum(0)
        if hp.prototype_mixup and n_lb and batch.n_ulb and self.prototype_ready.any():
            near = (keys[n_lb:] @ protos.T).masked_fill(~self.prototype_ready, float("-inf")).argmax(1)
            m_u = F.one_hot(near, n_seen).bool()  # [n_ulb, S]
            g = batch.generator
            r_l = torch.rand(n_lb, generator=g, device=g.device).to(keys.device)
            r_u = torch.rand(batch.n_ulb, generator=g, device=g.device).to(keys.device)
            lam = torch.rand(n_seen, generator=g, device=g.device).to(keys.device)
            pick_l = torch.where(onehot.bool(), r_l.unsqueeze(1), -1.0).argmax(0)  # [S] a random labeled row
            pick_u = torch.where(m_u, r_u.unsqueeze(1), -1.0).argmax(0)  # [S] a random nearest unlabeled row
            valid = onehot.bool().any(0) & m_u.any(0)
            mixed = lam.unsqueeze(1) * keys[:n_lb][pick_l] + (1 - lam.unsqueeze(1)) * keys[n_lb:][pick_u]
            sums += mixed * valid.unsqueeze(1).float()
            counts += valid.float()
        present = counts > 0
        if present.any():
            new = F.normalize(sums[present] / counts[present].unsqueeze(1), dim=1)
            old = self.prototypes[present]
            was = self.prototype_ready[present].unsqueeze(1)
            mom = hp.prototype_momentum
            self.prototypes[present] = torch.where(was, F.normalize(mom * old + (1 - mom) * new, dim=1), new)
            self.prototype_ready |= present
        # FIFO queue of keys with their labels (-1 for unlabeled rows)
        if hp.queue_size > 0:
            labels = torch.cat([batch.y_lb.long(), torch.full((batch.n_ulb,), -1, device=keys.device, dtype=torch.long)])
            k = keys[-hp.queue_size:]
            labels = labels[-hp.queue_size:]
            start = int(self.queue_count) % hp.queue_size
            pos = (start + torch.arange(k.shape[0], device=keys.device)) % hp.queue_size
            self.queue_keys[pos] = k
            self.queue_labels[pos] = labels
            self.queue_count += k.shape[0]
