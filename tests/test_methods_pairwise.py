"""ORCA, NACH, OpenNCD, GCD and their shared pieces (lps/methods/pairing.py, heads.py, lps/clustering.py, lps/losses.py).

Every loss and rule is checked against a hand-computed case or an independent float64 loop
written from the formula in REFERENCE.md / the released code, including edge cases (empty
selections, one class in a batch, no neighbour accepted).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lps.config import build_config
from lps.errors import LPSError
from lps.methods import METHODS, Batch, MethodContext
from lps.clustering import semi_supervised_kmeans
from lps.losses import distribution_alignment_loss, soft_cross_entropy, supervised_contrastive_loss
from lps.methods.heads import freeze_classifier_head, group_prior, group_probabilities, prototype_probabilities
from lps.methods.pairing import accept_neighbours, cosine_similarity_matrix, labeled_partners, nearest_neighbours, \
    pair_partners
from lps.methods.nach import novel_threshold, seen_novel_gap
from lps.methods.openncd import (cooccurrence_graph, match_groups_to_classes, prototype_affinity, spectral_groups)
from lps.methods.orca import mean_uncertainty


def _np(x):
    return x.detach().double().numpy()


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _cos(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


class Passthrough(nn.Module):
    """A 'model' whose logits and features are its input (times a trainable scale of 1), so a
    method's training step can be checked on hand-chosen logits."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.head = nn.Linear(2, 2)  # stands in for the cosine head (frozen by OpenNCD/GCD)

    def forward(self, x):
        return x * self.scale, x * self.scale


def make_method(name, k=4, n_seen=2, feat_dim=6, **hp):
    cls = METHODS.get(name)
    cfg = build_config([], [f"method={name}", *[f"method.{a}={b}" for a, b in hp.items()]])
    params = cfg.method.params
    ctx = MethodContext(num_classes=k, n_seen=n_seen, n_labeled=10, n_unlabeled=10, epochs=10, steps_per_epoch=1,
                        feat_dim=feat_dim, device=torch.device("cpu"))
    return cls(params, ctx)


# ---------------------------------------------------------------------------------------------
# partners
# ---------------------------------------------------------------------------------------------


def test_labeled_partners_same_label_other_row_and_self_fallback():
    y = torch.tensor([0, 1, 0, 2, 0, 1])
    for seed in range(20):
        p = labeled_partners(y, torch.Generator().manual_seed(seed))
        assert p[3] == 3  # label 2 occurs once: paired with itself
        for i in (0, 1, 2, 4, 5):
            assert p[i] != i and y[p[i]] == y[i]
    # deterministic given the generator, and every candidate gets drawn
    a = labeled_partners(y, torch.Generator().manual_seed(5))
    b = labeled_partners(y, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    drawn = {int(labeled_partners(y, torch.Generator().manual_seed(s))[0]) for s in range(200)}
    assert drawn == {2, 4}
    assert labeled_partners(torch.zeros(0, dtype=torch.long)).numel() == 0
    # one class in the batch: every row still gets another row
    p = labeled_partners(torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
    assert all(int(p[i]) != i for i in range(4))


def test_nearest_neighbours_brute_force_and_self_excluded():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=g)
    x[4] = x[1] * 3  # an exact duplicate direction of row 1: row 1's neighbour is 4, not itself
    sim = cosine_similarity_matrix(x)
    rows = torch.arange(9)
    idx, val = nearest_neighbours(sim, rows)
    xn = _np(x)
    for i in range(9):
        ref = max((j for j in range(9) if j != i), key=lambda j: _cos(xn[i], xn[j]))
        assert int(idx[i]) == ref
        assert float(val[i]) == pytest.approx(_cos(xn[i], xn[ref]), abs=1e-5)
    assert int(idx[1]) == 4
    one = cosine_similarity_matrix(torch.ones(1, 3))
    assert nearest_neighbours(one, torch.tensor([0]))[0].item() == 0  # nothing else: itself


def test_pair_partners_composition():
    feats = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1], [1, 0.05]])
    y_lb = torch.tensor([0, 1])
    partner, sim, nn_sim = pair_partners(feats, y_lb, torch.Generator().manual_seed(0))
    assert partner[:2].tolist() == [0, 1]  # single-label rows pair with themselves
    assert partner[2:].tolist() == [4, 1, 2]
    assert nn_sim.shape == (3,) and sim.shape == (5, 5)


# ---------------------------------------------------------------------------------------------
# NACH: acceptance rule, adaptive threshold, gap, alignment
# ---------------------------------------------------------------------------------------------

# rows 0-2 labeled, 3-4 unlabeled; hand-chosen symmetric similarities
SIM = torch.tensor([
    [1.0, 0.2, 0.9, 0.8, 0.1],
    [0.2, 1.0, 0.3, 0.4, 0.0],
    [0.9, 0.3, 1.0, 0.85, 0.2],
    [0.8, 0.4, 0.85, 1.0, 0.5],
    [0.1, 0.0, 0.2, 0.5, 1.0],
])


