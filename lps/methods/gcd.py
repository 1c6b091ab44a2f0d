"""GCD (Vaze et al., "Generalized Category Discovery", CVPR 2022), as released
(``sgvaze/generalized-category-discovery``: ``methods/contrastive_training/contrastive_training.py``,
``methods/clustering/faster_mix_k_means_pytorch.py``; REFERENCE.md "GCD").

GCD is open-world by construction: it learns a representation and then clusters every
unlabeled image into K = seen + novel clusters. Training, on two weak views per row (the
released ``ColorJitter()`` has no arguments and is the identity, so its view is crop + flip):

- backbone features go through a projection head (DINO head: 3-layer MLP 2048-2048-256 with
  GELU, L2 normalisation, then a weight-normalised linear layer of width 65536 with its norm
  fixed at 1), and the outputs are L2-normalised;
- ``(1 - sup_con_weight) * InfoNCE(all rows, tau_unsup) + sup_con_weight * SupCon(labeled rows,
  tau_sup)``, ``sup_con_weight = 0.35``. InfoNCE is NT-Xent over the 2N views
  (:func:`lps.losses.unsupervised_contrastive_loss`), SupCon as released
  (:func:`lps.losses.supervised_contrastive_loss`).

Evaluation: semi-supervised k-means (:func:`lps.clustering.semi_supervised_kmeans`)
on the L2-normalised *backbone* features of the labeled training images (fixed to their class;
from :meth:`before_evaluation`) and the images being evaluated, with K = all classes. Seen class
``c`` is cluster ``c``, so seen accuracy needs no matching; novel clusters take the remaining ids.
The reported (final) evaluation uses the released ``k_means.sh`` budget, 100 restarts of up to
200 iterations; the per-epoch evaluations the training-time 10 x 10.

Departures from the released code:

- The released backbone is a DINO ViT-B/16 fine-tuned from its last block; here the project's
  ResNet (``model.freeze=layer4`` trains the last stage). The DINO head keeps its released
  widths (``proj_*`` parameters) on top of the ResNet features.
- Batches follow the trainer's composition (labeled share proportional to the labeled set); the
  released sampler balances labeled and unlabeled images 1:1 in expectation.
- k-means is seeded (``kmeans_seed``); the released call passes ``random_state=None``. Empty
  clusters keep their centre (released: the mean of an empty set).
- The model's cosine head is unused and frozen
  (:func:`lps.methods.heads.freeze_classifier_head`); the trainer's ``pi_hat`` /
  ``kl_pi_hat_pi`` metrics are therefore not meaningful for this method.
- On the test split the same semi-supervised k-means runs on the labeled training images plus
  the test images.

Optimisation (``published_optim``, the starting point of every GCD config; any ``optim.*`` key
set by a config or experiment set wins): the released runs use SGD lr 0.1, momentum 0.9, weight
decay 5e-5, batch 128, 200 epochs, cosine annealing to ``lr * 1e-3`` (the project's cosine
schedule anneals to 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lps import losses
from lps.clustering import kmeans_predict, semi_supervised_kmeans
from lps.losses import supervised_contrastive_loss
from lps.methods.base import METHODS, Batch, Method, check_range
from lps.methods.heads import freeze_classifier_head


@dataclass
class GCDParams:
    sup_con_weight: float = 0.35  # lambda of (1 - l) * InfoNCE + l * SupCon (released contrastive_train.sh)
    tau_unsup: float = 1.0  # InfoNCE temperature (released contrastive_training.py --temperature 1.0)
    tau_sup: float = 0.07  # SupCon temperature (released SupConLoss(temperature=0.07))
    proj_layers: int = 3  # MLP layers of the DINO head (released args.num_mlp_layers = 3)
    proj_hidden_dim: int = 2048  # DINO head hidden width (released DINOHead hidden_dim=2048)
    proj_bottleneck_dim: int = 256  # DINO head bottleneck (released DINOHead bottleneck_dim=256)
    proj_out_dim: int = 65536  # DINO head output width (released args.mlp_out_dim = 65536)
    kmeans_n_init: int = 10  # k-means restarts of the per-epoch evaluations (released k_means.py default 10)
    kmeans_max_iter: int = 10  # Lloyd iterations per restart there (released --max_kmeans_iter default 10)
    final_kmeans_n_init: int = 100  # restarts of the final, reported evaluation (released k_means.sh: 100)
    final_kmeans_max_iter: int = 200  # its Lloyd iterations per restart (released k_means.sh: 200)
    kmeans_tol: float = 1e-4  # stop when the squared centre shift is below this (released tolerance 1e-4)
    kmeans_seed: int = 0  # seed of the k-means++ draws (released: unseeded)

    def validate(self) -> None:
        check_range(self, "sup_con_weight", lo=0, hi=1)
        check_range(self, "tau_unsup", lo=0, lo_open=True)
        check_range(self, "tau_sup", lo=0, lo_open=True)
        for name in ("proj_layers", "proj_hidden_dim", "proj_bottleneck_dim", "proj_out_dim", "kmeans_n_init",
                     "kmeans_max_iter", "final_kmeans_n_init", "final_kmeans_max_iter"):
            check_range(self, name, lo=1)
        check_range(self, "kmeans_tol", lo=0)
        check_range(self, "kmeans_seed", lo=0)


class DINOHead(nn.Module):
    """GCD's projection head (released ``models/vision_transformer.DINOHead`` with
    ``norm_last_layer=True``): MLP (Linear + GELU, ``layers`` linear layers, truncated-normal
    std 0.02 weights, zero biases) to ``bottleneck``, L2 normalisation, then a weight-normalised
    linear layer without bias whose norm ``g`` is fixed at 1, i.e. ``x @ normalize(V, dim=1).T``."""

    def __init__(self, in_dim: int, out_dim: int, layers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        if layers == 1:
            mods: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            mods = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(layers - 2):
                mods += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            mods.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_weight = nn.Parameter(nn.Linear(bottleneck_dim, out_dim, bias=False).weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return x @ F.normalize(self.last_weight, dim=1).T


@METHODS.register("gcd")
class GCD(Method):
    Params = GCDParams
    views = ("weak", "weak")
    published_optim = {kind: {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-5,
                              "batch_size": 128, "epochs": 200, "schedule": "cosine"}
                       for kind in ("small", "large")}  # released contrastive_train.sh

    def __init__(self, params: GCDParams, ctx):
        super().__init__(params, ctx)
        self.projection_head = DINOHead(ctx.feat_dim, params.proj_out_dim, params.proj_layers, params.proj_hidden_dim,
                                        params.proj_bottleneck_dim)
        self._labeled: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def on_epoch_start(self, epoch, model, unlabeled_probs):
        super().on_epoch_start(epoch, model, unlabeled_probs)
        freeze_classifier_head(model)

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb = self.hp, batch.n_lb
        _, (f1, f2) = self.forward_views(model, batch.views)
        h1 = F.normalize(self.projection_head(f1.float()).float(), dim=1)
        h2 = F.normalize(self.projection_head(f2.float()).float(), dim=1)
        loss_unsup = losses.unsupervised_contrastive_loss(h1, h2, hp.tau_unsup)
        loss_sup = supervised_contrastive_loss(h1[:n_lb], h2[:n_lb], batch.y_lb, hp.tau_sup)
        loss = (1 - hp.sup_con_weight) * loss_unsup + hp.sup_con_weight * loss_sup
        return {"loss": loss, "loss_infonce": loss_unsup.detach(), "loss_supcon": loss_sup.detach()}

    # ------------------------------------------------------------------ evaluation
    def kmeans_budget(self) -> tuple[int, int]:
        """(restarts, iterations): the released final evaluation's 100 x 200 for the reported
        numbers, the training-time 10 x 10 for the per-epoch monitoring."""
        hp = self.hp
        if self.final_evaluation:
            return hp.final_kmeans_n_init, hp.final_kmeans_max_iter
        return hp.kmeans_n_init, hp.kmeans_max_iter

    def before_evaluation(self, labeled):
        self._labeled = labeled

    @torch.no_grad()
    def predict(self, logits, feats):
        hp, k = self.hp, self.ctx.num_classes
        if feats.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        if self._labeled is None:  # no labeled images given: plain k-means (scikit-learn)
            return kmeans_predict(feats, k, hp.kmeans_n_init, hp.kmeans_seed)
        _, l_feats, l_labels = self._labeled()
        dev = self.ctx.device
        u = F.normalize(feats.to(dev).float(), dim=1)
        lf = F.normalize(l_feats.to(dev).float(), dim=1)
        n_init, max_iter = self.kmeans_budget()
        assign, _ = semi_supervised_kmeans(u, lf, l_labels.to(dev), k, n_init, max_iter, hp.kmeans_tol, hp.kmeans_seed)
        return assign.cpu().numpy().astype(np.int64)
