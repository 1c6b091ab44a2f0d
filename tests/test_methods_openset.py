"""FixMatch, DS3L, DTC, RankStats, SSC and SsCL: their losses against independent formulas or
hand-computed cases, the open-world evaluation helpers, and method state across a restart."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lps.config import build_config
from lps.errors import LPSError
from lps.clustering import hungarian_cluster_to_class, reject_and_cluster
from lps.losses import (pairwise_bce_with_labels, pi_model_consistency, prototype_supcon_loss, sscl_contrastive_loss,
                        unique_unconfident_labels)
from lps.methods import METHODS, Batch, MethodContext
from lps.methods.ds3l import head_directional_derivative, meta_surrogate
from lps.methods.dtc import student_t_assignment, target_distribution
from lps.methods.rankstats import ranking_pair_labels
from lps.methods.sscl import calibrated_pseudo_labels, pick_random
from lps.methods.tracking import HistoryMean, IndexSlots, distribution_alignment, sigmoid_rampup
from lps.models import CifarResNet18, OpenWorldModel

NEW = ["fixmatch", "ds3l", "dtc", "rankstats", "ssc", "sscl"]
K, N_SEEN = 4, 2


# --------------------------------------------------------------------------------------------
# helpers


def make(name, n_lb=6, n_ulb=10, seed=0, **hp):
    torch.manual_seed(seed)
    cfg = build_config([], [f"method={name}"] + [f"method.{k}={v}" for k, v in hp.items()])
    cls = METHODS.get(name)
    params = cfg.method.params
    model = OpenWorldModel(CifarResNet18(1, 4), K)
    ctx = MethodContext(num_classes=K, n_seen=N_SEEN, n_labeled=n_lb * 4, n_unlabeled=n_ulb * 4, epochs=4,
                        steps_per_epoch=3, feat_dim=model.backbone.out_dim, device=torch.device("cpu"))
    return cls, model, cls(params, ctx)


def batch_for(cls, n_lb=6, n_ulb=10, seed=0, idx=None, y_lb=None):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n_lb + n_ulb, 1, 16, 16, generator=g) for _ in cls.views]
    y = torch.arange(n_lb) % N_SEEN if y_lb is None else y_lb
    idx = torch.arange(n_lb + n_ulb) if idx is None else idx
    return Batch(views=views, y_lb=y, n_lb=n_lb, idx=idx, generator=g)


def supcon_reference(z, y, T):
    """SupCon L_out with explicit loops (anchors without positives skipped)."""
    z = F.normalize(z.double(), dim=1)
    losses = []
    for i in range(len(z)):
        pos = [p for p in range(len(z)) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / T) for a in range(len(z)) if a != i)
        losses.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / T) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses)


# --------------------------------------------------------------------------------------------
# SSC: prototype contrastive loss with unique labels for unconfident samples


def test_unique_unconfident_labels():
    pl = torch.tensor([1, 0, 1, 0])
    conf = torch.tensor([True, False, True, False])
    assert unique_unconfident_labels(pl, conf, offset=3).tolist() == [1, 4, 1, 6]
    assert unique_unconfident_labels(pl, torch.zeros(4, dtype=torch.bool), 2).unique().numel() == 4


def test_prototype_supcon_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    emb, protos = torch.randn(7, 5, generator=g), torch.randn(3, 5, generator=g)
    pl = torch.tensor([0, 1, 2, 1])
    y_u = unique_unconfident_labels(pl, torch.tensor([True, False, True, False]), offset=3)
    labels = torch.cat([torch.tensor([0, 2, 2]), y_u])  # 3 labeled rows + 4 unlabeled
    out = prototype_supcon_loss(emb, labels, protos, torch.arange(3), 0.3)
    ref = supcon_reference(torch.cat([emb, protos]), torch.cat([labels, torch.arange(3)]).tolist(), 0.3)
    assert out.item() == pytest.approx(ref, rel=1e-5)


def test_prototype_supcon_unconfident_views_are_each_others_only_positive():
    """Two unconfident samples, two views each, no class rows: NT-Xent over the 4 views, by hand."""
    a1, a2, b1, b2 = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    emb = torch.stack([a1, b1, a2, b2])  # weak views, then strong views
    y = unique_unconfident_labels(torch.tensor([0, 0]), torch.tensor([False, False]), offset=1)
    labels = torch.cat([y, y])
    proto = torch.tensor([[0.0, -1.0]])  # its label 0 is nobody's: a negative only
    T = 0.5
    z = torch.cat([emb, proto])
    s = z @ z.T / T
    by_hand = []
    for i, p in [(0, 2), (1, 3), (2, 0), (3, 1)]:
        denom = sum(math.exp(s[i, a]) for a in range(5) if a != i)
        by_hand.append(-math.log(math.exp(s[i, p]) / denom))
    out = prototype_supcon_loss(emb, labels, proto, torch.tensor([0]), T)
    assert out.item() == pytest.approx(sum(by_hand) / 4, rel=1e-5)


def test_prototype_supcon_edge_cases():
    emb = torch.randn(3, 4, requires_grad=True)
    proto = torch.randn(2, 4, requires_grad=True)
    # every label unique: no anchor has a positive -> 0, still in the graph
    out = prototype_supcon_loss(emb, torch.tensor([5, 6, 7]), proto, torch.tensor([0, 1]), 0.1)
    assert out.item() == 0.0
    out.backward()
    assert emb.grad is not None and proto.grad is not None
    # a batch of a single class: all samples and the prototype are positives of each other
    labels = torch.zeros(3, dtype=torch.long)
    out = prototype_supcon_loss(emb.detach(), labels, proto.detach()[:1], torch.tensor([0]), 0.2)
    ref = supcon_reference(torch.cat([emb.detach(), proto.detach()[:1]]), [0, 0, 0, 0], 0.2)
    assert out.item() == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError):
        prototype_supcon_loss(emb, labels, proto, torch.tensor([0, 1]), 0.0)


# --------------------------------------------------------------------------------------------
# SsCL: co-calibration, running similarity distribution, contrastive loss


def test_calibrated_pseudo_labels_by_hand():
    p_b = torch.tensor([[0.6, 0.4]])
    p_s = torch.tensor([[0.2, 0.8]])
    out = calibrated_pseudo_labels(p_b, p_s, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(out, torch.tensor([[0.12 / 0.44, 0.32 / 0.44]]))
    # a class over-represented in the running similarity distribution is scaled down
    out = calibrated_pseudo_labels(p_b, p_s, torch.tensor([0.25, 0.75]))
    a, b = 0.12 / 0.25, 0.32 / 0.75
    torch.testing.assert_close(out, torch.tensor([[a / (a + b), b / (a + b)]]))
    # a uniform similarity distribution changes nothing
    torch.testing.assert_close(calibrated_pseudo_labels(p_b, torch.full((1, 2), 0.5), torch.full((2,), 0.5)), p_b)


def test_distribution_alignment_matches_remixmatch_formula():
    g = torch.Generator().manual_seed(1)
    p = F.softmax(torch.randn(5, 3, generator=g), 1)
    run, target = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.2, 0.6])
    ref = p * target / run
    ref = ref / ref.sum(1, keepdim=True)
    torch.testing.assert_close(distribution_alignment(p, run, target), ref)
    assert torch.allclose(distribution_alignment(p, run).sum(1), torch.ones(5))


def test_history_mean_is_a_ring_buffer_and_round_trips():
    h = HistoryMean(3, 2)
    torch.testing.assert_close(h.mean(), torch.tensor([0.5, 0.5]))  # uniform before any push
    for v in ([1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 3.0]):
        h.push(torch.tensor(v))
    torch.testing.assert_close(h.mean(), torch.tensor([4 / 3, 5 / 3]))  # last 3 only
    h2 = HistoryMean(3, 2)
    h2.load_state_dict(h.state_dict())
    h.push(torch.tensor([0.0, 0.0]))
    h2.push(torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(h.mean(), h2.mean())


def test_sscl_contrastive_loss_matches_eq5():
    g = torch.Generator().manual_seed(2)
    sim = torch.rand(3, 6, generator=g) * 2 - 1
    pos = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    neg = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    alpha = torch.rand(3, 6, generator=g)
    gamma, m = 5.0, -0.25
    ref = []
    for i in range(2):  # row 2 has no positive: left out
        sn = sum(math.exp(gamma * (sim[i, j] + m)) for j in range(6) if neg[i, j])
        sp = sum(math.exp(-gamma * alpha[i, j] * sim[i, j]) for j in range(6) if pos[i, j])
        ref.append(math.log(1 + sn * sp))
    out = sscl_contrastive_loss(sim, pos, neg, alpha, gamma, m)
    assert out.item() == pytest.approx(sum(ref) / 2, rel=1e-5)
    empty = torch.zeros(3, 6, dtype=torch.bool)
    assert sscl_contrastive_loss(sim, empty, neg, alpha, gamma, m).item() == 0.0


def test_pick_random_chooses_only_candidates():
    g = torch.Generator().manual_seed(0)
    cand = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    chosen = pick_random(cand, 2, g)
    assert not (chosen & ~cand).any()
    assert chosen.sum(1).tolist() == [2, 0, 1]


def test_sscl_state_resumes_exactly():
    """Queue, prototypes and the running similarity distribution are buffers: a restart from the
    state_dict gives the same next loss as going on."""
    cls, model, method = make("sscl", queue_size=20, history=2)
    model.train()
    method.on_epoch_start(0, model, None)
    for s in range(3):
        method.training_step(model, batch_for(cls, seed=s))
    assert bool(method.prototype_ready.all()) and int(method.queue_count) == 48
    assert int(method.similarity_history.count) == 2  # calibration ran in steps 2 and 3
    _, _, fresh = make("sscl", seed=5, queue_size=20, history=2)
    fresh.load_state_dict(method.state_dict())
    fresh.on_epoch_start(0, model, None)
    m_state = {k: v.clone() for k, v in model.state_dict().items()}
    a = method.training_step(model, batch_for(cls, seed=9))["loss"].item()
    model.load_state_dict(m_state)
    b = fresh.training_step(model, batch_for(cls, seed=9))["loss"].item()
    assert a == b


# --------------------------------------------------------------------------------------------
# open-world evaluation: rejection + k-means, Hungarian cluster-to-class mapping


def test_reject_and_cluster_novel_ids_only_for_rejected():
    probs = torch.tensor([[0.97, 0.03], [0.5, 0.5], [0.02, 0.98], [0.6, 0.4], [0.55, 0.45], [0.3, 0.7]])
    feats = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0.9, 0.1], [0, 0, 1], [0, 0.1, 0.9]])
    pred = reject_and_cluster(probs, feats, threshold=0.95, n_novel=2)
    assert pred.dtype == np.int64
    assert pred[0] == 0 and pred[2] == 1  # confident: seen argmax kept
    rejected = [1, 3, 4, 5]
    assert all(2 <= pred[i] <= 3 for i in rejected)  # only novel ids, only for rejected samples
    assert pred[1] == pred[3] and pred[4] == pred[5] and pred[1] != pred[4]  # k-means found the 2 groups
    # nothing rejected: no novel id at all; threshold 1 rejects everything below certainty
    assert reject_and_cluster(probs, feats, 0.0, 2).tolist() == probs.argmax(1).tolist()
    assert (reject_and_cluster(probs, feats, 1.0, 2) >= 2).all()
    # fewer rejected samples than novel classes: one cluster each, still in the novel range
    pred = reject_and_cluster(probs, feats, 0.95, n_novel=5)
    assert set(pred[rejected]) <= set(range(2, 7))


def test_hungarian_mapping_on_permuted_clusters():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    perm = {0: 3, 1: 0, 2: 4}  # class -> cluster
    clusters = np.array([perm[c] for c in labels])
    clusters[0] = 1  # one noisy sample
    mapping = hungarian_cluster_to_class(clusters, labels, n_clusters=6)
    assert mapping[3] == 0 and mapping[0] == 1 and mapping[4] == 2
    assert sorted(mapping.tolist()) == list(range(6))  # a permutation
    assert mapping[1] == 3 and mapping[2] == 4 and mapping[5] == 5  # unmatched: novel ids in order
    # mapped predictions give the labeled samples their classes (up to the noisy one)
    assert (mapping[clusters] == labels).sum() == 7
    # no labeled sample: identity; one class only: that cluster takes it, the rest shift
    assert hungarian_cluster_to_class([], [], 3).tolist() == [0, 1, 2]
    assert hungarian_cluster_to_class([2, 2], [0, 0], 3).tolist() == [1, 2, 0]


def test_cluster_methods_map_clusters_before_evaluation():
    _, _, method = make("rankstats")
    # labeled images: head argmax cluster 3 for class 0, cluster 2 for class 1
    lab_logits = torch.tensor([[0, 0, 0, 5.0], [0, 0, 5.0, 0], [0, 0, 0, 5.0]])
    method.before_evaluation(lambda: (lab_logits, torch.zeros(3, 2), torch.tensor([0, 1, 0])))
    logits = torch.eye(4) * 5
    assert method.predict(logits, torch.zeros(4, 2)).tolist() == [2, 3, 1, 0]


def test_simclr_kmeans_seen_accuracy_on_mapped_ids():
    """Four well-separated feature clusters (classes 0, 1 seen; 2, 3 novel). The class labels are
    chosen so that k-means' own ids never equal the seen classes: raw ids score 0 % seen, ids
    mapped to the seen classes through the labeled images score 100 %; novel and all accuracy
    (Hungarian matched) are the same either way."""
    from lps.evaluation import openssl_metrics
    from lps.clustering import kmeans_predict, map_clusters_to_seen

    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:4] * 10
    blob = torch.arange(4).repeat_interleave(20)
    feats = centres[blob] + 0.1 * torch.randn(80, 8, generator=g)
    raw = kmeans_predict(feats, 4, 10, 0)
    cluster_of_blob = [int(np.bincount(raw[blob.numpy() == b]).argmax()) for b in range(4)]
    assert sorted(cluster_of_blob) == [0, 1, 2, 3]  # separable: one cluster per blob
    # seen classes 0, 1 go to the blobs k-means calls 2 and 3; novel classes 2, 3 to those it calls 0, 1
    cls_of_cluster = {2: 0, 3: 1, 0: 2, 1: 3}
    y = np.array([cls_of_cluster[cluster_of_blob[int(b)]] for b in blob])
    seen = y < 2
    assert (raw[seen] == y[seen]).mean() == 0  # raw ids: 0 % seen accuracy
    lab = np.concatenate([np.nonzero(y == 0)[0][:5], np.nonzero(y == 1)[0][:5]])
    mapped = map_clusters_to_seen(raw, raw[lab], y[lab], 4)
    m_raw, m_map = openssl_metrics(y, raw, 2), openssl_metrics(y, mapped, 2)
    assert m_raw["acc_seen"] == 0 and m_map["acc_seen"] == 1
    assert m_map["acc_novel"] == m_raw["acc_novel"] == 1 and m_map["acc_all"] == m_raw["acc_all"] == 1
    # the method end to end: k-means on the evaluated images, labeled images assigned to its centres
    _, _, method = make("simclr_kmeans")
    method.ctx.seed = 0
    method.before_evaluation(lambda: (torch.zeros(len(lab), K), feats[lab], torch.as_tensor(y[lab])))
    pred = method.predict(torch.zeros(80, K), feats)
    assert openssl_metrics(y, pred, 2)["acc_seen"] == 1
    _, _, raw_method = make("simclr_kmeans", map_clusters=False)
    raw_method.before_evaluation(lambda: (torch.zeros(len(lab), K), feats[lab], torch.as_tensor(y[lab])))
    assert openssl_metrics(y, raw_method.predict(torch.zeros(80, K), feats), 2)["acc_seen"] == 0


# --------------------------------------------------------------------------------------------
# DTC


def test_student_t_matches_released_feat2prob():
    g = torch.Generator().manual_seed(0)
    z, mu = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g)
    for alpha in (1.0, 2.5):
        q = 1.0 / (1.0 + ((z.unsqueeze(1) - mu) ** 2).sum(2) / alpha)
        q = q ** ((alpha + 1.0) / 2.0)
        q = q / q.sum(1, keepdim=True)
        torch.testing.assert_close(student_t_assignment(z, mu, alpha), q)


def test_dtc_target_sharpening_by_hand():
    q = torch.tensor([[0.8, 0.2], [0.4, 0.6]])
    f = q.sum(0)  # [1.2, 0.8]
    w = q**2 / f
    torch.testing.assert_close(target_distribution(q), w / w.sum(1, keepdim=True))
    p = target_distribution(q)
    assert p[0, 0] > q[0, 0] and p[1, 1] > q[1, 1] - 0.06  # sharpened, frequency-normalised
    # hand numbers for the first row: 0.64/1.2 vs 0.04/0.8
    assert p[0, 0].item() == pytest.approx((0.64 / 1.2) / (0.64 / 1.2 + 0.04 / 0.8))
    # a one-hot row stays one-hot; a uniform batch stays uniform
    torch.testing.assert_close(target_distribution(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))[0],
                               torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(target_distribution(torch.full((3, 4), 0.25)), torch.full((3, 4), 0.25))


def test_index_slots_non_contiguous_and_restored():
    s = IndexSlots(5)
    assert s.slots(torch.tensor([100, 7, 100])).tolist() == [0, 1, 0]
    assert s.slots(torch.tensor([9, 7])).tolist() == [2, 1]
    s2 = IndexSlots(5)
    s2.load_state_dict(s.state_dict())
    assert s2.slots(torch.tensor([9, 100, 55])).tolist() == [2, 0, 3]
    with pytest.raises(RuntimeError):
        s2.slots(torch.tensor([1, 2, 3]))


def test_dtc_temporal_ensemble_and_restart():
    cls, model, method = make("dtc", update_interval=1, ensemble_momentum=0.6)
    idx = torch.tensor([0, 1, 2, 3, 4, 5, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109])
    model.train()
    method.on_epoch_start(0, model, None)
    out0 = method.training_step(model, batch_for(cls, idx=idx))
    assert out0["loss_te"].item() == 0.0  # no ensemble yet
    q_first = method.q_latest[method.slots.slots(idx[6:])].clone()
    method.on_epoch_start(1, model, None)
    s_u = method.slots.slots(idx[6:])
    # one folded epoch: bias-corrected ensemble = that epoch's assignment; targets from it
    torch.testing.assert_close(method.ensemble[s_u] / (1 - 0.6), q_first)
    torch.testing.assert_close(method.targets[s_u], target_distribution(q_first))
    assert bool(method.has_target[s_u].all()) and not bool(method.has_target[method.slots.slots(idx[:6])].any())
    method.on_epoch_start(1, model, None)  # called again (e.g. after a resume): nothing folded twice
    assert method.n_ensembled[s_u].tolist() == [1] * 10
    # restart: a fresh method loaded from the state gives the same next loss
    _, _, fresh = make("dtc", seed=3, update_interval=1, ensemble_momentum=0.6)
    fresh.load_state_dict(method.state_dict())
    fresh.on_epoch_start(1, model, None)  # the trainer's call after a resume: folds nothing again
    m_state = {k: v.clone() for k, v in model.state_dict().items()}
    a = method.training_step(model, batch_for(cls, idx=idx, seed=4))
    model.load_state_dict(m_state)
    b = fresh.training_step(model, batch_for(cls, idx=idx, seed=4))
    assert a["loss"].item() == b["loss"].item() and a["loss_te"].item() > 0


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 5) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 5) == 1.0 and sigmoid_rampup(9, 5) == 1.0
    assert sigmoid_rampup(2, 4) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(3, 0) == 1.0


# --------------------------------------------------------------------------------------------
# RankStats


def test_ranking_pair_labels_by_hand():
    feats = torch.tensor([
        [5.0, 4.0, 3.0, 0.0, 0.0],  # top-2 {0, 1}
        [4.0, 9.0, 0.0, 1.0, 0.0],  # top-2 {1, 0}: same set, other order
        [0.0, 9.0, 8.0, 0.0, 0.0],  # top-2 {1, 2}
        [0.0, 0.0, 0.0, 2.0, 3.0],  # top-2 {3, 4}
    ])
    same = ranking_pair_labels(feats, topk=2)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(same, expected)
    assert ranking_pair_labels(feats, topk=1)[1, 2]  # top-1: both dimension 1
    assert ranking_pair_labels(feats, topk=99).all()  # every dimension: one set
    assert ranking_pair_labels(torch.zeros(0, 5), 2).shape == (0, 0)


def test_pairwise_bce_matches_released_pairenum_bce():
    g = torch.Generator().manual_seed(0)
    p1, p2 = F.softmax(torch.randn(4, 3, generator=g), 1), F.softmax(torch.randn(4, 3, generator=g), 1)
    same = ranking_pair_labels(torch.randn(4, 6, generator=g), 2) | torch.eye(4, dtype=torch.bool)
    # released: x1 = x.repeat(N, 1) (row a*N+b -> x[b]), x2 = x.repeat(1, N).view(-1, D) (-> x[a])
    n = 4
    a1 = p1.repeat(n, 1)
    b2 = p2.repeat(1, n).view(-1, 3)
    simi = torch.where(same.T.reshape(-1), 1.0, -1.0)  # pair (a, b) in that order
    P = (a1 * b2).sum(1) * simi + (simi == -1).float()
    released = -(P + 1e-7).log().mean()
    torch.testing.assert_close(pairwise_bce_with_labels(p2, p1, same.T), released)
    # all pairs positive and identical one-hot predictions: zero loss (up to eps)
    one = F.one_hot(torch.tensor([1, 1]), 3).float()
    assert pairwise_bce_with_labels(one, one, torch.ones(2, 2, dtype=torch.bool)).item() < 1e-6
    empty = torch.zeros(0, 3, requires_grad=True)
    assert pairwise_bce_with_labels(empty, empty, torch.zeros(0, 0, dtype=torch.bool)).item() == 0.0


# --------------------------------------------------------------------------------------------
# DS3L


def test_head_directional_derivative_is_the_per_sample_gradient_inner_product():
    """<grad_W CE_lab, grad_W l_i> via the closed form equals autograd's per-sample gradients."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 5, generator=g, requires_grad=True)
    f_lab, y = torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 1])
    f_u, f_u1 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    head = lambda f: 10 * F.normalize(f, dim=1) @ F.normalize(W, dim=1).T  # noqa: E731
    g_sup = torch.autograd.grad(F.cross_entropy(head(f_lab), y), W)[0]
    z2 = head(f_u)
    ell = pi_model_consistency(head(f_u1), z2)
    dl_dz = torch.autograd.grad(ell.sum(), z2, retain_graph=True)[0]
    dz = head_directional_derivative(f_u, W.detach(), g_sup, 10.0)
    fast = (dl_dz * dz).sum(1)
    slow = torch.stack([(torch.autograd.grad(ell[i], W, retain_graph=True)[0] * g_sup).sum() for i in range(3)])
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


