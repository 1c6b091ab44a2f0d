"""DS3L: safe deep semi-supervised learning for unseen-class unlabeled data (Guo et al., "Safe
Deep Semi-Supervised Learning for Unseen-Class Unlabeled Data", ICML 2020), the Table-1 open-set
SSL baseline, adapted to the open world as the LPS paper describes (Sec. 5.1: evaluated "in the
same way as FixMatch"; ``shared/REFERENCE.md``).

Training is closed-set on the seen classes, on **the first ``n_seen`` logits** of the K-way
cosine head (DS3L's classifier has the seen classes only). As in the released code
(``guolz-ml/DS3L``, ``train.py``), with two weak views ``v1, v2`` per row:

- supervised: cross-entropy of ``v1`` over the seen logits on the labeled rows;
- SSL regulariser (Pi-model, released ``MSE_Loss``): per row
  ``l_i = mean_k (softmax(z2_i)_k - softmax(z1_i)_k.detach())^2``;
- safe weighting: a weight network ``w(x; alpha) = sigmoid(MLP(softmax(z1_i)))`` (released
  ``WNet(n_seen, 100, 1)``, input the detached seen-class prediction) weights each unlabeled
  row: ``L_u = sum_i w_i l_i / sum_i w_i`` with the weights detached for the model update;
  labeled rows enter ``l`` unweighted;
- total: ``CE + c(t) * (L_u + mean_lab l)``, ``c(t) = w_max * exp(-5 (1 - t / T_r)^2)`` for
  ``t < T_r`` (released ramp, ``T_r`` = the whole run).

The weight network is trained by DS3L's bi-level objective: ``alpha`` should make one SGD step on
the weighted loss lower the *labeled* loss, ``min_alpha CE_lab(theta - eta grad_theta
L(theta, alpha))``. The released code differentiates through a full copy of the network
(second order). Here the **first-order approximation** of learning-to-reweight (Ren et al.,
ICML 2018) is used, with the look-ahead step restricted to the classifier weights ``W`` (the
seen rows of the cosine head):

    ``d CE_lab(theta_hat) / d w_hat_i  ~=  -eta * c(t) * <grad_W CE_lab, grad_W l_i>``

with ``w_hat_i = w_i / sum_j w_j``. The per-sample inner products ``g_i`` are computed in closed
form (one Jacobian-vector product of the cosine head, :func:`head_directional_derivative`).
``eta * c(t)`` and the overall scale of ``g`` only set the step size of the weight network, which
the released code's separate Adam optimiser (lr 3e-4) normalises away; here the trainer's one
optimiser (SGD) updates the weight network's parameters (they are method parameters), so the
signal is made scale-free the same way: ``g~ = g / mean_i |g_i|`` per batch (signs and relative
sizes kept), and the weight network gets exactly the gradient of the zero-valued surrogate
``S - S.detach()``, ``S = -meta_weight * sum_i w_hat_i g~_i`` (``g~`` detached), added to the
loss. ``meta_weight = 0`` turns the meta step off (constant-weight Pi-model).

Open-world evaluation as FixMatch: seen-class softmax below ``reject_threshold`` -> novel,
rejected samples clustered by k-means into the novel ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lps import losses
from lps.methods.base import METHODS, Batch, check_range
from lps.methods.open_world import RejectionParams, SeenClassifierMethod


@dataclass
class DS3LParams(RejectionParams):
    w_max: float = 10.0  # maximum SSL-loss coefficient; released train.py (coef = 10.0 * exp(...))
    rampup_fraction: float = 1.0  # ramp length / run length; released code: warmup = iterations = 200000
    meta_weight: float = 1.0  # scale of the normalised meta-gradient of the weight net; project choice (the
    #                           released code's Adam for the weight net is scale-free, see the docstring)
    hidden: int = 100  # hidden width of the weight network; released code WNet(n_class, 100, 1)

    def validate(self) -> None:
        super().validate()
        check_range(self, "w_max", lo=0)
        check_range(self, "rampup_fraction", lo=0)
        check_range(self, "meta_weight", lo=0)
        check_range(self, "hidden", lo=1)


def head_directional_derivative(feats: torch.Tensor, weight: torch.Tensor, direction: torch.Tensor,
                                scale: float) -> torch.Tensor:
    """Change of the cosine-head logits ``z = scale * normalize(f) @ normalize(W).T`` when ``W``
    moves along ``direction``: ``dz/de (W + e * direction)`` at ``e = 0``, i.e.
    ``scale * normalize(f) @ ((D - n(W) <n(W), D>) / |W|).T`` row-wise over the classes.

    Args:
        feats: ``[N, F]`` (detached by the caller).
        weight, direction: ``[C, F]``.

    Returns:
        ``[N, C]``.
    """
    norm = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n_w = weight / norm
    d_nw = (direction - n_w * (n_w * direction).sum(1, keepdim=True)) / norm  # [C, F]
    return scale * F.normalize(feats, dim=1) @ d_nw.T


def meta_surrogate(w: torch.Tensor, g: torch.Tensor, meta_weight: float) -> torch.Tensor:
    """``S = -meta_weight * sum_i (w_i / sum_j w_j) * g~_i`` with ``g~ = g / mean|g|`` detached:
    its gradient in ``w`` is the first-order meta-gradient of DS3L's normalised weighted loss,
    ``dS/dw_i = -meta_weight * (g~_i - sum_j w_hat_j g~_j) / sum_j w_j``. ``w, g [N]``."""
    g = g.detach()
    g = g / g.abs().mean().clamp_min(1e-12)
    w_hat = w / w.sum().clamp_min(1e-12)
    return -meta_weight * (w_hat * g).sum()


class WeightNet(nn.Module):
    """DS3L's weight function ``w(x; alpha)``: MLP(C -> hidden -> 1) with a sigmoid (released WNet)."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)).squeeze(1)


