"""SSC: FixMatch with the unified semi-supervised contrastive loss and class prototypes (Gauffre,
Horvat & Amini, "A Unified Contrastive Loss for Self-Training", ECML-PKDD 2024, arXiv 2409.07292;
``shared/papers/ssc_unified_contrastive_loss_summary.md``), adapted to the open world the same way
as FixMatch (``shared/REFERENCE.md``).

SSC replaces every cross-entropy of FixMatch by one contrastive loss over the labeled, the
confidently pseudo-labeled and the unconfident unlabeled samples together with trainable class
prototypes (:func:`lps.losses.prototype_supcon_loss`):

- embeddings: the backbone features (L2-normalised inside the loss);
- class prototypes: **the first ``n_seen`` rows of the K-way cosine head**, i.e. the trainable
  class-wise parameters of the head live in the embedding space already; class probabilities
  are ``softmax(cos(z, prototypes) / T)`` (SSC Sec. 3.1). Only the seen rows are prototypes: a
  prototype is pulled only by samples carrying its label, and novel classes have neither labels
  nor (starting from no novel prototype) confident pseudo-labels, so novel prototypes would only
  ever be negatives; SSC is closed-set on the seen classes, as FixMatch;
- pseudo-labels from the weak view of the unlabeled rows (detached): confident
  (``max p >= threshold``) rows take their argmax, each unconfident row a unique label
  ``n_seen + i`` (SSC's ``y_u_down``) shared by its views;
- the loss rows: labeled rows (weak view, true labels), unlabeled rows in both views (weak and
  strong, with gradient), and the prototypes. An unconfident sample's two views are each other's
  only positives (an unsupervised contrastive term); a confident sample is pulled to its class's
  samples and prototype.

Adaptation notes: the FixMatch schedule (weak view for pseudo-labels, strong view trained) is
kept; the weak view of unlabeled rows also enters the loss so that an unconfident sample has a
positive pair. The temperature default equals the cosine head's scale (``1/T = 10``), so the
prototype probabilities are the head's softmax over the seen classes.

Open-world evaluation: seen-class prototype probabilities ``softmax(cos / T)`` below
``reject_threshold`` -> novel, rejected samples clustered by k-means into the novel ids
``n_seen .. K-1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lps.methods.base import METHODS, Batch, check_range
from lps.losses import prototype_supcon_loss, unique_unconfident_labels
from lps.methods.open_world import RejectionParams, SeenClassifierMethod


@dataclass
class SSCParams(RejectionParams):
    threshold: float = 0.95  # pseudo-label confidence threshold tau; FixMatch's, kept by SSC (paper Sec. 4)
    temperature: float = 0.1  # T of the unified loss and of the prototype probabilities; project choice:
    #                           1/T = the cosine head scale 10, so p = the head's softmax

    def validate(self) -> None:
        super().validate()
        check_range(self, "threshold", lo=0, hi=1)
        check_range(self, "temperature", lo=0, lo_open=True)


@METHODS.register("ssc")
class SSC(SeenClassifierMethod):
    Params = SSCParams
    views = ("weak", "strong")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        # cosine-head scale seen in training, so predict() can turn logits back into cosines
        self.register_buffer("head_scale", torch.tensor(10.0))

    def seen_probs(self, logits, feats):
        cos = logits.float()[:, : self.ctx.n_seen] / float(self.head_scale)
        return F.softmax(cos / self.hp.temperature, dim=1)

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb, n_seen = self.hp, batch.n_lb, self.ctx.n_seen
        (_, _), (f_w, f_s) = self.forward_views(model, batch.views)
        f_w, f_s = f_w.float(), f_s.float()
        prototypes = model.head.weight[:n_seen].float()  # [S, D]
        with torch.no_grad():
            self.head_scale.fill_(float(model.head.scale))
            cos = F.normalize(f_w[n_lb:], dim=1) @ F.normalize(prototypes, dim=1).T
            conf, pl = F.softmax(cos / hp.temperature, dim=1).max(1)
            confident = conf >= hp.threshold
        y_u = unique_unconfident_labels(pl, confident, offset=n_seen)
        emb = torch.cat([f_w[:n_lb], f_w[n_lb:], f_s[n_lb:]])
        labels = torch.cat([batch.y_lb.long(), y_u, y_u])
        proto_labels = torch.arange(n_seen, device=emb.device)
        loss = prototype_supcon_loss(emb, labels, prototypes, proto_labels, hp.temperature)
        n_ulb = max(batch.n_ulb, 1)
        return {"loss": loss, "mask_rate_unlabeled": confident.float().sum() / n_ulb}