def test_accept_neighbours_hand_computed():
    idx, val = nearest_neighbours(SIM, torch.tensor([3, 4]))
    assert idx.tolist() == [2, 3] and val.tolist() == pytest.approx([0.85, 0.5])
    # k = 2: row 3 -> neighbour 2 (labeled): column [0.9, 0.3, 1.0] (itself included), 2nd = 0.9 > 0.85
    #        row 4 -> neighbour 3: column [0.8, 0.4, 0.85], 2nd = 0.8 > 0.5: no neighbour accepted
    assert accept_neighbours(SIM, idx, val, 3, 2).tolist() == [False, False]
    # k = 3: thresholds 0.3 and 0.4 -> both accepted
    assert accept_neighbours(SIM, idx, val, 3, 3).tolist() == [True, True]
    # k = 1: thresholds 1.0 and 0.85 -> none
    assert accept_neighbours(SIM, idx, val, 3, 1).tolist() == [False, False]
    # equality counts as accepted
    assert accept_neighbours(SIM, idx, torch.tensor([0.9, 0.8]), 3, 2).tolist() == [True, True]


def test_accept_neighbours_edge_cases():
    idx, val = nearest_neighbours(SIM, torch.tensor([3, 4]))
    # fewer labeled rows than k: k clipped to n_lb (1 labeled row: threshold = sim[0, n])
    assert accept_neighbours(SIM, idx, val, 1, 2).tolist() == [False, False]  # 0.85 < 0.9, 0.5 < 0.8
    # no labeled row: every neighbour accepted
    assert accept_neighbours(SIM, idx, val, 0, 2).tolist() == [True, True]
    # no unlabeled anchor
    assert accept_neighbours(SIM, idx[:0], val[:0], 3, 2).numel() == 0
    with pytest.raises(ValueError):
        accept_neighbours(SIM, idx, val, 3, 0)


@pytest.mark.parametrize("m, expected", [(1.0, 0.45), (0.1, 0.75), (0.0, 0.95), (0.25, 0.45), (0.2, 0.55),
                                         (-0.1, 1.15)])
def test_nach_novel_threshold_hand_computed(m, expected):
    assert novel_threshold(m) == pytest.approx(expected)


def test_nach_seen_novel_gap_hand_computed():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.1, 0.7], [0.1, 0.5, 0.4]])
    # n_seen = 1: seen-predicted rows 0, 1 (0.9, 0.6), novel-predicted 2, 3 (0.7, 0.5)
    assert seen_novel_gap(probs, 1) == pytest.approx(0.75 - 0.6)
    # n_seen = 3: every row predicted seen, the novel group is empty and counts as 0
    assert seen_novel_gap(probs, 3) == pytest.approx((0.9 + 0.6 + 0.7 + 0.5) / 4)
    # n_seen = 0: every row novel
    assert seen_novel_gap(probs, 0) == pytest.approx(-(0.9 + 0.6 + 0.7 + 0.5) / 4)


def ref_alignment(logits, targets, pi_hat, weights):
    z, k = _np(logits), logits.shape[1]
    total = 0.0
    for i in range(len(z)):
        s = z[i] + np.log(np.maximum(_np(pi_hat), 1e-8) * k)
        total += float(weights[i]) * -(s[targets[i]] - math.log(np.exp(s).sum()))
    return total / len(z)


def test_distribution_alignment_against_formula():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 4, generator=g) * 3
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    w = torch.tensor([1.0, 0, 1, 1, 0, 1])
    pi = torch.tensor([0.5, 0.3, 0.2, 0.0])  # a class with no mass: clamped, stays finite
    out = distribution_alignment_loss(z, y, pi, w)
    assert torch.isfinite(out)
    assert float(out) == pytest.approx(ref_alignment(z, y, pi, w), rel=1e-5)
    # uniform pi_hat: plain weighted cross-entropy
    uni = torch.full((4,), 0.25)
    ce = (F.cross_entropy(z, y, reduction="none") * w).sum() / 6
    assert float(distribution_alignment_loss(z, y, uni, w)) == pytest.approx(float(ce), rel=1e-6)
    # empty mask and empty batch
    assert float(distribution_alignment_loss(z, y, pi, torch.zeros(6))) == 0.0
    empty = torch.zeros(0, 4, requires_grad=True)
    out = distribution_alignment_loss(empty, y[:0], pi, w[:0])
    out.backward()
    assert float(out.detach()) == 0.0


# ---------------------------------------------------------------------------------------------
# full training steps on hand-chosen logits (independent loop references)
# ---------------------------------------------------------------------------------------------

Z1 = torch.tensor([[2.0, 0.1, -1, 0.3], [0.2, 1.5, 0.1, -0.4], [1.7, -0.2, 0.3, 0.1],
                   [0.1, 0.2, 2.5, 0.3], [0.3, -0.1, 2.2, 0.6], [-0.5, 0.4, 0.2, 1.9], [1.1, 0.9, -0.3, 0.2]])
Z2 = Z1.flip(1) * 0.7 + 0.3 * Z1
Z3 = Z1 * 1.3 - 0.2
Y_LB = torch.tensor([0, 1, 0])  # rows 0 and 2 are each other's only partner; row 1 pairs with itself


def batch_of(*views, y_lb=Y_LB):
    return Batch(views=list(views), y_lb=y_lb, n_lb=len(y_lb), idx=torch.arange(views[0].shape[0]),
                 generator=torch.Generator().manual_seed(0))