@METHODS.register("ds3l")
class DS3L(SeenClassifierMethod):
    Params = DS3LParams
    views = ("weak", "weak")

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.wnet = WeightNet(ctx.n_seen, params.hidden)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # optimisation steps done (ramp)

    def coefficient(self) -> float:
        total = self.hp.rampup_fraction * self.ctx.epochs * self.ctx.steps_per_epoch
        frac = min(int(self.step) / total, 1.0) if total > 0 else 1.0
        return self.hp.w_max * math.exp(-5.0 * (1.0 - frac) ** 2)

    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb, n_seen = self.hp, batch.n_lb, self.ctx.n_seen
        (z1, z2), (_, f2) = self.forward_views(model, batch.views)
        z1, z2 = z1.float(), z2.float()
        z1s, z2s = z1[:, :n_seen], z2[:, :n_seen]
        coef = self.coefficient()

        ce = F.cross_entropy(z1s[:n_lb], batch.y_lb) if n_lb else z1s.sum() * 0
        ell = losses.pi_model_consistency(z1s, z2s)  # [B]
        ell_lb = ell[:n_lb].mean() if n_lb else ell.sum() * 0
        ell_u = ell[n_lb:]
        w = self.wnet(F.softmax(z1s[n_lb:].detach(), dim=1))  # [n_ulb], gradient into the weight net only
        w_det = w.detach()
        norm = w_det.sum()
        loss_u = (ell_u * w_det).sum() / torch.where(norm > 0, norm, torch.ones_like(norm))

        # first-order meta-gradient for the weight net (see the module docstring)
        head = model.head
        if batch.n_ulb > 0 and hp.meta_weight > 0:
            g_sup = torch.autograd.grad(ce, head.weight, retain_graph=True, allow_unused=True)[0]
            if g_sup is None:
                g_sup = torch.zeros_like(head.weight)
            dl_dz = torch.autograd.grad(ell_u.sum(), z2, retain_graph=True)[0][n_lb:]  # [n_ulb, K]
            dz = head_directional_derivative(f2[n_lb:].detach().float(), head.weight.detach().float(),
                                             g_sup.float(), float(head.scale))
            g = (dl_dz * dz).sum(1)  # [n_ulb] = <grad_W CE_lab, grad_W l_i>
            surrogate = meta_surrogate(w, g, hp.meta_weight)
        else:
            surrogate = w.sum() * 0
        loss = ce + coef * (loss_u + ell_lb) + (surrogate - surrogate.detach())
        with torch.no_grad():
            self.step += 1
        return {
            "loss": loss,
            "loss_ce": ce.detach(),
            "loss_ssl_unlabeled": loss_u.detach(),
            "ssl_coef": torch.tensor(coef),
            "weight_mean": w_det.mean() if w_det.numel() else torch.tensor(0.0),
            "weight_std": w_det.std(unbiased=False) if w_det.numel() else torch.tensor(0.0),
        }
