"""Heads beside the model's cosine classifier: OpenNCD's projector MLP and prototype /
prototype-group probabilities, and :func:`freeze_classifier_head` for the methods that have no
classifier (OpenNCD, GCD).

Shapes: ``N`` rows; ``D`` feature width; ``P`` prototypes; ``G`` prototype groups.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["freeze_classifier_head", "ProjectorMLP", "prototype_probabilities", "group_probabilities", "group_prior"]


def freeze_classifier_head(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on the model's cosine classifier (``model.head``).

    OpenNCD (prototypes) and GCD (k-means) do not use the K-way head, so it would receive no
    gradient; frozen, the optimiser skips it (no weight decay either) and every trainable
    parameter has a gradient."""
    head = getattr(model, "head", None)
    if head is not None:
        for p in head.parameters():
            p.requires_grad_(False)


class ProjectorMLP(nn.Module):
    """OpenNCD's projector: ``Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, out)``
    (released ``models/resnet.py``: 512 -> 512 -> BN -> ReLU -> 32), Kaiming-normal
    (fan_out, relu) weights and zero biases as released."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def prototype_probabilities(z: Tensor, prototypes: Tensor, tau: float) -> Tensor:
    """``p = softmax(normalize(z) @ normalize(prototypes).T / tau)``: ``[N, P]`` (OpenNCD)."""
    z = F.normalize(z.float(), dim=1)
    c = F.normalize(prototypes.float(), dim=1)
    return F.softmax(z @ c.T / tau, dim=1)


def group_probabilities(p: Tensor, proto_group: Tensor, n_groups: int) -> Tensor:
    """``q[:, g] = sum_{j: proto_group[j] == g} p[:, j]``: ``[N, G]`` (OpenNCD's
    ``p @ group_mask.T`` with ``group_mask[g, j] = 1`` iff prototype ``j`` is in group ``g``)."""
    membership = F.one_hot(proto_group.long(), n_groups).to(p.dtype)  # [P, G]
    return p @ membership


def group_prior(proto_group: Tensor, n_groups: int) -> Tensor:
    """OpenNCD's prototype prior ``[P]``: every non-empty group gets equal mass, split equally
    among its prototypes (released: ``normalize_L1(normalize_L1(group_mask, dim=1).sum(0))``)."""
    sizes = torch.bincount(proto_group.long(), minlength=n_groups).float()  # [G]
    per_proto = 1.0 / sizes[proto_group.long()]  # [P]
    return per_proto / per_proto.sum()