def ref_partners(feats, n_lb, y_lb):
    x = _np(feats)
    part = []
    for i in range(n_lb):
        same = [j for j in range(n_lb) if j != i and y_lb[j] == y_lb[i]]
        assert len(same) <= 1  # deterministic cases only
        part.append(same[0] if same else i)
    for i in range(n_lb, len(x)):
        part.append(max((j for j in range(len(x)) if j != i), key=lambda j: _cos(x[i], x[j])))
    return part


def ref_orca_loss(z1, z2, y_lb, u_bar):
    n_lb = len(y_lb)
    p1 = [_softmax(r) for r in _np(z1)]
    p2 = [_softmax(r) for r in _np(z2)]
    part = ref_partners(z1, n_lb, y_lb)
    bce = np.mean([-math.log(float(np.dot(p1[i], p2[part[i]]))) for i in range(len(p1))])
    margin = 10 * min(u_bar, 0.5)
    ce = []
    for i in range(n_lb):
        z = _np(z1)[i].copy()
        z[y_lb[i]] += margin
        ce.append(-(z[y_lb[i]] - math.log(np.exp(z).sum())))
    pbar = np.mean(p1, axis=0)
    return bce + np.mean(ce) + float((pbar * np.log(pbar)).sum()), np.mean(ce)


def test_mean_uncertainty():
    probs = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.9, 0.1]])
    assert mean_uncertainty(probs) == pytest.approx(1 - 0.7)
    with pytest.raises(ValueError):
        mean_uncertainty(torch.zeros(0, 2))


def test_orca_step_matches_reference_and_margin_changes_the_loss():
    orca = make_method("orca")
    model = Passthrough()
    assert float(orca.uncertainty) == 1.0  # before the first evaluation
    results = {}
    for u_bar, probs in [(0.3, torch.tensor([[0.7, 0.3], [0.7, 0.3]])), (0.0, torch.tensor([[1.0, 0.0]])),
                         (0.8, torch.tensor([[0.2, 0.1], [0.2, 0.0]]))]:
        orca.on_epoch_start(1, model, probs)
        assert float(orca.uncertainty) == pytest.approx(u_bar, abs=1e-6)
        out = orca.training_step(model, batch_of(Z1, Z2))
        ref_total, ref_ce = ref_orca_loss(Z1, Z2, Y_LB.numpy(), u_bar)
        assert float(out["loss"].detach()) == pytest.approx(ref_total, rel=1e-5)
        assert float(out["loss_ce"]) == pytest.approx(ref_ce, rel=1e-5)
        assert float(out["margin"]) == pytest.approx(10 * min(u_bar, 0.5))
        results[u_bar] = float(out["loss_ce"])
    # the margin is not a no-op: larger uncertainty -> larger shift of the target logit -> lower CE
    assert results[0.0] > results[0.3] > results[0.8]
    # None (no evaluation yet) keeps the last value; the value survives a state_dict round trip
    orca.on_epoch_start(2, model, None)
    fresh = make_method("orca")
    fresh.load_state_dict(orca.state_dict())
    assert float(fresh.uncertainty) == pytest.approx(0.8)


def ref_nach_loss(z1, z2, z3, y_lb, m, n_seen=2, k=2, labeled_rows="pseudo", pair_loss="bce"):
    n_lb, n = len(y_lb), z1.shape[0]
    p1 = [_softmax(r) for r in _np(z1)]
    p2 = [_softmax(r) for r in _np(z2)]
    kk = z1.shape[1]
    thr_novel = 0.95 - min(2 * m, 0.5)
    pl, mask = [], []
    for i in range(n):
        if i < n_lb and labeled_rows == "label":
            pl.append(int(y_lb[i]))
            mask.append(1.0)
        else:
            c = int(np.argmax(p2[i]))
            pl.append(c)
            mask.append(float(p2[i][c] >= (0.95 if c < n_seen else thr_novel)))
    x = _np(z1)
    part = ref_partners(z1, n_lb, y_lb)
    accepted = 0
    for i in range(n_lb, n):
        nb = part[i]
        column = sorted((_cos(x[l], x[nb]) for l in range(n_lb)), reverse=True)
        if _cos(x[i], x[nb]) >= column[min(k, n_lb) - 1] - 1e-7:
            accepted += 1
        else:
            part[i] = i
    sims = [float(np.dot(p1[i], p2[part[i]])) for i in range(n)]
    if pair_loss == "bce":
        bce = np.mean([-math.log(q) for q in sims])
    else:  # BCEWithLogitsLoss(q, 1) = -log(sigmoid(q))
        bce = np.mean([math.log1p(math.exp(-q)) for q in sims])
    ce = np.mean([-(x[i][y_lb[i]] - math.log(np.exp(x[i]).sum())) for i in range(n_lb)])
    pi = sum(mask[i] * p2[i] for i in range(n))
    pi = pi / pi.sum() if pi.sum() > 0 else np.full(kk, 1.0 / kk)  # nothing selected: uniform
    align = 0.0
    for i in range(n):
        s = _np(z3)[i] + np.log(pi * kk)
        align += mask[i] * -(s[pl[i]] - math.log(np.exp(s).sum()))
    align /= n
    pbar = np.mean(p1, axis=0)
    return float((pbar * np.log(pbar)).sum()) + bce + ce + align, accepted, mask


