"""LPS: Learning Pace Synchronization (Ye et al., "Bridging the Gap: Learning Pace
Synchronization for Open-World Semi-Supervised Learning"), implemented as the released code does
it (see REFERENCE.md, "LPS as released").

Three views per row: two weak (v1, v2) and one strong (v3).

- pseudo-labels from ``softmax(z2)``; labeled rows keep their label;
- confidence mask: seen-class pseudo-labels need ``conf >= lambda_seen``; novel ones
  ``conf >= lambda_novel_start + (lambda_novel_end - lambda_novel_start) * epoch / T``
  (epoch-level, 0-indexed, T = ``threshold_epochs`` or the run's epochs); labeled rows always count;
- ``pi_hat`` from the masked soft predictions (Eq. 4);
- adaptive margin loss (Eq. 3/5) on labeled rows of z1 plus masked unlabeled rows of z3;
- pseudo-label contrastive clustering L_PC (Eq. 7) on the logits of v2/v3 of masked rows;
- unsupervised contrastive L_UC (Eq. 8) on v2/v3 logits, anchors = unmasked rows;
- entropy regulariser R (Eq. 9).

Total: ``w_entropy * R + L_AM + eta1 * L_PC + eta2 * L_UC``. Every term can be switched off:
``margin_C=0`` gives plain cross-entropy (Table 4 "w/o L_AM"), ``eta1=0``, ``eta2=0``,
``w_entropy=0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lps import losses
from lps.methods.base import METHODS, Batch, Method, check_range


@dataclass
class LPSParams:
    margin_C: float = 10.0  # C in Eq. (5); paper Sec. 4.1 and released code (C = 10)
    margin_kl: Literal["code", "paper"] = "code"  # s = KL(u||pi_hat) (released code) or KL(pi_hat||u) (paper Eq. 3)
    tau: float = 0.4  # temperature of L_PC and L_UC; paper Sec. 4.1 / Table 8 (0.4)
    eta1: float = 1.0  # weight of L_PC; paper Eq. (10), released code (1)
    eta2: float = 1.0  # weight of L_UC; paper Eq. (10), released code (1)
    w_entropy: float = 1.0  # weight of the entropy regulariser; released code (1)
    lambda_seen: float = 0.95  # seen-class confidence threshold; paper Sec. 4.1 / Table 6
    lambda_novel_start: float = 0.4  # novel threshold at epoch 0; released code (0.4)
    lambda_novel_end: float = 0.8  # novel threshold at the end; released code (0.4 + 0.4)
    threshold_epochs: int = 0  # T of the novel-threshold schedule; 0 = the run's epochs (code: 200/90)

    def validate(self) -> None:
        check_range(self, "margin_C", lo=0)
        check_range(self, "tau", lo=0, lo_open=True)
        for name in ("eta1", "eta2", "w_entropy", "threshold_epochs"):
            check_range(self, name, lo=0)
        for name in ("lambda_seen", "lambda_novel_start", "lambda_novel_end"):
            check_range(self, name, lo=0, hi=1)


@METHODS.register("lps")
class LPS(Method):
    Params = LPSParams
    views = ("weak", "weak", "strong")

    def novel_threshold(self, epoch: int) -> float:
        T = self.hp.threshold_epochs or self.ctx.epochs
        frac = min(epoch / T, 1.0) if T > 0 else 0.0
        return self.hp.lambda_novel_start + (self.hp.lambda_novel_end - self.hp.lambda_novel_start) * frac

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb, n_seen = self.hp, batch.n_lb, self.ctx.n_seen
        (z1, z2, z3), _ = self.forward_views(model, batch.views)
        z1, z2, z3 = z1.float(), z2.float(), z3.float()

        # 1-2. pseudo-labels and confidence mask (labeled rows: true label, mask 1)
        probs = F.softmax(z2.detach(), dim=1)
        conf, pl = probs.max(1)
        pl = pl.clone()
        pl[:n_lb] = batch.y_lb
        is_seen = pl < n_seen
        mask = torch.where(is_seen, conf >= hp.lambda_seen, conf >= self.novel_threshold(self.epoch))
        mask[:n_lb] = True

        # 3. estimated class distribution (Eq. 4): soft predictions of the masked rows
        pi_hat = losses.estimate_class_distribution(probs, mask)

        # 4. adaptive margin loss (Eq. 5): labeled rows of v1 + masked unlabeled rows of v3
        loss_lb = losses.adaptive_margin_loss(z1[:n_lb], batch.y_lb, pi_hat, hp.margin_C, kl=hp.margin_kl)
        loss_ulb = losses.adaptive_margin_loss(z3[n_lb:], pl[n_lb:], pi_hat, hp.margin_C,
                                               weights=mask[n_lb:].float(), kl=hp.margin_kl)
        loss_am = loss_lb + loss_ulb

        # 5. pseudo-label contrastive clustering (Eq. 7) on logits of v2/v3, masked rows
        loss_pc = losses.pseudo_label_contrastive_loss(z2[mask], z3[mask], pl[mask], hp.tau) \
            if hp.eta1 > 0 else z1.new_zeros(())
        # 6. unsupervised contrastive learning (Eq. 8), anchors = unconfident rows
        loss_uc = losses.unsupervised_contrastive_loss(z2, z3, hp.tau, anchor_mask=~mask) \
            if hp.eta2 > 0 else z1.new_zeros(())
        # 7. entropy regulariser (Eq. 9) on v1
        reg = losses.entropy_regularizer(z1) if hp.w_entropy > 0 else z1.new_zeros(())

        loss = hp.w_entropy * reg + loss_am + hp.eta1 * loss_pc + hp.eta2 * loss_uc
        n_ulb = max(batch.n_ulb, 1)
        return {
            "loss": loss,
            "loss_am": loss_am.detach(),
            "loss_pc": loss_pc.detach(),
            "loss_uc": loss_uc.detach(),
            "entropy_reg": reg.detach(),
            "mask_rate_unlabeled": mask[n_lb:].float().sum() / n_ulb,
            "kl_uniform_pi_hat": losses.kl_divergence(torch.full_like(pi_hat, 1 / pi_hat.numel()), pi_hat),
            "margin_max": losses.adaptive_margins(pi_hat, hp.margin_C, hp.margin_kl).max(),
        }
