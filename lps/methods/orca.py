"""ORCA (Cao et al., "Open-World Semi-Supervised Learning", ICLR 2022), as released
(``snap-stanford/orca``, ``orca_cifar.py``; REFERENCE.md "ORCA as released").

ORCA is an open-world method by design: one K-way cosine head over seen + novel classes, trained
with three terms on two weak views per row:

- pairwise objective: every row is paired with a positive partner (labeled row: a random other
  labeled row of the same label; unlabeled row: its nearest neighbour in the batch by cosine
  similarity of the detached view-1 backbone features, itself excluded), and
  ``BCE(<softmax(z1_i), softmax(z2_partner(i))>, 1)`` pulls the pair into the same class;
- supervised cross-entropy on the labeled rows of view 1 with the uncertainty-adaptive margin:
  the target logit becomes ``z_y + margin_scale * min(u_bar, max_uncertainty)`` (released
  ``MarginLoss(m=-min(u_bar, 0.5), s=10)``, i.e. a *negative* margin while the model is
  uncertain about the unlabeled data, which slows the seen classes down), where
  ``u_bar = 1 - mean max-softmax`` over the unlabeled training images;
- entropy regulariser ``-H(mean softmax(z1))`` over the batch.

Total: ``w_bce * BCE + w_ce * CE_margin + w_entropy * (-H)`` (all weights 1 as released).
Prediction: argmax of the head.

Departures from the released code:

- ``u_bar`` comes from the trainer's last evaluation (softmax on the unlabeled training images,
  test transform), which is what the released ``test()`` measures before each epoch. Before the
  first evaluation the released code measures the randomly initialised head; here
  ``initial_uncertainty`` (1.0) is used. Both give the capped value ``max_uncertainty`` unless the
  initial head is already confident on average (``u_bar < 0.5``). With ``train.eval_every > 1``
  the value of the last evaluation is reused.
- Nearest neighbours exclude the anchor explicitly (released: second entry of ``topk(., 2)``,
  which assumes no exact duplicate of the anchor in the batch); the labeled partner is drawn
  from the step's generator (released: unseeded ``np.random``).

Optimisation (``published_optim``, the starting point of every ORCA config; any ``optim.*`` key
set by a config or experiment set wins): the released CIFAR runs (``orca_cifar.py``) use SGD
lr 0.1, momentum 0.9, weight decay 5e-4, batch 512, 200 epochs and MultiStep [140, 180] with
gamma 0.1; the released ImageNet run (``orca_imagenet.py``) weight decay 1e-4, 90 epochs,
MultiStep [30, 60]. A shorter run rescales the milestones (6 epochs: [4, 5]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lps import losses
from lps.methods.base import METHODS, Batch, Method, check_range
from lps.methods.pairing import pair_partners


@dataclass
class ORCAParams:
    margin_scale: float = 10.0  # s of MarginLoss (released utils.py, s=10; the head's cosine scale)
    max_uncertainty: float = 0.5  # cap of u_bar (released orca_cifar.py: m = min(m, 0.5))
    initial_uncertainty: float = 1.0  # u_bar before the first evaluation (released: measured on the initial model)
    w_bce: float = 1.0  # weight of the pairwise BCE (released orca_cifar.py: 1)
    w_ce: float = 1.0  # weight of the margin cross-entropy (released: 1)
    w_entropy: float = 1.0  # weight of the entropy regulariser (released: 1)

    def validate(self) -> None:
        check_range(self, "margin_scale", lo=0)
        check_range(self, "max_uncertainty", lo=0, hi=1)
        check_range(self, "initial_uncertainty", lo=0, hi=1)
        for name in ("w_bce", "w_ce", "w_entropy"):
            check_range(self, name, lo=0)


def mean_uncertainty(unlabeled_probs: torch.Tensor) -> float:
    """ORCA's ``u_bar = 1 - mean_i max_k p_ik`` over the unlabeled set (``[N, K]`` softmax)."""
    if unlabeled_probs.numel() == 0:
        raise ValueError("unlabeled_probs is empty: no unlabeled image to measure the uncertainty on")
    return float(1.0 - unlabeled_probs.float().max(1).values.mean())


@METHODS.register("orca")
class ORCA(Method):
    Params = ORCAParams
    views = ("weak", "weak")
    published_optim = {
        "small": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 200,
                  "schedule": "multistep", "milestones": [140, 180], "gamma": 0.1},  # orca_cifar.py
        "large": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 90,
                  "schedule": "multistep", "milestones": [30, 60], "gamma": 0.1},  # orca_imagenet.py
    }

    def __init__(self, params: ORCAParams, ctx):
        super().__init__(params, ctx)
        # u_bar of the last evaluation; a buffer, so it is checkpointed
        self.register_buffer("uncertainty", torch.tensor(float(params.initial_uncertainty)))

    def on_epoch_start(self, epoch, model, unlabeled_probs):
        super().on_epoch_start(epoch, model, unlabeled_probs)
        if unlabeled_probs is not None and unlabeled_probs.numel():
            self.uncertainty.fill_(mean_uncertainty(unlabeled_probs))

    def margin(self) -> float:
        """Shift added to the target logit of the labeled rows: ``s * min(u_bar, cap)``."""
        return self.hp.margin_scale * min(float(self.uncertainty), self.hp.max_uncertainty)

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb = self.hp, batch.n_lb
        (z1, z2), (f1, _) = self.forward_views(model, batch.views)
        z1, z2 = z1.float(), z2.float()
        prob1, prob2 = F.softmax(z1, dim=1), F.softmax(z2, dim=1)

        partner, _, nn_sim = pair_partners(f1, batch.y_lb, batch.generator)
        loss_bce = losses.pairwise_bce_loss(prob1, prob2[partner])
        margin = self.margin()
        loss_ce = losses.margin_cross_entropy(z1[:n_lb], batch.y_lb, margin)
        reg = losses.entropy_regularizer(z1)

        loss = hp.w_bce * loss_bce + hp.w_ce * loss_ce + hp.w_entropy * reg
        return {
            "loss": loss,
            "loss_bce": loss_bce.detach(),
            "loss_ce": loss_ce.detach(),
            "entropy_reg": reg.detach(),
            "margin": torch.tensor(margin),
            "uncertainty": self.uncertainty.detach().clone(),
            "nn_similarity": nn_sim.mean() if nn_sim.numel() else torch.tensor(0.0),
        }