@pytest.mark.parametrize("labeled_rows,pair_loss", [("pseudo", "bce"), ("label", "bce"), ("pseudo", "bce_with_logits")])
@pytest.mark.parametrize("m", [1.0, 0.1, -0.5])
def test_nach_step_matches_reference(m, labeled_rows, pair_loss):
    nach = make_method("nach", labeled_rows=labeled_rows, pair_loss=pair_loss)
    model = Passthrough()
    nach.gap.fill_(m)
    out = nach.training_step(model, batch_of(Z1, Z2, Z3))
    ref, accepted, mask = ref_nach_loss(Z1, Z2, Z3, Y_LB.numpy(), m, labeled_rows=labeled_rows, pair_loss=pair_loss)
    assert float(out["loss"].detach()) == pytest.approx(ref, rel=1e-5)
    assert float(out["novel_threshold"]) == pytest.approx(0.95 - min(2 * m, 0.5))
    assert float(out["neighbour_accept_rate"]) == pytest.approx(accepted / 4)
    assert float(out["mask_rate_unlabeled"]) == pytest.approx(sum(mask[3:]) / 4)


def test_nach_no_neighbour_accepted_pairs_views_of_self():
    # each unlabeled row is a noisy copy of a labeled row, its nearest neighbour; with rank 1 the
    # threshold is that labeled row's similarity with itself (1): no neighbour is accepted
    g = torch.Generator().manual_seed(0)
    lab = torch.eye(4)[:3] * 3
    z1 = torch.cat([lab, lab + 0.1 * torch.randn(3, 4, generator=g)])
    z2, z3 = z1 * 0.9, z1 * 1.1
    nach = make_method("nach", neighbour_rank=1)
    out = nach.training_step(Passthrough(), batch_of(z1, z2, z3, y_lb=torch.tensor([0, 1, 0])))
    assert float(out["neighbour_accept_rate"]) == 0.0
    ref, accepted, _ = ref_nach_loss(z1, z2, z3, np.array([0, 1, 0]), 1.0, k=1)
    assert accepted == 0
    assert float(out["loss"].detach()) == pytest.approx(ref, rel=1e-5)


def test_nach_labeled_rows_are_thresholded_on_their_own_pseudo_labels():
    """Re-implementation behaviour (default): a labeled row whose weak view is unconfident gets mask
    0 and its predicted class, not its label; with labeled_rows="label" it is its label, mask 1."""
    z = torch.tensor([[0.3, 0.0, 0.1, 0.2], [0.0, 9.0, 0.0, 0.5], [0.2, 0.0, 9.0, 0.0]])  # rows 0, 1 labeled
    y_lb = torch.tensor([0, 0])
    for rows, expect in (("pseudo", [0.0, 1.0]), ("label", [1.0, 1.0])):
        nach = make_method("nach", labeled_rows=rows)
        out = nach.training_step(Passthrough(), batch_of(z, z, z, y_lb=y_lb))
        ref, _, mask = ref_nach_loss(z, z, z, y_lb.numpy(), 1.0, labeled_rows=rows)
        assert mask[:2] == expect  # row 0: max prob ~0.3 < 0.95; row 1: confident, but of class 1
        assert float(out["loss"].detach()) == pytest.approx(ref, rel=1e-5)


def test_nach_gap_is_averaged_over_the_previous_epochs_batches():
    """m = mean max-prob of the rows predicted seen - that of the rows predicted novel, over every
    row of every batch of the previous epoch (labeled rows included), on the pseudo-label view."""
    nach = make_method("nach")
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(7, 4, generator=g) * 3 for _ in range(2)]
    nach.on_epoch_start(0, None, None)
    assert float(nach.gap) == 1.0  # before any training: the initial value
    for z in zs:
        nach.training_step(Passthrough(), batch_of(z, z, z))
    conf, pred = torch.softmax(torch.cat(zs), 1).max(1)
    expect = float(conf[pred < 2].mean() - conf[pred >= 2].mean())
    state = nach.state_dict()
    nach.on_epoch_start(1, None, torch.full((5, 4), 0.25))  # the evaluation's probabilities are not used
    assert float(nach.gap) == pytest.approx(expect, abs=1e-6)
    fresh = make_method("nach")  # the running sums are checkpointed: a resumed run gets the same m
    fresh.load_state_dict(state)
    fresh.on_epoch_start(1, None, None)
    assert float(fresh.gap) == pytest.approx(expect, abs=1e-6)
    nach.on_epoch_start(2, None, None)  # an epoch without training steps keeps m
    assert float(nach.gap) == pytest.approx(expect, abs=1e-6)


def test_nach_epoch_start_sets_gap_and_initial_value():
    nach = make_method("nach", gap_source="evaluation")
    assert float(nach.gap) == 1.0 and nach.novel_threshold() == pytest.approx(0.45)
    probs = torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.1, 0.1, 0.7, 0.1]])  # n_seen = 2
    nach.on_epoch_start(1, None, probs)
    assert float(nach.gap) == pytest.approx(0.2)
    assert nach.novel_threshold() == pytest.approx(0.55)
    nach.on_epoch_start(2, None, None)
    assert float(nach.gap) == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------
# OpenNCD pieces
# ---------------------------------------------------------------------------------------------


def released_group_mask(proto_group, n_groups):
    """group_mask[g, j] = 1 iff prototype j is in group g (the released representation)."""
    m = np.zeros((n_groups, len(proto_group)))
    for j, g in enumerate(proto_group):
        m[g, j] = 1
    return m


