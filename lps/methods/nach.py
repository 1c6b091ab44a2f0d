"""NACH (Guo et al., "Robust Semi-Supervised Learning when Not All Classes have Labels",
NeurIPS 2022), following REFERENCE.md "NACH". The authors released no code; where the paper's
formulation settles a point it is followed, where it is silent the public re-implementation
(pitlover/OpenWorldSSL) is.

NACH is an open-world method by design (one K-way cosine head over seen + novel classes). Three
views per row: v1, v2 weak, v3 strong.

- pseudo-labels ``pl`` and confidences from ``softmax(z2)``; confidence mask: a seen pseudo-label
  needs ``conf >= lambda_seen`` (0.95), a novel one the *adaptive* threshold
  ``lambda_seen - min(threshold_gap_scale * m, max_threshold_reduction)`` = ``0.95 - min(2m, 0.5)``;
- ``m`` = (mean max-prob of the rows predicted seen) - (mean max-prob of those predicted novel),
  over the previous epoch (``m`` starts at 1: threshold 0.45);
- pairwise BCE as ORCA (``softmax(z1)`` against ``softmax(z2)`` of the partner), but an
  unlabeled anchor's nearest neighbour is *accepted* only if its similarity is at least the
  ``neighbour_rank``-th largest similarity between that neighbour and the labeled rows
  (:func:`lps.methods.pairing.accept_neighbours`); a rejected anchor is paired with
  itself (its two views);
- plain cross-entropy on the labeled rows of v1 (no margin);
- distribution alignment: ``CE(z3 + log(pi_hat / u), pl)`` weighted by the mask and averaged over
  all rows, ``pi_hat`` the masked soft predictions of v2 as in LPS (Eq. 4), ``u`` uniform;
- entropy regulariser ``-H(mean softmax(z1))``.

Total: ``w_entropy * (-H) + w_bce * BCE + w_ce * CE + w_align * L_align`` (all 1).
Prediction: argmax of the head.

The three points where the re-implementation and a literal reading could differ, decided:

- Pairwise term (``pair_loss``): the paper's objective is ORCA's binary cross-entropy on the
  pair probability ``<p_i, p_j>``, so ``BCE(pos_sim, 1)`` (default ``"bce"``). The
  re-implementation applies ``BCEWithLogitsLoss`` to that probability, i.e. a sigmoid the
  formulation does not have (up to 4.5 apart on the same inputs, and a much flatter gradient);
  ``"bce_with_logits"`` reproduces it.
- Labeled rows in the thresholded terms (``labeled_rows``): the paper does not say how labeled
  rows enter ``pi_hat`` and the alignment; as the re-implementation (default ``"pseudo"``) they
  take their own weak-view pseudo-label and are thresholded like every row. ``"label"`` gives
  them their true label and mask 1 (LPS's convention).
- The gap ``m`` (``gap_source``): the paper does not say on which images it is measured; as the
  re-implementation (default ``"batches"``) it is averaged over the previous epoch's training
  batches, on the pseudo-label view, labeled rows included (each group's mean weighted by its
  row count; an empty group counts as 0). ``"evaluation"`` measures it on the trainer's last
  evaluation of the unlabeled training images (test transform).

Other departures: ``log(pi_hat)`` is clamped at ``log(1e-8)`` so a class with no mass cannot make
the loss non-finite; the acceptance rank is clipped to the number of labeled rows.

Optimisation: as ORCA's paper protocol, the lps defaults (SGD lr 0.1, momentum 0.9, weight decay
5e-4, batch 512, 200 epochs on CIFAR, cosine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lps import losses
from lps.methods.base import METHODS, Batch, Method, check_range
from lps.methods.pairing import accept_neighbours, pair_partners


@dataclass
class NACHParams:
    lambda_seen: float = 0.95  # seen threshold, also the base of the novel one (NACH paper Sec. 4; re-impls: 0.95)
    threshold_gap_scale: float = 2.0  # the 2 in 0.95 - min(2m, 0.5) (re-impls)
    max_threshold_reduction: float = 0.5  # the 0.5 in 0.95 - min(2m, 0.5) (re-impls)
    initial_gap: float = 1.0  # m before the first evaluation (re-impls: mean_uncertainty=1)
    neighbour_rank: int = 2  # k of the neighbour acceptance rule (re-impls: choose_k = 2)
    w_bce: float = 1.0  # weight of the pairwise BCE (re-impls: 1)
    w_ce: float = 1.0  # weight of the labeled cross-entropy (re-impls: 1)
    w_align: float = 1.0  # weight of the distribution alignment (re-impls: 1)
    w_entropy: float = 1.0  # weight of the entropy regulariser (re-impls: 1)
    pair_loss: Literal["bce", "bce_with_logits"] = "bce"  # NACH/ORCA formulation (re-impl: bce_with_logits)
    labeled_rows: Literal["pseudo", "label"] = "pseudo"  # paper silent: as the re-implementation
    gap_source: Literal["batches", "evaluation"] = "batches"  # paper silent: as the re-implementation

    def validate(self) -> None:
        check_range(self, "lambda_seen", lo=0, hi=1)
        check_range(self, "threshold_gap_scale", lo=0)
        check_range(self, "max_threshold_reduction", lo=0, hi=1)
        check_range(self, "initial_gap", lo=-1, hi=1)
        check_range(self, "neighbour_rank", lo=1)
        for name in ("w_bce", "w_ce", "w_align", "w_entropy"):
            check_range(self, name, lo=0)


def novel_threshold(m: float, lambda_seen: float = 0.95, scale: float = 2.0, max_reduction: float = 0.5) -> float:
    """NACH's adaptive novel-class threshold ``lambda_seen - min(scale * m, max_reduction)``.

    A negative gap ``m`` (novel classes more confident than seen ones) raises the threshold above
    ``lambda_seen``, exactly as the formula says."""
    return lambda_seen - min(scale * m, max_reduction)


def seen_novel_gap(probs: torch.Tensor, n_seen: int) -> float:
    """``m`` = mean max-prob of the rows predicted seen (argmax ``< n_seen``) minus that of the
    rows predicted novel; an empty group counts as 0 (as the re-implementations).

    Args:
        probs: ``[N, K]`` softmax outputs.
        n_seen: number of seen classes.
    """
    conf, pred = probs.float().max(1)
    seen = pred < n_seen
    mean_seen = float(conf[seen].mean()) if seen.any() else 0.0
    mean_novel = float(conf[~seen].mean()) if (~seen).any() else 0.0
    return mean_seen - mean_novel


@METHODS.register("nach")
class NACH(Method):
    Params = NACHParams
    views = ("weak", "weak", "strong")

    def __init__(self, params: NACHParams, ctx):
        super().__init__(params, ctx)
        # m of the previous epoch, and this epoch's running sums for it (sum and count of the max
        # probability of the seen-predicted rows, then of the novel-predicted rows); buffers, so a
        # checkpoint resumes them
        self.register_buffer("gap", torch.tensor(float(params.initial_gap)))
        self.register_buffer("gap_sums", torch.zeros(4, dtype=torch.float64))

    def on_epoch_start(self, epoch, model, unlabeled_probs):
        super().on_epoch_start(epoch, model, unlabeled_probs)
        if self.hp.gap_source == "evaluation":
            if unlabeled_probs is not None and unlabeled_probs.numel():
                self.gap.fill_(seen_novel_gap(unlabeled_probs, self.ctx.n_seen))
            return
        s_seen, n_seen, s_novel, n_novel = self.gap_sums.tolist()
        if n_seen + n_novel > 0:  # the previous epoch trained: its average, as the re-implementation
            self.gap.fill_((s_seen / n_seen if n_seen else 0.0) - (s_novel / n_novel if n_novel else 0.0))
        self.gap_sums.zero_()

    def _accumulate_gap(self, conf: torch.Tensor, pl: torch.Tensor) -> None:
        seen = pl < self.ctx.n_seen
        c = conf.double()
        self.gap_sums += torch.stack([c[seen].sum(), seen.sum().double(), c[~seen].sum(), (~seen).sum().double()]).to(
            self.gap_sums.device)

    def novel_threshold(self) -> float:
        hp = self.hp
        return novel_threshold(float(self.gap), hp.lambda_seen, hp.threshold_gap_scale, hp.max_threshold_reduction)

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb, n_seen = self.hp, batch.n_lb, self.ctx.n_seen
        (z1, z2, z3), (f1, _, _) = self.forward_views(model, batch.views)
        z1, z2, z3 = z1.float(), z2.float(), z3.float()
        prob1, prob2 = F.softmax(z1, dim=1), F.softmax(z2, dim=1)

        # pseudo-labels and the adaptive confidence mask (labeled rows: their own pseudo-label and
        # threshold, or with labeled_rows="label" their label and mask 1)
        probs = prob2.detach()
        conf, pl = probs.max(1)
        if hp.gap_source == "batches":
            self._accumulate_gap(conf, pl)
        pl = pl.clone()
        if hp.labeled_rows == "label":
            pl[:n_lb] = batch.y_lb
        tau_novel = self.novel_threshold()
        mask = torch.where(pl < n_seen, conf >= hp.lambda_seen, conf >= tau_novel)
        if hp.labeled_rows == "label":
            mask[:n_lb] = True

        # pairwise BCE with the neighbour acceptance rule (rejected anchors pair with themselves)
        partner, sim, nn_sim = pair_partners(f1, batch.y_lb, batch.generator)
        accepted = accept_neighbours(sim, partner[n_lb:], nn_sim, n_lb, hp.neighbour_rank)
        own = torch.arange(n_lb, partner.shape[0], device=partner.device)
        partner = torch.cat([partner[:n_lb], torch.where(accepted, partner[n_lb:], own)])
        if hp.pair_loss == "bce":
            loss_bce = losses.pairwise_bce_loss(prob1, prob2[partner])
        else:  # the re-implementation: BCEWithLogitsLoss on the pair probability
            pos_sim = (prob1 * prob2[partner]).sum(1)
            loss_bce = F.binary_cross_entropy_with_logits(pos_sim, torch.ones_like(pos_sim))

        loss_ce = F.cross_entropy(z1[:n_lb], batch.y_lb) if n_lb else z1.sum() * 0
        pi_hat = losses.estimate_class_distribution(probs, mask)
        loss_align = losses.distribution_alignment_loss(z3, pl, pi_hat, mask)
        reg = losses.entropy_regularizer(z1)

        loss = hp.w_entropy * reg + hp.w_bce * loss_bce + hp.w_ce * loss_ce + hp.w_align * loss_align
        n_ulb = max(batch.n_ulb, 1)
        return {
            "loss": loss,
            "loss_bce": loss_bce.detach(),
            "loss_ce": loss_ce.detach(),
            "loss_align": loss_align.detach(),
            "entropy_reg": reg.detach(),
            "novel_threshold": torch.tensor(tau_novel),
            "seen_novel_gap": self.gap.detach().clone(),
            "mask_rate_unlabeled": mask[n_lb:].float().sum() / n_ulb,
            "neighbour_accept_rate": accepted.float().sum() / n_ulb,
        }
