"""Reference-formula and property tests for lps.losses.

Every loss is compared against a hand-computed value and/or an independent, loop-based float64
reimplementation written straight from the formula in REFERENCE.md / the LPS paper.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lps.losses import (
    adaptive_margin_loss,
    adaptive_margins,
    entropy_regularizer,
    estimate_class_distribution,
    kl_divergence,
    margin_cross_entropy,
    pairwise_bce_loss,
    pseudo_label_contrastive_loss,
    unsupervised_contrastive_loss,
)

# ---------------------------------------------------------------------------------------------
# independent references (plain Python loops, float64 numpy)
# ---------------------------------------------------------------------------------------------


def _np(x):
    return x.detach().double().numpy()


def _cos(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def ref_margin_ce(logits, targets, margins, weights=None):
    logits, targets = _np(logits), targets.numpy()
    n, k = logits.shape
    margins = np.broadcast_to(np.asarray(margins, dtype=np.float64), (k,))
    total = 0.0
    for i in range(n):
        z = logits[i].copy()
        y = targets[i]
        z[y] += margins[y]
        ce = -(z[y] - math.log(sum(math.exp(v) for v in z)))
        w = 1.0 if weights is None else float(weights[i])
        total += w * ce
    return total / n


def ref_pc_loss(z_a, z_b, labels, tau):
    rows = list(_np(z_a)) + list(_np(z_b))
    labs = list(labels.numpy()) * 2
    n = len(rows)
    losses = []
    for i in range(n):
        pos, den, n_pos = 0.0, 0.0, 0
        for j in range(n):
            if j == i:
                continue
            e = math.exp(_cos(rows[i], rows[j]) / tau)
            den += e
            if labs[j] == labs[i]:
                pos += e
                n_pos += 1
        losses.append(-math.log(pos / den / n_pos))
    return sum(losses) / n


def ref_nt_xent(z_a, z_b, tau, anchor_mask=None):
    rows = list(_np(z_a)) + list(_np(z_b))
    m = len(rows) // 2
    mask = [True] * m if anchor_mask is None else [bool(v) for v in anchor_mask]
    mask = mask * 2
    total = 0.0
    for i in range(2 * m):
        if not mask[i]:
            continue
        p = (i + m) % (2 * m)
        den = sum(math.exp(_cos(rows[i], rows[j]) / tau) for j in range(2 * m) if j != i)
        total += -(_cos(rows[i], rows[p]) / tau - math.log(den))
    return total / (2 * m)


# ---------------------------------------------------------------------------------------------
# kl_divergence / estimate_class_distribution / adaptive_margins
# ---------------------------------------------------------------------------------------------


def test_kl_divergence_matches_formula_and_scipy():
    from scipy.stats import entropy

    p = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    q = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    expected = 0.2 * math.log(2.0) + 0.5 * math.log(0.5 / 0.6) + 0.0
    assert kl_divergence(p, q).item() == pytest.approx(expected, rel=1e-12)
    assert kl_divergence(p, q).item() == pytest.approx(entropy(p.numpy(), q.numpy()), rel=1e-12)
    assert kl_divergence(p, p).item() == pytest.approx(0.0, abs=1e-15)


def test_kl_divergence_is_clamped_for_zeros():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([1.0, 0.0, 0.0])
    value = kl_divergence(p, q)
    assert torch.isfinite(value)
    # 0.5*log(0.5/1) + 0.5*log(0.5/1e-8) ; p=0 entry contributes 0
    assert value.item() == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-8), rel=1e-5)


def test_estimate_class_distribution_soft_sum_over_mask():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], dtype=torch.float64)
    mask = torch.tensor([True, False, True])
    # rows 0 and 2: [1.0, 0.5, 0.5] / 2.0
    expected = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert torch.allclose(estimate_class_distribution(probs, mask), expected)
    assert torch.allclose(estimate_class_distribution(probs, mask.double()), expected)


def test_estimate_class_distribution_empty_mask_is_uniform():
    probs = torch.softmax(torch.randn(5, 4), dim=1)
    pi = estimate_class_distribution(probs, torch.zeros(5, dtype=torch.bool))
    assert torch.allclose(pi, torch.full((4,), 0.25))
    pi_no_rows = estimate_class_distribution(torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool))
    assert torch.allclose(pi_no_rows, torch.full((4,), 0.25))
    # uniform estimate -> zero margins -> plain CE
    assert torch.allclose(adaptive_margins(pi), torch.zeros(4), atol=1e-7)


def test_estimate_class_distribution_rejects_bad_mask():
    with pytest.raises(ValueError, match="mask must have shape"):
        estimate_class_distribution(torch.rand(3, 2), torch.ones(4, dtype=torch.bool))


def test_adaptive_margins_hand_computed_and_detached():
    # u = [0.5, 0.5], pi_hat = [0.8, 0.2]:
    # s = 0.5*ln(0.5/0.8) + 0.5*ln(0.5/0.2) = 0.5*ln(0.625*2.5) = 0.5*ln(25/16) = ln(5/4)
    # m = s * C * pi_hat / max(pi_hat) = ln(1.25) * 10 * [1, 0.25]
    pi_hat = torch.tensor([0.8, 0.2], dtype=torch.float64, requires_grad=True)
    m = adaptive_margins(pi_hat, C=10.0)
    s = math.log(1.25)
    assert m.tolist() == pytest.approx([10 * s, 2.5 * s], rel=1e-10)
    assert not m.requires_grad
    assert torch.all(adaptive_margins(pi_hat, C=0.0) == 0)


def test_adaptive_margins_use_kl_from_uniform_not_paper_direction():
    pi_hat = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    u = torch.full((3,), 1 / 3, dtype=torch.float64)
    released = kl_divergence(u, pi_hat).item() * 1.0 * pi_hat / 0.6
    paper = kl_divergence(pi_hat, u).item() * 1.0 * pi_hat / 0.6
    m = adaptive_margins(pi_hat, C=1.0)
    assert torch.allclose(m, released)
    assert not torch.allclose(m, paper)


# ---------------------------------------------------------------------------------------------
# margin_cross_entropy / adaptive_margin_loss
# ---------------------------------------------------------------------------------------------


def test_adaptive_margin_loss_hand_computed_two_classes():
    # pi_hat = [0.8, 0.2], C = 10 -> m = [10 ln 1.25, 2.5 ln 1.25]  (see test above)
    # logits of both samples are [0, 0]; sample 0 has y=0, sample 1 has y=1.
    #   ce_0 = -log(e^{m0} / (e^{m0} + e^0)) = log(1 + e^{-m0}) = log(1 + 0.8^10)  = log(1.1073741824)
    #        = 0.101992
    #   ce_1 = log(1 + e^{-m1}) = log(1 + 0.8^2.5) = log(1.5724334022) = 0.452624
    # mean = (0.101992 + 0.452624) / 2 = 0.277308
    logits = torch.zeros(2, 2, dtype=torch.float64)
    targets = torch.tensor([0, 1])
    pi_hat = torch.tensor([0.8, 0.2], dtype=torch.float64)
    ce0 = math.log(1 + 0.8**10)
    ce1 = math.log(1 + 0.8**2.5)
    assert ce0 == pytest.approx(0.101992, abs=1e-6)
    assert ce1 == pytest.approx(0.452624, abs=1e-6)
    loss = adaptive_margin_loss(logits, targets, pi_hat, C=10.0)
    assert loss.item() == pytest.approx((ce0 + ce1) / 2, rel=1e-10)
    assert loss.item() == pytest.approx(0.277308, abs=1e-6)
    # weights = confidence mask [1, 0]: sum over selected rows / all rows (N = 2)
    weighted = adaptive_margin_loss(logits, targets, pi_hat, C=10.0, weights=torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(ce0 / 2, rel=1e-10)
    # without margins both would be log 2
    assert adaptive_margin_loss(logits, targets, pi_hat, C=0.0).item() == pytest.approx(math.log(2))


def test_adaptive_margin_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, (7,), generator=g)
    pi_hat = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), 0)
    weights = (torch.rand(7, generator=g) > 0.4).double()
    margins = adaptive_margins(pi_hat, 10.0).numpy()
    for w in (None, weights):
        got = adaptive_margin_loss(logits, targets, pi_hat, 10.0, weights=w).item()
        assert got == pytest.approx(ref_margin_ce(logits, targets, margins, w), rel=1e-10)


def test_c_zero_is_plain_cross_entropy():
    logits = torch.randn(6, 4)
    targets = torch.randint(0, 4, (6,))
    pi_hat = torch.tensor([0.7, 0.1, 0.1, 0.1])
    got = adaptive_margin_loss(logits, targets, pi_hat, C=0.0)
    assert torch.allclose(got, F.cross_entropy(logits, targets))
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    got_w = adaptive_margin_loss(logits, targets, pi_hat, C=0.0, weights=mask)
    expected_w = (F.cross_entropy(logits, targets, reduction="none") * mask).sum() / 6
    assert torch.allclose(got_w, expected_w)


def test_margins_lower_the_loss_most_for_the_over_predicted_class():
    pi_hat = torch.tensor([0.7, 0.2, 0.1])  # class 0 over-predicted
    logits = torch.randn(3, 3)
    plain = F.cross_entropy(logits, torch.arange(3), reduction="none")
    for c in range(3):  # every margin is positive (added to the target logit): lower loss
        row, y = logits[c : c + 1], torch.tensor([c])
        assert adaptive_margin_loss(row, y, pi_hat, C=10.0) < plain[c]
    # with the same logits row for every target, the loss only depends on the margin size:
    # the most over-predicted class gets the largest margin, hence the smallest loss
    same = torch.zeros(1, 3)
    per_class = [adaptive_margin_loss(same, torch.tensor([c]), pi_hat, C=10.0).item() for c in range(3)]
    assert per_class[0] < per_class[1] < per_class[2]


def test_margin_cross_entropy_scalar_margin_orca():
    # ORCA: target logit z_y + 10 * min(u_bar, 0.5); the margin must change the loss.
    logits = torch.randn(5, 4, dtype=torch.float64)
    targets = torch.randint(0, 4, (5,))
    margin = 10 * min(0.3, 0.5)
    got = margin_cross_entropy(logits, targets, margin)
    assert got.item() == pytest.approx(ref_margin_ce(logits, targets, margin), rel=1e-10)
    assert got < F.cross_entropy(logits, targets)
    assert margin_cross_entropy(logits, targets, torch.tensor(margin)).item() == pytest.approx(got.item())
    assert torch.allclose(margin_cross_entropy(logits, targets, 0.0), F.cross_entropy(logits, targets))


def test_margin_losses_empty_batch_is_zero_with_grad():
    logits = torch.zeros(0, 3, requires_grad=True)
    targets = torch.zeros(0, dtype=torch.long)
    loss = adaptive_margin_loss(logits, targets, torch.tensor([0.5, 0.3, 0.2]))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.shape == (0, 3)


def test_margin_cross_entropy_input_errors():
    with pytest.raises(ValueError, match="targets must have shape"):
        margin_cross_entropy(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), 0.0)
    with pytest.raises(TypeError, match="integer"):
        margin_cross_entropy(torch.zeros(3, 2), torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="margins must have shape"):
        margin_cross_entropy(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# pseudo_label_contrastive_loss (L_PC)
# ---------------------------------------------------------------------------------------------


def test_pc_loss_hand_computed_two_samples():
    # rows a0 = (1,0), a1 = (0,1), b0 = (1,0), b1 = (0,1); tau = 0.5, so exp(cos/tau) is
    # e^2 for the same direction and e^0 = 1 for orthogonal rows.
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z_b = z_a.clone()
    # different labels: for a0, P = {b0}: numerator e^2, denominator (b0, a1, b1) e^2 + 1 + 1
    #   l = -log(e^2 / (e^2 + 2) / 1) = log(1 + 2 e^-2) = 0.23954...; all 4 anchors alike.
    expected = math.log(1 + 2 * math.exp(-2))
    assert expected == pytest.approx(0.2395, abs=1e-4)
    got = pseudo_label_contrastive_loss(z_a, z_b, torch.tensor([0, 1]), tau=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # same label: P = A = {a1, b0, b1}: ratio (1 + e^2 + 1)/(e^2 + 2) = 1, divided by |P| = 3
    #   l = -log(1/3) = log 3   (SupCon's mean of log-ratios would give log(e^2+2) - 2/3 instead)
    got_same = pseudo_label_contrastive_loss(z_a, z_b, torch.tensor([0, 0]), tau=0.5)
    assert got_same.item() == pytest.approx(math.log(3), rel=1e-10)
    assert got_same.item() != pytest.approx(math.log(math.exp(2) + 2) - 2 / 3, rel=1e-3)


def test_pc_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(1)
    z_a = torch.randn(6, 5, generator=g, dtype=torch.float64)
    z_b = torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 2, 2, 1, 0, 2])
    for tau in (0.4, 1.0):
        got = pseudo_label_contrastive_loss(z_a, z_b, labels, tau=tau).item()
        assert got == pytest.approx(ref_pc_loss(z_a, z_b, labels, tau), rel=1e-10)


def test_pc_loss_singleton_class_only_positive_is_its_other_view():
    g = torch.Generator().manual_seed(2)
    z_a = torch.randn(3, 4, generator=g, dtype=torch.float64)
    z_b = torch.randn(3, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([5, 1, 1])  # class 5 has a single sample
    tau = 0.4
    # stacked rows: 0,1,2 = view a of samples 0,1,2; 3,4,5 = view b of the same samples
    rows = list(_np(z_a)) + list(_np(z_b))
    positives = {0: [3], 3: [0], 1: [2, 4, 5], 2: [1, 4, 5], 4: [1, 2, 5], 5: [1, 2, 4]}
    total = 0.0
    for i, pos in positives.items():
        den = sum(math.exp(_cos(rows[i], rows[j]) / tau) for j in range(6) if j != i)
        num = sum(math.exp(_cos(rows[i], rows[j]) / tau) for j in pos)
        total += -math.log(num / den / len(pos))
    got = pseudo_label_contrastive_loss(z_a, z_b, labels, tau=tau)
    assert got.item() == pytest.approx(total / 6, rel=1e-10)
    assert torch.isfinite(got)


def test_pc_loss_no_confident_sample_is_zero_with_grad():
    z_a = torch.zeros(0, 4, requires_grad=True)
    z_b = torch.zeros(0, 4, requires_grad=True)
    loss = pseudo_label_contrastive_loss(z_a, z_b, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert z_a.grad is not None and z_b.grad is not None


def test_pc_loss_is_scale_invariant_cosine():
    z_a, z_b = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 1, 0, 1])
    a = pseudo_label_contrastive_loss(z_a, z_b, labels)
    b = pseudo_label_contrastive_loss(3.0 * z_a, 0.5 * z_b, labels)
    assert torch.allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# unsupervised_contrastive_loss (L_UC / NT-Xent)
# ---------------------------------------------------------------------------------------------


def _simclr_reference(z_a, z_b, tau):
    """The usual SimCLR implementation: CE over the self-masked similarity matrix."""
    f = F.normalize(torch.cat([z_a, z_b]), dim=1)
    n = z_a.shape[0]
    sim = f @ f.T / tau
    sim = sim - 1e9 * torch.eye(2 * n, dtype=sim.dtype)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def test_nt_xent_matches_loop_reference_and_simclr():
    g = torch.Generator().manual_seed(3)
    z_a = torch.randn(5, 6, generator=g, dtype=torch.float64)
    z_b = torch.randn(5, 6, generator=g, dtype=torch.float64)
    got = unsupervised_contrastive_loss(z_a, z_b, tau=0.4)
    assert got.item() == pytest.approx(ref_nt_xent(z_a, z_b, 0.4), rel=1e-10)
    assert got.item() == pytest.approx(_simclr_reference(z_a, z_b, 0.4).item(), rel=1e-10)


def test_nt_xent_anchor_mask_averages_over_all_rows():
    g = torch.Generator().manual_seed(4)
    z_a = torch.randn(5, 3, generator=g, dtype=torch.float64)
    z_b = torch.randn(5, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, False, True, False])
    got = unsupervised_contrastive_loss(z_a, z_b, tau=0.4, anchor_mask=mask)
    assert got.item() == pytest.approx(ref_nt_xent(z_a, z_b, 0.4, mask), rel=1e-10)
    # masked-out samples are still negatives: changing them changes the loss
    z_a2 = z_a.clone()
    z_a2[1] = -z_a2[1]
    assert unsupervised_contrastive_loss(z_a2, z_b, 0.4, mask).item() != pytest.approx(got.item())


def test_nt_xent_all_masked_out_is_zero_and_all_in_is_standard():
    z_a = torch.randn(4, 3, requires_grad=True)
    z_b = torch.randn(4, 3)
    none = unsupervised_contrastive_loss(z_a, z_b, anchor_mask=torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0
    none.backward()
    assert z_a.grad is not None and torch.all(z_a.grad == 0)
    all_in = unsupervised_contrastive_loss(z_a, z_b, anchor_mask=torch.ones(4, dtype=torch.bool))
    assert torch.allclose(all_in, unsupervised_contrastive_loss(z_a, z_b))
    assert torch.allclose(all_in, _simclr_reference(z_a, z_b, 0.4), atol=1e-6)


def test_nt_xent_empty_batch():
    z = torch.zeros(0, 3, requires_grad=True)
    loss = unsupervised_contrastive_loss(z, z)
    assert loss.item() == 0.0
    loss.backward()


def test_contrastive_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        unsupervised_contrastive_loss(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="tau"):
        pseudo_label_contrastive_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3), tau=0.0)
    with pytest.raises(ValueError, match="labels must have shape"):
        pseudo_label_contrastive_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2))


# ---------------------------------------------------------------------------------------------
# entropy_regularizer / pairwise_bce_loss
# ---------------------------------------------------------------------------------------------


def test_entropy_regularizer_uniform_is_minus_log_k():
    for k in (2, 5, 10):
        assert entropy_regularizer(torch.zeros(3, k)).item() == pytest.approx(-math.log(k), rel=1e-6)
    # two confident rows on different classes also average to uniform over 2 classes
    logits = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert entropy_regularizer(logits).item() == pytest.approx(-math.log(2), rel=1e-6)


def test_entropy_regularizer_matches_numpy_and_is_max_when_collapsed():
    logits = torch.randn(6, 4, dtype=torch.float64)
    p = torch.softmax(logits, 1).numpy().mean(0)
    assert entropy_regularizer(logits).item() == pytest.approx(float(np.sum(p * np.log(p))), rel=1e-10)
    collapsed = torch.tensor([[100.0, 0.0, 0.0]] * 4)  # mean prediction one-hot -> -H = 0
    assert entropy_regularizer(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(entropy_regularizer(collapsed))


def test_pairwise_bce_matches_torch_bce():
    g = torch.Generator().manual_seed(5)
    pa = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    pb = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    pos_sim = (pa * pb).sum(1)
    expected = F.binary_cross_entropy(pos_sim, torch.ones(6, dtype=torch.float64))
    assert pairwise_bce_loss(pa, pb).item() == pytest.approx(expected.item(), rel=1e-10)
    # identical one-hot pairs: similarity 1, loss 0
    one_hot = torch.eye(3, dtype=torch.float64)
    assert pairwise_bce_loss(one_hot, one_hot).item() == pytest.approx(0.0, abs=1e-12)
    # disjoint one-hot pairs: clamped at eps -> -log(1e-7), finite
    assert pairwise_bce_loss(one_hot, one_hot.roll(1, 0)).item() == pytest.approx(-math.log(1e-7))


def test_pairwise_bce_empty_batch():
    pa = torch.zeros(0, 3, requires_grad=True)
    loss = pairwise_bce_loss(pa, torch.zeros(0, 3))
    assert loss.item() == 0.0
    loss.backward()


# ---------------------------------------------------------------------------------------------
# gradients, dtypes
# ---------------------------------------------------------------------------------------------


def _all_losses(logits, logits2, targets, mask):
    pi_hat = estimate_class_distribution(torch.softmax(logits.detach(), 1), mask)
    return {
        "adaptive_margin": adaptive_margin_loss(logits, targets, pi_hat, 10.0, weights=mask.to(logits.dtype)),
        "margin_ce": margin_cross_entropy(logits, targets, 5.0),
        "pc": pseudo_label_contrastive_loss(logits[mask], logits2[mask], targets[mask]),
        "uc": unsupervised_contrastive_loss(logits, logits2, anchor_mask=~mask),
        "entropy": entropy_regularizer(logits),
        "pairwise": pairwise_bce_loss(torch.softmax(logits, 1), torch.softmax(logits2, 1)),
    }


@pytest.mark.parametrize("name", ["adaptive_margin", "margin_ce", "pc", "uc", "entropy", "pairwise"])
def test_gradients_are_finite_and_flow(name):
    g = torch.Generator().manual_seed(6)
    logits = (5 * torch.randn(8, 4, generator=g)).requires_grad_()
    logits2 = (5 * torch.randn(8, 4, generator=g)).requires_grad_()
    targets = torch.randint(0, 4, (8,), generator=g)
    mask = torch.tensor([True, True, False, True, False, False, True, False])
    loss = _all_losses(logits, logits2, targets, mask)[name]
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.all(torch.isfinite(logits.grad))
    assert logits.grad.abs().sum() > 0
    if logits2.grad is not None:
        assert torch.all(torch.isfinite(logits2.grad))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_losses_keep_dtype_and_are_finite(dtype):
    logits = torch.randn(6, 3).to(dtype)
    logits2 = torch.randn(6, 3).to(dtype)
    targets = torch.randint(0, 3, (6,))
    mask = torch.tensor([True, False, True, True, False, True])
    for name, loss in _all_losses(logits, logits2, targets, mask).items():
        assert loss.dtype == dtype, name
        assert torch.isfinite(loss), name


def test_adaptive_margins_paper_form_is_bounded():
    """kl="paper" uses KL(pi_hat || u) <= log K; kl="code" (KL(u || pi_hat)) grows without bound."""
    import math

    from lps.losses import adaptive_margins

    pi_hat = torch.tensor([0.5, 0.5 - 1e-6, 1e-6], dtype=torch.float64)
    s_paper = (pi_hat * torch.log(pi_hat * 3)).sum()
    torch.testing.assert_close(adaptive_margins(pi_hat, 10.0, kl="paper"), s_paper * 10 * pi_hat / 0.5)
    assert adaptive_margins(pi_hat, 10.0, kl="paper").max() <= 10 * math.log(3) + 1e-9
    assert adaptive_margins(pi_hat, 10.0, kl="code").max() > 10 * math.log(3)
    with pytest.raises(ValueError, match="kl"):
        adaptive_margins(pi_hat, 10.0, kl="other")


# ---------------------------------------------------------------------------------------------
# the whole LPS step, from REFERENCE.md "LPS as released", written with the loop references above
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [0, 3])
def test_lps_step_matches_the_released_composition(epoch):
    from lps.config import build_config
    from lps.methods import METHODS, Batch, MethodContext

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x, x

    n_lb, n, k, n_seen, epochs = 3, 10, 4, 2, 6
    g = torch.Generator().manual_seed(epoch)
    z1, z2, z3 = (3 * torch.randn(n, k, generator=g) for _ in range(3))
    z2[n_lb:n_lb + 3] *= 4  # some confident unlabeled rows
    y_lb = torch.tensor([0, 1, 0])
    cfg = build_config([], ["method=lps"])
    cls = METHODS.get("lps")
    method = cls(cfg.method.params,
                 MethodContext(num_classes=k, n_seen=n_seen, n_labeled=6, n_unlabeled=20, epochs=epochs,
                               steps_per_epoch=1, feat_dim=k, device=torch.device("cpu")))
    method.on_epoch_start(epoch, None, None)
    out = method.training_step(Identity(), Batch(views=[z1, z2, z3], y_lb=y_lb, n_lb=n_lb, idx=torch.arange(n),
                                                 generator=g))
    # reference: pseudo-labels of v2, labeled rows keep their label; thresholds 0.95 / 0.4 + 0.4 e / T
    p2 = np.exp(_np(z2)) / np.exp(_np(z2)).sum(1, keepdims=True)
    pl, conf = p2.argmax(1), p2.max(1)
    pl[:n_lb] = y_lb.numpy()
    thr_novel = 0.4 + 0.4 * epoch / epochs
    mask = np.where(pl < n_seen, conf >= 0.95, conf >= thr_novel)
    mask[:n_lb] = True
    pi = (p2 * mask[:, None]).sum(0)
    pi = pi / pi.sum()
    s = float(np.sum((1 / k) * np.log((1 / k) / pi)))  # KL(u || pi_hat), the released direction
    margins = s * 10 * pi / pi.max()
    am = ref_margin_ce(z1[:n_lb], y_lb, margins) + ref_margin_ce(z3[n_lb:], torch.as_tensor(pl[n_lb:]), margins,
                                                                 weights=mask[n_lb:].astype(float))
    m = torch.as_tensor(mask)
    pc = ref_pc_loss(z2[m], z3[m], torch.as_tensor(pl)[m], 0.4)
    uc = ref_nt_xent(z2, z3, 0.4, anchor_mask=~mask)
    p1 = np.exp(_np(z1)) / np.exp(_np(z1)).sum(1, keepdims=True)
    pbar = p1.mean(0)
    reg = float((pbar * np.log(pbar)).sum())
    assert float(out["loss_am"]) == pytest.approx(am, rel=1e-5)
    assert float(out["loss_pc"]) == pytest.approx(pc, rel=1e-5)
    assert float(out["loss_uc"]) == pytest.approx(uc, rel=1e-5)
    assert float(out["entropy_reg"]) == pytest.approx(reg, rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(reg + am + pc + uc, rel=1e-5)
    assert float(out["mask_rate_unlabeled"]) == pytest.approx(mask[n_lb:].mean())