def test_ds3l_meta_surrogate_gradient_by_hand():
    """Samples whose unlabeled-loss gradient aligns with the labeled one (g > 0) get a negative
    surrogate gradient, i.e. SGD raises their weight; the gradient matches the formula."""
    w = torch.tensor([0.5, 0.2, 0.8], requires_grad=True)
    g = torch.tensor([2.0, -1.0, 0.0])
    meta_surrogate(w, g, 3.0).backward()
    gt = g / g.abs().mean()
    w_hat = w.detach() / w.detach().sum()
    expected = -3.0 * (gt - (w_hat * gt).sum()) / w.detach().sum()
    torch.testing.assert_close(w.grad, expected)
    assert w.grad[0] < 0 < w.grad[1]
    w.grad = None
    meta_surrogate(w, torch.zeros(3), 1.0).backward()  # no signal (no labeled rows): no step
    assert w.grad.abs().sum() == 0


def test_ds3l_meta_surrogate_trains_only_the_weight_net_and_adds_nothing():
    cls, model, method = make("ds3l")
    model.train()
    method.on_epoch_start(0, model, None)
    batch = batch_for(cls)
    out = method.training_step(model, batch)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.wnet.parameters())
    # with the meta step off, the loss value and the model gradients are unchanged
    head_grad = model.head.weight.grad.clone()
    cls, model2, method2 = make("ds3l", meta_weight=0.0)
    model2.train()
    method2.on_epoch_start(0, model2, None)
    out2 = method2.training_step(model2, batch_for(cls))
    out2["loss"].backward()
    assert out["loss"].item() == pytest.approx(out2["loss"].item(), rel=1e-6)
    torch.testing.assert_close(model2.head.weight.grad, head_grad)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in method2.wnet.parameters())
    assert int(method.step) == 1