def test_prototype_and_group_probabilities_against_formula():
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(5, 3, generator=g), torch.randn(6, 3, generator=g)
    p = prototype_probabilities(z, c, 0.1)
    for i in range(5):
        logits = np.array([_cos(_np(z)[i], _np(c)[j]) / 0.1 for j in range(6)])
        np.testing.assert_allclose(_np(p)[i], _softmax(logits), rtol=1e-5, atol=1e-7)
    proto_group = torch.tensor([2, 0, 2, 1, 0, 2])
    q = group_probabilities(p, proto_group, 3)
    np.testing.assert_allclose(_np(q), _np(p) @ released_group_mask(proto_group.numpy(), 3).T, rtol=1e-6)
    # before grouping (every prototype its own group) q == p
    torch.testing.assert_close(group_probabilities(p, torch.arange(6), 6), p)


def test_group_prior_against_released_formula():
    proto_group = np.array([2, 0, 2, 1, 0, 2])
    gm = released_group_mask(proto_group, 4)  # group 3 is empty
    row_norm = gm / np.maximum(gm.sum(1, keepdims=True), 1e-12)  # F.normalize(p=1, dim=1)
    prior = row_norm.sum(0)
    prior = prior / prior.sum()
    np.testing.assert_allclose(_np(group_prior(torch.as_tensor(proto_group), 4)), prior, rtol=1e-6)
    assert _np(group_prior(torch.as_tensor(proto_group), 4)) == pytest.approx([1 / 3 / 3, 1 / 3 / 2, 1 / 3 / 3,
                                                                               1 / 3, 1 / 3 / 2, 1 / 3 / 3])


def test_soft_cross_entropy_against_formula_and_empty():
    t = torch.tensor([[0.2, 0.8], [1.0, 0.0]])
    q = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    ref = (-(0.2 * math.log(0.5 + 1e-8) + 0.8 * math.log(0.5 + 1e-8)) - math.log(0.9 + 1e-8)) / 2
    assert float(soft_cross_entropy(t, q)) == pytest.approx(ref, rel=1e-6)
    e = torch.zeros(0, 2, requires_grad=True)
    out = soft_cross_entropy(e, e)
    out.backward()
    assert float(out.detach()) == 0.0


def released_reknn_graph(dist_matrix, nn_):
    """The released utils.reknn_graph(mode='min'), as a loop."""
    top = np.argsort(-dist_matrix, axis=1)[:, :nn_]
    onehot = np.zeros_like(dist_matrix, dtype=bool)
    for i, row in enumerate(top):
        onehot[i, row] = True
    p = dist_matrix.shape[1]
    out = np.zeros((p, p))
    num = onehot.T.sum(1)
    for i in range(p):
        for j in range(p):
            inter = (onehot[:, i] & onehot[:, j]).sum()
            if inter:
                out[i, j] = inter / min(num[i], num[j])
    return out, onehot


def test_cooccurrence_graph_matches_released_reknn_graph():
    rng = np.random.default_rng(0)
    dist = rng.standard_normal((40, 7))
    dist[:, 6] = -10  # a prototype nobody selects
    ref, onehot = released_reknn_graph(dist, 3)
    counts = torch.as_tensor(onehot.T.astype(float) @ onehot.astype(float))
    np.testing.assert_allclose(cooccurrence_graph(counts).numpy(), ref, rtol=1e-12)


def test_prototype_affinity_against_released_formula():
    rng = np.random.default_rng(1)
    e = rng.uniform(size=(5, 5))
    c = torch.as_tensor(rng.standard_normal((5, 3)))
    cn = _np(F.normalize(c, dim=1))
    ref = 0.9 * ((e + e.T) / 2 - np.diag(e.diagonal())) + 0.1 * ((cn @ cn.T + 1) / 2)
    np.testing.assert_allclose(prototype_affinity(torch.as_tensor(e), c, 0.9), ref, rtol=1e-12)


def test_spectral_groups_and_matching_recover_blocks():
    # 9 prototypes in three blocks {0,1,2}, {3,4,5}, {6,7,8}; isolated prototype edge case below
    a = np.full((9, 9), 0.01)
    for b in range(3):
        a[3 * b:3 * b + 3, 3 * b:3 * b + 3] = 1.0
    np.fill_diagonal(a, 0)
    labels = spectral_groups(a, 3, 0)
    assert len(set(labels[:3])) == len(set(labels[3:6])) == len(set(labels[6:])) == 1
    assert len(set(labels)) == 3
    # labeled images of class 0 sit on prototype 7, class 1 on prototypes 1 and 2
    counts = np.zeros((2, 9))
    counts[0, 7] = 5
    counts[1, 1], counts[1, 2] = 3, 4
    new = match_groups_to_classes(labels, counts, 3)
    assert new[6:].tolist() == [0, 0, 0] and new[:3].tolist() == [1, 1, 1] and new[3:6].tolist() == [2, 2, 2]


