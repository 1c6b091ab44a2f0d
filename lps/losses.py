"""Loss functions of LPS and the OpenSSL baselines, as pure functions on tensors.

Every function here is stateless: it takes tensors (and scalar hyperparameters) and returns a
scalar tensor (a few return per-row terms or the labels a loss of the same family takes; their
docstrings say so). Methods in :mod:`lps.methods` compose them, so an ablation is a weight of 0 or a
switch, never new code. LPS's losses come first, then the baselines' (ORCA / NACH pairwise BCE,
OpenNCD / GCD soft cross-entropy and SupCon, SSC's prototype SupCon, DS3L, RankStats, NACH, SsCL). Equation numbers refer to the LPS paper (``shared/papers/lps_paper.md``,
Ye et al., "Bridging the Gap: Learning Pace Synchronization for Open-World Semi-Supervised
Learning"). Where the authors' released code differs from the paper text, the released code is
followed (see ``shared/REFERENCE.md``) and the docstring says so.

Shape vocabulary: ``N`` rows in a batch, ``K`` classes (seen + novel), ``M`` rows selected by a
confidence mask, ``D`` the width of the vectors compared by a contrastive loss (LPS compares
*logits*, so ``D == K`` there).

Empty batches (``N == 0`` / ``M == 0``) return ``0`` built from the inputs (``x.sum() * 0``), so
the result stays connected to the autograd graph and ``backward()`` never fails.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kl_divergence",
    "estimate_class_distribution",
    "adaptive_margins",
    "margin_cross_entropy",
    "adaptive_margin_loss",
    "pseudo_label_contrastive_loss",
    "unsupervised_contrastive_loss",
    "entropy_regularizer",
    "pairwise_bce_loss",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(x: Tensor) -> Tensor:
    """Half-precision inputs are computed in float32 (log of a 1e-8 clamp underflows in fp16)."""
    return x.float() if x.dtype in _LOW_PRECISION else x


def _zero_like_graph(*tensors: Tensor) -> Tensor:
    """A scalar 0 that is connected to the autograd graph of ``tensors`` (empty-batch result)."""
    out = tensors[0].sum() * 0
    for t in tensors[1:]:
        out = out + t.sum() * 0
    return out


def _check_rows(name: str, x: Tensor, ndim: int) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")


def _check_targets(logits: Tensor, targets: Tensor) -> None:
    _check_rows("logits", logits, 2)
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must have shape [N] = [{logits.shape[0]}] to match logits "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"targets must be an integer (class index) tensor, got {targets.dtype}")


def _check_weights(weights: Tensor | None, n: int) -> None:
    if weights is not None and (weights.dim() != 1 or weights.shape[0] != n):
        raise ValueError(f"weights must have shape [N] = [{n}], got {tuple(weights.shape)}")


# --------------------------------------------------------------------------------------------
# Class distribution and adaptive margins (LPS Eq. (3)-(5))
# --------------------------------------------------------------------------------------------


def kl_divergence(p: Tensor, q: Tensor, eps: float = 1e-8) -> Tensor:
    """Kullback-Leibler divergence ``KL(p || q) = sum_k p_k log(p_k / q_k)``.

    Used by LPS Eq. (3) (the margin scale). Both arguments are clamped to ``eps`` inside the
    logarithm, so a zero entry of ``q`` gives a large finite value instead of ``inf`` and a
    zero entry of ``p`` contributes 0.

    Args:
        p: ``[K]`` probability vector.
        q: ``[K]`` probability vector.
        eps: lower clamp inside the logarithms.

    Returns:
        ``[]`` scalar, in the dtype of ``p`` (half precision is computed in float32).
    """
    if p.shape != q.shape or p.dim() != 1:
        raise ValueError(f"p and q must both have shape [K], got {tuple(p.shape)} and {tuple(q.shape)}")
    p32, q32 = _upcast(p), _upcast(q).to(_upcast(p).dtype)
    out = (p32 * (p32.clamp_min(eps).log() - q32.clamp_min(eps).log())).sum()
    return out.to(p.dtype)


def estimate_class_distribution(probs: Tensor, mask: Tensor) -> Tensor:
    """Estimated class distribution ``pi_hat`` of LPS Eq. (4).

    ``pi_hat = Normalize(sum_{i: mask_i} probs_i)``: the column sums of the *soft* predicted
    probabilities of the selected rows, normalised to sum to one. In the released code the
    selected rows are the labeled rows (their predicted probabilities, not one-hot labels) plus
    the confident unlabeled rows; the caller builds ``mask`` accordingly. A float mask weights
    the rows (``sum_i mask_i probs_i``).

    If no row is selected (or the selected rows carry no mass) the estimate is the uniform
    distribution ``1/K``: with nothing to measure, the prior is returned, which makes the
    adaptive margins of :func:`adaptive_margins` zero. The function is differentiable in
    ``probs``; callers pass detached probabilities (the released code does) and
    :func:`adaptive_margins` detaches anyway.

    Args:
        probs: ``[N, K]`` row-wise probabilities (softmax outputs).
        mask: ``[N]`` bool or float selection of the rows to count.

    Returns:
        ``[K]`` probability vector (non-negative, sums to one), dtype of ``probs``.
    """
    _check_rows("probs", probs, 2)
    if mask.dim() != 1 or mask.shape[0] != probs.shape[0]:
        raise ValueError(
            f"mask must have shape [N] = [{probs.shape[0]}] to match probs {tuple(probs.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    num_classes = probs.shape[1]
    if num_classes == 0:
        raise ValueError("probs must have at least one class column")
    weights = mask.to(device=probs.device, dtype=probs.dtype)
    sums = (weights.unsqueeze(1) * probs).sum(0)  # [K]
    total = sums.sum()
    uniform = torch.full_like(sums, 1.0 / num_classes)
    # torch.where (no Python branch on a tensor value): no host sync on accelerators.
    return torch.where(total > 0, sums / total.clamp_min(torch.finfo(sums.dtype).tiny), uniform)


def adaptive_margins(pi_hat: Tensor, C: float = 10.0, kl: str = "code") -> Tensor:
    """Class-specific margins of LPS Eq. (3), as released.

    ``s = KL(u || pi_hat)`` with ``u`` the uniform distribution over all ``K`` classes, and
    ``m_j = s * C * pi_hat_j / max(pi_hat)``. The margins are *added* to the target logit by
    :func:`margin_cross_entropy` (``z_y + m_y``), which makes the over-predicted classes easier
    to fit, i.e. a negative margin that slows their learning.

    Paper vs. released code: the paper writes ``Delta_j = -KL(pi_hat || pi) * pi_hat_j /
    max(pi_hat) * C`` and ``z_y - Delta_y`` (same sign as here) with ``pi`` the uniform prior;
    the released code swaps the KL arguments to ``KL(u || pi_hat)``. ``kl="code"`` (default) uses
    the released form, ``kl="paper"`` uses ``KL(pi_hat || u)``. The difference matters when some
    classes are never predicted: ``KL(u || pi_hat)`` is unbounded as ``pi_hat_j -> 0`` (margins far
    beyond the cosine head's logit range of +-scale switch the supervised loss off), whereas
    ``KL(pi_hat || u) <= log K``.

    The margins are detached: no gradient flows into ``pi_hat`` through them.

    Args:
        pi_hat: ``[K]`` estimated class distribution (see :func:`estimate_class_distribution`).
        C: maximum-margin scale (paper: 10). ``C = 0`` gives all-zero margins (plain CE).

    Returns:
        ``[K]`` non-negative margins, detached, dtype of ``pi_hat``.
    """
    if pi_hat.dim() != 1 or pi_hat.shape[0] == 0:
        raise ValueError(f"pi_hat must have shape [K] with K >= 1, got {tuple(pi_hat.shape)}")
    pi_hat = pi_hat.detach()
    uniform = torch.full_like(pi_hat, 1.0 / pi_hat.shape[0])
    if kl == "code":
        s = kl_divergence(uniform, pi_hat)  # scalar, >= 0
    elif kl == "paper":
        s = kl_divergence(pi_hat, uniform)
    else:
        raise ValueError(f"kl must be 'code' or 'paper', got {kl!r}")
    max_pi = pi_hat.max().clamp_min(torch.finfo(_upcast(pi_hat).dtype).tiny)
    return (s * C * pi_hat / max_pi).detach()


def margin_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    margins: Tensor | float,
    weights: Tensor | None = None,
) -> Tensor:
    """Cross-entropy with an additive shift ``m_y`` on the target logit.

    ``ce_i = -log( exp(z_{i,y_i} + m_{y_i}) / (exp(z_{i,y_i} + m_{y_i}) + sum_{j != y_i} exp(z_ij)) )``

    Shared helper of LPS Eq. (3) (``margins`` = :func:`adaptive_margins`) and ORCA's
    uncertainty-adaptive margin (a scalar, ``10 * min(u_bar, 0.5)`` in the released ORCA code,
    which adds to the target logit: a negative margin). Sign convention: a positive shift makes
    the target easier (lower loss); the classical large-margin loss would pass a negative one.

    Reduction: ``sum_i weights_i * ce_i / N`` (``weights=None`` means all ones, i.e. the mean).
    With ``weights`` a 0/1 confidence mask this is LPS Eq. (5)'s ``1/|B_u| sum I(.) l_AM``:
    the sum over the selected rows divided by *all* rows.

    Args:
        logits: ``[N, K]``.
        targets: ``[N]`` integer class indices.
        margins: ``[K]`` per-class shift, or a Python/0-d scalar for all classes.
        weights: optional ``[N]`` per-row weights (bool or float).

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when ``N == 0``.
    """
    _check_targets(logits, targets)
    n, num_classes = logits.shape
    _check_weights(weights, n)
    if n == 0:
        return _zero_like_graph(logits)
    targets = targets.long()
    if isinstance(margins, Tensor) and margins.dim() > 0:
        if margins.shape != (num_classes,):
            raise ValueError(
                f"margins must have shape [K] = [{num_classes}] or be a scalar, got {tuple(margins.shape)}"
            )
        shift = margins.to(device=logits.device, dtype=logits.dtype)[targets]  # [N]
    else:
        shift = torch.as_tensor(margins, device=logits.device, dtype=logits.dtype).expand(n)
    one_hot = F.one_hot(targets, num_classes).to(logits.dtype)  # [N, K]
    shifted = logits + one_hot * shift.unsqueeze(1)
    ce = F.cross_entropy(shifted, targets, reduction="none")  # [N]
    if weights is None:
        return ce.mean()
    return (weights.to(device=ce.device, dtype=ce.dtype) * ce).sum() / n


def adaptive_margin_loss(
    logits: Tensor,
    targets: Tensor,
    pi_hat: Tensor,
    C: float = 10.0,
    weights: Tensor | None = None,
    kl: str = "code",
) -> Tensor:
    """Adaptive margin loss ``l_AM`` of LPS Eq. (3), reduced as one term of Eq. (5).

    The target logit becomes ``z_y + m_y`` with ``m = adaptive_margins(pi_hat, C)`` (released
    code: ``s = KL(u || pi_hat)``, see :func:`adaptive_margins`), then cross-entropy per row;
    the result is ``sum_i weights_i * ce_i / N`` (mean when ``weights`` is None).

    In LPS this is called twice: labeled rows of weak view 1 with their labels (mean), and
    all unlabeled rows of the strong view with their pseudo-labels and ``weights`` = the
    confidence mask (normalised by all unlabeled rows, as in the paper and the released code).
    ``C = 0`` gives plain cross-entropy (the "w/o L_AM" ablation, Table 4).

    Args:
        logits: ``[N, K]``.
        targets: ``[N]`` integer labels or pseudo-labels.
        pi_hat: ``[K]`` estimated class distribution (Eq. (4)).
        C: maximum-margin scale (paper: 10).
        weights: optional ``[N]`` per-row weights, e.g. the confidence mask.
        kl: ``"code"`` or ``"paper"`` form of the KL term (see :func:`adaptive_margins`).

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when ``N == 0``.
    """
    if pi_hat.dim() != 1 or (logits.dim() == 2 and pi_hat.shape[0] != logits.shape[1]):
        raise ValueError(f"pi_hat must have shape [K] = [{logits.shape[-1]}], got {tuple(pi_hat.shape)}")
    margins = adaptive_margins(pi_hat, C, kl)
    return margin_cross_entropy(logits, targets, margins, weights)


# --------------------------------------------------------------------------------------------
# Contrastive losses (LPS Eq. (6) and (7))
# --------------------------------------------------------------------------------------------


def _cosine_similarity_logits(z_a: Tensor, z_b: Tensor, tau: float) -> Tensor:
    """``[2M, 2M]`` cosine similarities / tau of the stacked views, self-similarity set to -inf."""
    feats = F.normalize(_upcast(torch.cat([z_a, z_b], dim=0)), dim=1)  # [2M, D]
    sim = feats @ feats.T / tau
    eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    return sim.masked_fill(eye, float("-inf"))


def _check_views(z_a: Tensor, z_b: Tensor, tau: float) -> None:
    _check_rows("z_a", z_a, 2)
    if z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a and z_b must have the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")


def pseudo_label_contrastive_loss(z_a: Tensor, z_b: Tensor, labels: Tensor, tau: float = 0.4) -> Tensor:
    """Pseudo-label contrastive clustering ``L_PC`` of LPS Eq. (6), as released.

    The ``2M`` rows ``cat(z_a, z_b)`` (two views of the ``M`` labeled and confident unlabeled
    samples; LPS passes the *logits* of weak view 2 and strong view 3) are L2-normalised and
    compared by cosine similarity. For anchor ``i`` the positives ``P(i)`` are all other rows
    with the same (true or pseudo) label, including the other view of itself, and ``A(i)`` is
    every row but ``i``:

        ``l_i = -log( (1/|P(i)|) * sum_{p in P(i)} exp(s_ip / tau) / sum_{a in A(i)} exp(s_ia / tau) )``

    and ``L_PC = mean_i l_i`` over the ``2M`` anchors. This is the log of the *mean* positive
    ratio, as in Eq. (6) and the released code, not SupCon's mean of log-ratios. Every anchor
    has at least one positive (its other view), so the loss is finite; for a class with a
    single sample that is the only positive. Computed with ``logsumexp`` in log space.

    Args:
        z_a: ``[M, D]`` first view.
        z_b: ``[M, D]`` second view, row ``i`` is the same sample as ``z_a[i]``.
        labels: ``[M]`` labels / pseudo-labels (any comparable dtype).
        tau: temperature (paper: 0.4).

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when ``M == 0`` (no confident sample).
    """
    _check_views(z_a, z_b, tau)
    if labels.dim() != 1 or labels.shape[0] != z_a.shape[0]:
        raise ValueError(f"labels must have shape [M] = [{z_a.shape[0]}], got {tuple(labels.shape)}")
    m = z_a.shape[0]
    if m == 0:
        return _zero_like_graph(z_a, z_b)
    sim = _cosine_similarity_logits(z_a, z_b, tau)  # [2M, 2M], diagonal -inf
    labels2 = torch.cat([labels, labels]).to(sim.device)
    positive = labels2.unsqueeze(0) == labels2.unsqueeze(1)
    positive.fill_diagonal_(False)  # [2M, 2M]
    log_denominator = torch.logsumexp(sim, dim=1)  # over all rows != self
    log_numerator = torch.logsumexp(sim.masked_fill(~positive, float("-inf")), dim=1)
    n_positive = positive.sum(1).to(sim.dtype)  # >= 1 (the other view)
    loss = -(log_numerator - log_denominator - n_positive.log())
    return loss.mean().to(z_a.dtype)


def unsupervised_contrastive_loss(
    z_a: Tensor,
    z_b: Tensor,
    tau: float = 0.4,
    anchor_mask: Tensor | None = None,
) -> Tensor:
    """Unsupervised contrastive loss ``L_UC`` of LPS Eq. (7) / SimCLR's NT-Xent.

    The ``2N`` rows ``cat(z_a, z_b)`` are L2-normalised; for anchor ``i`` the positive is the
    other view of the same sample and the denominator runs over all ``2N - 1`` other rows:

        ``l_i = -log( exp(s_{i,pos(i)} / tau) / sum_{a != i} exp(s_ia / tau) )``

    Released LPS code: the denominators always run over the *whole* batch (not only the
    low-confidence set ``B_u'`` of the paper's ``A(x_j)``); only anchors whose sample has
    ``anchor_mask`` True (LPS: mask 0, the low-confidence rows) contribute, and the sum is
    divided by all ``2N`` rows, zeros included (the paper divides by ``|B_u'|``).

    With ``anchor_mask=None`` every anchor contributes and this is plain SimCLR NT-Xent
    (used for pretraining).

    Args:
        z_a: ``[N, D]`` first view.
        z_b: ``[N, D]`` second view.
        tau: temperature (paper: 0.4).
        anchor_mask: optional ``[N]`` bool/float, which samples' anchors (both views) count.

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when ``N == 0``.
    """
    _check_views(z_a, z_b, tau)
    n = z_a.shape[0]
    if anchor_mask is not None and (anchor_mask.dim() != 1 or anchor_mask.shape[0] != n):
        raise ValueError(f"anchor_mask must have shape [N] = [{n}], got {tuple(anchor_mask.shape)}")
    if n == 0:
        return _zero_like_graph(z_a, z_b)
    sim = _cosine_similarity_logits(z_a, z_b, tau)  # [2N, 2N], diagonal -inf
    idx = torch.arange(2 * n, device=sim.device)
    positive_idx = (idx + n) % (2 * n)
    loss = torch.logsumexp(sim, dim=1) - sim[idx, positive_idx]  # [2N]
    if anchor_mask is None:
        return loss.mean().to(z_a.dtype)
    weights = anchor_mask.to(device=sim.device, dtype=sim.dtype)
    weights = torch.cat([weights, weights])
    return ((weights * loss).sum() / (2 * n)).to(z_a.dtype)


# --------------------------------------------------------------------------------------------
# Regularisers and the ORCA / NACH pairwise objective
# --------------------------------------------------------------------------------------------


def entropy_regularizer(logits: Tensor, eps: float = 1e-8) -> Tensor:
    """Maximum-entropy regulariser ``R_Entropy`` of LPS Eq. (8) (also ORCA, NACH).

    Returns ``-H(p_bar) = sum_k p_bar_k log p_bar_k`` with ``p_bar = mean_n softmax(logits_n)``
    (the log argument clamped at ``eps``, as released). It is to be *minimised*: the minimum
    ``-log K`` is reached when the mean prediction is uniform, which keeps the model from
    assigning every sample to a few classes. The paper describes it as a KL to the uniform
    prior; ``KL(p_bar || u) = -H(p_bar) + log K`` differs only by a constant.

    Args:
        logits: ``[N, K]``.
        eps: lower clamp inside the logarithm.

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when ``N == 0``.
    """
    _check_rows("logits", logits, 2)
    if logits.shape[0] == 0:
        return _zero_like_graph(logits)
    p_bar = F.softmax(_upcast(logits), dim=1).mean(0)  # [K]
    return (p_bar * p_bar.clamp_min(eps).log()).sum().to(logits.dtype)


def pairwise_bce_loss(prob_a: Tensor, prob_b_pos: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise objective of ORCA / NACH (binary cross-entropy on pair similarity).

    ``pos_sim_i = <prob_a_i, prob_b_pos_i>`` is the probability that anchor ``i`` (view 1) and
    its positive partner (view 2 of a same-label labeled sample or of the nearest neighbour)
    fall in the same class; the loss is ``BCE(pos_sim, 1) = mean_i -log(pos_sim_i)``.
    ``pos_sim`` is clamped to ``[eps, 1]`` (``nn.BCELoss`` in the released code clamps the log
    at -100 instead; both only matter for degenerate pairs). Not part of LPS.

    Args:
        prob_a: ``[N, K]`` softmax probabilities of the anchors.
        prob_b_pos: ``[N, K]`` softmax probabilities of their positives.
        eps: lower clamp of ``pos_sim``.

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when ``N == 0``.
    """
    _check_rows("prob_a", prob_a, 2)
    if prob_a.shape != prob_b_pos.shape:
        raise ValueError(
            "prob_a and prob_b_pos must have the same shape, "
            f"got {tuple(prob_a.shape)} and {tuple(prob_b_pos.shape)}"
        )
    if prob_a.shape[0] == 0:
        return _zero_like_graph(prob_a, prob_b_pos)
    pos_sim = (_upcast(prob_a) * _upcast(prob_b_pos)).sum(1)  # [N]
    return -(pos_sim.clamp(eps, 1.0).log().mean()).to(prob_a.dtype)


# --------------------------------------------------------------------------------------------
# baselines' losses: soft cross-entropy and SupCon (OpenNCD, GCD), SSC's prototype SupCon
# --------------------------------------------------------------------------------------------


def soft_cross_entropy(target: Tensor, probs: Tensor, eps: float = 1e-8) -> Tensor:
    """``mean_i sum_g -target_ig * log(probs_ig + eps)`` (OpenNCD's group-level term; both
    arguments keep their gradient, as released). ``0`` connected to the graph for ``N == 0``."""
    if target.shape[0] == 0:
        return target.sum() * 0 + probs.sum() * 0
    return (-target * torch.log(probs + eps)).sum(1).mean()


def supervised_contrastive_loss(z_a: Tensor, z_b: Tensor, labels: Tensor, tau: float = 0.07,
                                base_tau: float | None = None) -> Tensor:
    """Supervised contrastive loss (SupCon, Khosla et al. 2020), as in GCD's released ``SupConLoss``.

    The ``2M`` rows ``cat(z_a, z_b)`` are L2-normalised; for anchor ``i`` the positives ``P(i)``
    are the other rows with the same label (the other view of the sample included) and ``A(i)``
    all rows but ``i``:

        ``l_i = -(tau / base_tau) * (1/|P(i)|) * sum_{p in P(i)} log( exp(s_ip/tau) / sum_{a in A(i)} exp(s_ia/tau) )``

    and the loss is ``mean_i l_i`` over the ``2M`` anchors (mean of log-ratios, unlike LPS's
    ``L_PC``). Every anchor has its other view as a positive.

    Args:
        z_a, z_b: ``[M, D]`` two views of the labeled rows.
        labels: ``[M]`` labels.
        tau: temperature (GCD: 0.07).
        base_tau: ``None`` = ``tau`` (GCD: base temperature 0.07 = tau, factor 1).

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when ``M == 0``.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"z_a and z_b must both be [M, D], got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    m = z_a.shape[0]
    if m == 0:
        return z_a.sum() * 0 + z_b.sum() * 0
    feats = F.normalize(torch.cat([z_a, z_b]).float(), dim=1)  # [2M, D]
    sim = feats @ feats.T / tau
    eye = torch.eye(2 * m, dtype=torch.bool, device=sim.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    lab2 = torch.cat([labels, labels]).to(sim.device)
    positive = (lab2.unsqueeze(0) == lab2.unsqueeze(1)) & ~eye
    mean_log_prob_pos = (log_prob * positive).sum(1) / positive.sum(1)
    factor = tau / (tau if base_tau is None else base_tau)
    return -(factor * mean_log_prob_pos).mean()


def unique_unconfident_labels(pseudo_labels: Tensor, confident: Tensor, offset: int) -> Tensor:
    """Labels for SSC's unified loss: a confident row keeps its pseudo-label, unconfident row ``i``
    gets the unique label ``offset + i`` (SSC, Sec. 3.1: ``y_u_down``, labels shifted past the
    ``K`` class labels), so its only positives are its own other views.

    Args:
        pseudo_labels: ``[N]`` integer pseudo-labels (``< offset``).
        confident: ``[N]`` bool.
        offset: the number of class labels (no class label may be ``>= offset``).

    Returns:
        ``[N]`` long labels.
    """
    if pseudo_labels.shape != confident.shape or pseudo_labels.dim() != 1:
        raise ValueError(f"pseudo_labels and confident must both be [N], got {tuple(pseudo_labels.shape)} "
                         f"and {tuple(confident.shape)}")
    unique = offset + torch.arange(pseudo_labels.shape[0], device=pseudo_labels.device)
    return torch.where(confident.bool(), pseudo_labels.long(), unique)


def prototype_supcon_loss(emb: Tensor, labels: Tensor, prototypes: Tensor, proto_labels: Tensor,
                          temperature: float) -> Tensor:
    """SSC's unified semi-supervised contrastive loss (Gauffre et al. 2024, Sec. 3.1): the
    supervised contrastive loss (SupCon, Khosla et al. 2020, ``L_out``) over the concatenation of
    sample embeddings and class prototypes.

    Rows ``Z = [normalize(emb); normalize(prototypes)]`` with labels ``[labels; proto_labels]``
    (labeled rows: true labels; confident unlabeled rows: pseudo-labels; unconfident rows: a
    unique label per sample shared by its views, see :func:`unique_unconfident_labels`). With
    ``s_ia = <z_i, z_a> / T``, ``A(i)`` every row but ``i`` and ``P(i)`` the rows of ``A(i)`` with
    the label of ``i``:

        ``l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) )``

    averaged over the anchors with ``|P(i)| >= 1`` (prototypes are anchors too, which is how they
    are trained; a row without positive only serves as a negative). A class prototype is a
    positive of every sample of its class, which recovers the cross-entropy of a cosine
    classifier (SSC Sec. 3.3).

    Args:
        emb: ``[N, D]`` embeddings (not necessarily normalised).
        labels: ``[N]`` integer labels.
        prototypes: ``[C, D]`` class prototypes.
        proto_labels: ``[C]`` their labels.
        temperature: ``T > 0``.

    Returns:
        ``[]`` scalar; ``0`` connected to the graph when no row has a positive.
    """
    if emb.dim() != 2 or prototypes.dim() != 2 or emb.shape[1] != prototypes.shape[1]:
        raise ValueError(f"emb [N, D] and prototypes [C, D] must share D, got {tuple(emb.shape)}, "
                         f"{tuple(prototypes.shape)}")
    if labels.shape != emb.shape[:1] or proto_labels.shape != prototypes.shape[:1]:
        raise ValueError("labels must be [N] and proto_labels [C]")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(torch.cat([emb, prototypes.to(emb.dtype)]).float(), dim=1)
    y = torch.cat([labels.long(), proto_labels.long().to(labels.device)])
    n = z.shape[0]
    sim = (z @ z.T) / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    positive = (y.unsqueeze(0) == y.unsqueeze(1)) & ~eye
    n_pos = positive.sum(1)
    anchors = n_pos > 0
    if not anchors.any():
        return emb.sum() * 0 + prototypes.sum() * 0
    per_anchor = -(log_prob.masked_fill(~positive, 0.0).sum(1)[anchors]) / n_pos[anchors]
    return per_anchor.mean().to(emb.dtype)


# --------------------------------------------------------------------------------------------
# further baselines: DS3L, RankStats, NACH, SsCL
# --------------------------------------------------------------------------------------------


def pi_model_consistency(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Per-row ``mean_k (softmax(logits_b) - softmax(logits_a).detach())^2`` (DS3L released
    ``MSE_Loss``: target the detached first pass). Returns ``[N]``."""
    return (F.softmax(logits_b, dim=1) - F.softmax(logits_a.detach(), dim=1)).pow(2).mean(1)


