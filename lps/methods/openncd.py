"""OpenNCD (Liu et al., "Open-World Semi-Supervised Novel Class Discovery", IJCAI 2023), as
released (``LiuJMzzZ/OpenNCD``, ``main.py``, ``models/model.py``, ``utils.py``; REFERENCE.md
"OpenNCD"), with the number of classes known (the paper's Table-1 setting: spectral grouping).

OpenNCD is an open-world method by design. It has no K-way classifier: the backbone features go
through a projector MLP (512 -> 512 -> BN -> ReLU -> 32) and are compared with ``P`` learnable
prototypes (``protos_per_class`` x K), ``p = softmax(cos(z, c) / tau)`` with ``tau = 0.1``.
Prototypes are grouped into K groups; a group's probability is the sum over its prototypes,
``q = p @ group_mask.T``. Two weak views per row. Losses:

- prototype pairwise term: ``-log <p1_i, p2_partner(i)>`` with ORCA's partners (labeled: random
  same-label row; unlabeled: nearest neighbour), searched on the normalised *projections* of v1;
- group-level symmetric cross-entropy between the views, ``(CE(q2 -> q1) + CE(q1 -> q2)) / 2``;
- cross-entropy of the labeled rows over the group probabilities (seen class ``c`` = group ``c``
  after matching), weight 0 during the warm-up epochs;
- ``w_prior_kl * KL(mean_batch p1 || prior)`` (released: ``x 10``), the prior giving every group
  equal mass, split equally among its prototypes.

Total: ``proto + group + w_prior_kl * KL + w_cls * CE`` (``w_cls`` = 0 while ``epoch < warmup_epochs``).

Grouping: at the start of each epoch ``warmup_epochs <= e < group_until_epoch`` the prototypes
are regrouped. For every image, its ``graph_neighbours`` most similar prototypes are marked;
prototypes ``i, j`` get the edge weight ``C_ij / min(C_ii, C_jj)`` (``C`` = co-occurrence counts;
released ``reknn_graph(mode="min")``), mixed with the prototype similarity
``graph_edge_weight * edge + (1 - graph_edge_weight) * (cos(c_i, c_j) + 1) / 2``, and
``sklearn.cluster.SpectralClustering(K, affinity="precomputed", assign_labels="kmeans")`` splits
the prototypes into K groups. The groups are then matched to the seen classes by the Hungarian
algorithm on (label x group of the nearest prototype) counts of the labeled images: the group
matched to seen class ``c`` gets index ``c``, the others ``n_seen, n_seen + 1, ...``. Before the
first grouping every prototype is its own group. Prediction: the group of the nearest prototype
(before the first grouping: the prototype index, i.e. ``P`` clusters).

The grouping state (``proto_group``, one group index per prototype) and the statistics it is
computed from are buffers, so they are checkpointed.

Departures from the released code:

- The grouping statistics (co-occurrence counts and the labeled label-by-prototype counts) are
  accumulated from the v1 projections of the previous epoch's training batches (train-mode
  BatchNorm, weights changing through the epoch); the released code re-embeds, at the start of
  the epoch in eval mode, the labeled images and as many unlabeled ones as an epoch draws. The
  image sets are the same in size; the features are one epoch's optimisation apart at most.
- Group-to-class matching runs on the full ``[n_seen, K]`` count matrix; the released code
  builds it over the groups that occur among the labeled predictions only and then indexes the
  group list by the column position, which mislabels groups when a group id is missing.
- Grouping is redone every epoch of the window (as in the newer released ``main.py`` and
  REFERENCE.md: until epoch 70); an older release accepts a regrouping only on odd epochs when
  the labeled accuracy improves, and stops at epoch 20 when K is known.
- ``graph_neighbours`` and ``graph_edge_weight`` default to the released per-dataset values,
  chosen by class count: 3 and 1.0 for K <= 10 (CIFAR-10), 10 and 0.9 otherwise (CIFAR-100).
  ``min_count`` (0 in the release: every prototype is kept) is not exposed.
- The released ResNet detaches layer3's output; the project's ``model.freeze=layer4`` policy
  freezes the same layers. The model's cosine head is unused and frozen
  (:func:`lps.methods.heads.freeze_classifier_head`); the trainer's ``pi_hat`` /
  ``kl_pi_hat_pi`` metrics are therefore not meaningful for this method.

Optimisation (``published_optim``, the starting point of every OpenNCD config; any ``optim.*``
key set by a config or experiment set wins): the released runs use Adam (betas 0.9, 0.999, no
weight decay) at lr 2e-3 for the trainable backbone layers, the projector and the prototypes,
batch 512, 150 epochs, MultiStep [90, 120] with gamma 0.1. The code released no ImageNet schedule;
the same one is used there (an experiment set's ImageNet ``optim.epochs`` rescales the milestones).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lps import losses
from lps.clustering import map_with_leftovers
from lps.errors import LPSError
from lps.losses import soft_cross_entropy
from lps.methods.base import METHODS, Batch, Method, check_range
from lps.methods.heads import (ProjectorMLP, freeze_classifier_head, group_prior, group_probabilities,
                               prototype_probabilities)
from lps.methods.pairing import pair_partners


@dataclass
class OpenNCDParams:
    protos_per_class: int = 5  # prototypes per class (released main.py: n_proto 50 for CIFAR-10, 500 for CIFAR-100)
    latent_dim: int = 32  # projector output width (released main.py --ldim 32)
    proj_hidden_dim: int = 512  # projector hidden width (released models/resnet.py hidden_mlp=512)
    tau: float = 0.1  # prototype softmax temperature (released main.py --tau 0.1)
    graph_neighbours: int | None = None  # prototypes marked per image; None: 3 if K <= 10 else 10 (released --nn)
    graph_edge_weight: float | None = None  # edge vs. prototype-similarity mix; None: 1.0 if K <= 10 else 0.9
    #                                         (released --lamda_graph 1, 0.9 for CIFAR-100)
    warmup_epochs: int = 5  # epochs before the first grouping; CE off meanwhile (released --warm_epoch 5)
    group_until_epoch: int = 70  # last grouping at the start of epoch group_until_epoch - 1 (released --fix_epoch 70)
    w_prior_kl: float = 10.0  # weight of KL(prototype usage || prior) (released: reg[0]=1 times the hard-coded 10)
    w_cls: float = 1.0  # weight of the labeled group cross-entropy after warm-up (released: reg[1]=1)
    spectral_seed: int = 0  # random_state of the spectral clustering (released: seed = 0)

    def validate(self) -> None:
        check_range(self, "protos_per_class", lo=1)
        check_range(self, "latent_dim", lo=1)
        check_range(self, "proj_hidden_dim", lo=1)
        check_range(self, "tau", lo=0, lo_open=True)
        if self.graph_neighbours is not None:
            check_range(self, "graph_neighbours", lo=1)
        if self.graph_edge_weight is not None:
            check_range(self, "graph_edge_weight", lo=0, hi=1)
        check_range(self, "warmup_epochs", lo=0)
        check_range(self, "group_until_epoch", lo=0)
        check_range(self, "w_prior_kl", lo=0)
        check_range(self, "w_cls", lo=0)
        check_range(self, "spectral_seed", lo=0)


# --------------------------------------------------------------------------------------------
# grouping (pure functions)


def cooccurrence_graph(counts: torch.Tensor) -> torch.Tensor:
    """Released ``reknn_graph(mode="min")`` from co-occurrence counts.

    ``counts[i, j]`` = number of images whose top prototypes include both ``i`` and ``j``
    (``counts[i, i]`` = images marking ``i``). Returns ``E[i, j] = counts[i, j] / min(counts[i, i],
    counts[j, j])``, and 0 where ``counts[i, j] == 0``."""
    counts = counts.double()
    d = counts.diagonal()
    denom = torch.minimum(d.unsqueeze(0), d.unsqueeze(1))
    return torch.where(counts > 0, counts / denom.clamp_min(1e-12), torch.zeros_like(counts))


def prototype_affinity(edge: torch.Tensor, prototypes: torch.Tensor, edge_weight: float) -> np.ndarray:
    """Released ``graph_cluster`` affinity: ``w * (sym(E) - diag(E)) + (1 - w) * (cos(c_i, c_j) + 1) / 2``."""
    e = edge.double()
    e = (e + e.T) / 2 - torch.diag(e.diagonal())
    c = F.normalize(prototypes.detach().double(), dim=1)
    attr = (c @ c.T + 1) / 2
    return (edge_weight * e + (1 - edge_weight) * attr).cpu().numpy()


def spectral_groups(affinity: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    """Spectral clustering of the prototypes (released ``graph_cluster(method="spectral")``)."""
    from sklearn.cluster import SpectralClustering

    with warnings.catch_warnings():
        # prototypes no image selected are isolated nodes; sklearn warns and still clusters
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        sc = SpectralClustering(n_clusters=n_groups, affinity="precomputed", assign_labels="kmeans",
                                random_state=seed)
        return sc.fit(affinity).labels_.astype(np.int64)


def match_groups_to_classes(proto_label: np.ndarray, label_proto_counts: np.ndarray, n_groups: int) -> np.ndarray:
    """New group index per prototype: the group matched to seen class ``c`` becomes ``c``.

    Args:
        proto_label: ``[P]`` group id of each prototype (``0 .. n_groups - 1``).
        label_proto_counts: ``[n_seen, P]`` counts of labeled images of class ``c`` whose nearest
            prototype is ``j``.
        n_groups: number of groups (K).

    Returns:
        ``[P]`` remapped group ids: Hungarian matching (maximum agreement) of classes to groups
        on the ``[n_seen, n_groups]`` counts; matched groups take their class's index, the
        others ``n_seen, n_seen + 1, ...`` in increasing order of their old id.
    """
    n_seen = label_proto_counts.shape[0]
    if n_seen > n_groups:
        raise ValueError(f"cannot match {n_seen} seen classes to {n_groups} groups")
    contingency = np.zeros((n_seen, n_groups))
    np.add.at(contingency.T, proto_label, label_proto_counts.T)  # sum prototype columns per group
    return map_with_leftovers(contingency.T)[proto_label]


# --------------------------------------------------------------------------------------------


@METHODS.register("openncd")
class OpenNCD(Method):
    Params = OpenNCDParams
    views = ("weak", "weak")
    published_optim = {kind: {"optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "epochs": 150,
                              "schedule": "multistep", "milestones": [90, 120], "gamma": 0.1}
                       for kind in ("small", "large")}  # released OpenNCD CIFAR scripts

    def __init__(self, params: OpenNCDParams, ctx):
        super().__init__(params, ctx)
        k = ctx.num_classes
        self.n_protos = params.protos_per_class * k
        self.graph_neighbours = params.graph_neighbours or (3 if k <= 10 else 10)
        self.graph_edge_weight = params.graph_edge_weight if params.graph_edge_weight is not None else \
            (1.0 if k <= 10 else 0.9)
        if self.graph_neighbours > self.n_protos:
            raise LPSError(f"hyperparameter 'method.graph_neighbours' ({self.graph_neighbours}) exceeds the number "
                           f"of prototypes ({self.n_protos} = protos_per_class x {k} classes)")
        self.projector = ProjectorMLP(ctx.feat_dim, params.proj_hidden_dim, params.latent_dim)
        self.prototypes = torch.nn.Parameter(torch.randn(self.n_protos, params.latent_dim))  # released: randn
        # grouping state: one group per prototype until the first grouping
        self.register_buffer("proto_group", torch.arange(self.n_protos))
        self.register_buffer("grouped", torch.tensor(False))
        # statistics of the current epoch for the next grouping
        self.register_buffer("cooccurrence", torch.zeros(self.n_protos, self.n_protos))
        self.register_buffer("label_proto_counts", torch.zeros(ctx.n_seen, self.n_protos))

    @property
    def n_groups(self) -> int:
        return self.ctx.num_classes if bool(self.grouped) else self.n_protos

    # ------------------------------------------------------------------ grouping
    def regroup(self) -> bool:
        """Group the prototypes from the accumulated statistics; False if there are none."""
        if float(self.cooccurrence.sum()) == 0:
            return False
        k = self.ctx.num_classes
        affinity = prototype_affinity(cooccurrence_graph(self.cooccurrence), self.prototypes, self.graph_edge_weight)
        labels = spectral_groups(affinity, k, self.hp.spectral_seed)
        new = match_groups_to_classes(labels, self.label_proto_counts.double().cpu().numpy(), k)
        self.proto_group.copy_(torch.as_tensor(new, device=self.proto_group.device))
        self.grouped.fill_(True)
        return True

    def _collecting(self) -> bool:
        """Statistics of epoch e feed the grouping at the start of epoch e + 1."""
        return self.hp.warmup_epochs <= self.epoch + 1 < self.hp.group_until_epoch

    def on_epoch_start(self, epoch, model, unlabeled_probs):
        super().on_epoch_start(epoch, model, unlabeled_probs)
        freeze_classifier_head(model)
        if self.hp.warmup_epochs <= epoch < self.hp.group_until_epoch:
            self.regroup()
        self.cooccurrence.zero_()
        self.label_proto_counts.zero_()

    @torch.no_grad()
    def _accumulate(self, z: torch.Tensor, y_lb: torch.Tensor) -> None:
        """Grouping statistics; called from :meth:`_losses`, so in fp32 under a bf16 autocast too."""
        sims = F.normalize(z.detach().float(), dim=1) @ F.normalize(self.prototypes.detach().float(), dim=1).T
        top = sims.topk(self.graph_neighbours, dim=1).indices  # [N, nn]
        marks = torch.zeros_like(sims).scatter_(1, top, 1.0)  # [N, P]
        self.cooccurrence += marks.T @ marks
        n_lb = y_lb.shape[0]
        if n_lb:
            nearest = sims[:n_lb].argmax(1)
            self.label_proto_counts.index_put_((y_lb.long(), nearest), torch.ones_like(nearest, dtype=sims.dtype),
                                               accumulate=True)

    # ------------------------------------------------------------------ training
    def training_step(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        _, (f1, f2) = self.forward_views(model, batch.views)
        # the projector, the prototype similarities (cos / 0.1) and the group sums in fp32 under a bf16
        # autocast: in bf16 they cost OpenNCD 8.6 points of demo-scale accuracy (README "Precision")
        with torch.autocast(f1.device.type, enabled=False):
            return self._losses(f1.float(), f2.float(), batch)

    def _losses(self, f1: torch.Tensor, f2: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        hp, n_lb = self.hp, batch.n_lb
        h1, h2 = self.projector(f1).float(), self.projector(f2).float()
        p1 = prototype_probabilities(h1, self.prototypes, hp.tau)
        p2 = prototype_probabilities(h2, self.prototypes, hp.tau)
        n_groups = self.n_groups
        q1 = group_probabilities(p1, self.proto_group, n_groups)
        q2 = group_probabilities(p2, self.proto_group, n_groups)

        partner, _, _ = pair_partners(h1, batch.y_lb, batch.generator)
        loss_proto = losses.pairwise_bce_loss(p1, p2[partner])
        loss_group = 0.5 * soft_cross_entropy(q2, q1) + 0.5 * soft_cross_entropy(q1, q2)
        y_onehot = F.one_hot(batch.y_lb.long(), n_groups).to(q1.dtype)
        loss_cls = soft_cross_entropy(y_onehot, q1[:n_lb])
        prior = group_prior(self.proto_group, n_groups)
        loss_kl = losses.kl_divergence(p1.mean(0), prior)
        w_cls = hp.w_cls if self.epoch >= hp.warmup_epochs else 0.0

        if self._collecting():
            self._accumulate(h1, batch.y_lb)
        loss = loss_proto + loss_group + hp.w_prior_kl * loss_kl + w_cls * loss_cls
        return {
            "loss": loss,
            "loss_proto": loss_proto.detach(),
            "loss_group": loss_group.detach(),
            "loss_cls": loss_cls.detach(),
            "loss_prior_kl": loss_kl.detach(),
            "n_groups": torch.tensor(float(n_groups)),
        }

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, logits, feats):
        if feats.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        was_training = self.projector.training
        self.projector.eval()
        try:
            dev = self.prototypes.device
            h = self.projector(feats.to(dev).float())
        finally:
            self.projector.train(was_training)
        sims = F.normalize(h, dim=1) @ F.normalize(self.prototypes.float(), dim=1).T
        return self.proto_group[sims.argmax(1)].cpu().numpy().astype(np.int64)