def test_match_groups_hand_case_and_errors():
    proto_label = np.array([0, 1, 1, 2, 3])
    counts = np.array([[0, 0, 0, 1, 4],   # class 0 -> prototypes of group 3 (and 2)
                       [2, 1, 1, 0, 0]])  # class 1 -> group 1 (2 images) vs group 0 (2 images): tie on 2
    new = match_groups_to_classes(proto_label, counts, 4)
    assert new[4] == 0  # group 3 -> class 0
    assert sorted(set(new.tolist())) == [0, 1, 2, 3]
    # no labeled statistics at all: matching still gives a permutation, seen ids first
    new = match_groups_to_classes(proto_label, np.zeros((2, 5)), 4)
    assert sorted(set(new.tolist())) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        match_groups_to_classes(proto_label, np.zeros((5, 5)), 4)


def ref_openncd_loss(method, f1, f2, y_lb, w_cls):
    """The released model.loss, written with the group_mask matrix, on the method's parameters."""
    tau = method.hp.tau
    c = _np(F.normalize(method.prototypes, dim=1))
    z = _np(F.normalize(method.projector(f1), dim=1))
    z2 = _np(F.normalize(method.projector(f2), dim=1))
    gm = released_group_mask(method.proto_group.numpy(), method.n_groups)
    p = np.stack([_softmax(r @ c.T / tau) for r in z])
    p2 = np.stack([_softmax(r @ c.T / tau) for r in z2])
    q, q2 = p @ gm.T, p2 @ gm.T
    part = ref_partners(torch.as_tensor(z), len(y_lb), y_lb)
    proto = -np.mean(np.log((p * p2[part]).sum(1)))
    group = 0.5 * np.mean((-q2 * np.log(q + 1e-8)).sum(1)) + 0.5 * np.mean((-q * np.log(q2 + 1e-8)).sum(1))
    onehot = np.eye(gm.shape[0])[y_lb]
    cls = (-onehot * np.log(q[:len(y_lb)] + 1e-8)).sum() / len(y_lb)
    prior = (gm / gm.sum(1, keepdims=True)).sum(0)
    prior = prior / prior.sum()
    pp = p.mean(0)
    ent = (pp * np.log(pp / prior)).sum() * 10
    return proto + group + ent + w_cls * cls


@pytest.mark.parametrize("grouped", [False, True])
def test_openncd_step_matches_released_formula(grouped):
    torch.manual_seed(0)
    ncd = make_method("openncd", k=3, n_seen=2, feat_dim=6, protos_per_class=2, warmup_epochs=1)
    model = Passthrough()
    g = torch.Generator().manual_seed(3)
    f1, f2 = torch.randn(7, 6, generator=g), torch.randn(7, 6, generator=g)
    epoch = 0
    if grouped:
        ncd.proto_group.copy_(torch.tensor([0, 1, 2, 2, 1, 0]))
        ncd.grouped.fill_(True)
        epoch = 1
    ncd.epoch = epoch
    out = ncd.training_step(model, batch_of(f1, f2))
    with torch.no_grad():
        ref = ref_openncd_loss(ncd, f1, f2, Y_LB.numpy(), 1.0 if grouped else 0.0)
    assert float(out["loss"].detach()) == pytest.approx(ref, rel=1e-4)
    assert float(out["n_groups"]) == (3 if grouped else 6)


def test_openncd_grouping_cycle_and_prediction():
    torch.manual_seed(0)
    ncd = make_method("openncd", k=3, n_seen=2, feat_dim=6, protos_per_class=2, warmup_epochs=1,
                      group_until_epoch=3)
    model = Passthrough()
    g = torch.Generator().manual_seed(4)
    f = torch.randn(7, 6, generator=g)
    # epoch 0: statistics are collected for the grouping at the start of epoch 1
    ncd.on_epoch_start(0, model, None)
    assert not model.head.weight.requires_grad  # the unused head is frozen
    assert float(ncd.cooccurrence.sum()) == 0
    ncd.training_step(model, batch_of(f, f))
    assert float(ncd.cooccurrence.diagonal().sum()) == 7 * ncd.graph_neighbours
    assert float(ncd.label_proto_counts.sum()) == 3
    pred = ncd.predict(None, f)
    assert pred.dtype == np.int64 and pred.max() < 6  # prototype ids before grouping
    state = {k: v.clone() for k, v in ncd.state_dict().items()}
    ncd.on_epoch_start(1, model, None)
    assert bool(ncd.grouped) and ncd.n_groups == 3
    assert sorted(set(ncd.proto_group.tolist())) == [0, 1, 2]
    assert float(ncd.cooccurrence.sum()) == 0  # reset for the next epoch
    pred = ncd.predict(None, f)
    assert set(pred.tolist()) <= {0, 1, 2}
    # the same grouping after a restart from the checkpointed statistics
    again = make_method("openncd", k=3, n_seen=2, feat_dim=6, protos_per_class=2, warmup_epochs=1,
                        group_until_epoch=3)
    again.load_state_dict(state)
    again.on_epoch_start(1, model, None)
    assert torch.equal(again.proto_group, ncd.proto_group)
    # past group_until_epoch nothing is collected any more
    ncd.on_epoch_start(2, model, None)
    ncd.training_step(model, batch_of(f, f))
    assert float(ncd.cooccurrence.sum()) == 0
    # no statistics: no regrouping
    assert ncd.regroup() is False


# ---------------------------------------------------------------------------------------------
# GCD: SupCon, semi-supervised k-means
# ---------------------------------------------------------------------------------------------