# --------------------------------------------------------------------------------------------
# empty masks, one-class batches, parameter validation, every method


@pytest.mark.parametrize("name", NEW)
def test_one_class_batch_and_all_unconfident(name):
    """A batch whose labeled rows are all one class; thresholds of 1 give empty confidence masks."""
    hp = {"threshold": 1.0} if name in ("fixmatch", "ssc", "sscl") else {}
    cls, model, method = make(name, **hp)
    model.train()
    method.on_epoch_start(0, model, None)
    out = method.training_step(model, batch_for(cls, y_lb=torch.zeros(6, dtype=torch.long)))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    if "mask_rate_unlabeled" in out:
        assert out["mask_rate_unlabeled"].item() == 0.0
    if name == "fixmatch":
        assert out["loss_u"].item() == 0.0


@pytest.mark.parametrize("name", NEW)
def test_no_labeled_rows(name):
    cls, model, method = make(name, n_lb=0)
    model.train()
    method.on_epoch_start(0, model, None)
    out = method.training_step(model, batch_for(cls, n_lb=0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()


@pytest.mark.parametrize("name,key,value", [
    ("fixmatch", "threshold", 1.5), ("fixmatch", "lambda_u", -1), ("ds3l", "meta_weight", -0.1),
    ("ds3l", "reject_threshold", -0.2), ("dtc", "alpha", 0), ("dtc", "ensemble_momentum", 1.0),
    ("rankstats", "topk", 0), ("rankstats", "w_consistency", -1), ("ssc", "temperature", -0.1),
    ("ssc", "threshold", 2), ("sscl", "gamma", 0), ("sscl", "threshold", -0.5), ("sscl", "history", 0),
])
def test_bad_hyperparameters_name_the_key(name, key, value):
    with pytest.raises(LPSError, match=f"method.{key}"):
        build_config([], [f"method={name}", f"method.{key}={value}"])


@pytest.mark.parametrize("name", ["fixmatch", "ds3l", "ssc", "sscl"])
def test_closed_set_methods_predict_seen_or_novel_cluster(name):
    _, model, method = make(name)
    logits = torch.tensor([[9.0, -9, 0, 0], [0.1, 0, 5, 5], [0, 0.2, 0, 0], [-9, 9.0, 0, 0]])
    feats = torch.randn(4, 8)
    pred = method.predict(logits, feats)
    assert pred[0] == 0 and pred[3] == 1  # confident seen predictions
    assert pred[1] >= N_SEEN and pred[2] >= N_SEEN  # novel logits play no part: rejected -> novel ids


@pytest.mark.parametrize("name", NEW)
def test_training_step_under_bf16_autocast(name):
    """The trainer runs training_step under bf16 autocast on GPUs: no dtype clash, finite loss.
    CPU autocast stands in for CUDA here; two steps so that queues and memories are used."""
    cls, model, method = make(name)
    model.train()
    method.on_epoch_start(0, model, None)
    for s in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = method.training_step(model, batch_for(cls, seed=s))
        assert torch.isfinite(out["loss"])
        out["loss"].backward()


def test_map_with_leftovers_hand_cases():
    from lps.clustering import map_with_leftovers, max_assignment

    # 4 clusters, 2 classes: cluster 2 holds class 0, cluster 0 class 1; clusters 1, 3 are leftovers
    counts = np.array([[1, 5], [0, 0], [7, 1], [2, 2]])
    assert map_with_leftovers(counts).tolist() == [1, 2, 0, 3]
    rows, cols = max_assignment(counts)
    assert int(counts[rows, cols].sum()) == 12  # 7 + 5
    # square: a permutation that maximises the trace
    assert map_with_leftovers(np.array([[0, 3], [4, 0]])).tolist() == [1, 0]
    # no class column: every cluster keeps its id
    assert map_with_leftovers(np.zeros((3, 0))).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="cannot match 3 classes to 2 clusters"):
        map_with_leftovers(np.zeros((2, 3)))
