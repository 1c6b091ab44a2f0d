"""FixMatch (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS 2020), the Table-1 SSL baseline, adapted to the open world as the LPS paper
describes (Sec. 5.1; ``shared/REFERENCE.md``, "Table-1 baselines ...").

Training is closed-set on the seen classes: the model is the usual backbone + K-way cosine head,
and FixMatch uses **the first ``n_seen`` logits** of it (the novel rows of the head are never
used; novel classes have no labels and FixMatch has no way to create them).

- labeled rows: cross-entropy of the weak view over the seen logits;
- unlabeled rows: pseudo-label ``argmax softmax(z_weak[:, :n_seen])`` (detached), kept when its
  confidence is ``>= threshold``; cross-entropy of the strong view against it, summed over the
  kept rows and divided by all unlabeled rows (FixMatch Eq. (4), ``1/(mu B)``).

Total: ``L_s + lambda_u * L_u`` (FixMatch Eq. (5)).

Open-world evaluation (``predict``): a sample whose seen-class confidence (max softmax over the
seen logits) is below ``reject_threshold`` is treated as novel; the rejected samples' backbone
features are clustered by k-means into the novel ids ``n_seen .. K-1``
(:func:`lps.clustering.reject_and_cluster`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lps.methods.base import METHODS, Batch, check_range
from lps.methods.open_world import RejectionParams, SeenClassifierMethod


@dataclass
class FixMatchParams(RejectionParams):
    threshold: float = 0.95  # pseudo-label confidence threshold tau; FixMatch paper Sec. 4 / Table 9
    lambda_u: float = 1.0  # weight of the unlabeled loss; FixMatch paper Sec. 4 (lambda_u = 1)

    def validate(self) -> None:
        super().validate()
        check_range(self, "threshold", lo=0, hi=1)
        check_range(self, "lambda_u", lo=0)


def seen_pseudo_labels(logits_weak: torch.Tensor, n_seen: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch pseudo-labels over the seen logits: ``(labels [N], confident mask [N])``."""
    probs = F.softmax(logits_weak.detach().float()[:, :n_seen], dim=1)
    conf, pl = probs.max(1)
    return pl, conf >= threshold


@METHODS.register("fixmatch")
class FixMatch(SeenClassifierMethod):
    Params = FixMatchParams
    views = ("weak", "strong")

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb, n_seen = self.hp, batch.n_lb, self.ctx.n_seen
        (z_w, z_s), _ = self.forward_views(model, batch.views)
        z_w, z_s = z_w.float()[:, :n_seen], z_s.float()[:, :n_seen]

        loss_s = F.cross_entropy(z_w[:n_lb], batch.y_lb) if n_lb else z_w.sum() * 0
        pl, mask = seen_pseudo_labels(z_w[n_lb:], n_seen, hp.threshold)
        n_ulb = max(batch.n_ulb, 1)
        ce_u = F.cross_entropy(z_s[n_lb:], pl, reduction="none")  # [n_ulb]
        loss_u = (ce_u * mask.float()).sum() / n_ulb
        loss = loss_s + hp.lambda_u * loss_u
        return {
            "loss": loss,
            "loss_s": loss_s.detach(),
            "loss_u": loss_u.detach(),
            "mask_rate_unlabeled": mask.float().sum() / n_ulb,
        }