def ref_supcon(z_a, z_b, labels, tau):
    """GCD's released SupConLoss (contrast_mode='all', base_temperature = temperature), as a loop."""
    feats = [v / np.linalg.norm(v) for v in list(_np(z_a)) + list(_np(z_b))]
    labs = list(labels.numpy()) * 2
    n = len(feats)
    total = 0.0
    for i in range(n):
        logits = [float(np.dot(feats[i], feats[j])) / tau for j in range(n)]
        mx = max(logits)
        denom = sum(math.exp(logits[j] - mx) for j in range(n) if j != i)
        pos = [j for j in range(n) if j != i and labs[j] == labs[i]]
        total += -np.mean([(logits[j] - mx) - math.log(denom) for j in pos])
    return total / n


@pytest.mark.parametrize("labels", [[0, 1, 0, 2], [3, 3, 3, 3], [0, 1, 2, 3]])
def test_supcon_against_released_formula(labels):
    g = torch.Generator().manual_seed(2)
    za, zb = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    lab = torch.tensor(labels)
    for tau in (0.07, 0.5):
        assert float(supervised_contrastive_loss(za, zb, lab, tau)) == pytest.approx(ref_supcon(za, zb, lab, tau),
                                                                                     rel=1e-4)


def test_supcon_edge_cases():
    e = torch.zeros(0, 3, requires_grad=True)
    out = supervised_contrastive_loss(e, e, torch.zeros(0, dtype=torch.long))
    out.backward()
    assert float(out.detach()) == 0.0
    with pytest.raises(ValueError):
        supervised_contrastive_loss(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(2))
    with pytest.raises(ValueError):
        supervised_contrastive_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), tau=0)


def blobs(rng, centers, n_per, scale=0.05):
    x = np.concatenate([c + scale * rng.standard_normal((n_per, len(c))) for c in centers])
    y = np.repeat(np.arange(len(centers)), n_per)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


def test_semi_supervised_kmeans_labeled_fixed_and_blobs_recovered():
    rng = np.random.default_rng(0)
    centers = np.eye(5)[:, :5] * 3
    x, y = blobs(rng, centers, 20)
    lab = (y < 2) & (torch.arange(len(y)) % 2 == 0)  # half of classes 0 and 1 labeled
    assign, c = semi_supervised_kmeans(x[~lab], x[lab], y[lab], 5, n_init=3, seed=0)
    u_true = y[~lab]
    # seen-class clusters carry the class id; every blob is one cluster
    assert torch.equal(assign[u_true < 2], u_true[u_true < 2])
    for cls in range(2, 5):
        assert len(set(assign[u_true == cls].tolist())) == 1
    assert len(set(assign.tolist())) == 5
    assert c.shape == (5, 5)
    # seeded: the same result again
    again, _ = semi_supervised_kmeans(x[~lab], x[lab], y[lab], 5, n_init=3, seed=0)
    assert torch.equal(again, assign)


def test_semi_supervised_kmeans_labeled_points_keep_their_cluster():
    # a labeled point sits inside the other class's blob: it stays fixed and pulls its centre
    x = torch.tensor([[0.0, 0], [0.1, 0], [5, 5], [5.1, 5], [0.05, 0.05]])
    y = torch.tensor([0, 1])
    lf = torch.stack([x[0], x[4]])  # class 1's only labeled point is next to class 0
    assign, centers = semi_supervised_kmeans(x[1:4], lf, y, 2, n_init=1, max_iter=5)
    # the centre of cluster 1 includes the fixed labeled point (0.05, 0.05)
    assert assign.tolist()[1:] == [1, 1]
    assert centers[1].tolist() == pytest.approx([(5 + 5.1 + 0.05) / 3, (5 + 5 + 0.05) / 3], rel=1e-5)


def test_semi_supervised_kmeans_edge_cases():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    # no labeled data: plain k-means++ + Lloyd
    assign, _ = semi_supervised_kmeans(x, x[:0], torch.zeros(0, dtype=torch.long), 2, n_init=2)
    assert assign.shape == (6,) and set(assign.tolist()) <= {0, 1}
    # no unlabeled data
    assign, _ = semi_supervised_kmeans(x[:0], x, torch.zeros(6, dtype=torch.long), 3)
    assert assign.numel() == 0
    # more clusters than unlabeled points: empty clusters keep their centre, no NaN
    assign, centers = semi_supervised_kmeans(x[:2], x[2:3], torch.tensor([0]), 5)
    assert torch.isfinite(centers).all()
    # a labeled class missing from the labeled set is free for a novel cluster
    assign, _ = semi_supervised_kmeans(x, x[:1], torch.tensor([1]), 3, n_init=1)
    assert set(assign.tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError):
        semi_supervised_kmeans(x, x[:1], torch.tensor([3]), 3)
    with pytest.raises(ValueError):
        semi_supervised_kmeans(x, x[:1], torch.tensor([0]), 3, n_init=0)


def test_gcd_predict_uses_labeled_images_and_seen_ids():
    rng = np.random.default_rng(1)
    x, y = blobs(rng, np.eye(4) * 2, 15)
    gcd = make_method("gcd", k=4, n_seen=2, feat_dim=4, proj_out_dim=16, proj_hidden_dim=8, proj_bottleneck_dim=4)
    lab = (y < 2) & (torch.arange(len(y)) % 3 == 0)
    gcd.before_evaluation(lambda: (None, x[lab], y[lab]))
    pred = gcd.predict(None, x[~lab])
    u = y[~lab].numpy()
    np.testing.assert_array_equal(pred[u < 2], u[u < 2])
    assert len(set(pred[u == 2])) == 1 and len(set(pred[u == 3])) == 1 and pred[u == 2][0] != pred[u == 3][0]