def pairwise_bce_with_labels(prob_a: torch.Tensor, prob_b: torch.Tensor, same: torch.Tensor,
                             eps: float = 1e-7) -> torch.Tensor:
    """AutoNovel's pairwise BCE over all pairs: ``P_ab = <prob_a[a], prob_b[b]>``; the loss is the
    mean over the ``N x N`` pairs of ``-log(P_ab + eps)`` where ``same[a, b]`` and
    ``-log(1 - P_ab + eps)`` elsewhere (released ``BCE`` with ``PairEnum``).
    ``prob_a, prob_b [N, K]``, ``same [N, N]`` bool. ``0`` (in the graph) for ``N == 0``."""
    if prob_a.shape != prob_b.shape or same.shape != (prob_a.shape[0], prob_a.shape[0]):
        raise ValueError(f"prob_a, prob_b [N, K] and same [N, N] do not match: {tuple(prob_a.shape)}, "
                         f"{tuple(prob_b.shape)}, {tuple(same.shape)}")
    if prob_a.shape[0] == 0:
        return prob_a.sum() * 0 + prob_b.sum() * 0
    p = prob_a @ prob_b.T  # [N, N]
    p = torch.where(same, p, 1 - p)
    return -(p + eps).log().mean()


def distribution_alignment_loss(logits: torch.Tensor, targets: torch.Tensor, pi_hat: torch.Tensor,
                                weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """NACH's distribution alignment: ``sum_i w_i * CE(z_i + log(pi_hat / u), y_i) / N``.

    Every logit is shifted by ``log(pi_hat_k * K)`` (``u = 1/K``): classes the model already
    over-predicts get a larger logit, so their cross-entropy (and gradient) shrinks.

    Args:
        logits: ``[N, K]`` (strong view).
        targets: ``[N]`` pseudo-labels / labels.
        pi_hat: ``[K]`` estimated class distribution (detached).
        weights: ``[N]`` confidence mask (bool or float).
        eps: clamp of ``pi_hat`` inside the log.

    Returns:
        ``[]`` scalar; ``0`` connected to the graph for ``N == 0``.
    """
    n, k = logits.shape
    if n == 0:
        return logits.sum() * 0
    shift = torch.log(pi_hat.detach().float().clamp_min(eps) * k)  # log(pi_hat / u)
    ce = F.cross_entropy(logits.float() + shift, targets.long(), reduction="none")
    return (weights.to(ce.dtype) * ce).sum() / n


def sscl_contrastive_loss(sim: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                          alpha: torch.Tensor, gamma: float, margin: float) -> torch.Tensor:
    """SsCL's multi-positive contrastive loss, Eq. (5) / Appendix A.1, mean over queries:

        ``l_i = log(1 + sum_{n} exp(gamma (s_in + m)) * sum_{p} exp(-gamma a_ip s_ip))``
             ``= softplus(LSE_n(gamma (s_in + m)) + LSE_p(-gamma a_ip s_ip))``

    Args:
        sim: ``[Q, M]`` cosine similarities of queries to keys.
        positive, negative: ``[Q, M]`` bool masks (disjoint).
        alpha: ``[Q, M]`` self-paced weights of the positives (ignored elsewhere).
        gamma: scale (1 / temperature); margin: ``m``.

    Returns:
        ``[]`` mean over the queries that have at least one positive and one negative; ``0``
        (in the graph) if none has.
    """
    if not (sim.shape == positive.shape == negative.shape == alpha.shape):
        raise ValueError("sim, positive, negative and alpha must all be [Q, M]")
    valid = positive.any(1) & negative.any(1)
    if not valid.any():
        return sim.sum() * 0
    s = sim[valid].float()
    neg = torch.logsumexp((gamma * (s + margin)).masked_fill(~negative[valid], float("-inf")), dim=1)
    pos = torch.logsumexp((-gamma * alpha[valid].float() * s).masked_fill(~positive[valid], float("-inf")), dim=1)
    return F.softplus(neg + pos).mean().to(sim.dtype)