def test_gcd_step_is_the_weighted_sum_and_head_frozen():
    gcd = make_method("gcd", k=4, n_seen=2, feat_dim=7, proj_out_dim=16, proj_hidden_dim=8, proj_bottleneck_dim=4,
                      sup_con_weight=0.35)
    model = Passthrough()
    gcd.on_epoch_start(0, model, None)
    assert not model.head.weight.requires_grad
    out = gcd.training_step(model, batch_of(Z1[:, :4].repeat(1, 2)[:, :7], Z2[:, :4].repeat(1, 2)[:, :7]))
    total = 0.65 * float(out["loss_infonce"]) + 0.35 * float(out["loss_supcon"])
    assert float(out["loss"].detach()) == pytest.approx(total, rel=1e-6)


def test_dino_head_last_layer_is_row_normalised():
    from lps.methods.gcd import DINOHead

    head = DINOHead(5, 7, layers=3, hidden_dim=6, bottleneck_dim=4)
    x = torch.randn(3, 5)
    b = F.normalize(head.mlp(x), dim=1)
    ref = b @ (head.last_weight / head.last_weight.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(head(x), ref)
    assert len([m for m in head.mlp if isinstance(m, nn.Linear)]) == 3


def test_freeze_classifier_head():
    model = Passthrough()
    freeze_classifier_head(model)
    assert not any(p.requires_grad for p in model.head.parameters()) and model.scale.requires_grad
    freeze_classifier_head(nn.Linear(2, 2))  # no head: nothing to do


# ---------------------------------------------------------------------------------------------
# hyperparameter validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, field", [
    ("method=orca method.max_uncertainty=1.5", "max_uncertainty"),
    ("method=orca method.margin_scale=-1", "margin_scale"),
    ("method=orca method.w_bce=-0.1", "w_bce"),
    ("method=nach method.lambda_seen=1.2", "lambda_seen"),
    ("method=nach method.neighbour_rank=0", "neighbour_rank"),
    ("method=nach method.max_threshold_reduction=-0.5", "max_threshold_reduction"),
    ("method=openncd method.tau=-0.1", "tau"),
    ("method=openncd method.tau=0", "tau"),
    ("method=openncd method.graph_edge_weight=1.5", "graph_edge_weight"),
    ("method=openncd method.graph_neighbours=0", "graph_neighbours"),
    ("method=openncd method.protos_per_class=0", "protos_per_class"),
    ("method=gcd method.tau_sup=-0.07", "tau_sup"),
    ("method=gcd method.sup_con_weight=1.1", "sup_con_weight"),
    ("method=gcd method.kmeans_n_init=0", "kmeans_n_init"),
])
def test_bad_hyperparameters_name_the_field(override, field):
    with pytest.raises(LPSError, match=rf"method\.{field}"):
        build_config([], override.split())


def test_openncd_graph_defaults_follow_class_count():
    small = make_method("openncd", k=10, n_seen=5)
    large = make_method("openncd", k=100, n_seen=50)
    assert (small.graph_neighbours, small.graph_edge_weight, small.n_protos) == (3, 1.0, 50)
    assert (large.graph_neighbours, large.graph_edge_weight, large.n_protos) == (10, 0.9, 500)
    with pytest.raises(LPSError, match="method.graph_neighbours"):
        make_method("openncd", k=2, n_seen=1, protos_per_class=1, graph_neighbours=3)


def test_d2_seeding_never_draws_points_on_existing_centres():
    from lps.clustering import _d2_seeding

    x = torch.tensor([[0.0, 0], [0, 0], [1, 0], [0, 1], [5, 5]])
    rng = np.random.RandomState(0)
    for _ in range(50):
        c = _d2_seeding(x, x[:1], 2, rng)
        assert c.shape == (2, 2)
        assert not (c[0] == 0).all()  # distance 0 to the existing centre: probability 0
        assert not torch.equal(c[0], c[1])  # the second draw avoids the first one too
    # all points on the existing centre: uniform fallback, no error
    assert _d2_seeding(torch.zeros(3, 2), torch.zeros(1, 2), 2, rng).shape == (2, 2)
    assert _d2_seeding(x, x[:0], 0, rng).shape == (0, 2)


def test_openncd_head_runs_in_fp32_under_bf16_autocast():
    """The projector, prototype similarities (cos / 0.1) and group sums are computed in fp32 even
    inside the trainer's bf16 autocast: on the same features the losses equal the fp32 ones."""
    g = torch.Generator().manual_seed(3)
    f = torch.randn(7, 6, generator=g)
    losses_by_mode = []
    for autocast in (False, True):
        torch.manual_seed(0)  # the same projector and prototypes
        method = make_method("openncd", feat_dim=6)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = method.training_step(Passthrough(), batch_of(f, f * 0.9))
        losses_by_mode.append({k: float(v) for k, v in out.items()})
    assert losses_by_mode[0] == losses_by_mode[1]
